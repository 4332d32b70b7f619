"""Choose the torch device and dtype a model runs with, from what the user asked for."""

from __future__ import annotations

import logging

import torch

from pipeserve.errors import DeviceError

logger = logging.getLogger(__name__)

_DEVICE_FORMS = (
    "'cpu', 'cuda', 'cuda:N', 'mps', an int N (meaning cuda:N; -1 means cpu), a torch.device, "
    "or None (the best device available)"
)
_DTYPE_NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "double": torch.float64,
}
_DTYPE_FORMS = f"'auto', None, a torch floating dtype, or one of {', '.join(_DTYPE_NAMES)}"
# device_map values that ask to spread one model over several devices.
_MULTI_DEVICE_MAPS = ("balanced", "balanced_low_0", "sequential")


def best_device() -> torch.device:
    """Return cuda:0 when CUDA is available, else mps when available, else cpu."""
    if torch.cuda.is_available():
        return torch.device("cuda", 0)
    if _mps_available():
        return torch.device("mps", 0)
    return torch.device("cpu")


def resolve_device(
    device: str | int | torch.device | None = None,
    device_map: str | dict | None = None,
) -> torch.device:
    """Turn a device argument into an available `torch.device`.

    Args:
        device: "cpu", "cuda", "cuda:N", "mps", an int N (cuda:N; -1 is cpu), a torch.device, or
            None for the best device available.
        device_map: "auto" (best device), a single device in any form `device` takes, or
            `{"": device}`. Multi-device maps ("balanced", "sequential", a per-module dict) are
            not supported.

    Returns:
        The device, with an explicit index for cuda and mps (cuda:0 rather than cuda).

    Raises:
        DeviceError: The value is not a device, the two arguments disagree, or the device is not
            available on this machine.
    """
    from_map = _device_from_map(device_map)
    if device is None:
        chosen = from_map if from_map is not None else best_device()
    else:
        chosen = _parse_device(device, "device")
        # device_map="auto" means "choose for me"; an explicit `device` is that choice.
        if from_map is not None and from_map != chosen:
            raise DeviceError(
                f"device={device!r} and device_map={device_map!r} name different devices "
                f"({chosen} and {from_map}). Pass only one of them."
            )
    _check_available(chosen)
    return chosen


def resolve_dtype(
    dtype: str | torch.dtype | None = "auto",
    *,
    checkpoint_dtype: torch.dtype | str | None,
    device: torch.device,
) -> torch.dtype:
    """Choose the dtype a model's weights are cast to.

    Args:
        dtype: A torch floating dtype, its name ("float32"/"fp32"/"float", "float16"/"fp16"/"half",
            "bfloat16"/"bf16", "float64"), or "auto"/None.
        checkpoint_dtype: The dtype the checkpoint was saved in, if known (see `dtype_from_config`).
        device: The device the model will run on.

    Returns:
        The dtype. "auto" gives float32 on CPU (half precision matmuls are slow there), and on an
        accelerator the checkpoint's dtype (float32 when unknown or not float16/bfloat16/float32).

    Raises:
        DeviceError: `dtype` is not one of the accepted values.
    """
    if dtype is None or (isinstance(dtype, str) and dtype.strip().lower() == "auto"):
        return _auto_dtype(checkpoint_dtype, device)
    chosen = _parse_dtype(dtype)
    if chosen is None:
        raise DeviceError(f"Invalid dtype {dtype!r}. Accepted: {_DTYPE_FORMS}.")
    if chosen == torch.float16 and device.type == "cpu":
        logger.warning("float16 on CPU is slow and less accurate; float32 or bfloat16 is better.")
    return chosen


def dtype_from_config(config: dict) -> torch.dtype | None:
    """Read the checkpoint dtype from a config.json dict.

    Args:
        config: The parsed config.json; `dtype` (newer transformers) or `torch_dtype` is read, then
            the same fields of `text_config` for multimodal configs.

    Returns:
        The floating dtype named there, or None when absent or not a known float dtype ("auto").
    """
    for key in ("dtype", "torch_dtype"):
        if config.get(key) is not None:
            return _parse_dtype(config[key])
    text_config = config.get("text_config")
    return dtype_from_config(text_config) if isinstance(text_config, dict) else None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and mps.is_available()


def _device_from_map(device_map: str | dict | None) -> torch.device | None:
    """Return the single device a device_map names, or None for no map or "auto"."""
    if device_map is None or (isinstance(device_map, str) and device_map.strip() == "auto"):
        return None
    if isinstance(device_map, dict) and set(device_map) == {""}:
        return _parse_device(device_map[""], "device_map")
    if isinstance(device_map, dict) or device_map in _MULTI_DEVICE_MAPS:
        raise DeviceError(
            f"device_map={device_map!r} asks to place the model on several devices, which "
            "pipeserve does not support. Pass one device, e.g. device='cuda:0' or device_map='auto'."
        )
    return _parse_device(device_map, "device_map")


def _parse_device(value: object, arg: str) -> torch.device:
    """Parse one device value (no availability check); cuda and mps get index 0 when unset."""
    invalid = DeviceError(f"Invalid {arg} {value!r}. Accepted: {_DEVICE_FORMS}.")
    if isinstance(value, bool):  # bool is an int subclass; True is not cuda:1
        raise invalid
    if isinstance(value, int):
        if value < -1:
            raise invalid
        return torch.device("cpu") if value == -1 else torch.device("cuda", value)
    if isinstance(value, str):
        try:
            value = torch.device(value.strip().lower())
        except (RuntimeError, ValueError):
            raise invalid from None
    if not isinstance(value, torch.device) or value.type not in ("cpu", "cuda", "mps"):
        raise invalid
    if value.type == "cpu":
        return torch.device("cpu")
    return torch.device(value.type, value.index or 0)


def _available() -> str:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    return ", ".join(found)


def _check_available(device: torch.device) -> None:
    if device.type == "cuda" and not torch.cuda.is_available():
        why = (
            f"this torch build ({torch.__version__}) has no CUDA support"
            if torch.version.cuda is None
            else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)"
        )
        raise DeviceError(
            f"Device {device} was requested but CUDA is not available: {why}. "
            f"Available here: {_available()}. Pass one of those, or None for the best one."
        )
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"Device {device} was requested but only {torch.cuda.device_count()} CUDA device(s) "
            f"are visible. Available here: {_available()}."
        )
    if device.type == "mps" and (device.index or not _mps_available()):
        raise DeviceError(
            f"Device {device} was requested but is not available. Available here: {_available()}."
        )


def _parse_dtype(value: object) -> torch.dtype | None:
    """Return the supported floating dtype `value` names, or None."""
    if isinstance(value, torch.dtype):
        return value if value in _DTYPE_NAMES.values() else None
    if isinstance(value, str):
        return _DTYPE_NAMES.get(value.strip().lower().removeprefix("torch."))
    return None


def _auto_dtype(checkpoint_dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32
    saved = _parse_dtype(checkpoint_dtype)
    # float64 checkpoints are nearly always accidents of a numpy export; running in it is wasteful.
    return saved if saved in (torch.float16, torch.bfloat16) else torch.float32
