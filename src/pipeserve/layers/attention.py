"""Attention over a flat ragged batch, with an optional paged KV cache.

NOTE: a batch is never a padded rectangle on the model's side. All new tokens of all sequences are
concatenated into one row of `T` tokens; `BatchMetadata` says how many belong to each sequence and
how long each sequence's context is once they are added. The KV cache is a pool of fixed-size
blocks per layer; a sequence's block table lists its blocks in order, so token `p` of a sequence
lives in slot `block_table[p // block_size] * block_size + p % block_size` of the flattened pool.
A "contiguous" cache is the special case of one block per sequence, as long as the context.

Attention itself gathers each sequence's queries and keys into a small padded view, builds a
causal (optionally sliding-window) mask from token positions, and calls PyTorch's SDPA. Prefill,
chunked prefill, decode and prefix-cache hits are all the same computation: queries are the new
tokens, keys are every cached token up to the query's position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


class KVCache:
    """A paged key/value pool: per layer, (num_blocks, block_size, kv_heads, head_dim) tensors.

    Args:
        num_layers: decoder layers of the model.
        num_blocks: blocks in the pool.
        block_size: tokens per block.
        num_kv_heads: key/value heads per layer.
        head_dim: size of one head.
        dtype: storage dtype (the model's compute dtype).
        device: where the pool lives.
    """

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (num_blocks, block_size, num_kv_heads, head_dim)
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    def flat(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer viewed as (slots, kv_heads, head_dim)."""
        k, v = self.keys[layer], self.values[layer]
        return k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])


