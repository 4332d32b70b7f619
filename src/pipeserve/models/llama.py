"""Llama-family decoder (Llama 2/3, SmolLM2, TinyLlama), also the body of Mistral, Qwen2 and Qwen3.

The family members differ only in a few switches of `LlamaConfig` (biases on q/k/v, RMSNorm on q
and k, sliding-window layers); their files build this config from their own config.json fields.
Parameter names follow the Hugging Face checkpoints; q/k/v and gate/up are fused while loading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.activations import get_activation
from ..layers.attention import BatchMetadata, KVCache, paged_attention
from ..layers.linear import MergedLinear
from ..layers.norm import RMSNorm
from ..layers.rotary import RopeConfig, RotaryEmbedding, apply_rotary
from ..loading.weights import ParamTarget


def require(config: dict[str, Any], key: str) -> Any:
    """Return config[key], or raise a ConfigError naming the missing field."""
    if config.get(key) is None:
        raise ConfigError(f"config is missing the required field {key!r}")
    return config[key]


@dataclass(frozen=True)
class LlamaConfig:
    """Shape and switches of a Llama-style decoder. Build it with `from_hf(config_dict)`."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = field(default_factory=RopeConfig)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # biases on q/k/v projections (Qwen2, Llama's attention_bias)
    o_bias: bool = False  # bias on the output projection (Llama's attention_bias)
    mlp_bias: bool = False
    qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (Qwen3)
    layer_windows: tuple[int | None, ...] = ()  # per layer: sliding window, or None for full

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.layer_windows and len(self.layer_windows) != self.num_hidden_layers:
            raise ConfigError(
                f"{len(self.layer_windows)} layer types given for {self.num_hidden_layers} layers"
            )
        get_activation(self.hidden_act)

    @classmethod
    def from_hf(cls, config: dict[str, Any], **overrides: Any) -> LlamaConfig:
        """Build from a config.json dict (unknown keys are ignored).

        Args:
            config: the parsed config.json.
            overrides: fields a family file sets itself (e.g. `qk_norm=True`).
        """
        heads = require(config, "num_attention_heads")
        bias = bool(config.get("attention_bias", False))
        fields: dict[str, Any] = dict(
            vocab_size=require(config, "vocab_size"),
            hidden_size=require(config, "hidden_size"),
            intermediate_size=require(config, "intermediate_size"),
            num_hidden_layers=require(config, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or require(config, "hidden_size") // heads,
            max_position_embeddings=config.get("max_position_embeddings", 2048),
            rms_norm_eps=config.get("rms_norm_eps", 1e-6),
            rope=RopeConfig.from_hf(config),
            hidden_act=config.get("hidden_act", "silu"),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=bias,
            o_bias=bias,
            mlp_bias=bool(config.get("mlp_bias", False)),
            layer_windows=windows_from_layer_types(config),
        )
        fields.update(overrides)
        return cls(**fields)


def windows_from_layer_types(
    config: dict[str, Any], default: tuple[int | None, ...] = ()
) -> tuple[int | None, ...]:
    """Per-layer sliding windows from `layer_types` (transformers 5.x), else `default`."""
    types = config.get("layer_types")
    if not types:
        return default
    window = config.get("sliding_window")
    return tuple(window if t == "sliding_attention" else None for t in types)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        self.qkv_proj = MergedLinear(cfg.hidden_size, [q_size, kv_size, kv_size], cfg.qkv_bias)
        self.o_proj = nn.Linear(q_size, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.qk_norm = cfg.qk_norm
        self.window = cfg.layer_windows[layer] if cfg.layer_windows else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        meta: BatchMetadata,
        cache: KVCache | None,
    ) -> torch.Tensor:
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.qkv_proj(x).split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(-1, self.heads, self.head_dim)  # (T, heads, d)
        k = k.view(-1, self.kv_heads, self.head_dim)  # (T, kv_heads, d)
        v = v.view(-1, self.kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        pools = cache.flat(self.layer) if cache is not None else None
        out = paged_attention(
            q, k, v, meta, pools, scale=self.head_dim**-0.5, sliding_window=self.window
        )
        return self.o_proj(out)


class LlamaMLP(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = MergedLinear(cfg.hidden_size, [self.inter] * 2, cfg.mlp_bias)
        self.down_proj = nn.Linear(self.inter, cfg.hidden_size, bias=cfg.mlp_bias)
        self.act = get_activation(cfg.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)  # (T, inter) each
        return self.down_proj(self.act(gate) * up)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = LlamaAttention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = LlamaMLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        meta: BatchMetadata,
        cache: KVCache | None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, meta, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(cfg.head_dim, cfg.rope, cfg.max_position_embeddings)

    def forward(
        self, input_ids: torch.Tensor, meta: BatchMetadata, cache: KVCache | None
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)  # (T, hidden)
        rope = self.rotary_emb.cos_sin(meta.positions, meta.seq_ids)
        for layer in self.layers:
            x = layer(x, rope, meta, cache)
        return self.norm(x)


# Checkpoint projection name -> (fused module, shard index).
_FUSED = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}
_FUSED_NAME = re.compile(r"^(.*)\.(q_proj|k_proj|v_proj|gate_proj|up_proj)\.(weight|bias)$")


class LlamaForCausalLM(nn.Module):
    """A Llama-style decoder with its language-model head.

    Args:
        config: the model's shape and switches.
    """

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> LlamaConfig:
        """Build this family's config from a config.json dict."""
        return LlamaConfig.from_hf(config)

    def forward(
        self, input_ids: torch.Tensor, meta: BatchMetadata, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """Run a flat ragged batch.

        Args:
            input_ids: (T,) the new tokens of every sequence, concatenated.
            meta: the batch layout (lengths, positions, cache slots).
            kv_cache: the paged cache to read and extend, or None for a cache-free forward.

        Returns:
            (T, hidden_size) final hidden states; pass the rows you need to `compute_logits`.
        """
        return self.model(input_ids, meta, kv_cache)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden_size) hidden states -> (N, vocab_size) logits."""
        weight = self.lm_head.weight if self.lm_head is not None else self.model.embed_tokens.weight
        return nn.functional.linear(hidden, weight)

    def checkpoint_targets(self, name: str, tensor: torch.Tensor) -> list[ParamTarget]:
        """Map a checkpoint tensor name to this model's parameter (fusing q/k/v and gate/up)."""
        if "rotary_emb" in name or (name == "lm_head.weight" and self.lm_head is None):
            return []
        match = _FUSED_NAME.match(name)
        if match:
            prefix, proj, kind = match.groups()
            fused, shard = _FUSED[proj]
            return [ParamTarget(f"{prefix}.{fused}.{kind}", tensor, shard)]
        return [ParamTarget(name, tensor)]
