"""GPT-2: learned absolute positions, pre-LayerNorm blocks, a fused q/k/v projection.

The checkpoints store linear weights in the transposed "Conv1D" layout (in, out); they are
transposed once while loading so every projection is a plain `nn.Linear`. Parameter names keep the
Hugging Face `transformer.` prefix; checkpoints saved without it are accepted too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..layers.activations import get_activation
from ..layers.attention import BatchMetadata, KVCache, paged_attention
from ..loading.weights import ParamTarget
from .llama import require


@dataclass(frozen=True)
class GPT2Config:
    """Shape of a GPT-2 model. Build it with `from_hf(config_dict)`."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 1024
    layer_norm_epsilon: float = 1e-5
    activation_function: str = "gelu_new"
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"n_embd ({self.hidden_size}) must be a multiple of n_head ({self.num_attention_heads})"
            )
        get_activation(self.activation_function)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_heads(self) -> int:
        return self.num_attention_heads

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> GPT2Config:
        """Build from a config.json dict (unknown keys are ignored)."""
        hidden = require(config, "n_embd")
        return cls(
            vocab_size=require(config, "vocab_size"),
            hidden_size=hidden,
            num_hidden_layers=require(config, "n_layer"),
            num_attention_heads=require(config, "n_head"),
            intermediate_size=config.get("n_inner") or 4 * hidden,
            max_position_embeddings=config.get("n_positions", 1024),
            layer_norm_epsilon=config.get("layer_norm_epsilon", 1e-5),
            activation_function=config.get("activation_function", "gelu_new"),
            scale_attn_weights=config.get("scale_attn_weights", True),
            scale_attn_by_inverse_layer_idx=config.get("scale_attn_by_inverse_layer_idx", False),
            tie_word_embeddings=config.get("tie_word_embeddings", True),
        )


class GPT2Attention(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int) -> None:
        super().__init__()
        self.layer, self.heads, self.head_dim = layer, cfg.num_attention_heads, cfg.head_dim
        self.c_attn = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.c_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        scale = cfg.head_dim**-0.5 if cfg.scale_attn_weights else 1.0
        self.scale = scale / (layer + 1) if cfg.scale_attn_by_inverse_layer_idx else scale

    def forward(self, x: torch.Tensor, meta: BatchMetadata, cache: KVCache | None) -> torch.Tensor:
        q, k, v = self.c_attn(x).view(-1, 3, self.heads, self.head_dim).unbind(1)  # (T, heads, d)
        pools = cache.flat(self.layer) if cache is not None else None
        return self.c_proj(paged_attention(q, k, v, meta, pools, scale=self.scale))


class GPT2MLP(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.c_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = get_activation(cfg.activation_function)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.attn = GPT2Attention(cfg, layer)
        self.ln_2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)
        self.mlp = GPT2MLP(cfg)

    def forward(self, x: torch.Tensor, meta: BatchMetadata, cache: KVCache | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), meta, cache)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, cfg: GPT2Config) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.wpe = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.h = nn.ModuleList(GPT2Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.ln_f = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_epsilon)

    def forward(
        self, input_ids: torch.Tensor, meta: BatchMetadata, cache: KVCache | None
    ) -> torch.Tensor:
        x = self.wte(input_ids) + self.wpe(meta.positions)  # (T, hidden)
        for block in self.h:
            x = block(x, meta, cache)
        return self.ln_f(x)


# Conv1D weights of these modules are stored (in, out) and must be transposed.
_CONV1D = re.compile(r"\.(c_attn|c_proj|c_fc)\.weight$")


class GPT2LMHeadModel(nn.Module):
    """GPT-2 with its (usually tied) language-model head.

    Args:
        config: the model's shape.
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = (
            None
            if config.tie_word_embeddings
            else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        )

    @staticmethod
    def config_from_hf(config: dict[str, Any]) -> GPT2Config:
        """Build this family's config from a config.json dict."""
        return GPT2Config.from_hf(config)

    def forward(
        self, input_ids: torch.Tensor, meta: BatchMetadata, kv_cache: KVCache | None = None
    ) -> torch.Tensor:
        """Run a flat ragged batch; see `LlamaForCausalLM.forward`."""
        return self.transformer(input_ids, meta, kv_cache)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, hidden_size) hidden states -> (N, vocab_size) logits."""
        weight = self.lm_head.weight if self.lm_head is not None else self.transformer.wte.weight
        return nn.functional.linear(hidden, weight)

    def checkpoint_targets(self, name: str, tensor: torch.Tensor) -> list[ParamTarget]:
        """Map a checkpoint tensor to a parameter, transposing Conv1D weights."""
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            return []  # causal-mask buffers of old checkpoints
        if name == "lm_head.weight":
            return [] if self.lm_head is None else [ParamTarget(name, tensor)]
        if not name.startswith("transformer."):
            name = f"transformer.{name}"
        if _CONV1D.search(name):
            tensor = tensor.t()
        return [ParamTarget(name, tensor)]
