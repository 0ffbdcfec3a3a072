"""One `chat.completion` from what the server sent: an SSE stream of chunks or a plain JSON body.

Both paths end in `normalize_completion`, so a streamed exchange and the same exchange answered in one
piece record EQUAL `response` objects (apart from ids and timestamps): object "chat.completion";
each choice's message with role, content (empty → null), tool_calls (id, type, function {name,
arguments}; no stream `index`, absent when there are none), finish_reason; usage.

Streams are merged by hand rather than with openai's ChatCompletionStreamState, which concatenates
every repeated string field, so mlx_lm.server's `role` in every chunk would become
"assistantassistant...", and which indexes tool calls by list position rather than by their `index`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_CONCATENATED = ("content", "reasoning", "reasoning_content", "refusal")


def parse_sse(text: str) -> tuple[list[str], bool]:
    """The `data:` payloads of a server-sent-event body, and whether it ended with `data: [DONE]`.

    Comments (`: keepalive`) and other fields are skipped; multi-line data is joined with newlines; a
    last event cut off without its blank line is still returned (a partial stream is still evidence).
    """
    payloads: list[str] = []
    data: list[str] = []
    done = False
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if data:
                payloads.append("\n".join(data))
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field != "data":
            continue
        value = value[1:] if value.startswith(" ") else value
        if value.strip() == "[DONE]":
            done = True
            continue
        data.append(value)
    if data:
        payloads.append("\n".join(data))
    return payloads, done


class StreamAssembler:
    """Merges chat.completion.chunk objects, in order, into one chat.completion."""

    def __init__(self) -> None:
        self.top: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.tool_calls: dict[int, dict[int, dict[str, Any]]] = {}
        self.usage: dict | None = None
        self.chunks = 0

    def add(self, chunk: Any) -> None:
        if not isinstance(chunk, dict):
            raise ValueError(f"stream chunk is a {type(chunk).__name__}, not an object")
        self.chunks += 1
        for key, value in chunk.items():
            if key not in ("choices", "object", "usage") and value is not None:
                self.top.setdefault(key, value)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        choices = chunk.get("choices") or []
        if not isinstance(choices, list):
            raise ValueError("stream chunk: choices is not a list")
        for position, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise ValueError("stream chunk: a choice is not an object")
            index = choice.get("index", position)
            state = self.choices.setdefault(index, {"index": index, "message": {}, "finish_reason": None})
            for key, value in choice.items():
                if key in ("index", "delta", "message") or value is None:
                    continue
                if key == "logprobs" and isinstance(value, dict) and isinstance(state.get(key), dict):
                    for part, items in value.items():
                        if isinstance(items, list) and isinstance(state[key].get(part), list):
                            state[key][part] = state[key][part] + items
                        else:
                            state[key][part] = items
                else:
                    state[key] = value
            delta = choice.get("delta") or choice.get("message") or {}
            if not isinstance(delta, dict):
                raise ValueError("stream chunk: delta is not an object")
            self._merge_delta(index, state["message"], delta)

    def _merge_delta(self, index: int, message: dict[str, Any], delta: dict[str, Any]) -> None:
        for key, value in delta.items():
            if value is None:
                continue
            if key == "tool_calls":
                if not isinstance(value, list):
                    raise ValueError("stream chunk: delta.tool_calls is not a list")
                self._merge_tool_calls(self.tool_calls.setdefault(index, {}), value)
            elif key in _CONCATENATED and isinstance(value, str):
                message[key] = message.get(key, "") + value
            else:  # role (repeated by mlx_lm.server in every chunk), and anything unknown: last wins
                message[key] = value

    @staticmethod
    def _merge_tool_calls(calls: dict[int, dict[str, Any]], deltas: list[Any]) -> None:
        for delta in deltas:
            if not isinstance(delta, dict):
                raise ValueError("stream chunk: a tool_calls item is not an object")
            index = delta.get("index")
            if not isinstance(index, int):  # servers that omit index: a new id starts a new call
                ids = {call.get("id"): i for i, call in calls.items()}
                if delta.get("id") in ids:
                    index = ids[delta["id"]]
                elif delta.get("id") or not calls:
                    index = max(calls, default=-1) + 1
                else:
                    index = max(calls)
            call = calls.setdefault(index, {"id": None, "type": None, "function": {}})
            if delta.get("id") and not call["id"]:
                call["id"] = delta["id"]
            if delta.get("type"):
                call["type"] = delta["type"]
            function = delta.get("function") or {}
            if not isinstance(function, dict):
                raise ValueError("stream chunk: tool_calls[].function is not an object")
            target = call["function"]
            name = function.get("name")
            if name and target.get("name") != name:  # some servers repeat the whole name in every chunk
                target["name"] = target.get("name", "") + name
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                previous = target.get("arguments")
                target["arguments"] = (previous if isinstance(previous, str) else "") + arguments
            elif arguments is not None:
                target["arguments"] = arguments

    def completion(self) -> dict[str, Any]:
        """The merged chat.completion (normalised). Raises ValueError when no chunk carried anything."""
        if not self.choices and self.usage is None:
            raise ValueError("the stream carried no choices")
        result = dict(self.top)
        result["object"] = "chat.completion"
        choices = []
        for index in sorted(self.choices):
            choice = dict(self.choices[index])
            message = dict(choice["message"])
            calls = self.tool_calls.get(index)
            if calls:
                message["tool_calls"] = [calls[i] for i in sorted(calls)]
            choice["message"] = message
            choices.append(choice)
        result["choices"] = choices
        result["usage"] = self.usage
        return normalize_completion(result)


def assemble(chunks: list[Any]) -> dict[str, Any]:
    assembler = StreamAssembler()
    for chunk in chunks:
        assembler.add(chunk)
    return assembler.completion()


def normalize_message(message: dict[str, Any]) -> dict[str, Any]:
    message = dict(message)
    message["role"] = message.get("role") or "assistant"
    if message.get("content") == "" or "content" not in message:
        message["content"] = None
    calls = message.pop("tool_calls", None)
    if calls:
        if not isinstance(calls, list):
            raise ValueError("message.tool_calls is not a list")
        message["tool_calls"] = [_normalize_call(call) for call in calls]
    return message


def _normalize_call(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise ValueError("a tool call has no function object")
    function = dict(call["function"])
    if not isinstance(function.get("name"), str):
        raise ValueError("a tool call has no function name")
    function.setdefault("arguments", None)
    return {"id": call.get("id"), "type": call.get("type") or "function", "function": function}


def normalize_completion(body: Any) -> dict[str, Any]:
    """A chat.completion object in the recorded shape; ValueError when `body` is not one."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise ValueError("not a chat completion: no choices list")
    result = dict(body)
    result["object"] = "chat.completion"
    choices = []
    for position, choice in enumerate(body["choices"]):
        if not isinstance(choice, dict) or not isinstance(choice.get("message", {}), dict):
            raise ValueError("not a chat completion: a choice has no message object")
        choice = dict(choice)
        choice.setdefault("index", position)
        choice.setdefault("finish_reason", None)
        choice["message"] = normalize_message(choice.get("message") or {})
        choices.append(choice)
    result["choices"] = choices
    result.setdefault("usage", None)
    return result


def loads(data: bytes | str) -> Any:
    """orjson (fast) when it can; json for what only json accepts (NaN, huge integers)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def completion_from_sse(text: str) -> tuple[dict[str, Any] | None, bool, list[str]]:
    """(completion or None, saw [DONE], problems) for an SSE body; problems name unparseable events."""
    payloads, done = parse_sse(text)
    assembler = StreamAssembler()
    problems = []
    for number, payload in enumerate(payloads, start=1):
        try:
            assembler.add(loads(payload))
        except ValueError as error:
            problems.append(f"event {number}: {error}")
    try:
        completion = assembler.completion()
    except ValueError as error:
        if payloads:
            problems.append(str(error))
        completion = None
    return completion, done, problems
