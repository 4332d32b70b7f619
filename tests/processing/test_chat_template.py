"""Chat templates: same prompts as transformers' apply_chat_template, and a sandbox that holds."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from pipeserve.errors import ChatTemplateError
from pipeserve.processing.chat_template import compile_chat_template, render_chat_template
from pipeserve.processing.tokenizer import Tokenizer
from tests.factories.tokenizers import write_bpe_tokenizer, write_sentencepiece_tokenizer

transformers = pytest.importorskip("transformers")

# A template in the style of Llama-3.1 / Qwen-2.5: a default system message, tools listed as JSON,
# tool calls and tool results, role checks through raise_exception, loop controls, a namespace.
TOOL_TEMPLATE = """\
{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = 'You are a helpful assistant. Today is ' + date_string + '.' %}
{%- endif %}
<|im_start|>system
{{ system_message }}
{%- if tools %}

You may call these tools:
{% for tool in tools %}
{{ tool | tojson(indent=2) }}
{% endfor %}
{%- endif %}
<|im_end|>
{% set ns = namespace(turns=0) %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
        {{- raise_exception('A system message is only allowed first.') }}
    {%- endif %}
    {%- if message['role'] == 'ignore' %}{% continue %}{% endif %}
    {%- if message['role'] == 'stop' %}{% break %}{% endif %}
    {%- set ns.turns = ns.turns + 1 %}
<|im_start|>{{ message['role'] }}
    {%- if message['role'] == 'assistant' and message.tool_calls is defined %}
        {%- for call in message.tool_calls %}

<tool_call>{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}</tool_call>
        {%- endfor %}
    {%- else %}

{{ message['content'] }}
    {%- endif %}
<|im_end|>
{% endfor %}
{%- if add_generation_prompt %}
<|im_start|>assistant
{% endif %}
{{- '<!-- ' ~ ns.turns ~ ' turns -->' if show_turns is defined and show_turns }}"""

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city, in °C — ünïcode kept as is",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "e.g. Zürich"}},
                "required": ["city"],
            },
        },
    }
]

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "What's 2 + 2?\n\nThink.  "},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And in 日本語? 😀"},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": '{"temperature": 21}'},
        {"role": "ignore", "content": "skipped by {% continue %}"},
        {"role": "assistant", "content": "It is 21 °C. <|im_end|> in text"},
        {"role": "stop", "content": "ends the loop"},
        {"role": "user", "content": "never rendered"},
    ],
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Tokenizer, object]:
    folder = write_bpe_tokenizer(tmp_path_factory.mktemp("bpe"))
    return Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chatml_matches_reference(pair, messages: list[dict], add_generation_prompt: bool) -> None:
    tok, ref = pair
    messages = [m for m in messages if m["role"] in ("system", "user", "assistant", "tool")]
    messages = [{**m, "content": m["content"] or ""} for m in messages]
    kwargs = dict(add_generation_prompt=add_generation_prompt)
    text = tok.apply_chat_template(messages, **kwargs)
    assert text == ref.apply_chat_template(messages, tokenize=False, **kwargs)
    ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    assert tok.apply_chat_template(messages, tokenize=True, **kwargs) == ids
    assert tok.encode(text, add_special_tokens=False) == ids


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("tools", [None, TOOLS])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_tool_template_matches_reference(pair, messages, tools, add_generation_prompt) -> None:
    tok, ref = pair
    kwargs = dict(
        tools=tools,
        chat_template=TOOL_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
        date_string=datetime.now().strftime("%d %b %Y"),
        show_turns=True,
    )
    text = tok.apply_chat_template(messages, **kwargs)
    assert text == ref.apply_chat_template(messages, tokenize=False, **kwargs)
    assert text.startswith("<|endoftext|><|im_start|>system\n")  # bos_token is a variable
    assert ("get_weather" in text) == (tools is not None or len(messages) == 7)
    ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    assert tok.apply_chat_template(messages, tokenize=True, **kwargs) == ids


@pytest.mark.parametrize(
    "template",
    [
        None,  # ChatML: keeps spacing, the tag is followed by its space
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}</s>\n{% endfor %}",
    ],
)
def test_continue_final_message_matches_reference(pair, template: str | None) -> None:
    tok, ref = pair
    messages = [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Autumn moonlight —  "},
    ]
    kwargs = dict(chat_template=template, continue_final_message=True)
    text = tok.apply_chat_template(messages, **kwargs)
    assert text == ref.apply_chat_template(messages, tokenize=False, **kwargs)
    assert text.rstrip().endswith("Autumn moonlight —")
    ids = ref.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)
    assert tok.apply_chat_template(messages, tokenize=True, **kwargs) == ids


def test_continue_final_message_with_content_blocks(pair) -> None:
    tok, _ = pair
    template = (
        "{% for m in messages %}{% for b in m['content'] %}{{ b['text'] }}|{% endfor %}{% endfor %}"
    )
    messages = [
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
        }
    ]
    assert (
        tok.apply_chat_template(messages, chat_template=template, continue_final_message=True)
        == "a|b"
    )


def test_sentencepiece_template_with_bos(tmp_path: Path) -> None:
    folder = write_sentencepiece_tokenizer(tmp_path)
    tok, ref = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }}"
        " [/INST]{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    messages = [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Café?"},
    ]
    for tokenize in (False, True):
        kwargs = dict(chat_template=template, tokenize=tokenize)
        expected = ref.apply_chat_template(messages, return_dict=False, **kwargs)
        assert tok.apply_chat_template(messages, **kwargs) == expected
    assert tok.apply_chat_template(messages, chat_template=template, tokenize=True).count(1) == 1


def test_jinja_options_match_reference(pair) -> None:
    tok, ref = pair
    template = """\
{% for m in messages %}
    {% if m['role'] == 'user' %}
        U: {{ m | tojson }}
    {% endif %}
{% endfor %}
{{ {'b': 'ü<&>', 'a': [1, 2]} | tojson(indent=2, sort_keys=True) }}
{{ {'b': 1, 'a': 2} | tojson(separators=(',', ':')) }}
{{ 'x' | tojson(ensure_ascii=True) }}{{ 'ü' | tojson(ensure_ascii=True) }}
{{ strftime_now('%Y') }}{{ dict(a=1) | tojson }}
"""
    messages = [{"role": "user", "content": "¿Qué tal? <b>"}]
    text = tok.apply_chat_template(messages, chat_template=template)
    assert text == ref.apply_chat_template(messages, chat_template=template, tokenize=False)
    assert '"ü<&>"' in text and '"\\u00fc"' in text and str(datetime.now().year) in text


def test_generation_tag_is_accepted(pair) -> None:
    tok, ref = pair
    template = (
        "{% for m in messages %}{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    )
    messages = [{"role": "assistant", "content": "hi"}]
    assert tok.apply_chat_template(messages, chat_template=template) == "hi"
    assert ref.apply_chat_template(messages, chat_template=template, tokenize=False) == "hi"


def test_template_errors(pair) -> None:
    tok, _ = pair
    messages = [{"role": "user", "content": "hi"}]
    bad_roles = [*messages, {"role": "system", "content": "x"}]
    with pytest.raises(ChatTemplateError, match="A system message is only allowed first"):
        tok.apply_chat_template(bad_roles, chat_template=TOOL_TEMPLATE, date_string="today")
    with pytest.raises(ChatTemplateError, match="'date_string' is undefined"):
        tok.apply_chat_template(messages, chat_template=TOOL_TEMPLATE)
    with pytest.raises(ChatTemplateError, match="syntax error at line 1"):
        tok.apply_chat_template(messages, chat_template="{% for m in messages %}")
    with pytest.raises(ChatTemplateError, match="undefined"):
        tok.apply_chat_template(messages, chat_template="{{ not_passed.field }}")
    with pytest.raises(ChatTemplateError, match="undefined"):
        tok.apply_chat_template(messages, chat_template="{{ missing_function() }}")
    with pytest.raises(ChatTemplateError, match="TypeError"):
        tok.apply_chat_template(messages, chat_template="{{ 1 + 'a' }}")
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        tok.apply_chat_template([])
    with pytest.raises(ChatTemplateError, match="cannot both be set"):
        tok.apply_chat_template(messages, add_generation_prompt=True, continue_final_message=True)
    with pytest.raises(ChatTemplateError, match="must be dicts"):
        tok.apply_chat_template(["hi"])  # type: ignore[list-item]
    with pytest.raises(ChatTemplateError, match="list of dicts"):
        tok.apply_chat_template(messages, tools=[print])  # type: ignore[list-item]


def test_missing_template_tells_how_to_fix(tmp_path: Path) -> None:
    tok = Tokenizer.from_folder(write_bpe_tokenizer(tmp_path, chat_template=None))
    with pytest.raises(ChatTemplateError, match=r"pass one with chat_template="):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",
        "{{ messages.__class__.__base__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{{ joiner.__init__.__globals__ }}",
        "{{ namespace.__init__.__globals__ }}",
        "{{ raise_exception.__globals__ }}",
        "{{ strftime_now.__globals__['datetime'] }}",
        "{{ dict.__class__ }}",
        "{{ self._TemplateReference__context }}",
        "{{ range.__globals__ }}{{ range(3).__class__ }}",
        "{{ messages[0].content.format_map }}{{ '{0.__class__}'.format(messages) }}",
        "{% set ns = namespace(__class__=1) %}",
        "{% set ns = namespace() %}{% set ns._private = 1 %}",
        "{{ messages.append(1) }}",
        "{{ messages[0].update({'role': 'x'}) }}",
        "{{ messages.pop() }}",
        "{{ open('/etc/passwd').read() }}",
        "{% include '/etc/passwd' %}",
        "{% import '/etc/passwd' as p %}",
        "{% extends '/etc/passwd' %}",
        "{{ __import__('os').system('id') }}",
        "{{ config }}{{ request.application }}",
        "{{ tokenizer.backend.save('/tmp/leak.json') }}",
    ],
)
def test_sandbox_blocks_escapes(pair, template: str) -> None:
    tok, _ = pair
    with pytest.raises(ChatTemplateError):
        tok.apply_chat_template([{"role": "user", "content": "hi"}], chat_template=template)


def test_template_sees_plain_copies_only(pair) -> None:
    tok, _ = pair

    class Secret:
        def delete_everything(self) -> None:
            raise AssertionError("the template reached a method of the caller's object")

    messages = [{"role": "user", "content": "hi", "extra": Secret()}]
    template = "{{ messages[0].extra }}|{{ obj }}"
    assert (
        tok.apply_chat_template(messages, chat_template=template, obj=Secret())
        == "<Secret>|<Secret>"
    )
    with pytest.raises(ChatTemplateError):
        tok.apply_chat_template(
            messages, chat_template="{{ obj.delete_everything() }}", obj=Secret()
        )
    # The caller's messages are not modified by continue_final_message either.
    original = [{"role": "assistant", "content": "x"}]
    tok.apply_chat_template(original, continue_final_message=True)
    assert original == [{"role": "assistant", "content": "x"}]


def test_compiled_templates_are_cached() -> None:
    template = "{{ messages | length }} {{ bos_token }}"
    compile_chat_template.cache_clear()
    first = compile_chat_template(template)
    assert compile_chat_template(template) is first
    assert compile_chat_template.cache_info().hits == 1
    messages = [{"role": "user", "content": "x"}]
    assert render_chat_template(template, messages, bos_token="<s>") == "1 <s>"
    assert compile_chat_template.cache_info().hits == 2
