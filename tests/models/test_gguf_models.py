"""A model loaded from a GGUF file runs exactly like the same weights loaded from safetensors."""

from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch

from pipeserve.layers.attention import BatchMetadata
from pipeserve.loading.gguf import open_gguf
from pipeserve.models.auto import load_model
from tests.factories.gguf import write_gguf_from_folder
from tests.factories.models import write_tiny_model
from tests.models.test_parity import PROMPTS

pytest.importorskip("transformers")


def _logits(model: torch.nn.Module) -> torch.Tensor:
    lengths = [len(p) for p in PROMPTS]
    return model.compute_logits(model(torch.tensor(sum(PROMPTS, [])), BatchMetadata.build(lengths)))


@pytest.fixture
def tiny_gguf(tmp_path):
    return write_gguf_from_folder(write_tiny_model(tmp_path / "hf", "llama"), tmp_path / "a.gguf")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
@torch.inference_mode()
def test_gguf_model_equals_safetensors_model(tmp_path, family):
    folder = write_tiny_model(tmp_path / "hf", family)
    path = write_gguf_from_folder(folder, tmp_path / "tiny.gguf", architecture=family)

    from_gguf = load_model(path, device="cpu", dtype="float32")
    from_folder = load_model(folder, device="cpu", dtype="float32")
    assert from_gguf.architecture == from_folder.architecture
    assert torch.equal(_logits(from_gguf.model), _logits(from_folder.model))


def test_open_gguf_reuses_a_live_checkpoint_until_the_file_changes(tiny_gguf):
    first = open_gguf(tiny_gguf)
    assert open_gguf(tiny_gguf) is first
    stat = tiny_gguf.stat()
    os.utime(tiny_gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "modified"
    assert open_gguf(tiny_gguf) is not first


def test_open_gguf_does_not_pin_checkpoints(tiny_gguf):
    ref = weakref.ref(open_gguf(tiny_gguf))
    gc.collect()
    assert ref() is None
