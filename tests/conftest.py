"""Shared pytest set-up: the `--skip-slow` flag, and skipping CUDA tests where no GPU exists."""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-slow",
        action="store_true",
        default=False,
        help="skip tests marked slow (real-model tests); CI runs them",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow test skipped by --skip-slow")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        # Markers, not keywords: a parametrize id such as "cuda" must not skip a test.
        if config.getoption("--skip-slow") and item.get_closest_marker("slow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
