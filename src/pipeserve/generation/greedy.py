"""A minimal greedy decoding loop over a contiguous KV cache.

It runs several prompts together as one flat ragged batch: a prefill of every prompt, then one
token per live sequence per step. It is the reference loop for parity tests and the smoke run;
the continuous-batching engine supersedes it for serving.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch
from torch import nn

from ..errors import InvalidInputError
from ..layers.attention import BatchMetadata, KVCache


@torch.inference_mode()
def greedy_generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    eos_token_ids: Collection[int] = (),
) -> list[list[int]]:
    """Greedily continue every prompt.

    Args:
        model: a native decoder (`forward(input_ids, meta, kv_cache)`, `compute_logits`).
        prompts: token ids of each prompt (each non-empty).
        max_new_tokens: new tokens per prompt at most.
        eos_token_ids: a sequence stops after producing one of these (it is kept in the output).

    Returns:
        The new token ids of each prompt, in input order.

    Raises:
        InvalidInputError: no prompts, an empty prompt, or `max_new_tokens` < 1.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise InvalidInputError(
            "every prompt needs at least one token; an empty prompt has nothing to continue "
            "(pass some text, or a chat whose template adds tokens)"
        )
    if max_new_tokens < 1:
        raise InvalidInputError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    cfg = model.config
    param = next(model.parameters())
    max_len = max(len(p) for p in prompts) + max_new_tokens
    cache = KVCache(
        cfg.num_hidden_layers,
        len(prompts),
        max_len,
        cfg.num_key_value_heads,
        cfg.head_dim,
        dtype=param.dtype,
        device=param.device,
    )
    outputs: list[list[int]] = [[] for _ in prompts]
    lengths = [len(p) for p in prompts]
    live = list(range(len(prompts)))
    input_ids = [t for p in prompts for t in p]
    query_lens = lengths[:]
    while live:
        meta = BatchMetadata.build(
            query_lens,
            [lengths[i] for i in live],
            [[i] for i in live],
            max_len,
            device=param.device,
        )
        ids = torch.tensor(input_ids, device=param.device)
        hidden = model(ids, meta, cache)
        next_tokens = model.compute_logits(hidden[meta.last_token_index]).argmax(-1).tolist()
        still_live = []
        for seq, token in zip(live, next_tokens, strict=True):
            outputs[seq].append(token)
            if token not in eos_token_ids and len(outputs[seq]) < max_new_tokens:
                still_live.append(seq)
        live = still_live
        input_ids = [outputs[seq][-1] for seq in live]
        for seq in live:
            lengths[seq] += 1
        query_lens = [1] * len(live)
    return outputs
