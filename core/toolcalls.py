"""Tool calls as a model writes them, parsed the way `mlx_lm.server` parses them.

One parser per model, taken from mlx-lm (`tokenizer.tool_parser`, chosen by mlx-lm from the chat
template), shared by curate's round-trip check, train's preflight and evaluate's scorer, so a score
means what the agent will see from the server.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Tool-call markup that should never reach an agent as plain `content` (many model families).
LEAKED_MARKUP = re.compile(
    r"<tool_call>|</tool_call>|<function=|<\|tool_call|\[TOOL_CALLS\]|<minimax:tool_call>|<start_function_call>"
)


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: Any  # parsed JSON (normally a dict); the raw string when it was not valid JSON

    def canonical(self) -> str:
        return json.dumps([self.name, self.arguments], sort_keys=True, ensure_ascii=False)

    def as_openai(self, call_id: str) -> dict[str, Any]:
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class ParsedTurn:
    """What the server would return for one generated assistant turn."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    unparsed: list[str] = field(
        default_factory=list
    )  # tool-call blocks the parser rejected (server drops them)
    reasoning: str = ""

    @property
    def leaked_markup(self) -> bool:
        return bool(LEAKED_MARKUP.search(self.content))


def load_tokenizer(model_path: str | Path):
    """mlx-lm's TokenizerWrapper for a local model directory (with its inferred `tool_parser`)."""
    from mlx_lm.utils import load_tokenizer as mlx_load_tokenizer

    return mlx_load_tokenizer(Path(model_path))


def server_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A copy of `messages` preprocessed as mlx_lm.server does before templating (string arguments → dicts)."""
    from mlx_lm.server import process_message_content

    messages = copy.deepcopy(messages)
    try:
        process_message_content(messages)
    except json.JSONDecodeError as error:
        raise ValueError(f"tool call arguments are not valid JSON ({error})") from None
    return messages


def render(
    tokenizer, messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool = False
) -> str:
    """The chat-template text for `messages` exactly as the server would build the prompt."""
    return tokenizer.apply_chat_template(
        server_messages(messages),
        tools=tools or None,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )


def prompt_tokens(tokenizer, messages: list[dict], tools: list[dict] | None) -> list[int]:
    """Token ids of the generation prompt for `messages`, as mlx_lm.server computes them."""
    return tokenizer.apply_chat_template(
        server_messages(messages), tools=tools or None, tokenize=True, add_generation_prompt=True
    )


def completion_text(tokenizer, messages: list[dict], tools: list[dict] | None) -> str:
    """The text the model must generate for the final assistant message of `messages`."""
    prompt = render(tokenizer, messages[:-1], tools, add_generation_prompt=True)
    full = render(tokenizer, messages, tools)
    if not full.startswith(prompt):
        raise ValueError("chat template renders the history differently with and without the final turn")
    return full[len(prompt) :]


def parse_completion(tokenizer, text: str, tools: list[dict] | None = None) -> ParsedTurn:
    """Split generated `text` into content and tool calls with the server's own state machine and parser."""
    from mlx_lm.generate import TextStateMachine, make_text_state_machine

    eos = tokenizer.eos_token or ""
    if eos and eos in text:  # generation stops at the end-of-turn token; a rendered turn continues past it
        text = text[: text.index(eos)]
    machine = make_text_state_machine(tokenizer)
    state = machine.make_state(tokenizer.response_initial_state or "normal")
    state, segments = TextStateMachine.split(state, text)
    state, flushed, last_state = TextStateMachine.flush(state)
    segments.append((last_state, flushed))

    turn = ParsedTurn(content="")
    tool_texts: list[str] = []
    current_tool, previous = "", None
    for name, piece in segments:
        if name == "tool":
            current_tool += piece
        else:
            if previous == "tool":
                tool_texts.append(current_tool)
                current_tool = ""
            if name == "reasoning":
                turn.reasoning += piece
            else:
                turn.content += piece
        previous = name
    if previous == "tool" and current_tool:
        tool_texts.append(current_tool)

    for tool_text in tool_texts:
        try:
            parsed = tokenizer.tool_parser(tool_text, tools)
        except (ValueError, json.JSONDecodeError):
            turn.unparsed.append(tool_text)
            continue
        for call in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                turn.unparsed.append(tool_text)
                continue
            # as the server does: arguments stay what the model wrote (a JSON string stays a string)
            turn.tool_calls.append(ToolCall(call["name"], call.get("arguments", {})))
    return turn


def decode_arguments(arguments: Any) -> Any:
    """Arguments as a JSON value: OpenAI sends a JSON string, some servers and datasets an object."""
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def message_tool_calls(message: dict[str, Any]) -> list[ToolCall]:
    """The structured calls of an OpenAI assistant message."""
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        calls.append(ToolCall(function.get("name", ""), decode_arguments(function.get("arguments", {}))))
    return calls


@dataclass
class RoundTrip:
    ok: bool
    expected: list[ToolCall]
    parsed: list[ToolCall]
    reason: str = ""


def round_trip(tokenizer, messages: list[dict], tools: list[dict] | None) -> RoundTrip:
    """Render the final assistant turn with the model's template and parse it back with its tool parser.

    A sample passes when the parsed calls equal the structured calls (order-sensitive) and no tool
    markup is left in the content: i.e. training on this text teaches calls the server will return.
    """
    final = messages[-1]
    expected = message_tool_calls(final)
    if final.get("role") != "assistant":
        return RoundTrip(False, expected, [], f"last message has role {final.get('role')!r}, not assistant")
    try:
        text = completion_text(tokenizer, messages, tools)
    except Exception as error:  # a rendering error is a property of the sample, reported, never raised
        return RoundTrip(False, expected, [], f"cannot render: {error}")
    turn = parse_completion(tokenizer, text, tools)
    if turn.unparsed:
        return RoundTrip(False, expected, turn.tool_calls, f"tool parser rejected {turn.unparsed[0][:80]!r}")
    if [c.canonical() for c in turn.tool_calls] != [c.canonical() for c in expected]:
        got = ", ".join(c.name for c in turn.tool_calls) or "no calls"
        want = ", ".join(c.name for c in expected) or "no calls"
        return RoundTrip(False, expected, turn.tool_calls, f"parsed back {got}; expected {want}")
    if expected and turn.leaked_markup:
        return RoundTrip(False, expected, turn.tool_calls, "tool-call markup left in content")
    return RoundTrip(True, expected, turn.tool_calls)
