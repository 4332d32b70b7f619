"""The CUDA path: placement, half precision, and parity with the reference on the GPU."""

from __future__ import annotations

import pytest
import torch

from pipeserve.generation.greedy import greedy_generate
from pipeserve.layers.attention import BatchMetadata
from pipeserve.models.auto import load_model
from tests.factories.models import write_tiny_model
from tests.models.test_parity import PROMPTS

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module", params=["llama", "qwen3", "gpt2"])
def folder(request, tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp(request.param), request.param)


def _logits(model: torch.nn.Module, device: str) -> torch.Tensor:
    lengths = [len(p) for p in PROMPTS]
    ids = torch.tensor(sum(PROMPTS, []), device=device)
    return model.compute_logits(model(ids, BatchMetadata.build(lengths, device=device))).float()


@torch.inference_mode()
def test_default_device_is_cuda_and_everything_lives_there(folder):
    loaded = load_model(folder)
    assert loaded.device.type == "cuda"
    assert all(t.is_cuda for t in [*loaded.model.parameters(), *loaded.model.buffers()])


@torch.inference_mode()
def test_fp32_on_cuda_matches_reference(folder):
    ours = load_model(folder, device="cuda", dtype="float32").model
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).cuda()
    got = _logits(ours, "cuda")
    for prompt, mine in zip(PROMPTS, got.split([len(p) for p in PROMPTS]), strict=True):
        expected = ref(torch.tensor([prompt], device="cuda")).logits[0]
        assert (mine - expected).abs().max().item() < 1e-4
    tokens = greedy_generate(ours, PROMPTS, max_new_tokens=20, eos_token_ids={2})
    for prompt, mine in zip(PROMPTS, tokens, strict=True):
        out = ref.generate(
            torch.tensor([prompt], device="cuda"),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=2,
            pad_token_id=0,
        )
        expected = out[0, len(prompt) :].tolist()
        assert mine == expected


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@torch.inference_mode()
def test_half_precision_on_cuda_tracks_reference(folder, dtype):
    ours = load_model(folder, device="cuda:0", torch_dtype=dtype).model
    assert next(ours.parameters()).dtype == dtype
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).cuda()
    fp32 = _logits(load_model(folder, device="cpu", dtype="float32").model, "cpu")
    got = _logits(ours, "cuda")
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    assert (got.cpu() - fp32).abs().max().item() < tol
    for prompt, mine in zip(PROMPTS, got.split([len(p) for p in PROMPTS]), strict=True):
        expected = ref(torch.tensor([prompt], device="cuda")).logits[0].float()
        assert (mine - expected).abs().max().item() < tol


@torch.inference_mode()
def test_auto_dtype_on_cuda_is_the_checkpoint_dtype(folder, tmp_path):
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    ref.save_pretrained(tmp_path / "bf16")
    assert load_model(tmp_path / "bf16", device="cuda").dtype == torch.bfloat16
    assert load_model(tmp_path / "bf16", device="cpu").dtype == torch.float32


@torch.inference_mode()
def test_gguf_model_on_cuda_matches_cpu(tmp_path):
    from gguf import GGMLQuantizationType

    from tests.factories.gguf import write_gguf_from_folder

    hf = write_tiny_model(tmp_path / "hf", "llama")
    path = write_gguf_from_folder(hf, tmp_path / "q8.gguf", GGMLQuantizationType.Q8_0)
    on_gpu = load_model(path, device="cuda", dtype="float32").model
    on_cpu = load_model(path, device="cpu", dtype="float32").model
    assert (_logits(on_gpu, "cuda").cpu() - _logits(on_cpu, "cpu")).abs().max().item() < 1e-4
