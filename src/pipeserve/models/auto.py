"""`load_model`: from a model id, folder or GGUF file to a native model on the chosen device."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import DeviceError
from ..loading.config import read_config
from ..loading.device import dtype_from_config, resolve_device, resolve_dtype
from ..loading.resolve import ModelFiles, find_weight_files, resolve_model
from ..loading.weights import CheckpointTensor, iter_checkpoint, load_weights
from .registry import architecture_of, model_class

logger = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A native model ready to run, with what was learnt while loading it.

    Attributes:
        model: the module (`forward(input_ids, meta, kv_cache)`, `compute_logits(hidden)`).
        hf_config: the config.json dict (or its equivalent built from GGUF metadata).
        files: where the model's files are.
        architecture: the architecture name, e.g. "LlamaForCausalLM".
        device: where the parameters live.
        dtype: the parameters' floating-point dtype.
    """

    model: nn.Module
    hf_config: dict[str, Any]
    files: ModelFiles
    architecture: str
    device: torch.device
    dtype: torch.dtype

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _pick_dtype(dtype: Any, torch_dtype: Any) -> Any:
    if torch_dtype is not None and dtype not in (None, "auto") and dtype != torch_dtype:
        raise DeviceError(
            f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree; pass one of them"
        )
    return torch_dtype if torch_dtype is not None else dtype


def _gguf_tensors(checkpoint: Any, dtype: torch.dtype) -> Iterator[CheckpointTensor]:
    for name, tensor in checkpoint.load_tensors(dtype):
        yield CheckpointTensor(name, tensor, checkpoint.path)


def load_model(
    model: str | os.PathLike,
    *,
    revision: str | None = None,
    gguf_file: str | None = None,
    device: str | int | torch.device | None = None,
    device_map: str | None = None,
    dtype: str | torch.dtype | None = "auto",
    torch_dtype: str | torch.dtype | None = None,
    allow_pickle: bool = False,
) -> LoadedModel:
    """Load a decoder model natively.

    Args:
        model: a local folder, a `.gguf` file, or a Hugging Face repo id.
        revision: branch, tag or commit for Hub ids.
        gguf_file: a GGUF file inside the folder / repo.
        device: "cpu", "cuda", "cuda:1", an int, a torch.device; None picks the best available.
        device_map: "auto" (same as device=None) or a single device name.
        dtype: a torch dtype, its name, or "auto" (the checkpoint's dtype on an accelerator,
            float32 on CPU).
        torch_dtype: an alias of `dtype`, as in the well-known pipeline API.
        allow_pickle: allow pickled `pytorch_model.bin` weights when no safetensors exist.

    Returns:
        The loaded model and facts about it.

    Raises:
        ModelNotFoundError, ConfigError, WeightsError, UnsupportedArchitectureError, DeviceError.
    """
    start = time.perf_counter()
    files = resolve_model(model, revision=revision, gguf_file=gguf_file, allow_pickle=allow_pickle)
    checkpoint = None
    if files.gguf_file is not None:
        from ..loading.gguf import open_gguf

        checkpoint = open_gguf(files.gguf_file)
        hf_config = checkpoint.hf_config()
    else:
        hf_config = read_config(files.root)
    architecture = architecture_of(hf_config)
    cls = model_class(architecture)
    config = cls.config_from_hf(hf_config)

    target_device = resolve_device(device, device_map)
    target_dtype = resolve_dtype(
        _pick_dtype(dtype, torch_dtype),
        checkpoint_dtype=dtype_from_config(hf_config),
        device=target_device,
    )
    with torch.device("meta"):
        module = cls(config)
    if checkpoint is not None:
        tensors = _gguf_tensors(checkpoint, target_dtype)
    else:
        tensors = iter_checkpoint(find_weight_files(files, allow_pickle=allow_pickle))
    load_weights(module, tensors, dtype=target_dtype, device=target_device)
    module.eval().requires_grad_(False)
    logger.info(
        "loaded %s (%s) on %s as %s in %.1f s",
        model,
        architecture,
        target_device,
        target_dtype,
        time.perf_counter() - start,
    )
    return LoadedModel(module, hf_config, files, architecture, target_device, target_dtype)
