"""Tokenizer: parity with transformers' AutoTokenizer on the same folders, and the loading rules."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend

from pipeserve.errors import ModelNotFoundError, TokenizerError
from pipeserve.processing.tokenizer import Tokenizer
from tests.factories.tokenizers import (
    CORPUS,
    write_bpe_tokenizer,
    write_sentencepiece_tokenizer,
)

transformers = pytest.importorskip("transformers")

TEXTS = [
    "Hello world, the quick brown fox!",
    "",
    " ",
    "   leading and trailing spaces   ",
    "def f(x):\n\tif x:\n\t\treturn [x * 2 for _ in range(3)]\n    # four spaces\n",
    "Numbers 0123456789, 3.14159 and 1,000,000; 2024-01-15 at 07:45.",
    "Café naïve façade résumé Straße Ærø crème brûlée São Paulo",
    "日本語のテキストです。中文文本测试。한국어 텍스트입니다.",
    "Emoji 😀🎉👍 family 👩‍💻 flag 🇫🇷 sparkles ✨ and © ® ™ €",
    "Многие языки: Привет! Ελληνικά. שלום. مرحبا. नमस्ते दुनिया",
    "multiple\n\n\nnewlines\r\nand\ttabs\t\tand    spaces",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<s>text</s> with <unk> and <|endoftext|> inside <tool_call>{}</tool_call>",
    "I'm sure they'll say it's fine, don't you think? Yes . No , maybe !",
    "x" * 300,
    CORPUS,
]


@pytest.fixture(scope="module", params=["bpe", "bpe_bos", "sentencepiece"])
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp(request.param)
    if request.param == "sentencepiece":
        return write_sentencepiece_tokenizer(path)
    return write_bpe_tokenizer(path, add_bos=request.param == "bpe_bos")


@pytest.fixture(scope="module")
def pair(folder: Path) -> tuple[Tokenizer, object]:
    return Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_reference(pair, add_special_tokens: bool) -> None:
    tok, ref = pair
    for text in TEXTS:
        expected = ref(text, add_special_tokens=add_special_tokens)["input_ids"]
        assert tok.encode(text, add_special_tokens=add_special_tokens) == expected, text
    batch = tok.encode_batch(TEXTS, add_special_tokens=add_special_tokens)
    assert batch == ref(TEXTS, add_special_tokens=add_special_tokens)["input_ids"]


@pytest.mark.parametrize("max_length", [1, 2, 5, 17])
@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_truncation_matches_reference(pair, max_length: int, add_special_tokens: bool) -> None:
    tok, ref = pair
    for text in TEXTS:
        kwargs = dict(add_special_tokens=add_special_tokens, truncation=True, max_length=max_length)
        assert tok.encode(text, **kwargs) == ref(text, **kwargs)["input_ids"], text
    assert tok.encode_batch(TEXTS, **kwargs) == ref(TEXTS, **kwargs)["input_ids"]


def test_truncation_defaults_to_model_max_length(tmp_path: Path) -> None:
    folder = write_sentencepiece_tokenizer(tmp_path)
    _edit_config(folder, model_max_length=10)
    tok, ref = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.model_max_length == 10
    ids = tok.encode(CORPUS, truncation=True)
    assert ids == ref(CORPUS, truncation=True)["input_ids"] and len(ids) == 10
    assert len(tok.encode(CORPUS)) > 10  # no truncation unless asked


@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_decode_matches_reference(pair, skip_special_tokens: bool) -> None:
    tok, ref = pair
    for text in TEXTS:
        ids = ref(text)["input_ids"]
        for clean in (None, True, False):
            kwargs = dict(
                skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=clean
            )
            assert tok.decode(ids, **kwargs) == ref.decode(ids, **kwargs), text
    all_ids = ref(TEXTS)["input_ids"]
    expected = ref.batch_decode(all_ids, skip_special_tokens=skip_special_tokens)
    assert tok.batch_decode(all_ids, skip_special_tokens=skip_special_tokens) == expected


def test_vocabulary_and_special_ids_match_reference(pair) -> None:
    tok, ref = pair
    assert tok.vocab_size == len(ref) <= 512
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tok, name) == getattr(ref, name), name
        assert getattr(tok, f"{name}_id") == getattr(ref, f"{name}_id"), name
    assert set(ref.all_special_ids) <= tok.all_special_ids
    assert tok.eos_token_ids == {ref.eos_token_id}
    for i in range(tok.vocab_size):
        token = ref.convert_ids_to_tokens(i)
        assert tok.id_to_token(i) == token
        assert tok.token_to_id(token) == i
    assert tok.id_to_token(tok.vocab_size) is None and tok.token_to_id("no such token") is None


def test_all_special_ids_are_what_skip_special_tokens_drops(tmp_path: Path) -> None:
    tok = Tokenizer.from_folder(write_bpe_tokenizer(tmp_path))
    text = "<|im_start|>a<|im_end|><|endoftext|><tool_call>"
    kept = tok.encode(tok.decode(tok.encode(text), skip_special_tokens=True))
    assert set(tok.encode(text)) - set(kept) == tok.all_special_ids
    assert tok.token_to_id("<tool_call>") not in tok.all_special_ids  # added, but not special


def test_generation_config_eos_ids(tmp_path: Path) -> None:
    folder = write_bpe_tokenizer(tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = Tokenizer.from_folder(folder)
    assert tok.eos_token_id == 2 and tok.eos_token_ids == {0, 2}
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 1}))
    assert Tokenizer.from_folder(folder).eos_token_ids == {1, 2}


def test_config_token_forms_and_special_tokens_map(tmp_path: Path) -> None:
    folder = write_bpe_tokenizer(tmp_path)
    _edit_config(folder, eos_token={"__type": "AddedToken", "content": "<|endoftext|>"})
    assert Tokenizer.from_folder(folder).eos_token_id == 0
    # Without added_tokens_decoder in the config, special_tokens_map.json wins (as in the reference).
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_start|>"}))
    tok, ref = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == ref.eos_token == "<|im_start|>"


def test_named_token_in_vocab_becomes_special(tmp_path: Path) -> None:
    folder = write_bpe_tokenizer(tmp_path)
    _edit_config(folder, eos_token="<tool_call>", pad_token="Ġthe")
    tok, ref = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    for text in ("a <tool_call> the end", "in the house"):
        ids = ref(text)["input_ids"]
        assert tok.encode(text) == ids
        assert tok.decode(ids, skip_special_tokens=True) == ref.decode(
            ids, skip_special_tokens=True
        )


def test_named_token_missing_from_vocab_has_no_id(tmp_path: Path) -> None:
    folder = write_sentencepiece_tokenizer(tmp_path)
    _edit_config(folder, pad_token="<pad>")
    tok = Tokenizer.from_folder(folder)
    assert tok.pad_token == "<pad>" and tok.pad_token_id is None
    assert tok.vocab_size == 512  # not added: a new id would overflow the model's embeddings


def test_config_add_bos_token_is_ignored_like_the_reference(tmp_path: Path) -> None:
    folder = write_bpe_tokenizer(tmp_path)
    _edit_config(folder, add_bos_token=True, add_eos_token=True)
    tok, ref = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.encode("hello there") == ref("hello there")["input_ids"]


@pytest.mark.parametrize("add_bos, add_eos", [(True, False), (False, True), (True, True)])
def test_add_bos_eos_flags_replace_the_post_processor(
    tmp_path: Path, add_bos: bool, add_eos: bool
) -> None:
    path = write_bpe_tokenizer(tmp_path) / "tokenizer.json"
    tok = Tokenizer(
        Backend.from_file(str(path)),
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        add_bos_token=add_bos,
        add_eos_token=add_eos,
    )
    plain = tok.encode("hello there", add_special_tokens=False)
    expected = [0] * add_bos + plain + [2] * add_eos
    assert tok.encode("hello there") == expected
    assert (
        tok.encode("hello there", max_length=add_bos + add_eos + 1)
        == expected[:add_bos] + [plain[0]] + expected[len(expected) - add_eos :]
    )
    with pytest.raises(TokenizerError, match="no bos token"):
        Tokenizer(Backend.from_file(str(path)), add_bos_token=True)


def test_chat_template_sources(tmp_path: Path) -> None:
    folder = write_bpe_tokenizer(tmp_path, chat_template=None)
    assert Tokenizer.from_folder(folder).chat_template is None
    _edit_config(
        folder,
        chat_template=[{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
    )
    assert Tokenizer.from_folder(folder).chat_template == "D"
    (folder / "chat_template.jinja").write_text("J")
    assert Tokenizer.from_folder(folder).chat_template == "J"
    _edit_config(folder, chat_template=[{"name": "tool_use", "template": "T"}])
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(TokenizerError, match="none named 'default'"):
        Tokenizer.from_folder(folder)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        Tokenizer.from_folder(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(TokenizerError, match=r"no tokenizer\.json \(it holds: config\.json\)"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="corrupt"):
        Tokenizer.from_folder(tmp_path)
    folder = write_bpe_tokenizer(tmp_path / "bad_config")
    (folder / "tokenizer_config.json").write_text("[1, 2")
    with pytest.raises(TokenizerError, match="tokenizer_config.json"):
        Tokenizer.from_folder(folder)


def test_bad_arguments_raise_tokenizer_error(tmp_path: Path) -> None:
    tok = Tokenizer.from_folder(write_bpe_tokenizer(tmp_path))
    with pytest.raises(TokenizerError, match="encode expects a str, got int 123"):
        tok.encode(123)  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="encode_batch expects a list of str"):
        tok.encode_batch("a single string")
    with pytest.raises(TokenizerError, match="int ids"):
        tok.decode(["a"])  # type: ignore[list-item]
    with pytest.raises(TokenizerError, match="max_length"):
        tok.encode("x", max_length=-1)


def test_minilm_wordpiece_matches_reference() -> None:
    from tests.assets import minilm_folder

    folder = minilm_folder()
    start = time.perf_counter()
    tok = Tokenizer.from_folder(folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    assert tok.vocab_size == len(ref) and tok.model_max_length == 512
    assert tok.pad_token_id == 0 and tok.unk_token_id == 100
    texts = [*TEXTS, "Hello World, I'm here! Don't PANIC .", "[CLS] inside [SEP] [MASK]"]
    for text in texts:
        for special in (True, False):
            expected = ref(text, add_special_tokens=special)["input_ids"]
            ids = tok.encode(text, add_special_tokens=special)
            assert ids == expected, text
        assert tok.encode(text)[0] == 101 and tok.encode(text)[-1] == 102  # [CLS] ... [SEP]
        cut = dict(truncation=True, max_length=8)
        assert tok.encode(text, **cut) == ref(text, **cut)["input_ids"]
        long = dict(truncation=True)  # model_max_length = 512
        assert tok.encode(text, **long) == ref(text, **long)["input_ids"]
        ids = ref(text)["input_ids"]
        for skip in (True, False):
            for clean in (True, False, None):
                kwargs = dict(skip_special_tokens=skip, clean_up_tokenization_spaces=clean)
                assert tok.decode(ids, **kwargs) == ref.decode(ids, **kwargs), text
    assert time.perf_counter() - start < 5  # not slow: no @pytest.mark.slow needed


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))
