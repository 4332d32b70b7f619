"""IncrementalDetokenizer: streamed deltas add up to the full decode, on random slices of text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeserve.processing.detokenizer import IncrementalDetokenizer
from pipeserve.processing.tokenizer import Tokenizer
from tests.factories.tokenizers import CORPUS, write_bpe_tokenizer, write_sentencepiece_tokenizer

FFFD = "\ufffd"
TEXT = (
    CORPUS
    + "<|im_start|>user\nhi<|im_end|>\n<s>x</s> <tool_call>{}</tool_call>\n"
    + "नमस्ते दुनिया 👩‍💻🇫🇷 ✨ 😀😂 日本語のテキスト. Ça va ! Don't   stop ."
)


@pytest.fixture(scope="module", params=["bpe", "sentencepiece"])
def tok(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path = tmp_path_factory.mktemp(request.param)
    writer = write_bpe_tokenizer if request.param == "bpe" else write_sentencepiece_tokenizer
    return Tokenizer.from_folder(writer(path))


def _stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.add([i]) for i in ids]


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_deltas_add_up_to_the_full_decode(tok: Tokenizer, skip_special_tokens: bool) -> None:
    ids = tok.encode(TEXT)
    rng = random.Random(0)
    for _ in range(400):
        start = rng.randrange(len(ids))
        generated = ids[start : start + rng.randrange(1, 40)]
        detok = IncrementalDetokenizer(tok, skip_special_tokens=skip_special_tokens)
        deltas = _stream(detok, generated)
        full = tok.decode(generated, skip_special_tokens=skip_special_tokens)
        for k, delta in enumerate(deltas):
            # A U+FFFD is only ever passed on when the text really holds one at that point.
            if FFFD in delta:
                assert FFFD in tok.decode(
                    generated[: k + 1], skip_special_tokens=skip_special_tokens
                )
        assert not detok.text.endswith(FFFD)
        if full.endswith(FFFD):
            continue  # the slice ends inside a character; see test_flush_at_end_of_a_character
        assert "".join(deltas) == detok.text == full
        assert detok.flush() == ""


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_prompt_context_gives_the_first_word_its_space(tok: Tokenizer, skip_special_tokens):
    ids = tok.encode(TEXT)
    rng = random.Random(1)
    decode = lambda x: tok.decode(x, skip_special_tokens=skip_special_tokens)  # noqa: E731
    checked = 0
    for _ in range(400):
        start = rng.randrange(1, len(ids))
        prompt = ids[max(start - rng.randrange(1, 30), 0) : start]
        generated = ids[start : start + rng.randrange(1, 40)]
        before, full = decode(prompt), decode(prompt + generated)
        if before.endswith(FFFD) or full.endswith(FFFD) or not full.startswith(before):
            continue  # a prompt ends on a whole character
        detok = IncrementalDetokenizer(
            tok, skip_special_tokens=skip_special_tokens, prompt_ids=prompt
        )
        assert "".join(_stream(detok, generated)) == full[len(before) :]
        checked += 1
    assert checked > 200


def test_sentencepiece_leading_space(tmp_path: Path) -> None:
    tok = Tokenizer.from_folder(write_sentencepiece_tokenizer(tmp_path))
    prompt = tok.encode("The quick brown fox")
    generated = tok.encode("The quick brown fox jumps over", add_special_tokens=False)[
        len(prompt) - 1 :
    ]
    assert tok.id_to_token(generated[0]).startswith("▁")
    with_context = IncrementalDetokenizer(tok, prompt_ids=prompt)
    assert "".join(_stream(with_context, generated)) == " jumps over"
    # Without context the first word starts the text, exactly as decode() gives it.
    alone = IncrementalDetokenizer(tok)
    assert "".join(_stream(alone, generated)) == tok.decode(generated) == "jumps over"


def test_multibyte_characters_are_held_until_complete(tok: Tokenizer) -> None:
    text = " 😀👩‍💻 नमस्ते 日本"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text)  # some characters span several tokens
    detok = IncrementalDetokenizer(tok)
    deltas = _stream(detok, ids)
    assert "".join(deltas) == tok.decode(ids)
    assert all(FFFD not in d for d in deltas)
    assert "" in deltas  # held back at least once


def test_flush_at_end_of_a_character(tok: Tokenizer) -> None:
    ids = tok.encode("ab 😀", add_special_tokens=False)
    detok = IncrementalDetokenizer(tok)
    text = "".join(_stream(detok, ids[:-1]))
    assert text.startswith("ab") and FFFD not in text
    rest = detok.flush()  # what was held back, as the full decode shows it
    assert rest.endswith(FFFD) and text + rest == detok.text == tok.decode(ids[:-1])
    assert detok.flush() == ""


def test_special_tokens(tok: Tokenizer) -> None:
    eos = tok.eos_token_id
    ids = tok.encode("Hello there", add_special_tokens=False) + [eos]
    assert "".join(_stream(IncrementalDetokenizer(tok), ids)) == tok.decode(ids[:-1])
    shown = IncrementalDetokenizer(tok, skip_special_tokens=False)
    assert "".join(_stream(shown, ids)) == tok.decode(ids)
    assert shown.text.endswith(tok.eos_token)


def test_work_per_token_is_bounded(tok: Tokenizer) -> None:
    ids = tok.encode(TEXT * 3)
    lengths: list[int] = []
    decode = tok.decode

    def recording_decode(window, **kwargs):
        lengths.append(len(window))
        return decode(window, **kwargs)

    tok.decode = recording_decode  # type: ignore[method-assign]
    try:
        detok = IncrementalDetokenizer(tok, prompt_ids=ids[:500])
        _stream(detok, ids[500:])
    finally:
        del tok.decode
    # The window is the last emitted token(s) plus those not emitted yet: a handful, never the text.
    assert len(ids) > 1000 and max(lengths) <= 12
