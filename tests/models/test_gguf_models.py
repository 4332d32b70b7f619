"""A model loaded from a GGUF file runs exactly like the same weights loaded from safetensors."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from pipeserve.layers.attention import BatchMetadata
from pipeserve.loading.gguf import open_gguf
from pipeserve.models.auto import load_model
from tests.factories.gguf import write_tiny_llama_gguf
from tests.factories.models import write_tiny_model
from tests.models.test_parity import PROMPTS

pytest.importorskip("transformers")


def _logits(model: torch.nn.Module) -> torch.Tensor:
    lengths = [len(p) for p in PROMPTS]
    return model.compute_logits(model(torch.tensor(sum(PROMPTS, [])), BatchMetadata.build(lengths)))


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@torch.inference_mode()
def test_gguf_model_equals_safetensors_model(tmp_path, family):
    folder = write_tiny_model(tmp_path / "hf", family)
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    state_dict = load_file(folder / "model.safetensors")
    if config.get("tie_word_embeddings"):
        state_dict.pop("lm_head.weight", None)
    path = write_tiny_llama_gguf(tmp_path / "tiny.gguf", state_dict, config, architecture=family)

    from_gguf = load_model(path, device="cpu", dtype="float32")
    from_folder = load_model(folder, device="cpu", dtype="float32")
    assert from_gguf.architecture == from_folder.architecture
    assert torch.equal(_logits(from_gguf.model), _logits(from_folder.model))


def test_open_gguf_reuses_a_live_checkpoint_until_the_file_changes(tmp_path):
    folder = write_tiny_model(tmp_path / "hf", "llama")
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("rope_theta", 10000.0)
    path = write_tiny_llama_gguf(
        tmp_path / "a.gguf", load_file(folder / "model.safetensors"), config
    )
    first = open_gguf(path)
    assert open_gguf(path) is first
    path.write_bytes(path.read_bytes())  # same content, new modification time
    os.utime(path, ns=(first.path.stat().st_atime_ns, first.path.stat().st_mtime_ns + 10**9))
    assert open_gguf(path) is not first


def test_open_gguf_does_not_pin_checkpoints(tmp_path):
    import gc
    import weakref

    folder = write_tiny_model(tmp_path / "hf", "llama")
    config = json.loads((folder / "config.json").read_text())
    config.setdefault("rope_theta", 10000.0)
    path = write_tiny_llama_gguf(
        tmp_path / "a.gguf", load_file(folder / "model.safetensors"), config
    )
    ref = weakref.ref(open_gguf(path))
    gc.collect()
    assert ref() is None
