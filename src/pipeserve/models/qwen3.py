"""Qwen3: the Llama decoder with an RMSNorm over every query and key head before RoPE."""

from __future__ import annotations

from typing import Any

from .llama import LlamaConfig, LlamaForCausalLM
from .qwen2 import qwen_windows


class Qwen3ForCausalLM(LlamaForCausalLM):
    """Qwen3 (dense) decoder."""

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> LlamaConfig:
        return LlamaConfig.from_hf(config, qk_norm=True, layer_windows=qwen_windows(config))