@dataclass
class BatchMetadata:
    """Where every token of a flat ragged batch belongs. Build it with `BatchMetadata.build`.

    Tensors are on the model's device; `query_lens` / `context_lens` stay Python lists.
    """

    query_lens: list[int]  # new tokens of each sequence in this step
    context_lens: list[int]  # tokens of each sequence once this step's are added (cached + new)
    seq_ids: torch.Tensor  # (T,) sequence index of every token
    query_index: torch.Tensor  # (B, Qmax) flat token index of each padded query slot (0 = pad)
    query_valid: torch.Tensor  # (B, Qmax) True where the slot holds a real token
    query_positions: torch.Tensor  # (B, Qmax) position of each query (0 for pads)
    positions: torch.Tensor  # (T,) position of every token
    slot_mapping: torch.Tensor | None  # (T,) cache slot each new token's k/v is written to
    key_slots: torch.Tensor | None  # (B, Lmax) cache slot of each key position (0 past the end)
    _masks: dict[int | None, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def last_token_index(self) -> torch.Tensor:
        """(B,) flat index of each sequence's last token in this step (where its next token is read)."""
        ends = torch.tensor(self.query_lens, device=self.seq_ids.device).cumsum(0)
        return ends - 1

    @classmethod
    def build(
        cls,
        query_lens: Sequence[int],
        context_lens: Sequence[int] | None = None,
        block_tables: Sequence[Sequence[int]] | None = None,
        block_size: int | None = None,
        device: torch.device | str = "cpu",
    ) -> BatchMetadata:
        """Describe a batch.

        Args:
            query_lens: new tokens per sequence, in the order they are concatenated.
            context_lens: total tokens per sequence after this step; defaults to `query_lens`
                (nothing cached before).
            block_tables: per sequence, its cache blocks in order; None runs without a cache.
            block_size: tokens per cache block (required with `block_tables`).
            device: where the index tensors are built.

        Returns:
            The metadata, with every index tensor precomputed once for all layers.
        """
        query_lens = list(query_lens)
        context_lens = list(context_lens) if context_lens is not None else list(query_lens)
        if any(q < 1 or q > c for q, c in zip(query_lens, context_lens, strict=True)):
            raise ValueError(f"bad batch: query_lens={query_lens} context_lens={context_lens}")
        q_max = max(query_lens)
        starts = torch.tensor([0, *query_lens[:-1]]).cumsum(0)  # (B,)
        q_len = torch.tensor(query_lens)
        offsets = torch.arange(q_max)[None, :]  # (1, Qmax)
        valid = offsets < q_len[:, None]  # (B, Qmax)
        index = torch.where(valid, starts[:, None] + offsets, 0)
        first_pos = torch.tensor(context_lens) - q_len  # (B,) position of each first new token
        positions = torch.where(valid, first_pos[:, None] + offsets, 0)
        seq_ids = torch.repeat_interleave(torch.arange(len(query_lens)), q_len)

        slot_mapping = key_slots = None
        if block_tables is not None:
            if block_size is None:
                raise ValueError("block_size is required with block_tables")
            width = max(len(t) for t in block_tables)
            tables = torch.tensor([list(t) + [0] * (width - len(t)) for t in block_tables])
            key_pos = torch.arange(max(context_lens))[None, :]  # (1, Lmax)
            key_slots = tables.gather(1, key_pos.expand(len(tables), -1) // block_size)
            key_slots = key_slots * block_size + key_pos % block_size  # (B, Lmax)
            key_slots = torch.where(key_pos < torch.tensor(context_lens)[:, None], key_slots, 0)
            slot_mapping = key_slots.gather(1, positions)[valid]  # (T,)
            slot_mapping, key_slots = slot_mapping.to(device), key_slots.to(device)
        return cls(
            query_lens=query_lens,
            context_lens=context_lens,
            seq_ids=seq_ids.to(device),
            query_index=index.to(device),
            query_valid=valid.to(device),
            query_positions=positions.to(device),
            positions=positions[valid].to(device),
            slot_mapping=slot_mapping,
            key_slots=key_slots,
        )

    def mask(self, sliding_window: int | None = None) -> torch.Tensor:
        """(B, 1, Qmax, Lmax) boolean mask: True where a query may attend to a key.

        Keys are the cache positions (with a cache) or the new tokens themselves (without).
        """
        if sliding_window not in self._masks:
            q_pos = self.query_positions[:, None, :, None]  # (B, 1, Qmax, 1)
            if self.key_slots is not None:
                width = self.key_slots.shape[1]
                k_pos = torch.arange(width, device=q_pos.device)[None, None, None, :]
            else:
                k_pos = self.query_positions[:, None, None, :]  # (B, 1, 1, Qmax)
            # Causality also hides keys past a sequence's end (they lie beyond every query).
            allowed = k_pos <= q_pos
            if self.key_slots is None:
                allowed = allowed & self.query_valid[:, None, None, :]
            if sliding_window is not None:
                allowed = allowed & (q_pos - k_pos < sliding_window)
            self._masks[sliding_window] = allowed
        return self._masks[sliding_window]


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: BatchMetadata,
    cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of a flat ragged batch.

    Args:
        q: (T, heads, head_dim) queries of the new tokens.
        k: (T, kv_heads, head_dim) keys of the new tokens.
        v: (T, kv_heads, head_dim) values of the new tokens.
        meta: the batch layout.
        cache: this layer's flat (slots, kv_heads, head_dim) key and value pools, or None. The new
            keys and values are written into it before attending.
        scale: softmax scale (usually head_dim ** -0.5).
        sliding_window: attend only to the last `sliding_window` positions, if given.

    Returns:
        (T, heads * head_dim) attention output.
    """
    if cache is not None:
        k_pool, v_pool = cache
        k_pool.index_copy_(0, meta.slot_mapping, k)
        v_pool.index_copy_(0, meta.slot_mapping, v)
        keys, values = k_pool[meta.key_slots], v_pool[meta.key_slots]  # (B, Lmax, kv_heads, d)
    else:
        keys, values = k[meta.query_index], v[meta.query_index]  # (B, Qmax, kv_heads, d)
    queries = q[meta.query_index]  # (B, Qmax, heads, d)
    out = F.scaled_dot_product_attention(
        queries.transpose(1, 2),  # (B, heads, Qmax, d)
        keys.transpose(1, 2),  # (B, kv_heads, L, d)
        values.transpose(1, 2),
        attn_mask=meta.mask(sliding_window),
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    out = out.transpose(1, 2)[meta.query_valid]  # (T, heads, d)
    return out.reshape(out.shape[0], -1)
