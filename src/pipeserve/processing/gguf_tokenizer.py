"""Building a `tokenizers.Tokenizer` from the tokenizer a GGUF file stores as metadata.

A GGUF file carries no tokenizer.json: it stores the vocabulary (`tokenizer.ggml.tokens`), each
token's type (normal, control, byte, ...), merges or scores, the special token ids and the chat
template. `tokenizer.ggml.model` names the algorithm, and this module rebuilds the matching
`tokenizers` pipeline for the two that cover nearly every decoder model:

- "gpt2": byte-level BPE (GPT-2, Llama 3, Qwen, SmolLM). How text is split before BPE depends on
  the model and is named by `tokenizer.ggml.pre`; `_PRE_TOKENIZERS` maps those names.
- "llama": SentencePiece BPE with byte fallback (Llama 2, Mistral). Files usually omit the merges,
  which are then rebuilt from the token scores.

The result matches `transformers.AutoTokenizer.from_pretrained(..., gguf_file=...)`, except where
transformers departs from the model's own tokenizer and llama.cpp: the "smollm"/"starcoder"
pre-tokenizers isolate every numeric character first, Llama 3 vocabularies use `ignore_merges`, and
`tokenizer.ggml.add_space_prefix = false` is honoured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from gguf import TokenType
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ..errors import TokenizerError
from ..loading.gguf import GGUFCheckpoint

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFTokenizerParts:
    """A tokenizer rebuilt from GGUF metadata, with the settings a tokenizer_config.json would hold."""

    backend: Tokenizer  # its post-processor adds BOS/EOS as `add_bos_token`/`add_eos_token` say
    bos_token: str | None
    eos_token: str | None
    unk_token: str | None
    pad_token: str | None
    add_bos_token: bool
    add_eos_token: bool
    chat_template: str | None


@dataclass(frozen=True)
class _Vocab:
    """The `tokenizer.ggml.*` metadata a builder needs."""

    tokens: list[str]
    types: list[int]
    scores: list[float] | None
    merges: list[str] | None
    pre: str | None
    unk_token: str | None
    add_space_prefix: bool
    source: str  # the file, for error messages


def tokenizer_from_gguf(checkpoint: GGUFCheckpoint) -> GGUFTokenizerParts:
    """Rebuild the tokenizer stored in a GGUF file's metadata.

    Args:
        checkpoint: the opened GGUF file.

    Returns:
        The backend tokenizer and its special tokens, BOS/EOS flags and chat template.

    Raises:
        TokenizerError: the file has no tokenizer metadata, or one of an unsupported kind.
    """
    meta = checkpoint.metadata
    kind, tokens = meta("tokenizer.ggml.model"), meta("tokenizer.ggml.tokens")
    if kind is None or not tokens:
        raise TokenizerError(
            f"{checkpoint.path} holds no tokenizer (no `tokenizer.ggml.model`/`tokens` metadata). "
            "Load the tokenizer from the original model's folder (tokenizer.json) instead."
        )
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise TokenizerError(
            f"{checkpoint.path} stores a {kind!r} tokenizer; pipeserve rebuilds GGUF tokenizers of "
            f"the kinds {sorted(_BUILDERS)}. Load the tokenizer from the original model's folder instead."
        )
    special = {
        name: _token(checkpoint, tokens, name) for name in ("bos", "eos", "unknown", "padding")
    }
    vocab = _Vocab(
        tokens=tokens,
        types=meta("tokenizer.ggml.token_type") or [TokenType.NORMAL] * len(tokens),
        scores=meta("tokenizer.ggml.scores"),
        merges=meta("tokenizer.ggml.merges"),
        pre=meta("tokenizer.ggml.pre"),
        unk_token=special["unknown"],
        add_space_prefix=meta("tokenizer.ggml.add_space_prefix", True),
        source=str(checkpoint.path),
    )
    for name, values in (("token_type", vocab.types), ("scores", vocab.scores)):
        if values is not None and len(values) != len(tokens):
            raise TokenizerError(
                f"{checkpoint.path}: tokenizer.ggml.{name} has {len(values)} entries for "
                f"{len(tokens)} tokens; the file is corrupt. Download it again."
            )
    backend = builder(vocab)
    _add_special_tokens(backend, vocab, [t for t in special.values() if t is not None])
    # llama.cpp adds BOS to SentencePiece vocabularies unless the file says otherwise.
    add_bos = bool(meta("tokenizer.ggml.add_bos_token", kind == "llama")) and bool(special["bos"])
    add_eos = bool(meta("tokenizer.ggml.add_eos_token", False)) and bool(special["eos"])
    bos, eos = special["bos"] if add_bos else None, special["eos"] if add_eos else None
    backend.post_processor = _post_processor(backend, bos, eos, vocab.source)
    return GGUFTokenizerParts(
        backend=backend,
        bos_token=special["bos"],
        eos_token=special["eos"],
        unk_token=special["unknown"],
        pad_token=special["padding"],
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        chat_template=meta("tokenizer.chat_template"),
    )


def _token(checkpoint: GGUFCheckpoint, tokens: list[str], name: str) -> str | None:
    """The text of the special token `tokenizer.ggml.<name>_token_id`, or None."""
    token_id = checkpoint.metadata(f"tokenizer.ggml.{name}_token_id")
    if token_id is None:
        return None
    if not 0 <= token_id < len(tokens):
        raise TokenizerError(
            f"{checkpoint.path}: tokenizer.ggml.{name}_token_id is {token_id}, outside the "
            f"vocabulary of {len(tokens)} tokens; the file is corrupt. Download it again."
        )
    return tokens[token_id]


# --- byte-level BPE ("gpt2") ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def _byte_spelling() -> dict[int, str]:
    """GPT-2's map from each byte to the printable character that spells it in the vocabulary.

    Printable Latin-1 bytes spell themselves; the other 68 (control characters, space, ...) are
    moved to code points 256 and up, in byte order.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    spelling = {b: chr(b) for b in printable}
    for offset, b in enumerate(b for b in range(256) if b not in spelling):
        spelling[b] = chr(256 + offset)
    return spelling


