"""Reading a Hugging Face tokenizer folder: tokenizer.json and the files that configure it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers

from pipeserve.errors import ModelNotFoundError, TokenizerError
from pipeserve.loading.config import read_json

_NAMED_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


@dataclass(frozen=True)
class TokenizerFolder:
    """What a tokenizer folder holds, in the terms of `Tokenizer`'s constructor."""

    backend: tokenizers.Tokenizer  # from tokenizer.json
    bos_token: str | None
    eos_token: str | None
    pad_token: str | None
    unk_token: str | None
    chat_template: str | None  # chat_template.jinja, else tokenizer_config.json's (its "default")
    eos_token_ids: tuple[int, ...]  # generation_config.json's eos_token_id
    model_max_length: int | None
    clean_up_tokenization_spaces: bool


def read_tokenizer_folder(folder: str | os.PathLike) -> TokenizerFolder:
    """Read `tokenizer.json` (required) and the settings beside it.

    Reads `tokenizer_config.json`, `special_tokens_map.json`, `chat_template.jinja` and
    `generation_config.json` where present. As in transformers 5, the config's `add_bos_token` /
    `add_eos_token` are ignored: `tokenizer.json`'s post-processor says which tokens encoding adds.

    Args:
        folder: The checkpoint folder.

    Returns:
        The backend and its settings.

    Raises:
        ModelNotFoundError: The folder does not exist.
        TokenizerError: `tokenizer.json` is missing, or a file is unreadable or malformed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"tokenizer folder {folder} does not exist or is not a folder")
    path = folder / "tokenizer.json"
    if not path.is_file():
        present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        raise TokenizerError(
            f"{folder} has no tokenizer.json (it holds: {present}). pipeserve reads the fast "
            "tokenizer format; create it with transformers: "
            "AutoTokenizer.from_pretrained(folder).save_pretrained(folder)"
        )
    try:
        backend = tokenizers.Tokenizer.from_file(str(path))
    except Exception as error:  # the Rust parser raises a bare Exception
        raise TokenizerError(f"cannot read {path}: {error}; the file is corrupt") from error
    config = _read_json(folder / "tokenizer_config.json")
    names = {key: _token_text(config.get(key), key) for key in _NAMED_TOKENS}
    # transformers reads special_tokens_map.json only for configs that predate
    # `added_tokens_decoder`, and then lets it win over the config.
    if "added_tokens_decoder" not in config:
        token_map = _read_json(folder / "special_tokens_map.json")
        names.update({k: _token_text(token_map[k], k) for k in _NAMED_TOKENS if k in token_map})
    generation = _read_json(folder / "generation_config.json")
    max_length = config.get("model_max_length")
    return TokenizerFolder(
        backend,
        **names,
        chat_template=_chat_template(folder, config),
        eos_token_ids=tuple(_id_list(generation.get("eos_token_id"))),
        model_max_length=int(max_length) if max_length is not None else None,
        clean_up_tokenization_spaces=bool(config.get("clean_up_tokenization_spaces", False)),
    )


def _read_json(path: Path) -> dict[str, Any]:
    """An optional settings file: {} when absent, TokenizerError when unreadable."""
    return read_json(path, TokenizerError) if path.is_file() else {}


def _token_text(value: Any, key: str) -> str | None:
    """A special token from a config: a string, or a serialised AddedToken {"content": ...}."""
    if isinstance(value, Mapping):
        value = value.get("content")
    if value is None or isinstance(value, str):
        return value
    raise TokenizerError(f"{key} must be a string or a {{'content': ...}} object, got {value!r}")


def _chat_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    """The default chat template: chat_template.jinja wins over the config's entry."""
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text(encoding="utf-8")
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    # A list of named templates, [{"name": "default", "template": ...}, {"name": "tool_use", ...}].
    named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
    if "default" not in named:
        raise TokenizerError(
            f"{folder / 'tokenizer_config.json'} lists chat templates {sorted(map(str, named))} "
            "but none named 'default'; pass chat_template= to apply_chat_template"
        )
    return named["default"]


def _id_list(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]
