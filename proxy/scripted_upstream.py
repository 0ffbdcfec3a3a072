"""A scripted OpenAI-compatible upstream: a minimal HTTP/1.1 server in a background thread.

For what a real model cannot produce on demand: parallel tool calls streamed in interleaved argument
fragments, malformed bodies, streams that stall, drop or never send [DONE]; and as a fast upstream for
bench/proxy_overhead.py, so model time does not drown the proxy's own cost. The request's `model` picks
the script (see SCRIPTS); any other model name gets "echo".

    with ScriptedUpstream() as upstream:
        client = openai.OpenAI(base_url=upstream.base_url, api_key="x")
        client.chat.completions.create(model="parallel-tools", messages=[...], stream=True)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

CREATED = 1_700_000_000

PARALLEL_CALLS = [
    ("call_a", "read_file", '{"path": "src/app.py"}'),
    ("call_b", "list_files", '{"path": "tests", "recursive": true}'),
]
LEAKED_TEXT = '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'


@dataclass
class Exchange:
    """One request the scripted upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class ScriptedUpstream:
    host: str = "127.0.0.1"
    port: int = 0
    gate_timeout: float = 10.0
    received: list[Exchange] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)  # the "gated" script waits on it
    finished: threading.Event = field(default_factory=threading.Event)  # set when a gated stream ended
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self) -> ScriptedUpstream:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(asyncio.start_server(self._serve, self.host, self.port))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()
            server.close()
            self._loop.run_until_complete(server.wait_closed())

        self._thread = threading.Thread(target=run, name="scripted-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("scripted upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self.gate.set()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._thread = None

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = {}
                for line in header_lines:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                exchange = Exchange(method, target.split("?", 1)[0], headers, body)
                self.received.append(exchange)
                keep_alive = await self._respond(exchange, writer)
                if not keep_alive or headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _respond(self, exchange: Exchange, writer: asyncio.StreamWriter) -> bool:
        if exchange.method == "GET" and exchange.path in ("/health", "/v1/models"):
            body = {"status": "ok"} if exchange.path == "/health" else {"object": "list", "data": []}
            await send_body(writer, 200, json.dumps(body).encode())
            return True
        if exchange.method != "POST" or exchange.path not in ("/v1/chat/completions", "/chat/completions"):
            await send_body(writer, 404, b'{"error": "not found"}')
            return True
        try:
            request = exchange.json()
        except ValueError:
            await send_body(writer, 400, b'{"error": "request body is not JSON"}')
            return True
        script = SCRIPTS.get(str(request.get("model")), echo)
        return await script(self, request, writer)


async def send_body(writer, status: int, body: bytes, content_type: str = "application/json") -> None:
    head = (
        f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


async def send_stream(writer, events: AsyncIterator[bytes] | list[bytes], terminate: bool = True) -> None:
    """An SSE response, one HTTP chunk per event; `terminate=False` drops the connection instead of ending."""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    if isinstance(events, list):
        events = _aiter(events)
    async for event in events:
        writer.write(b"%x\r\n%s\r\n" % (len(event), event))
        await writer.drain()
    if terminate:
        writer.write(b"0\r\n\r\n")
        await writer.drain()


async def _aiter(items):
    for item in items:
        yield item


def sse(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


DONE = b"data: [DONE]\n\n"


def completion(request: dict, message: dict, finish_reason: str, usage: dict | None = None) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": CREATED,
        "model": request.get("model", "scripted"),
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage or {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }


def chunk(request: dict, delta: dict, finish_reason: str | None = None) -> bytes:
    return sse(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": request.get("model", "scripted"),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
    )


def usage_chunk(request: dict, usage: dict | None = None) -> bytes:
    return sse(
        {
            "id": "chatcmpl-scripted",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": request.get("model", "scripted"),
            "choices": [],
            "usage": usage or {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }
    )


def wants_usage(request: dict) -> bool:
    return bool((request.get("stream_options") or {}).get("include_usage"))


def last_user_text(request: dict) -> str:
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return ""


async def reply(request: dict, writer, message: dict, finish_reason: str, deltas: list[dict]) -> bool:
    """Answer `message` whole, or as the OpenAI-style stream of `deltas` when the request streams."""
    if not request.get("stream"):
        await send_body(writer, 200, json.dumps(completion(request, message, finish_reason)).encode())
        return True
    events = [chunk(request, {"role": "assistant", "content": ""})]
    events += [chunk(request, delta) for delta in deltas]
    events.append(chunk(request, {}, finish_reason))
    if wants_usage(request):
        events.append(usage_chunk(request))
    await send_stream(writer, [*events, DONE])
    return True


async def echo(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """'echo: <last user message>', streamed word by word."""
    text = "echo: " + last_user_text(request)
    words = text.split(" ")
    deltas = [{"content": word if i == 0 else " " + word} for i, word in enumerate(words)]
    return await reply(request, writer, {"role": "assistant", "content": text}, "stop", deltas)


async def parallel_tools(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """Two tool calls; streamed OpenAI-style: arguments in small fragments, interleaved by index."""
    calls = [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        for call_id, name, arguments in PARALLEL_CALLS
    ]
    deltas = []
    for index, (call_id, name, _) in enumerate(PARALLEL_CALLS):
        deltas.append(
            {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
        )
    fragments = [[args[i : i + 4] for i in range(0, len(args), 4)] for _, _, args in PARALLEL_CALLS]
    for step in range(max(map(len, fragments))):
        for index, pieces in enumerate(fragments):
            if step < len(pieces):
                deltas.append({"tool_calls": [{"index": index, "function": {"arguments": pieces[step]}}]})
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    return await reply(request, writer, message, "tool_calls", deltas)


async def mlx_style_tool(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """A tool call shaped the way mlx_lm.server streams one (see FIELD-NOTES.md)."""
    call = {
        "function": {"name": "read_file", "arguments": '{"path": "a.py"}'},
        "type": "function",
        "id": "u1",
    }
    if not request.get("stream"):
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        await send_body(writer, 200, json.dumps(completion(request, message, "tool_calls")).encode())
        return True
    events = [
        b": keepalive 5/5\n\n",
        chunk(request, {"role": "assistant", "tool_calls": [dict(call, index=0)]}),
        chunk(request, {"role": "assistant"}, "tool_calls"),
    ]
    if wants_usage(request):
        usage = json.loads(usage_chunk(request)[6:])
        usage["object"] = "chat.completion"
        events.append(sse(usage))
    await send_stream(writer, [*events, DONE])
    return True


async def leaked_markup(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """Tool-call markup in plain content: the server failed to parse the model's call."""
    deltas = [{"content": LEAKED_TEXT[:20]}, {"content": LEAKED_TEXT[20:]}]
    return await reply(request, writer, {"role": "assistant", "content": LEAKED_TEXT}, "stop", deltas)


async def missing_tool_calls(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """finish_reason tool_calls without any tool_calls (mlx_lm.server after a malformed call)."""
    return await reply(request, writer, {"role": "assistant", "content": None}, "tool_calls", [])


async def not_json(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """A 200 whose body does not parse: HTML for a plain request, a broken data line in a stream."""
    if not request.get("stream"):
        await send_body(writer, 200, b"<html>upstream exploded</html>", "application/json")
        return True
    await send_stream(
        writer, [chunk(request, {"role": "assistant", "content": "hi"}), b'data: {"broken\n\n', DONE]
    )
    return True


async def no_done(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """A stream that ends cleanly at the HTTP level but never sends [DONE]."""
    await send_stream(writer, [chunk(request, {"role": "assistant", "content": "partial"})])
    return True


async def drop(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """A stream whose connection drops after the first chunk."""
    await send_stream(writer, [chunk(request, {"role": "assistant", "content": "partial"})], terminate=False)
    return False


async def gated(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """First chunk, then wait for `upstream.gate` before the rest: proves chunk-by-chunk forwarding."""

    async def events():
        yield chunk(request, {"role": "assistant", "content": "first"})
        deadline = time.monotonic() + upstream.gate_timeout
        while not upstream.gate.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        yield chunk(request, {"content": " last"})
        yield chunk(request, {}, "stop")
        yield DONE

    try:
        await send_stream(writer, events())
    finally:
        upstream.finished.set()
    return True


async def http_error(upstream: ScriptedUpstream, request: dict, writer) -> bool:
    """An upstream HTTP 400 with an OpenAI-style error body."""
    await send_body(
        writer, 400, b'{"error": {"message": "context length exceeded", "type": "invalid_request"}}'
    )
    return True


SCRIPTS = {
    "echo": echo,
    "parallel-tools": parallel_tools,
    "mlx-style-tool": mlx_style_tool,
    "leaked-markup": leaked_markup,
    "missing-tool-calls": missing_tool_calls,
    "not-json": not_json,
    "no-done": no_done,
    "drop": drop,
    "gated": gated,
    "http-error": http_error,
}


def main(argv: list[str] | None = None) -> None:
    """`python -m proxy.scripted_upstream [--port N]`: serve until interrupted; prints {"url": ...} first."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m proxy.scripted_upstream",
        description="A scripted OpenAI-compatible server for trying the proxy without a model; the "
        f"request's model picks the script: {', '.join(SCRIPTS)} (anything else: echo).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    upstream = ScriptedUpstream(host=args.host, port=args.port).start()
    print(json.dumps({"url": upstream.url}), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        upstream.stop()


if __name__ == "__main__":
    main()
