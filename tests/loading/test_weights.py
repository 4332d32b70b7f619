"""Weights are assigned tensor by tensor into a meta-built model, without a second copy in memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from pipeserve.errors import WeightsError
from pipeserve.loading.weights import CheckpointTensor, iter_safetensors, load_weights
from pipeserve.models.llama import LlamaConfig, LlamaForCausalLM
from tests.factories.models import write_tiny_model

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 32000,
    "hidden_size": 512,
    "intermediate_size": 1024,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "tie_word_embeddings": False,
}


def _random_checkpoint(folder):
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_hf(CONFIG))
    tensors = {}
    for name, param in model.named_parameters():
        name = name.replace("qkv_proj", "q_proj").replace("gate_up_proj", "gate_proj")
        tensors[name] = torch.randn(param.shape)
    # Split the fused shapes back into the checkpoint's separate projections.
    for layer in range(CONFIG["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.self_attn.q_proj.weight"] = torch.randn(512, 512)
        tensors[f"{prefix}.self_attn.k_proj.weight"] = torch.randn(256, 512)
        tensors[f"{prefix}.self_attn.v_proj.weight"] = torch.randn(256, 512)
        tensors[f"{prefix}.mlp.gate_proj.weight"] = torch.randn(1024, 512)
        tensors[f"{prefix}.mlp.up_proj.weight"] = torch.randn(1024, 512)
    folder.mkdir(exist_ok=True)
    save_file(tensors, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(CONFIG))
    return tensors


def test_fused_shards_land_in_their_rows(tmp_path):
    tensors = _random_checkpoint(tmp_path / "m")
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_hf(CONFIG))
    load_weights(
        model,
        iter_safetensors([tmp_path / "m" / "model.safetensors"]),
        dtype=torch.float32,
        device=torch.device("cpu"),
    )
    qkv = model.model.layers[1].self_attn.qkv_proj.weight
    assert torch.equal(qkv[512:768], tensors["model.layers.1.self_attn.k_proj.weight"])
    gate_up = model.model.layers[0].mlp.gate_up_proj.weight
    assert torch.equal(gate_up[1024:], tensors["model.layers.0.mlp.up_proj.weight"])
    assert not any(p.is_meta for p in model.parameters())


def test_unused_checkpoint_tensors_are_ignored_with_a_warning(tmp_path, caplog):
    _random_checkpoint(tmp_path / "m")
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig.from_hf(CONFIG))
    extra = CheckpointTensor("model.extra_head.weight", torch.zeros(2), tmp_path / "x")
    tensors = [*iter_safetensors([tmp_path / "m" / "model.safetensors"]), extra]
    load_weights(model, tensors, dtype=torch.float32, device=torch.device("cpu"))
    assert "model.extra_head.weight" in caplog.text


def test_missing_file_is_a_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="missing.safetensors"):
        list(iter_safetensors([tmp_path / "missing.safetensors"]))


_PROBE = """
import sys, torch
from pipeserve.models.auto import load_model
def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
load_model(sys.argv[2], device="cpu", dtype="float32")  # warm-up: lazy imports, allocator
before = anon_mib()
loaded = load_model(sys.argv[1], device="cpu", dtype="float32")
print(anon_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_float32_load_does_not_copy_the_checkpoint(tmp_path):
    tensors = _random_checkpoint(tmp_path / "m")
    small = write_tiny_model(tmp_path / "small", "llama")
    size_mib = sum(t.numel() * 4 for t in tensors.values()) / 2**20
    fused_mib = 2 * (1024 * 512 + 2048 * 512) * 4 / 2**20  # q/k/v and gate/up are copied once
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_PROBE), str(tmp_path / "m"), str(small)],
        capture_output=True,
        text=True,
        check=True,
    )
    grown = float(out.stdout.strip().splitlines()[-1])
    print(f"anonymous memory grown by {grown:.1f} MiB loading {size_mib:.0f} MiB of float32")
    # Unfused tensors stay views of the memory-mapped file; only fused ones take new memory.
    assert grown < fused_mib + 0.15 * size_mib, (grown, size_mib)
