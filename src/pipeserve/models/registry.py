"""Architectures pipeserve implements natively, keyed by config.json's `architectures` field.

Model files are imported lazily: looking up one architecture imports only its file.
"""

from __future__ import annotations

import importlib
from typing import Any

from torch import nn

from ..errors import UnsupportedArchitectureError

# architecture name -> (module under pipeserve.models, class name)
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("mistral", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("qwen3", "Qwen3ForCausalLM"),
    "GPT2LMHeadModel": ("gpt2", "GPT2LMHeadModel"),
}

# For configs without `architectures`: model_type -> architecture.
MODEL_TYPES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}


def architecture_of(config: dict[str, Any]) -> str:
    """The architecture name a config.json declares (or implies through `model_type`)."""
    names = config.get("architectures") or []
    if names:
        return names[0]
    model_type = config.get("model_type")
    if model_type in MODEL_TYPES:
        return MODEL_TYPES[model_type]
    raise UnsupportedArchitectureError(
        f"the config names no architecture (architectures={names}, model_type={model_type!r}); "
        f"supported: {', '.join(ARCHITECTURES)}"
    )


def model_class(architecture: str) -> type[nn.Module]:
    """Return the class implementing `architecture`.

    Raises:
        UnsupportedArchitectureError: pipeserve has no implementation of it.
    """
    if architecture not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"architecture {architecture!r} is not supported by pipeserve; supported "
            f"architectures: {', '.join(ARCHITECTURES)}"
        )
    module_name, class_name = ARCHITECTURES[architecture]
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, class_name)
