"""The real SmolLM2-135M-Instruct GGUF: greedy decoding token-identical to the reference."""

from __future__ import annotations

import pytest
import torch

from pipeserve.generation.greedy import greedy_generate
from pipeserve.models.auto import load_model
from pipeserve.processing.tokenizer import Tokenizer
from tests.assets import smollm2_gguf

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Explain recursion in one paragraph."},
    ],
]


@pytest.fixture(scope="module")
def models():
    path = smollm2_gguf()
    ours = load_model(path, device="cpu", dtype="float32")
    tokenizer = Tokenizer.from_gguf(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    ref_tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return ours, tokenizer, ref, ref_tok


def _prompts(tokenizer, ref_tok):
    ours = [tokenizer.encode("Write a short poem about coding:")]
    theirs = [ref_tok("Write a short poem about coding:").input_ids]
    for chat in CHATS:
        ours.append(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True))
        rendered = ref_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        theirs.append(ref_tok(rendered, add_special_tokens=False).input_ids)
    return ours, theirs


def test_config_and_prompt_tokens_match(models):
    ours, tokenizer, ref, ref_tok = models
    assert ours.architecture == "LlamaForCausalLM"
    assert ours.model.config.num_hidden_layers == 30 and ours.model.config.tie_word_embeddings
    mine, theirs = _prompts(tokenizer, ref_tok)
    assert mine == theirs


@torch.inference_mode()
def test_greedy_64_tokens_identical_to_reference(models):
    ours, tokenizer, ref, ref_tok = models
    prompts, _ = _prompts(tokenizer, ref_tok)
    eos = sorted(tokenizer.eos_token_ids)
    got = greedy_generate(ours.model, prompts, max_new_tokens=64, eos_token_ids=eos)
    for prompt, tokens in zip(prompts, got, strict=True):
        out = ref.generate(
            torch.tensor([prompt]),
            max_new_tokens=64,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=ref_tok.pad_token_id,
        )
        expected = out[0, len(prompt) :].tolist()
        assert tokens == expected, (
            tokenizer.decode(tokens),
            ref_tok.decode(expected),
        )
    print("\n" + tokenizer.decode(got[0], skip_special_tokens=True))


@torch.inference_mode()
def test_prefill_logits_close_to_reference(models):
    ours, tokenizer, ref, ref_tok = models
    from pipeserve.layers.attention import BatchMetadata

    prompts, _ = _prompts(tokenizer, ref_tok)
    lengths = [len(p) for p in prompts]
    logits = ours.model.compute_logits(
        ours.model(torch.tensor(sum(prompts, [])), BatchMetadata.build(lengths))
    )
    for prompt, mine in zip(prompts, logits.split(lengths), strict=True):
        diff = (mine - ref(torch.tensor([prompt])).logits[0]).abs().max().item()
        print(f"max |logit diff| SmolLM2 GGUF: {diff:.2e}")
        assert diff < 1e-3
