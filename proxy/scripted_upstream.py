"""The proxy's fault scripts, plugged into the scripted OpenAI-compatible server (core/scripted.py).

For what a real model cannot produce on demand: parallel tool calls streamed in interleaved argument
fragments, malformed bodies, streams that stall, drop, reset or never send [DONE]; and as a fast upstream
for bench/proxy_overhead.py, so model time does not drown the proxy's own cost. The request's `model` picks
the script (see SCRIPTS); any other model name gets "echo".

    with ScriptedUpstream() as upstream:
        client = openai.OpenAI(base_url=upstream.base_url, api_key="x")
        client.chat.completions.create(model="parallel-tools", messages=[...], stream=True)

    python -m proxy.scripted_upstream [--port N]    # its own process; prints {"event": "listening", ...}
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

from core.scripted import (
    Http,
    Reply,
    ScriptedServer,
    chunk,
    openai_events,
    serve_until_stopped,
    sse,
    tool_call,
    wants_usage,
)

PARALLEL_CALLS = [
    ("call_a", "read_file", '{"path": "src/app.py"}'),
    ("call_b", "list_files", '{"path": "tests", "recursive": true}'),
]
LEAKED_TEXT = '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'


class ScriptedUpstream(ScriptedServer):
    """The scripted server running SCRIPTS; `gate` holds the "gated" and "stall" scripts until set."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, gate_timeout: float = 10.0):
        super().__init__(self.dispatch, models=list(SCRIPTS), host=host, port=port)
        self.gate_timeout = gate_timeout
        self.gate = threading.Event()
        self.finished = threading.Event()  # set when a gated stream ended

    async def dispatch(self, request: dict, http: Http) -> None:
        await SCRIPTS.get(str(request.get("model")), echo)(self, request, http)

    def stop(self) -> None:
        self.gate.set()  # release held streams
        super().stop()

    async def wait_for_gate(self) -> None:
        deadline = time.monotonic() + self.gate_timeout
        while not self.gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)


def text_reply(request: dict, text: str, finish_reason: str = "stop") -> Reply:
    return Reply({"role": "assistant", "content": text}, finish_reason, str(request.get("model", "scripted")))


def last_user_text(request: dict) -> str:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


async def echo(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """'echo: <last user message>', streamed word by word."""
    await http.reply(request, text_reply(request, "echo: " + last_user_text(request)))


async def parallel_tools(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """Two tool calls; streamed OpenAI-style: arguments in small fragments, interleaved by index."""
    calls = [tool_call(*call) for call in PARALLEL_CALLS]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    await http.reply(request, Reply(message, "tool_calls", request.get("model", "scripted")))


async def mlx_style_tool(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """A tool call shaped the way mlx_lm.server sends one (see FIELD-NOTES.md)."""
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [tool_call("u1", "read_file", '{"path": "a.py"}')],
    }
    await http.reply(request, Reply(message, "tool_calls", request.get("model", "scripted")), style="mlx")


async def leaked_markup(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """Tool-call markup in plain content: the server failed to parse the model's call."""
    await http.reply(request, text_reply(request, LEAKED_TEXT))


async def missing_tool_calls(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """finish_reason tool_calls without any tool_calls (mlx_lm.server after a malformed call)."""
    reply = Reply({"role": "assistant", "content": None}, "tool_calls", request.get("model", "scripted"))
    await http.reply(request, reply)


def first_chunk(request: dict, text: str = "partial") -> bytes:
    return sse(chunk(text_reply(request, text), {"role": "assistant", "content": text}))


async def not_json(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """A 200 whose body does not parse: HTML for a plain request, a broken data line in a stream."""
    if not request.get("stream"):
        await http.send(200, b"<html>upstream exploded</html>")
    else:
        await http.stream([first_chunk(request, "hi"), b'data: {"broken\n\n', b"data: [DONE]\n\n"])


async def no_done(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """A stream that ends cleanly at the HTTP level but never sends [DONE]."""
    await http.stream([first_chunk(request)])


async def drop(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """A stream whose connection closes after the first chunk."""
    await http.stream([first_chunk(request)], end=False)


async def reset(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """A stream whose connection is reset (TCP RST) after the first chunk: a crashed server."""
    await http.stream([first_chunk(request)], end=False)
    await asyncio.sleep(0.05)
    http.reset()


async def gated(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """First chunk, then wait for `upstream.gate` before the rest: proves chunk-by-chunk forwarding."""
    reply = text_reply(request, "first last")

    async def events():
        yield sse(chunk(reply, {"role": "assistant", "content": "first"}))
        await upstream.wait_for_gate()
        yield sse(chunk(reply, {"content": " last"}))
        yield sse(chunk(reply, {}, "stop"))
        yield b"data: [DONE]\n\n"

    try:
        await http.stream(events())
    finally:
        upstream.finished.set()


async def slow(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """'echo: ...' streamed with a pause before each word: a stream that is in flight for a while."""
    reply = text_reply(request, "echo: " + last_user_text(request))
    pause = float(request.get("pause", 0.05))

    async def events():
        for event in openai_events(reply, wants_usage(request)):
            await asyncio.sleep(pause)
            yield event

    if not request.get("stream"):
        await asyncio.sleep(pause * 4)
        await http.reply(request, reply)
    else:
        await http.stream(events())


async def http_error(upstream: ScriptedUpstream, request: dict, http: Http) -> None:
    """An upstream HTTP 400 with an OpenAI-style error body."""
    await http.error(400, "context length exceeded", "invalid_request")


SCRIPTS = {
    "echo": echo,
    "parallel-tools": parallel_tools,
    "mlx-style-tool": mlx_style_tool,
    "leaked-markup": leaked_markup,
    "missing-tool-calls": missing_tool_calls,
    "not-json": not_json,
    "no-done": no_done,
    "drop": drop,
    "reset": reset,
    "gated": gated,
    "slow": slow,
    "http-error": http_error,
}


def main(argv: list[str] | None = None) -> None:
    """`python -m proxy.scripted_upstream [--port N]`: serve until SIGINT/SIGTERM/SIGHUP."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m proxy.scripted_upstream",
        description="A scripted OpenAI-compatible server for trying the proxy without a model; the "
        f"request's model picks the script: {', '.join(SCRIPTS)} (anything else: echo). Prints "
        '{"event": "listening", "url": ..., "port": ...} once it listens.',
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)

    def announce(server: ScriptedServer) -> None:
        print(json.dumps({"event": "listening", "url": server.url, "port": server.port}), flush=True)

    serve_until_stopped(ScriptedUpstream(host=args.host, port=args.port), announce)


if __name__ == "__main__":
    main()