# Split patterns of the byte-level vocabularies, as their tokenizer.json files state them.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _split_then_bytes(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )


def _gpt2_pre() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_pre()])


# `tokenizer.ggml.pre` -> (pre-tokenizer, whether BPE ignores merges for whole-vocabulary words)
_PRE_TOKENIZERS: dict[str, Callable[[], tuple[pre_tokenizers.PreTokenizer, bool]]] = {
    "default": lambda: (_gpt2_pre(), False),
    "gpt2": lambda: (_gpt2_pre(), False),
    # SmolLM/StarCoder isolate every numeric character before the GPT-2 split.
    "smollm": lambda: (_digits_then_gpt2(), False),
    "starcoder": lambda: (_digits_then_gpt2(), False),
    # Llama 3's tokenizer.json sets `ignore_merges`, and llama.cpp follows it.
    "llama3": lambda: (_split_then_bytes(_LLAMA3_SPLIT), True),
    "llama-v3": lambda: (_split_then_bytes(_LLAMA3_SPLIT), True),
    "llama-bpe": lambda: (_split_then_bytes(_LLAMA3_SPLIT), True),
    "smaug-bpe": lambda: (_split_then_bytes(_LLAMA3_SPLIT), True),
    "qwen2": lambda: (_split_then_bytes(_QWEN2_SPLIT), False),
    "deepseek-r1-qwen": lambda: (_split_then_bytes(_QWEN2_SPLIT), False),
}


def _byte_level_bpe(vocab: _Vocab) -> Tokenizer:
    if not vocab.merges:
        raise TokenizerError(
            f"{vocab.source} stores a byte-level BPE tokenizer without `tokenizer.ggml.merges`; "
            "the file is incomplete. Load the tokenizer from the original model's folder instead."
        )
    pre = _PRE_TOKENIZERS.get(vocab.pre or "default")
    if pre is None:
        logger.warning(
            "%s: unknown pre-tokenizer %r; splitting text the GPT-2 way, which may tokenise "
            "some text differently from the original model.",
            vocab.source,
            vocab.pre,
        )
        pre = _PRE_TOKENIZERS["default"]
    pre_tokenizer, ignore_merges = pre()
    # Normal tokens are spelled in GPT-2's byte alphabet; llama.cpp stores a few (usually added
    # tokens) as raw text, which the BPE model would never produce: respell those.
    alphabet = _byte_spelling()
    letters = set(alphabet.values())
    ids = {}
    for i, (token, kind) in enumerate(zip(vocab.tokens, vocab.types, strict=True)):
        if kind == TokenType.NORMAL and not set(token) <= letters:
            token = "".join(alphabet[b] for b in token.encode("utf-8"))
        ids[token] = i
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    bpe = models.BPE(ids, merges, fuse_unk=False, byte_fallback=False, ignore_merges=ignore_merges)
    backend = Tokenizer(bpe)
    backend.pre_tokenizer = pre_tokenizer
    backend.decoder = decoders.ByteLevel()
    return backend


