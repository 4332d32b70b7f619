"""The tokenizer: text to ids and back, plus chat templates, over a `tokenizers.Tokenizer` backend.

The backend (the Rust `tokenizers` library, read from a checkpoint's `tokenizer.json`) does the
work; this wrapper adds what the checkpoint's other files say: which tokens are BOS/EOS/PAD/UNK,
which ids end generation, the chat template, the maximum length. Its results match
`transformers.AutoTokenizer.from_pretrained(folder)` on the same folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import tokenizers
from tokenizers import AddedToken, processors

from pipeserve.errors import ChatTemplateError, TokenizerError
from pipeserve.processing.chat_template import render_chat_template
from pipeserve.processing.tokenizer_folder import read_tokenizer_folder

_NAMED_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token")


class Tokenizer:
    """A checkpoint's tokenizer.

    Args:
        backend: The `tokenizers.Tokenizer` doing the work. The wrapper takes ownership: it turns
            off the backend's own truncation and padding, and registers the named tokens as special.
        bos_token, eos_token, pad_token, unk_token: The named special tokens (their text). A name
            whose token is not in the vocabulary keeps its text but has no id.
        add_bos_token, add_eos_token: None keeps the backend's post-processor (tokenizer.json's own
            rule for adding special tokens); True or False replaces it with one that adds BOS / EOS
            around every encoding or not (the rule GGUF files state this way).
        chat_template: The Jinja chat template, if the checkpoint has one.
        eos_token_ids: Further ids that end generation (generation_config.json's eos_token_id).
        model_max_length: The longest input the model takes; `truncation=True` cuts to it.
        clean_up_tokenization_spaces: Default for `decode`: remove the spaces WordPiece decoding
            leaves before punctuation ("hello ." -> "hello.").
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        add_bos_token: bool | None = None,
        add_eos_token: bool | None = None,
        chat_template: str | None = None,
        eos_token_ids: Iterable[int] | None = None,
        model_max_length: int | None = None,
        clean_up_tokenization_spaces: bool = False,
    ) -> None:
        self._backend = backend
        # Truncation and padding are per call here; tokenizer.json's stored settings would apply
        # to every call (all-MiniLM's pads everything to 128 tokens), which the reference undoes too.
        backend.no_truncation()
        backend.no_padding()
        self.bos_token, self.eos_token = bos_token, eos_token
        self.pad_token, self.unk_token = pad_token, unk_token
        self._register_special([bos_token, eos_token, pad_token, unk_token])
        self.bos_token_id = self.token_to_id(bos_token) if bos_token is not None else None
        self.eos_token_id = self.token_to_id(eos_token) if eos_token is not None else None
        self.pad_token_id = self.token_to_id(pad_token) if pad_token is not None else None
        self.unk_token_id = self.token_to_id(unk_token) if unk_token is not None else None
        if add_bos_token is not None or add_eos_token is not None:
            self._set_post_processor(bool(add_bos_token), bool(add_eos_token))
        self.chat_template = chat_template
        self.model_max_length = model_max_length
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        extra_eos = {int(i) for i in eos_token_ids or ()}
        self.eos_token_ids: frozenset[int] = frozenset(
            extra_eos | ({self.eos_token_id} if self.eos_token_id is not None else set())
        )
        named = {self.bos_token_id, self.eos_token_id, self.pad_token_id, self.unk_token_id}
        flagged = {i for i, t in backend.get_added_tokens_decoder().items() if t.special}
        # Every id `skip_special_tokens` drops, plus the named tokens.
        self.all_special_ids: frozenset[int] = frozenset((named | flagged) - {None})

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> Tokenizer:
        """Load the tokenizer of a Hugging Face checkpoint folder.

        See `read_tokenizer_folder` for the files read and the precedence between them.

        Args:
            folder: The checkpoint folder.

        Returns:
            The tokenizer.

        Raises:
            ModelNotFoundError: The folder does not exist.
            TokenizerError: `tokenizer.json` is missing or a file is unreadable.
        """
        files = read_tokenizer_folder(folder)
        return cls(
            files.backend,
            bos_token=files.bos_token,
            eos_token=files.eos_token,
            pad_token=files.pad_token,
            unk_token=files.unk_token,
            chat_template=files.chat_template,
            eos_token_ids=files.eos_token_ids,
            model_max_length=files.model_max_length,
            clean_up_tokenization_spaces=files.clean_up_tokenization_spaces,
        )

    @classmethod
    def from_gguf(cls, path: str | os.PathLike) -> Tokenizer:
        """Build the tokenizer stored in a GGUF file's metadata.

        Args:
            path: The .gguf file.

        Returns:
            The tokenizer.
        """
        from pipeserve.loading.gguf import open_gguf
        from pipeserve.processing.gguf_tokenizer import tokenizer_from_gguf

        parts = tokenizer_from_gguf(open_gguf(path))
        return cls(
            parts.backend,
            bos_token=parts.bos_token,
            eos_token=parts.eos_token,
            pad_token=parts.pad_token,
            unk_token=parts.unk_token,
            add_bos_token=parts.add_bos_token,
            add_eos_token=parts.add_eos_token,
            chat_template=parts.chat_template,
        )

    @property
    def vocab_size(self) -> int:
        """The number of ids, added tokens included (transformers' `len(tokenizer)`)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying `tokenizers.Tokenizer`."""
        return self._backend

    def token_to_id(self, token: str) -> int | None:
        """The id of a token (its vocabulary text, e.g. "Ġthe"), or None if it has none."""
        return self._backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """The vocabulary text of an id, or None if the id is out of range."""
        return self._backend.id_to_token(i)

    def encode(
        self,
        text: str,
        *,
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
    ) -> list[int]:
        """Encode a text into token ids.

        Args:
            text: The text.
            add_special_tokens: Add what the post-processor adds (BOS, or [CLS] ... [SEP]).
            truncation: Cut to `max_length` (or `model_max_length` when that is None) tokens,
                special tokens included, keeping the start.
            max_length: The length `truncation` cuts to; passing it implies truncation.

        Returns:
            The ids.

        Raises:
            TokenizerError: `text` is not a string.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a str, got {_describe(text)}")
        return self.encode_batch(
            [text],
            add_special_tokens=add_special_tokens,
            truncation=truncation,
            max_length=max_length,
        )[0]

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        add_special_tokens: bool = True,
        truncation: bool = False,
        max_length: int | None = None,
    ) -> list[list[int]]:
        """Encode several texts (in parallel, in the backend); arguments as for `encode`.

        Returns:
            One list of ids per text.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TokenizerError(f"encode_batch expects a list of str, got {_describe(texts)}")
        limit = self._truncation_length(truncation, max_length)
        if limit is None:
            encodings = self._backend.encode_batch(
                list(texts), add_special_tokens=add_special_tokens
            )
            return [e.ids for e in encodings]
        added = self._backend.num_special_tokens_to_add(False) if add_special_tokens else 0
        if limit < added:
            raise TokenizerError(
                f"max_length={limit} leaves no room: encoding adds {added} special tokens"
            )
        encodings = self._backend.encode_batch(list(texts), add_special_tokens=False)
        out = []
        for encoding in encodings:
            # Cut the text's tokens, then add the special tokens: the order the reference uses.
            encoding.truncate(limit - added)
            if add_special_tokens:
                encoding = self._backend.post_process(encoding, add_special_tokens=True)
            out.append(encoding.ids)
        return out

    def decode(
        self,
        ids: Sequence[int],
        *,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> str:
        """Turn token ids back into text.

        Args:
            ids: The token ids.
            skip_special_tokens: Leave out special tokens (BOS, EOS, <|im_start|>, ...).
            clean_up_tokenization_spaces: Remove spaces before punctuation and in contractions;
                None uses the checkpoint's setting. Ignored for BPE models, as in transformers,
                where it would delete spaces that are really in the text.

        Returns:
            The text.
        """
        return self.batch_decode(
            [ids],
            skip_special_tokens=skip_special_tokens,
            clean_up_tokenization_spaces=clean_up_tokenization_spaces,
        )[0]

    def batch_decode(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool | None = None,
    ) -> list[str]:
        """Decode several id sequences; arguments as for `decode`.

        Returns:
            One text per sequence.
        """
        try:
            id_lists = [[int(i) for i in ids] for ids in sequences]
        except (TypeError, ValueError) as error:
            raise TokenizerError(f"decode expects sequences of int ids: {error}") from error
        texts = self._backend.decode_batch(id_lists, skip_special_tokens=skip_special_tokens)
        clean = clean_up_tokenization_spaces
        if clean is None:
            clean = self.clean_up_tokenization_spaces
        if clean and type(self._backend.model).__name__ != "BPE":
            texts = [_clean_up_tokenization(text) for text in texts]
        return texts

    def apply_chat_template(
        self,
        messages: list[dict],
        *,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        tokenize: bool = False,
        **template_kwargs: Any,
    ) -> str | list[int]:
        """Render a conversation into the model's prompt format.

        Args:
            messages: The conversation, dicts with "role" and "content".
            add_generation_prompt: End with the header of an assistant turn.
            continue_final_message: End inside the final message so the model continues it.
            tools: JSON-schema tool definitions for templates that support tool calling.
            documents: Retrieval documents for templates that support them.
            chat_template: A template to use instead of the checkpoint's.
            tokenize: Return ids instead of text. The template writes the special tokens itself,
                so the text is encoded without adding any.
            **template_kwargs: Further template variables (e.g. `enable_thinking=False`).

        Returns:
            The prompt text, or its ids when `tokenize` is set.

        Raises:
            ChatTemplateError: There is no template, or it fails (see `render_chat_template`).
        """
        template = chat_template if chat_template is not None else self.chat_template
        if template is None:
            raise ChatTemplateError(
                "this tokenizer has no chat template; pass one with chat_template=..."
            )
        special = {key: getattr(self, key) for key in _NAMED_TOKENS if getattr(self, key)}
        text = render_chat_template(
            template,
            messages,
            add_generation_prompt=add_generation_prompt,
            continue_final_message=continue_final_message,
            tools=tools,
            documents=documents,
            **{**special, **template_kwargs},
        )
        return self.encode(text, add_special_tokens=False) if tokenize else text

    def _truncation_length(self, truncation: bool, max_length: int | None) -> int | None:
        if max_length is not None:
            if max_length < 0:
                raise TokenizerError(f"max_length must be >= 0, got {max_length}")
            return max_length
        return self.model_max_length if truncation else None

    def _register_special(self, tokens: Iterable[str | None]) -> None:
        """Mark the named tokens special in the backend, so they are matched whole and skippable.

        transformers does the same; unlike it, a name missing from the vocabulary is not added as a
        new token, since a new id would fall outside the model's embedding table.
        """
        added = {t.content: t for t in self._backend.get_added_tokens_decoder().values()}
        to_add = []
        for token in {t for t in tokens if t is not None}:
            existing = added.get(token)
            if existing is not None and existing.special:
                continue
            if existing is None and self._backend.token_to_id(token) is None:
                continue
            to_add.append(
                AddedToken(
                    token,
                    single_word=existing.single_word if existing else False,
                    lstrip=existing.lstrip if existing else False,
                    rstrip=existing.rstrip if existing else False,
                    normalized=existing.normalized if existing else False,
                    special=True,
                )
            )
        if to_add:
            self._backend.add_special_tokens(to_add)

    def _set_post_processor(self, add_bos: bool, add_eos: bool) -> None:
        parts = {"bos": (add_bos, self.bos_token, self.bos_token_id)}
        parts["eos"] = (add_eos, self.eos_token, self.eos_token_id)
        for name, (wanted, token, token_id) in parts.items():
            if wanted and token_id is None:
                raise TokenizerError(
                    f"add_{name}_token is set but the tokenizer has no {name} token in its "
                    f"vocabulary (got {token!r}); pass {name}_token= with a token it has"
                )
        # Only single sequences are encoded, so no `pair` template is needed.
        added = [(self.bos_token, self.bos_token_id)] if add_bos else []
        single = [f"{self.bos_token}:0"] if add_bos else []
        single.append("$A:0")
        if add_eos:
            added.append((self.eos_token, self.eos_token_id))
            single.append(f"{self.eos_token}:0")
        self._backend.post_processor = processors.TemplateProcessing(
            single=single, special_tokens=list(dict.fromkeys(added))
        )


def _clean_up_tokenization(text: str) -> str:
    # transformers' clean_up_tokenization, for WordPiece-style output.
    for spaced, joined in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(spaced, joined)
    return text


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:200]
