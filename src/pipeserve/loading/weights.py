"""Reading checkpoint tensors and assigning them into a model built on the meta device.

NOTE: a model is first built under `torch.device("meta")`, which allocates nothing. Each checkpoint
tensor is then read (safetensors memory-maps its file, so only the tensor in hand is resident),
converted to the target dtype and device, and assigned as the parameter itself. Peak memory is the
finished model plus one tensor, never a second full copy. Fused parameters (q/k/v, gate/up) are the
only ones allocated up front; their checkpoint shards are copied into row slices.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import WeightsError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointTensor:
    """One tensor read from a checkpoint, with the file it came from (for error messages)."""

    name: str
    tensor: torch.Tensor
    source: Path


@dataclass(frozen=True)
class ParamTarget:
    """Where a checkpoint tensor goes: a parameter name, and a shard index for fused parameters."""

    param: str
    tensor: torch.Tensor
    shard: int | None = None


def iter_safetensors(files: Iterable[Path]) -> Iterator[CheckpointTensor]:
    """Yield every tensor of the given safetensors files, one at a time.

    Raises:
        WeightsError: a file is missing, truncated or not a safetensors file.
    """
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                    yield CheckpointTensor(name, handle.get_tensor(name), Path(path))
        except (SafetensorError, OSError) as err:
            raise WeightsError(
                f"cannot read weights file {path}: {err}. The file is missing, truncated or "
                "corrupt; download it again (or re-save it with safetensors)."
            ) from err


def iter_pickle(files: Iterable[Path]) -> Iterator[CheckpointTensor]:
    """Yield the tensors of pickled PyTorch checkpoints (only when the caller opted in).

    `weights_only=True` refuses arbitrary objects, and `mmap=True` avoids reading the file twice.
    """
    for path in files:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # torch raises many types for a bad pickle
            raise WeightsError(f"cannot read weights file {path}: {err}") from err
        for name, tensor in state.items():
            yield CheckpointTensor(name, tensor, Path(path))


def iter_checkpoint(files: Iterable[Path]) -> Iterator[CheckpointTensor]:
    """Yield the tensors of safetensors files and (opted-in) pickled `.bin` files."""
    for path in files:
        reader = iter_safetensors if Path(path).suffix == ".safetensors" else iter_pickle
        yield from reader([path])


def _owner(model: nn.Module, param: str) -> tuple[nn.Module, str]:
    module_name, _, attr = param.rpartition(".")
    return model.get_submodule(module_name) if module_name else model, attr


def _check_shape(item: CheckpointTensor, got: torch.Size, expected: tuple[int, ...]) -> None:
    if tuple(got) != tuple(expected):
        raise WeightsError(
            f"{item.source}: tensor {item.name!r} has shape {tuple(got)}, but the model built from "
            f"its config expects {tuple(expected)}. The config does not match the weights; check "
            "that config.json belongs to this checkpoint."
        )


def load_weights(
    model: nn.Module,
    tensors: Iterable[CheckpointTensor],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Assign checkpoint tensors to a model built on the meta device.

    Args:
        model: a module with `checkpoint_targets(name, tensor) -> list[ParamTarget]`, which
            maps each checkpoint name to its parameter(s).
        tensors: the checkpoint's tensors, e.g. from `iter_safetensors`.
        dtype: floating-point tensors are converted to this dtype.
        device: every parameter ends up on this device.

    Raises:
        WeightsError: a tensor's shape does not match the model, or parameters are missing.
    """
    params = dict(model.named_parameters())
    shards_loaded: dict[str, set[int]] = {}
    sources: set[Path] = set()
    unexpected: list[str] = []
    for item in tensors:
        sources.add(item.source)
        targets = model.checkpoint_targets(item.name, item.tensor)
        for target in targets:
            if target.param not in params:
                unexpected.append(item.name)
                continue
            value = target.tensor
            if value.is_floating_point():
                value = value.to(dtype=dtype)
            module, attr = _owner(model, target.param)
            if target.shard is None:
                _check_shape(item, value.shape, params[target.param].shape)
                param = nn.Parameter(value.to(device).contiguous(), requires_grad=False)
                setattr(module, attr, param)
                params[target.param] = param
                continue
            param = params[target.param]
            if param.is_meta:
                param = nn.Parameter(torch.empty(param.shape, dtype=dtype, device=device), False)
                setattr(module, attr, param)
                params[target.param] = param
            start, size = module.shard_offsets[target.shard], module.shard_sizes[target.shard]
            _check_shape(item, value.shape, (size, *param.shape[1:]))
            param.data[start : start + size].copy_(value)
            shards_loaded.setdefault(target.param, set()).add(target.shard)
    if unexpected:
        shown = ", ".join(unexpected[:5])
        logger.warning(
            "ignored %d checkpoint tensors the model does not use: %s", len(unexpected), shown
        )
    _check_complete(model, params, shards_loaded, sources)
    # Buffers (rotary frequencies) were built on the CPU; move them along with the parameters.
    model.to(device)


def _check_complete(
    model: nn.Module,
    params: dict[str, nn.Parameter],
    shards_loaded: dict[str, set[int]],
    sources: set[Path],
) -> None:
    missing = [name for name, p in params.items() if p.is_meta]
    for name, shards in shards_loaded.items():
        module, _ = _owner(model, name)
        if len(shards) != len(module.shard_sizes):
            missing.append(
                f"{name} (shards {sorted(set(range(len(module.shard_sizes))) - shards)})"
            )
    if missing:
        files = ", ".join(str(s) for s in sorted(sources)) or "no files"
        shown = ", ".join(missing[:8]) + (
            f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        )
        raise WeightsError(
            f"the checkpoint ({files}) lacks {len(missing)} tensors the model needs: {shown}. "
            "The weights are incomplete or belong to another architecture."
        )
