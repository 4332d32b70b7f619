"""Activation functions by the names config.json uses (`hidden_act`, `activation_function`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the activation function called `name` in a Hugging Face config.

    Raises:
        ConfigError: the name is not one pipeserve implements.
    """
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"unsupported activation function {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}"
        ) from None
