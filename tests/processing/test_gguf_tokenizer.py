"""Tokenizers rebuilt from GGUF metadata, against transformers' GGUF tokenizer (and SentencePiece)."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as Q

from pipeserve.errors import TokenizerError
from pipeserve.loading.gguf import GGUFCheckpoint
from pipeserve.processing.gguf_tokenizer import tokenizer_from_gguf
from tests.factories.gguf import (
    CHAT_TEMPLATE,
    GGUFVocab,
    random_state_dict,
    tiny_bpe_vocab,
    tiny_llama_config,
    tiny_spm_vocab,
    write_tiny_llama_gguf,
)

TEXTS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  ",
    "def f(x):\n\tif x:\n        return [1, 2]\n",
    "Numbers 12345 + 6.78 = 9012, and 2024-01-31.",
    "Café naïve résumé Straße Ærøskøbing",
    "東京は日本の首都です。你好，世界！",
    "emoji 🙂🚀👍🏽 done",
    "a\n\n\nb   c    d\r\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "x<|endoftext|>y",
    "",
    " ",
    "\u00a0non-breaking\u200bzero-width",
]


def write_gguf(folder: Path, vocab: GGUFVocab) -> Path:
    config = tiny_llama_config(
        len(vocab.tokens), hidden_size=16, intermediate_size=16, num_hidden_layers=1
    )
    return write_tiny_llama_gguf(
        folder / "tiny.gguf", random_state_dict(config), config, Q.F16, vocab
    )


def reference(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def assert_same_tokens(parts, ref, texts) -> None:
    for text in texts:
        ids = parts.backend.encode(text, add_special_tokens=False).ids
        assert ids == ref.encode(text, add_special_tokens=False), text
        # With add_special_tokens=True: BOS/EOS as the file configures them.
        assert parts.backend.encode(text).ids == ref.encode(text), text
        assert parts.backend.decode(ids, skip_special_tokens=False) == ref.decode(ids), text
        assert parts.backend.decode(ids) == ref.decode(ids, skip_special_tokens=True), text


# --- the real SmolLM2 file (byte-level BPE, pre-tokenizer "smollm") -------------------------------


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from tests.assets import smollm2_gguf

    return smollm2_gguf()


@pytest.mark.slow
def test_real_file_matches_transformers(smollm2):
    parts = tokenizer_from_gguf(GGUFCheckpoint(smollm2))
    ref = reference(smollm2)
    assert_same_tokens(parts, ref, TEXTS)
    assert parts.backend.get_vocab_size() == len(ref)
    assert (parts.bos_token, parts.eos_token, parts.unk_token, parts.pad_token) == (
        ref.bos_token,
        ref.eos_token,
        ref.unk_token,
        ref.pad_token,
    )
    assert parts.bos_token == "<|im_start|>" and parts.pad_token == "<|im_end|>"
    assert (parts.add_bos_token, parts.add_eos_token) == (False, False)
    assert parts.chat_template == ref.chat_template and "<|im_start|>" in parts.chat_template


@pytest.mark.slow
def test_real_file_splits_every_number_character_like_llama_cpp(smollm2):
    # NOTE: a deliberate difference from transformers, which splits "smollm" text the GPT-2 way.
    # SmolLM's own tokenizer (and llama.cpp's "smollm" pre-tokenizer) isolate every numeric
    # character first; for ASCII digits both agree (the vocabulary has no multi-digit or
    # space+digit tokens), but a numeric letter like "Ⅻ" after a space comes apart from the space.
    parts = tokenizer_from_gguf(GGUFCheckpoint(smollm2))
    tokens = parts.backend.encode(" Ⅻ", add_special_tokens=False).tokens
    assert tokens[0] == "Ġ" and "".join(tokens) == "Ġâħ«"


# --- tiny files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pre", ["default", "qwen2", "llama-bpe"])
def test_byte_level_bpe_matches_transformers(tmp_path, pre):
    path = write_gguf(tmp_path, tiny_bpe_vocab(pre=pre))
    assert_same_tokens(tokenizer_from_gguf(GGUFCheckpoint(path)), reference(path), TEXTS)


@pytest.fixture(scope="module")
def spm_vocab():
    return tiny_spm_vocab()


def test_sentencepiece_matches_transformers(tmp_path, spm_vocab):
    vocab, _ = spm_vocab
    path = write_gguf(tmp_path, vocab)
    parts = tokenizer_from_gguf(GGUFCheckpoint(path))
    ref = reference(path)
    assert_same_tokens(parts, ref, [*TEXTS, "<s> </s> <unk> <pad>", "\x00\x01 bytes \x7f"])
    assert (parts.bos_token, parts.eos_token, parts.unk_token, parts.pad_token) == (
        "<s>",
        "</s>",
        "<unk>",
        "<pad>",
    )
    assert (parts.add_bos_token, parts.add_eos_token) == (True, False)
    assert parts.backend.encode("Hello").ids[0] == 1  # BOS added when add_special_tokens=True
    assert parts.chat_template == CHAT_TEMPLATE


def test_sentencepiece_matches_sentencepiece(tmp_path, spm_vocab):
    # The model the vocabulary came from. NOTE: text starting with whitespace is left out: there
    # SentencePiece always adds its "▁" prefix, while transformers (and so pipeserve) does not add
    # one to text that already starts with a space. Special tokens are plain text to SentencePiece.
    import sentencepiece as spm

    vocab, model = spm_vocab
    sp = spm.SentencePieceProcessor(model_proto=model)
    parts = tokenizer_from_gguf(GGUFCheckpoint(write_gguf(tmp_path, vocab)))
    texts = [t for t in TEXTS if t and not t[0].isspace() and "<|" not in t]
    for text in texts:
        ids = parts.backend.encode(text, add_special_tokens=False).ids
        assert ids == sp.encode(text), text
        assert parts.backend.decode(ids) == sp.decode(ids), text


def test_sentencepiece_merges_from_scores_match_stored_merges(tmp_path, spm_vocab):
    # A file may store the merges; rebuilt from scores they must tokenise identically.
    vocab, _ = spm_vocab
    from_scores = tokenizer_from_gguf(GGUFCheckpoint(write_gguf(tmp_path, vocab)))
    import json

    merges = [" ".join(m) for m in json.loads(from_scores.backend.to_str())["model"]["merges"]]
    (tmp_path / "m").mkdir()
    with_merges = GGUFVocab(**{**vocab.__dict__, "merges": merges})
    stored = tokenizer_from_gguf(GGUFCheckpoint(write_gguf(tmp_path / "m", with_merges)))
    for text in TEXTS:
        assert stored.backend.encode(text).ids == from_scores.backend.encode(text).ids


def test_add_space_prefix_false_is_honoured(tmp_path, spm_vocab):
    vocab, _ = spm_vocab
    flags = {**vocab.flags, "add_space_prefix": False}
    path = write_gguf(tmp_path, GGUFVocab(**{**vocab.__dict__, "flags": flags}))
    parts = tokenizer_from_gguf(GGUFCheckpoint(path))
    tokens = parts.backend.encode("the shells", add_special_tokens=False).tokens
    assert (
        not tokens[0].startswith("▁")
        and parts.backend.decode(parts.backend.encode("the").ids) == "the"
    )


def test_token_types_length_mismatch(tmp_path):
    vocab = tiny_bpe_vocab()
    path = write_gguf(
        tmp_path, GGUFVocab(**{**vocab.__dict__, "token_types": vocab.token_types[:-1]})
    )
    with pytest.raises(TokenizerError, match="token_type"):
        tokenizer_from_gguf(GGUFCheckpoint(path))


def test_missing_tokenizer_metadata(tmp_path):
    config = tiny_llama_config(8, hidden_size=16, intermediate_size=16, num_hidden_layers=1)
    path = write_tiny_llama_gguf(
        tmp_path / "bare.gguf", random_state_dict(config), config, with_tokenizer=False
    )
    with pytest.raises(TokenizerError, match=str(path)):
        tokenizer_from_gguf(GGUFCheckpoint(path))


def test_unsupported_tokenizer_kind(tmp_path):
    vocab = GGUFVocab(model="rwkv", tokens=["a", "b"], token_types=[1, 1])
    path = write_gguf(tmp_path, vocab)
    with pytest.raises(TokenizerError) as err:
        tokenizer_from_gguf(GGUFCheckpoint(path))
    assert str(path) in str(err.value) and "rwkv" in str(err.value) and "gpt2" in str(err.value)


def test_special_token_id_out_of_range(tmp_path):
    vocab = tiny_bpe_vocab()
    path = write_gguf(tmp_path, GGUFVocab(**{**vocab.__dict__, "ids": {"eos": 10_000}}))
    with pytest.raises(TokenizerError, match="eos_token_id"):
        tokenizer_from_gguf(GGUFCheckpoint(path))


# --- through the Tokenizer wrapper -----------------------------------------------------------------


def assert_wrapper_matches(path: Path) -> None:
    from pipeserve.processing.tokenizer import Tokenizer

    ours, ref = Tokenizer.from_gguf(path), reference(path)
    for text in TEXTS:
        ids = ours.encode(text)  # add_special_tokens=True
        assert ids == ref.encode(text, add_special_tokens=True), text
        assert ours.decode(ids) == ref.decode(ids), text
        skipped = ref.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=True) == skipped, text


def test_wrapper_from_gguf_matches_transformers_sentencepiece(tmp_path, spm_vocab):
    assert_wrapper_matches(write_gguf(tmp_path, spm_vocab[0]))


@pytest.mark.slow
def test_wrapper_from_gguf_matches_transformers_real_file(smollm2):
    assert_wrapper_matches(smollm2)
