"""The shared tool-call parser: the tiny model's real tokenizer, template and mlx-lm's json_tools parser."""

from __future__ import annotations

import json

import pytest

from core.toolcalls import (
    ToolCall,
    completion_text,
    load_tokenizer,
    message_tool_calls,
    parse_completion,
    prompt_tokens,
    render,
    round_trip,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}},
                "required": ["path"],
            },
        },
    }
]


def call(name, arguments, call_id="call_1"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model)


def test_mlx_lm_picks_the_json_tools_parser(tokenizer):
    assert tokenizer.has_tool_calling
    assert tokenizer.tool_parser.__module__ == "mlx_lm.tool_parsers.json_tools"


def test_string_and_object_arguments_render_the_same(tokenizer):
    as_string = [
        {"role": "user", "content": "read a.txt"},
        {"role": "assistant", "tool_calls": [call("read_file", '{"path": "a.txt"}')]},
    ]
    as_object = [as_string[0], {"role": "assistant", "tool_calls": [call("read_file", {"path": "a.txt"})]}]
    assert render(tokenizer, as_string, TOOLS) == render(tokenizer, as_object, TOOLS)
    assert completion_text(tokenizer, as_object, TOOLS).startswith('<tool_call>\n{"name": "read_file"')


def test_prompt_tokens_match_the_rendered_prompt(tokenizer):
    messages = [{"role": "user", "content": "read a.txt"}]
    text = render(tokenizer, messages, TOOLS, add_generation_prompt=True)
    assert tokenizer.decode(prompt_tokens(tokenizer, messages, TOOLS)) == text
    assert text.endswith("<|im_start|>assistant\n") and "read_file(path)" in text


@pytest.mark.parametrize(
    ("text", "content", "calls", "unparsed"),
    [
        ("Done: 42<|im_end|>", "Done: 42", [], 0),
        (
            '<tool_call>\n{"name": "read_file", "arguments": {"path": "a"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "read_file", "arguments": {"path": "b"}}\n</tool_call><|im_end|>',
            "\n",
            [ToolCall("read_file", {"path": "a"}), ToolCall("read_file", {"path": "b"})],
            0,
        ),
        ('<tool_call>\n{"name": "read_file", "arguments": {"path": \n</tool_call>', "", [], 1),
        (
            '<tool_call>\n{"name": "read_file", "arguments": {"path": "a"}}',
            "",
            [ToolCall("read_file", {"path": "a"})],
            0,
        ),
    ],
    ids=["answer", "parallel", "malformed-json", "unterminated"],
)
def test_parse_completion(tokenizer, text, content, calls, unparsed):
    turn = parse_completion(tokenizer, text, TOOLS)
    assert turn.content == content
    assert turn.tool_calls == calls
    assert len(turn.unparsed) == unparsed


def test_leaked_markup_is_detected_in_content(tokenizer):
    turn = parse_completion(tokenizer, 'Tool call: {"name": "read_file"} <function=read_file>', TOOLS)
    assert turn.tool_calls == [] and turn.leaked_markup


def test_round_trip_accepts_structured_calls_and_names_failures(tokenizer):
    user = {"role": "user", "content": "read a.txt and b.txt"}
    parallel = {
        "role": "assistant",
        "tool_calls": [call("read_file", {"path": "a.txt"}), call("read_file", {"path": "b.txt"}, "c2")],
    }
    result = round_trip(tokenizer, [user, parallel], TOOLS)
    assert result.ok, result.reason
    assert [c.arguments["path"] for c in result.parsed] == ["a.txt", "b.txt"]

    broken = {"role": "assistant", "tool_calls": [call("read_file", '{"path": "a.txt"')]}  # not JSON
    result = round_trip(tokenizer, [user, broken], TOOLS)
    assert not result.ok and "arguments are not valid JSON" in result.reason

    # This template splices the name into JSON text unescaped: a quote in it cannot round-trip.
    quoted = {"role": "assistant", "tool_calls": [call('read"file', {"path": "a.txt"})]}
    result = round_trip(tokenizer, [user, quoted], TOOLS)
    assert not result.ok and "tool parser rejected" in result.reason

    text_about_tools = {"role": "assistant", "content": 'I will read it. <tool_call>{"name": "read_file"}'}
    result = round_trip(tokenizer, [user, text_about_tools], TOOLS)
    assert not result.ok

    not_assistant = round_trip(tokenizer, [user], TOOLS)
    assert not not_assistant.ok and "not assistant" in not_assistant.reason


def test_message_tool_calls_decodes_string_arguments():
    message = {
        "role": "assistant",
        "tool_calls": [call("read_file", json.dumps({"path": "x"})), call("read_file", "{oops")],
    }
    assert message_tool_calls(message) == [
        ToolCall("read_file", {"path": "x"}),
        ToolCall("read_file", "{oops"),
    ]
