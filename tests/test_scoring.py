"""The turn scorer: one handcrafted model output per error code, parsed by the tiny model's real tool parser."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from agent.tools import AGENT_TOOLS
from core.scoring import CODES, Verdict, normalize_text, score_turn, turn_checks
from core.toolcalls import load_tokenizer, parse_completion
from core.turns import SERVER_DROPPED, turn_from_message

TIMER_TOOL = {
    "type": "function",
    "function": {
        "name": "set_timer",
        "parameters": {
            "type": "object",
            "properties": {
                "seconds": {"type": "number"},
                "repeat": {"type": "integer"},
                "loud": {"type": "boolean"},
            },
            "required": ["seconds"],
        },
    },
}
TOOLS = [*AGENT_TOOLS, TIMER_TOOL]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    assert tokenizer.tool_call_start == "<tool_call>", "tiny model must use mlx-lm's json_tools parser"
    return tokenizer


def call_block(name: str, arguments) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def reference(*calls: tuple[str, dict]) -> dict:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
            for i, (name, arguments) in enumerate(calls)
        ],
    }


ANSWER = {"role": "assistant", "content": "app.py prints hello."}
READ = reference(("read_file", {"path": "src/app.py"}))


def verdict(tokenizer, ref: dict, text: str, **options) -> Verdict:
    return score_turn(ref, parse_completion(tokenizer, text, TOOLS), TOOLS, **options)


def test_ok_exact_call(tokenizer):
    text = call_block("read_file", {"path": "src/app.py"})
    turn = parse_completion(tokenizer, text, TOOLS)
    assert [c.name for c in turn.tool_calls] == ["read_file"]  # the real parser found it
    assert score_turn(READ, turn, TOOLS) == Verdict("ok")
    assert turn_checks(READ, turn, TOOLS).schema_valid


def test_ok_abstention(tokenizer):
    assert verdict(tokenizer, ANSWER, "It prints hello.").code == "ok"


@pytest.mark.parametrize("text", ["", "   ", "\n\n\n\n", " \t\n "])
def test_silence_is_not_an_answer(tokenizer, text):
    """An answer turn needs a real answer: nothing, or only whitespace, is `empty_answer` (in both paths)."""
    v = verdict(tokenizer, ANSWER, text)
    assert v.code == "empty_answer" and "answer" in v.detail
    message = {"role": "assistant", "content": text or None}
    assert score_turn(ANSWER, turn_from_message(message, "stop"), TOOLS).code == "empty_answer"
    assert verdict(tokenizer, ANSWER, text + "hello").code == "ok"


def test_no_call(tokenizer):
    v = verdict(tokenizer, READ, "I would read src/app.py first.")
    assert v.code == "no_call"
    assert "read_file" in v.detail


def test_unexpected_call(tokenizer):
    v = verdict(tokenizer, ANSWER, call_block("read_file", {"path": "src/app.py"}))
    assert v.code == "unexpected_call"


def test_unexpected_call_even_if_unparseable(tokenizer):
    assert (
        verdict(tokenizer, ANSWER, '<tool_call>\n{"name": "read_file", \n</tool_call>').code
        == "unexpected_call"
    )


def test_leaked_markup_call_written_as_text(tokenizer):
    text = '<function=read_file>{"path": "src/app.py"}</function>'
    turn = parse_completion(tokenizer, text, TOOLS)
    assert not turn.tool_calls and turn.leaked_markup
    assert score_turn(READ, turn, TOOLS).code == "leaked_markup"


def test_leaked_markup_stray_closing_tag(tokenizer):
    text = 'read_file {"path": "src/app.py"}\n</tool_call>'
    assert verdict(tokenizer, READ, text).code == "leaked_markup"


def test_leaked_markup_in_server_content():
    message = {"role": "assistant", "content": call_block("read_file", {"path": "src/app.py"})}
    assert score_turn(READ, turn_from_message(message, "stop"), TOOLS).code == "leaked_markup"


def test_leaked_markup_in_an_answer(tokenizer):
    assert verdict(tokenizer, ANSWER, "Done. </tool_call>").code == "leaked_markup"


def test_unparseable_malformed_json(tokenizer):
    text = '<tool_call>\n{"name": "read_file", "arguments": {"path": "src/app.py"}\n</tool_call>'
    turn = parse_completion(tokenizer, text, TOOLS)
    assert turn.unparsed and not turn.tool_calls
    assert score_turn(READ, turn, TOOLS).code == "unparseable"


def test_unparseable_truncated_call(tokenizer):
    assert verdict(tokenizer, READ, '<tool_call>\n{"name": "read_fi').code == "unparseable"


def test_unparseable_when_the_server_dropped_the_call():
    # mlx_lm server's answer to malformed tool JSON: finish_reason tool_calls, content null, no tool_calls
    turn = turn_from_message({"role": "assistant", "content": None}, "tool_calls")
    assert turn.unparsed == [SERVER_DROPPED]
    assert score_turn(READ, turn, TOOLS).code == "unparseable"
    assert not turn_checks(READ, turn, TOOLS).parsed


def test_unparseable_server_arguments_not_json():
    message = {"content": None, "tool_calls": [{"function": {"name": "read_file", "arguments": '{"path": '}}]}
    assert score_turn(READ, turn_from_message(message, "tool_calls"), TOOLS).code == "unparseable"


def test_wrong_name(tokenizer):
    v = verdict(tokenizer, READ, call_block("list_files", {"path": "src/app.py"}))
    assert v.code == "wrong_name"
    assert "list_files" in v.detail


def test_wrong_name_undeclared_tool(tokenizer):
    v = verdict(tokenizer, READ, call_block("cat", {"path": "src/app.py"}))
    assert v.code == "wrong_name" and "not a declared tool" in v.detail


def test_schema_invalid_wrong_type(tokenizer):
    ref = reference(("run_command", {"command": "pytest", "args": ["-q"]}))
    v = verdict(tokenizer, ref, call_block("run_command", {"command": "pytest", "args": "-q"}))
    assert v.code == "schema_invalid"
    assert "args" in v.detail


def test_schema_invalid_arguments_as_string_from_server():
    # the double-encoding failure: the model wrote "arguments" as a JSON string; mlx_lm server json.dumps it
    # again, so the client (and the agent) decodes a string, not an object
    server_arguments = json.dumps(json.dumps({"path": "src/app.py"}))
    message = {
        "content": None,
        "tool_calls": [{"function": {"name": "read_file", "arguments": server_arguments}}],
    }
    turn = turn_from_message(message, "tool_calls")
    assert isinstance(turn.tool_calls[0].arguments, str)
    assert score_turn(READ, turn, TOOLS).code == "schema_invalid"
    assert not turn_checks(READ, turn, TOOLS).schema_valid


def test_schema_invalid_arguments_as_string_in_process(tokenizer):
    text = call_block("read_file", json.dumps({"path": "src/app.py"}))
    assert verdict(tokenizer, READ, text).code == "schema_invalid"


def test_missing_required(tokenizer):
    ref = reference(("write_file", {"path": "notes.md", "content": "# Notes"}))
    v = verdict(tokenizer, ref, call_block("write_file", {"path": "notes.md"}))
    assert v.code == "missing_required"
    assert "content" in v.detail


def test_unexpected_arg_undeclared(tokenizer):
    v = verdict(tokenizer, READ, call_block("read_file", {"path": "src/app.py", "encoding": "utf-8"}))
    assert v.code == "unexpected_arg"
    assert "encoding" in v.detail and "not declared" in v.detail


def test_unexpected_arg_declared_but_not_in_reference(tokenizer):
    ref = reference(("run_command", {"command": "pytest", "args": []}))
    v = verdict(tokenizer, ref, call_block("run_command", {"command": "pytest", "args": [], "cwd": "src"}))
    assert v.code == "unexpected_arg" and "cwd" in v.detail


def test_wrong_value(tokenizer):
    v = verdict(tokenizer, READ, call_block("read_file", {"path": "src/main.py"}))
    assert v.code == "wrong_value"
    assert "src/main.py" in v.detail


def test_wrong_value_optional_argument_omitted(tokenizer):
    ref = reference(("run_command", {"command": "pytest", "args": [], "cwd": "tests"}))
    v = verdict(tokenizer, ref, call_block("run_command", {"command": "pytest", "args": []}))
    assert v.code == "wrong_value" and "omitted" in v.detail


def test_int_float_coercion(tokenizer):
    ref = reference(("set_timer", {"seconds": 2.0, "repeat": 3}))
    assert verdict(tokenizer, ref, call_block("set_timer", {"seconds": 2, "repeat": 3})).code == "ok"
    assert verdict(tokenizer, ref, call_block("set_timer", {"seconds": 2.0, "repeat": 3.0})).code == "ok"
    assert (
        verdict(tokenizer, ref, call_block("set_timer", {"seconds": 2.5, "repeat": 3})).code == "wrong_value"
    )


def test_boolean_is_not_a_number(tokenizer):
    ref = reference(("set_timer", {"seconds": 1, "loud": True}))
    assert (
        verdict(tokenizer, ref, call_block("set_timer", {"seconds": 1, "loud": 1})).code == "schema_invalid"
    )


def test_string_normaliser_is_opt_in(tokenizer):
    text = call_block("read_file", {"path": " SRC/App.py"})
    assert verdict(tokenizer, READ, text).code == "wrong_value"
    assert verdict(tokenizer, READ, text, normalize=normalize_text).code == "ok"


def test_parallel_calls_any_order(tokenizer):
    ref = reference(("read_file", {"path": "a.py"}), ("read_file", {"path": "b.py"}))
    text = call_block("read_file", {"path": "b.py"}) + "\n" + call_block("read_file", {"path": "a.py"})
    turn = parse_completion(tokenizer, text, TOOLS)
    assert [c.arguments["path"] for c in turn.tool_calls] == ["b.py", "a.py"]
    assert score_turn(ref, turn, TOOLS).code == "ok"


def test_parallel_calls_one_wrong(tokenizer):
    ref = reference(("read_file", {"path": "a.py"}), ("list_files", {"path": "src"}))
    text = call_block("list_files", {"path": "src"}) + call_block("read_file", {"path": "c.py"})
    v = verdict(tokenizer, ref, text)
    assert v.code == "wrong_value"
    assert v.detail.startswith("call 2 of 2") and "c.py" in v.detail


def test_wrong_count(tokenizer):
    ref = reference(("read_file", {"path": "a.py"}), ("read_file", {"path": "b.py"}))
    v = verdict(tokenizer, ref, call_block("read_file", {"path": "a.py"}))
    assert v.code == "wrong_count"
    assert v.detail == "1 calls, expected 2"


def test_every_code_is_exercised():
    """Every verdict code is the outcome some test of this file asserts (`.code == "..."`, `Verdict("...")`):
    a code added to core.scoring.CODES fails here until a test produces it."""
    asserted = set(re.findall(r'(?:\.code\s*==\s*|Verdict\()"(\w+)"', Path(__file__).read_text()))
    assert asserted == set(CODES)


def test_reference_with_string_arguments(tokenizer):
    # references from raw OpenAI traces carry JSON-string arguments
    ref = {
        "role": "assistant",
        "tool_calls": [{"function": {"name": "read_file", "arguments": '{"path": "src/app.py"}'}}],
    }
    assert verdict(tokenizer, ref, call_block("read_file", {"path": "src/app.py"})).code == "ok"