# --- SentencePiece BPE ("llama") --------------------------------------------------------------


def _sentencepiece_bpe(vocab: _Vocab) -> Tokenizer:
    """SentencePiece BPE: `▁` for spaces, a `▁` prefix on the text, `<0xNN>` tokens for bytes.

    NOTE: as in transformers, the `▁` prefix goes on the start of the text only, and not when the
    text already starts with a space (`tokenizers`' Metaspace). SentencePiece and llama.cpp always
    add it, and llama.cpp adds one after every special token too, so text starting with whitespace
    or following a special token can tokenise differently there.
    """
    ids = {token: i for i, token in enumerate(vocab.tokens)}
    if vocab.merges:
        merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    elif vocab.scores is not None:
        merges = _merges_from_scores(vocab.tokens, vocab.scores, ids)
    else:
        raise TokenizerError(
            f"{vocab.source} stores a SentencePiece tokenizer with neither merges nor scores; the "
            "file is incomplete. Load the tokenizer from the original model's folder instead."
        )
    bpe = models.BPE(ids, merges, unk_token=vocab.unk_token, fuse_unk=True, byte_fallback=True)
    backend = Tokenizer(bpe)
    prepend = "first" if vocab.add_space_prefix else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme=prepend, split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if vocab.add_space_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def _merges_from_scores(
    tokens: list[str], scores: list[float], ids: dict[str, int]
) -> list[tuple[str, str]]:
    """BPE merges implied by a SentencePiece vocabulary: one per way of splitting each token in two.

    NOTE: SentencePiece BPE merges, at every step, the adjacent pair whose concatenation has the
    highest score. In merge-list form: every split (left, right) of a token whose halves are both
    tokens is a merge ranked by the token's score, highest first. Ties (several splits of one
    token, or equal scores) are ordered by longer left piece, then longer right piece, then by the
    pieces' ids, which is transformers' order.
    """
    candidates = []
    for token, score in zip(tokens, scores, strict=True):
        splits = [
            (token[:i], token[i:])
            for i in range(1, len(token))
            if token[:i] in ids and token[i:] in ids
        ]
        splits.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        candidates.extend((score, left, right) for left, right in splits)
    # A stable sort, so the id order above survives among full ties.
    candidates.sort(key=lambda c: (c[0], len(c[1]), len(c[2])), reverse=True)
    return [(left, right) for _, left, right in candidates]


_BUILDERS: dict[str, Callable[[_Vocab], Tokenizer]] = {
    "gpt2": _byte_level_bpe,
    "llama": _sentencepiece_bpe,
}


# --- shared ---------------------------------------------------------------------------------------


def _add_special_tokens(backend: Tokenizer, vocab: _Vocab, named: list[str]) -> None:
    """Match control and user-defined tokens whole in raw text, so they are never split.

    Control tokens (`<|im_start|>`) are special (skipped when decoding with skip_special_tokens);
    user-defined ones (`<think>`) are not. The named bos/eos/unk/pad tokens are always special.
    """
    special, plain = [], []
    for token, kind in zip(vocab.tokens, vocab.types, strict=True):
        if kind == TokenType.CONTROL or token in named:
            special.append(AddedToken(token, special=True, normalized=False))
        elif kind == TokenType.USER_DEFINED:
            plain.append(AddedToken(token, special=False, normalized=False))
    backend.add_special_tokens(special)
    backend.add_tokens(plain)


def _post_processor(
    backend: Tokenizer, bos: str | None, eos: str | None, source: str
) -> processors.PostProcessor:
    """A template adding BOS/EOS around each sequence when `add_special_tokens=True`."""
    for token in (bos, eos):
        if token is not None and ":" in token:
            # `tokenizers` templates name tokens as "text:type_id", so a ':' cannot be written.
            raise TokenizerError(
                f"{source}: the special token {token!r} contains ':', which a tokenizers "
                "template cannot hold. Load the tokenizer from the original model's folder instead."
            )
    first, pair_first = ([f"{bos}:0"], [f"{bos}:1"]) if bos else ([], [])
    last, pair_last = ([f"{eos}:0"], [f"{eos}:1"]) if eos else ([], [])
    return processors.TemplateProcessing(
        single=[*first, "$A:0", *last],
        pair=[*first, "$A:0", *last, *pair_first, "$B:1", *pair_last],
        special_tokens=[(t, backend.token_to_id(t)) for t in {bos, eos} if t],
    )
