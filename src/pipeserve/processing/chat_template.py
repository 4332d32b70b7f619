"""Chat templates: Jinja programs shipped with a checkpoint that turn a list of messages into a prompt.

Templates come from downloaded files, so they are untrusted code. They run in jinja2's
`ImmutableSandboxedEnvironment`, which refuses underscore attributes (`''.__class__`) and methods
that mutate data; the template only ever sees plain copies of the inputs (dicts, lists, strings,
numbers), never the caller's objects or their methods. The environment matches the one
`transformers` renders with (trim_blocks, lstrip_blocks, loop controls, a `tojson` that keeps
non-ASCII text, `raise_exception`, `strftime_now`), so prompts come out byte for byte the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import numpy as np
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from pipeserve.errors import ChatTemplateError

# Appended to the final message for `continue_final_message`, then located in the rendered prompt
# to cut off whatever the template writes after that message (the same tag transformers uses).
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def render_chat_template(
    template: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    add_generation_prompt: bool = False,
    continue_final_message: bool = False,
    tools: Sequence[Mapping[str, Any]] | None = None,
    documents: Sequence[Mapping[str, Any]] | None = None,
    **variables: Any,
) -> str:
    """Render a conversation into a prompt string with a chat template.

    Args:
        template: The Jinja source of the chat template.
        messages: The conversation, dicts with at least "role" and "content" keys. Keys whose value
            is None are dropped, since templates test for a key's presence (OpenAI-style messages
            carry `"tool_calls": None`).
        add_generation_prompt: Ask the template to end with the header of an assistant turn.
        continue_final_message: End the prompt right after the final message's content, so the
            model continues that message instead of starting a new one.
        tools: JSON-schema tool definitions, passed to the template as `tools`.
        documents: Retrieval documents (dicts), passed to the template as `documents`.
        **variables: Further template variables (special tokens such as `bos_token`, and
            template options such as `enable_thinking`).

    Returns:
        The rendered prompt.

    Raises:
        ChatTemplateError: The template does not compile, raises, or uses something undefined or
            forbidden; or the arguments are inconsistent.
    """
    if not messages:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation")
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt cannot both be set: continue the "
            "final message, or prompt the model to start a new assistant message"
        )
    for name, items in (("tools", tools), ("documents", documents)):
        if items is not None and not all(isinstance(item, Mapping) for item in items):
            raise ChatTemplateError(f"{name} must be a list of dicts (JSON schemas for tools)")
    chat = [_message(message) for message in messages]
    final_text = _tag_final_message(chat, template) if continue_final_message else None
    rendered = _render(
        compile_chat_template(template),
        messages=chat,
        tools=_plain(tools),
        documents=_plain(documents),
        add_generation_prompt=add_generation_prompt,
        **_plain(variables),
    )
    return rendered if final_text is None else _cut_after_final_message(rendered, final_text)


@lru_cache(maxsize=32)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile a chat template once; later calls with the same source hit the cache.

    Args:
        template: The Jinja source.

    Returns:
        The compiled template, bound to the sandboxed environment.

    Raises:
        ChatTemplateError: The template has a syntax error (with its line number).
    """
    try:
        return _environment().from_string(template)
    except TemplateSyntaxError as error:
        raise ChatTemplateError(
            f"the chat template has a syntax error at line {error.lineno}: {error.message}"
        ) from error
    except TemplateError as error:
        raise ChatTemplateError(f"the chat template does not compile: {error}") from error


def _render(compiled: jinja2.Template, **context: Any) -> str:
    try:
        return compiled.render(**context)
    except TemplateError as error:
        # raise_exception(), undefined names used as objects, forbidden attribute access.
        raise ChatTemplateError(
            f"the chat template failed: {type(error).__name__}: {error}"
        ) from error
    except Exception as error:
        # The template is foreign code: any failure inside it (a TypeError from adding a string
        # to a number, ...) is the template's error, reported as such rather than a deep traceback.
        raise ChatTemplateError(
            f"the chat template failed while rendering: {type(error).__name__}: {error}"
        ) from error


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The sandbox, failing loudly on a forbidden attribute instead of rendering it as ""."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(
            f"chat templates may not access {attribute!r} of a {type(obj).__name__} object"
        )


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, which would reach the object's internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # `self` in *args, as in jinja's Namespace
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _check_public(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _check_public(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)


def _check_public(name: Any) -> None:
    if isinstance(name, str) and name.startswith("_"):
        raise SecurityError(f"chat templates may not set the underscore attribute {name!r}")


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks): a no-op.

    Some templates use it; without the tag they would not even compile.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; prompts need the text unchanged.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _dict(*args: Any, **kwargs: Any) -> dict:
    # Replaces the `dict` type in the template's globals: a function exposes no class attributes.
    return dict(*args, **kwargs)


@lru_cache(maxsize=1)
def _environment() -> _ChatSandbox:
    env = _ChatSandbox(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[jinja2.ext.loopcontrols, _GenerationTag],
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        namespace=_Namespace,
        dict=_dict,
    )
    return env


def _message(message: Any) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(
            f"chat messages must be dicts with 'role' and 'content' keys, got {message!r}"
        )
    return _plain({key: value for key, value in message.items() if value is not None})


def _plain(value: Any) -> Any:
    """A copy of `value` made only of JSON types, so the template can reach no caller's methods."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (enums, numpy scalars) are cut back to the base type; bool before int.
    for base in (str, bool, int, float):
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):  # np.bool_ would otherwise become a truthy placeholder
        return _plain(value.item())
    return f"<{type(value).__name__}>"  # images, tensors: templates only test for presence


def _tag_final_message(chat: list[dict[str, Any]], template: str) -> str:
    """Append the continue tag to the final message's text and return that text, untagged."""
    final = chat[-1].get("content")
    if final is None:
        raise ChatTemplateError(
            "continue_final_message is set but the final message has no 'content' to continue"
        )
    if "content" not in template:
        raise ChatTemplateError(
            "continue_final_message is set but the chat template never reads 'content'"
        )
    if isinstance(final, str):
        chat[-1]["content"] = final + _CONTINUE_TAG
        return final
    for block in reversed(final):  # a list of content blocks: continue the last text block
        if isinstance(block, dict) and "text" in block:
            text = block["text"]
            block["text"] = text + _CONTINUE_TAG
            return text
    raise ChatTemplateError(
        "continue_final_message is set but the final message has no text block to continue"
    )


def _cut_after_final_message(rendered: str, final_text: str) -> str:
    tag = _CONTINUE_TAG.strip()
    if final_text.strip() not in rendered or tag not in rendered:
        raise ChatTemplateError(
            "continue_final_message is set but the chat template does not write the final "
            "message's text unchanged, so the prompt cannot end inside it"
        )
    cut = rendered.rindex(tag)
    if rendered.startswith(_CONTINUE_TAG, cut):
        return rendered[:cut]
    # The template stripped the message (and the tag's trailing space): strip the same way.
    return rendered[:cut].rstrip()
