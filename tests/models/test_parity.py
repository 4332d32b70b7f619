"""Parity of every native decoder family with the reference implementation on the same weights."""

from __future__ import annotations

import inspect

import pytest
import torch

from pipeserve.generation.greedy import greedy_generate
from pipeserve.layers.attention import BatchMetadata, KVCache
from pipeserve.models.auto import load_model
from tests.factories.models import FAMILIES, VOCAB, write_tiny_model

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
DECODE_STEPS = 10
# Three prompts of different lengths: a ragged batch.
PROMPTS = [
    torch.randint(3, VOCAB, (n,), generator=torch.Generator().manual_seed(n)).tolist()
    for n in (5, 11, 3)
]


@pytest.fixture(scope="module", params=list(FAMILIES))
def pair(request, tmp_path_factory):
    folder = write_tiny_model(tmp_path_factory.mktemp(request.param), request.param)
    ours = load_model(folder, device="cpu", dtype="float32").model
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return request.param, ours, ref


def _reference_run(ref, prompt: list[int], steps: list[int]) -> list[torch.Tensor]:
    """Reference logits of one sequence: prefill, then one cached step per token in `steps`."""
    # transformers >= 5.24 calls the cache `cache`; older 5.x releases `past_key_values`.
    name = "cache" if "cache" in inspect.signature(ref.forward).parameters else "past_key_values"
    # Dynamic RoPE in the reference keeps state between calls; a one-token call resets it, so
    # each sequence is measured as if it ran alone in a fresh model.
    ref(torch.tensor([[3]]))
    out = ref(torch.tensor([prompt]), use_cache=True)
    logits = [out.logits[0]]
    for token in steps:
        out = ref(torch.tensor([[token]]), use_cache=True, **{name: getattr(out, name)})
        logits.append(out.logits[0, -1:])
    return logits


@torch.inference_mode()
def test_ragged_prefill_and_cached_decode_logits_match(pair):
    family, ours, ref = pair
    lengths = [len(p) for p in PROMPTS]
    block = max(lengths) + DECODE_STEPS
    cfg = ours.config
    cache = KVCache(
        cfg.num_hidden_layers, len(PROMPTS), block, cfg.num_key_value_heads, cfg.head_dim
    )
    tables = [[i] for i in range(len(PROMPTS))]
    steps = torch.randint(
        3, VOCAB, (DECODE_STEPS, len(PROMPTS)), generator=torch.Generator().manual_seed(7)
    )

    # Ours: one ragged prefill of all three prompts, then batched single-token steps.
    meta = BatchMetadata.build(lengths, lengths, tables, block)
    got = [ours.compute_logits(ours(torch.tensor(sum(PROMPTS, [])), meta, cache)).split(lengths)]
    for step in steps:
        lengths = [n + 1 for n in lengths]
        meta = BatchMetadata.build([1] * len(PROMPTS), lengths, tables, block)
        got.append(ours.compute_logits(ours(step, meta, cache)).split(1))

    largest = 0.0
    for i, prompt in enumerate(PROMPTS):
        expected = _reference_run(ref, prompt, steps[:, i].tolist())
        for step, (mine, theirs) in enumerate(zip([g[i] for g in got], expected, strict=True)):
            diff = (mine - theirs).abs().max().item()
            largest = max(largest, diff)
            assert diff < ATOL, f"{family}: sequence {i} step {step} logits differ by {diff}"
    print(f"\nmax |logit diff| {family}: {largest:.2e}")


@torch.inference_mode()
def test_cache_free_forward_matches_reference(pair):
    family, ours, ref = pair
    lengths = [len(p) for p in PROMPTS]
    meta = BatchMetadata.build(lengths)
    logits = ours.compute_logits(ours(torch.tensor(sum(PROMPTS, [])), meta))
    for prompt, got in zip(PROMPTS, logits.split(lengths), strict=True):
        expected = ref(torch.tensor([prompt])).logits[0]
        assert (got - expected).abs().max().item() < ATOL


@torch.inference_mode()
def test_greedy_decoding_is_token_identical(pair):
    family, ours, ref = pair
    eos = 2
    got = greedy_generate(ours, PROMPTS, max_new_tokens=20, eos_token_ids={eos})
    for prompt, tokens in zip(PROMPTS, got, strict=True):
        ref(torch.tensor([[3]]))  # reset dynamic-RoPE state, see _reference_run
        out = ref.generate(
            torch.tensor([prompt]),
            max_new_tokens=20,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
        )
        expected = out[0, len(prompt) :].tolist()
        if eos in expected:
            expected = expected[: expected.index(eos) + 1]
        assert tokens == expected, f"{family}: greedy tokens differ"


@torch.inference_mode()
def test_batched_greedy_equals_one_at_a_time(pair):
    _, ours, _ = pair
    together = greedy_generate(ours, PROMPTS, max_new_tokens=12)
    alone = [greedy_generate(ours, [p], max_new_tokens=12)[0] for p in PROMPTS]
    assert together == alone
