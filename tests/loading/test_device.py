"""Tests for loading/device.py: device and dtype arguments, with CUDA and MPS availability patched."""

from __future__ import annotations

import logging

import pytest
import torch

from pipeserve.errors import DeviceError
from pipeserve.loading import device as device_module
from pipeserve.loading.device import best_device, dtype_from_config, resolve_device, resolve_dtype

CPU = torch.device("cpu")
CUDA0 = torch.device("cuda", 0)
CUDA1 = torch.device("cuda", 1)


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend this is a CPU-only machine, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(device_module, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


# --- devices -------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cpu", " CPU ", "cpu:0", -1, torch.device("cpu"), None])
def test_cpu_forms(device: object) -> None:
    assert resolve_device(device) == CPU


@pytest.mark.parametrize("device_map", ["auto", "cpu", {"": "cpu"}])
def test_device_map_single_device(device_map: object) -> None:
    assert resolve_device(device_map=device_map) == CPU


def test_best_device_cpu() -> None:
    assert best_device() == CPU


@pytest.mark.parametrize("device_map", ["balanced", "sequential", {"model.embed": 0, "lm_head": 1}])
def test_multi_device_map_rejected(device_map: object) -> None:
    with pytest.raises(DeviceError, match="several devices.*not support"):
        resolve_device(device_map=device_map)


# Explicit ids: a bare "cuda" id would become a keyword that conftest treats as the cuda marker.
@pytest.mark.parametrize(
    "device", ["cuda", "cuda:1", 0, torch.device("cuda")], ids=["str", "str1", "int", "device"]
)
def test_cuda_unavailable(device: object) -> None:
    with pytest.raises(DeviceError, match="CUDA is not available.*Available here: cpu"):
        resolve_device(device)


def test_cuda_device_map_unavailable() -> None:
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device(device_map="cuda:0")


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cuda", CUDA0), ("CUDA:1", CUDA1), (1, CUDA1), (torch.device("cuda"), CUDA0), (None, CUDA0)],
)
@pytest.mark.usefixtures("two_gpus")
def test_cuda_forms(device: object, expected: torch.device) -> None:
    assert resolve_device(device) == expected


@pytest.mark.usefixtures("two_gpus")
def test_cuda_best_and_auto() -> None:
    assert best_device() == CUDA0
    assert resolve_device(device_map="auto") == CUDA0
    assert resolve_device(1, device_map="auto") == CUDA1  # an explicit device is the "auto" choice


@pytest.mark.usefixtures("two_gpus")
def test_cuda_index_beyond_count() -> None:
    with pytest.raises(DeviceError, match="only 2 CUDA device.*cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


@pytest.mark.usefixtures("two_gpus")
def test_device_and_device_map_conflict() -> None:
    assert resolve_device("cuda", device_map="cuda:0") == CUDA0
    with pytest.raises(DeviceError, match="name different devices"):
        resolve_device("cpu", device_map="cuda:0")


def test_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DeviceError, match="not available"):
        resolve_device("mps")
    monkeypatch.setattr(device_module, "_mps_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps", 0) == best_device()


@pytest.mark.parametrize("device", ["gpu", "tpu", "cuda:x", "", "meta", "xpu", -2, True, 1.5, [0]])
def test_garbage_device(device: object) -> None:
    with pytest.raises(DeviceError, match="Accepted: 'cpu', 'cuda', 'cuda:N', 'mps'"):
        resolve_device(device)


# --- dtypes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("float32", torch.float32),
        ("fp32", torch.float32),
        ("float", torch.float32),
        ("float16", torch.float16),
        ("fp16", torch.float16),
        ("half", torch.float16),
        ("bfloat16", torch.bfloat16),
        ("BF16", torch.bfloat16),
        ("torch.bfloat16", torch.bfloat16),
        (torch.bfloat16, torch.bfloat16),
        (torch.float64, torch.float64),
    ],
)
def test_dtype_names(name: object, expected: torch.dtype) -> None:
    assert resolve_dtype(name, checkpoint_dtype=None, device=CUDA0) == expected


@pytest.mark.parametrize("dtype", ["auto", None, " AUTO "])
@pytest.mark.parametrize(
    ("checkpoint", "expected"),
    [
        (torch.bfloat16, torch.bfloat16),
        ("float16", torch.float16),
        ("float32", torch.float32),
        (None, torch.float32),
        (torch.int8, torch.float32),
        ("float8_e4m3fn", torch.float32),
        (torch.float64, torch.float32),
    ],
)
def test_dtype_auto_on_accelerator(
    dtype: object, checkpoint: object, expected: torch.dtype
) -> None:
    assert resolve_dtype(dtype, checkpoint_dtype=checkpoint, device=CUDA0) == expected


@pytest.mark.parametrize("checkpoint", [torch.bfloat16, "float16", None])
def test_dtype_auto_on_cpu_is_float32(checkpoint: object) -> None:
    assert resolve_dtype("auto", checkpoint_dtype=checkpoint, device=CPU) == torch.float32


@pytest.mark.parametrize(
    "dtype", ["float8", "int8", "fp15", "", torch.int32, torch.float8_e4m3fn, 16]
)
def test_invalid_dtype(dtype: object) -> None:
    with pytest.raises(DeviceError, match="Invalid dtype.*Accepted: 'auto'.*bfloat16"):
        resolve_dtype(dtype, checkpoint_dtype=None, device=CPU)


def test_float16_on_cpu_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeserve.loading.device"):
        assert resolve_dtype("fp16", checkpoint_dtype=None, device=CPU) == torch.float16
    assert "float16 on CPU is slow" in caplog.text
    caplog.clear()
    resolve_dtype("bf16", checkpoint_dtype=None, device=CPU)
    assert caplog.text == ""


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"torch_dtype": "bfloat16"}, torch.bfloat16),
        ({"dtype": "float16"}, torch.float16),
        ({"text_config": {"torch_dtype": "bfloat16"}}, torch.bfloat16),
        ({"torch_dtype": "auto"}, None),
        ({"torch_dtype": "int8"}, None),
        ({}, None),
    ],
)
def test_dtype_from_config(config: dict, expected: torch.dtype | None) -> None:
    assert dtype_from_config(config) == expected
