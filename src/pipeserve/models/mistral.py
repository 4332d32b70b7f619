"""Mistral: the Llama decoder with an optional sliding attention window on every layer."""

from __future__ import annotations

from typing import Any

from .llama import LlamaConfig, LlamaForCausalLM, require, windows_from_layer_types


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral decoder; the body is `LlamaForCausalLM`'s, only the config reading differs."""

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> LlamaConfig:
        """Build the decoder config from a Mistral config.json dict."""
        window = config.get("sliding_window")
        default = (window,) * require(config, "num_hidden_layers") if window else ()
        return LlamaConfig.from_hf(config, layer_windows=windows_from_layer_types(config, default))
