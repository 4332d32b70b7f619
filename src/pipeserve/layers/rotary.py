"""Rotary position embeddings (RoPE) with the scaling types Llama-family checkpoints use."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclass(frozen=True)
class RopeConfig:
    """How rotary frequencies are computed.

    Attributes:
        theta: the base wavelength (`rope_theta`).
        rope_type: one of ROPE_TYPES.
        params: the remaining scaling fields of `rope_scaling` / `rope_parameters` (`factor`, ...).
    """

    theta: float = 10000.0
    rope_type: str = "default"
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ConfigError(
                f"unsupported rope scaling type {self.rope_type!r}; supported: {', '.join(ROPE_TYPES)}"
            )
        if self.rope_type != "default" and "factor" not in self.params:
            raise ConfigError(f"rope scaling type {self.rope_type!r} needs a 'factor' field")

    @classmethod
    def from_hf(cls, config: dict[str, Any], default_theta: float = 10000.0) -> RopeConfig:
        """Read RoPE settings from a config.json dict.

        Accepts both spellings: `rope_theta` + `rope_scaling` (transformers 4.x checkpoints) and the
        single `rope_parameters` dict (transformers 5.x).
        """
        scaling = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        theta = scaling.pop("rope_theta", None) or config.get("rope_theta") or default_theta
        rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
        return cls(theta=float(theta), rope_type=rope_type, params=scaling)


def _inverse_frequencies(dim: int, theta: float) -> torch.Tensor:
    # Same expression order as the reference, so the frequencies agree to the bit.
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    return 1.0 / (theta**exponents)


def _llama3_frequencies(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    # NOTE: Llama 3.1 keeps high frequencies, divides low frequencies by `factor`, and blends
    # linearly between the two bands (wavelengths between old_len/high and old_len/low).
    factor = params["factor"]
    low, high = params.get("low_freq_factor", 1.0), params.get("high_freq_factor", 4.0)
    old_len = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Computes cos/sin for given positions and rotates query and key heads.

    Args:
        head_dim: size of one attention head (all of it is rotated).
        rope: the RoPE settings.
        max_position_embeddings: the trained context length (used by `dynamic` scaling).
    """

    def __init__(self, head_dim: int, rope: RopeConfig, max_position_embeddings: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rope = rope
        self.max_position_embeddings = max_position_embeddings
        inv_freq = _inverse_frequencies(head_dim, rope.theta)
        if rope.rope_type == "linear":
            inv_freq = inv_freq / rope.params["factor"]
        elif rope.rope_type == "llama3":
            inv_freq = _llama3_frequencies(inv_freq, rope.params)
        # Non-persistent: computed, never loaded; created on CPU even under a meta-device context.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _dynamic_inv_freq(self, seq_len: int) -> torch.Tensor:
        # NTK-aware scaling: the base grows once a sequence runs past the trained length.
        factor, dim = self.rope.params["factor"], self.head_dim
        ratio = factor * seq_len / self.max_position_embeddings - (factor - 1)
        base = self.rope.theta * ratio ** (dim / (dim - 2))
        return _inverse_frequencies(dim, base).to(self.inv_freq.device)

    def _frequencies(self, positions: torch.Tensor, seq_ids: torch.Tensor | None) -> torch.Tensor:
        pos = positions.float()[:, None]  # (tokens, 1)
        freqs = pos * self.inv_freq[None, :]  # (tokens, head_dim / 2)
        if self.rope.rope_type != "dynamic" or seq_ids is None:
            return freqs
        # Each sequence is scaled by its own length, as if it ran alone.
        seq_len = torch.zeros(
            int(seq_ids.max()) + 1, dtype=positions.dtype, device=positions.device
        )
        seq_len = seq_len.scatter_reduce(0, seq_ids, positions + 1, reduce="amax").tolist()
        for seq, length in enumerate(seq_len):
            if length > self.max_position_embeddings:
                rows = seq_ids == seq
                freqs[rows] = pos[rows] * self._dynamic_inv_freq(length)[None, :]
        return freqs

    def cos_sin(
        self, positions: torch.Tensor, seq_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (cos, sin), each (tokens, head_dim), in float32.

        Args:
            positions: (tokens,) position of every token.
            seq_ids: (tokens,) which sequence each token belongs to; only `dynamic` scaling uses it.
        """
        freqs = self._frequencies(positions, seq_ids)
        emb = torch.cat((freqs, freqs), dim=-1)  # (tokens, head_dim)
        return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (tokens, heads, head_dim) by the angles in cos/sin (tokens, head_dim)."""
    cos = cos.to(x.dtype)[:, None, :]  # (tokens, 1, head_dim)
    sin = sin.to(x.dtype)[:, None, :]
    return x * cos + _rotate_half(x) * sin
