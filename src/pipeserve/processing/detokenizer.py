r"""Incremental detokenisation: turn a stream of generated ids into a stream of text deltas.

NOTE: why not decode each new token on its own? A token's text depends on its neighbours. A
SentencePiece "▁word" is " word" in the middle of a text but "word" at its start (the decoder strips
the prefix space), a WordPiece "##s" glues onto the previous token, and an emoji may be split over
several byte tokens that mean nothing alone. So we keep two offsets into the ids:

    ids:  ... [prefix_offset ......... read_offset ......... end]
               \__ already emitted __/ \___ not emitted yet __/

and decode the window ids[prefix_offset:read_offset] (text the caller already has) and
ids[prefix_offset:] (the same plus the new tokens). The new text is the second minus the first:
the context token fixes the word boundary, and the cost is O(window), not O(everything so far).
When the new text ends in U+FFFD (an incomplete UTF-8 character) it is held back until a later
token completes it; once text is emitted, the window slides forward to start at the old
read_offset. The ids before the window are dropped, so in the code the window is the whole id
list and `_read` is read_offset.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeserve.processing.tokenizer import Tokenizer

# Prompt tokens kept as context: enough for the first generated word to get its leading space,
# and for a multi-token character at the prompt's end to stay whole.
_PROMPT_CONTEXT = 6
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Streams the text of one sequence of generated tokens.

    Args:
        tokenizer: The tokenizer that produced the ids.
        skip_special_tokens: Leave special tokens (EOS, <|im_end|>, ...) out of the text.
        prompt_ids: The prompt's ids, used as context only: their text is never emitted.

    Example:
        >>> detok = IncrementalDetokenizer(tokenizer, prompt_ids=prompt)
        >>> for token in generated:
        ...     print(detok.add([token]), end="")
        >>> print(detok.flush())
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special_tokens: bool = True,
        prompt_ids: Sequence[int] = (),
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special_tokens = skip_special_tokens
        # The window: ids[:read] were emitted (or are prompt context), ids[read:] were not yet.
        tail = [int(i) for i in prompt_ids[-(_PROMPT_CONTEXT + 3) :]]
        self._ids: list[int] = _prompt_context(tokenizer, tail)
        self._read = len(self._ids)
        self._chunks: list[str] = []

    @property
    def text(self) -> str:
        """All text emitted so far (the concatenation of the deltas)."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def add(self, token_ids: Sequence[int]) -> str:
        """Add newly generated ids and return the text they complete.

        Args:
            token_ids: The new ids (usually one per decoding step).

        Returns:
            The new text; empty while a character or a word boundary is still incomplete.
        """
        self._ids.extend(int(i) for i in token_ids)
        prefix_text, new_text = self._decode_window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""
        return self._emit(new_text[len(prefix_text) :])

    def flush(self) -> str:
        """Return the text still held back, at the end of generation.

        Held-back text ends in U+FFFD: the model stopped in the middle of a character, and the
        full decode shows the same replacement character.

        Returns:
            The remaining text (often empty).
        """
        prefix_text, new_text = self._decode_window()
        if len(new_text) <= len(prefix_text):
            return ""
        if not new_text.startswith(prefix_text):
            # Byte-fallback decoders turn a whole run of byte tokens into U+FFFDs when it ends
            # mid-character, even the complete characters already emitted: emit only the rest.
            held = self._ids[self._read :]
            return self._emit(
                self._tokenizer.decode(held, skip_special_tokens=self._skip_special_tokens)
            )
        return self._emit(new_text[len(prefix_text) :])

    def _decode_window(self) -> tuple[str, str]:
        skip = self._skip_special_tokens
        emitted = self._tokenizer.decode(self._ids[: self._read], skip_special_tokens=skip)
        return emitted, self._tokenizer.decode(self._ids, skip_special_tokens=skip)

    def _emit(self, delta: str) -> str:
        # Slide the window: the tokens just read become the next step's context (prefix_offset
        # moves to the old read_offset) and the ids before them are dropped.
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._chunks.append(delta)
        return delta


def _prompt_context(tokenizer: Tokenizer, prompt_ids: list[int]) -> list[int]:
    """The last `_PROMPT_CONTEXT` prompt ids, or up to 3 more so they start on a whole character.

    A context that starts inside a multi-byte character decodes to U+FFFD there, and byte-fallback
    decoders then spoil the whole run of byte tokens it belongs to, new ones included. A UTF-8
    character has at most 4 bytes, so stepping back 3 tokens reaches its start.
    """
    start = max(len(prompt_ids) - _PROMPT_CONTEXT, 0)
    for _ in range(3):
        if start == 0 or not tokenizer.decode(prompt_ids[start:]).startswith(_REPLACEMENT):
            break
        start -= 1
    return prompt_ids[start:]
