"""Qwen2: the Llama decoder with biases on q/k/v (not on the output projection)."""

from __future__ import annotations

from typing import Any

from .llama import LlamaConfig, LlamaForCausalLM, require, windows_from_layer_types


def qwen_windows(config: dict[str, Any]) -> tuple[int | None, ...]:
    """Sliding windows of Qwen2/Qwen3: layers from `max_window_layers` on, when enabled."""
    layers = require(config, "num_hidden_layers")
    window = config.get("sliding_window") if config.get("use_sliding_window") else None
    start = config.get("max_window_layers", layers)
    default = tuple(window if window and i >= start else None for i in range(layers))
    if not config.get("use_sliding_window"):
        # transformers 5.x writes layer_types even when the window is off; they are all full then.
        return default
    return windows_from_layer_types(config, default)


class Qwen2ForCausalLM(LlamaForCausalLM):
    """Qwen2 / Qwen2.5 decoder."""

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> LlamaConfig:
        return LlamaConfig.from_hf(
            config, qkv_bias=True, o_bias=False, layer_windows=qwen_windows(config)
        )
