"""A scripted OpenAI-compatible server: the HTTP and chat-completions protocol, written once; what it answers
is a *script* plugged into it.

Used by the scripted teacher (agent/teacher.py: the task-solving policies) and by the proxy's tests and
benchmark (proxy/scripted_upstream.py: fault scripts). It serves, on a loopback port, from an asyncio loop
in a background thread:

    GET  /health                   {"status": "ok"}
    GET  /v1/models                the server's `models`
    POST /v1/chat/completions      the script's answer; a body that is not a JSON object with a `messages`
                                   list gets a 400 without reaching the script

A script is `async def script(request: dict, http: Http) -> None`: it answers through `http`, usually with
`await http.reply(request, Reply(...))`, which sends the completion whole, or streamed as server-sent events
when the request asks for a stream, in one of two shapes (both seen in the field):
  "openai"  the role first, each tool call's id and name, then its arguments in FRAGMENT-character pieces
            interleaved by call index, text word by word, the finish reason, a usage chunk if asked, [DONE]
  "mlx"     what mlx_lm.server sends: a keepalive comment, the role in every chunk, each tool call whole at
            its index, the finish reason, a usage chunk whose object is "chat.completion", [DONE]
Scripts that misbehave on purpose use `http.send`, `http.stream(..., end=False)` and `http.reset()`.

    with ScriptedServer(script, models=["my-model"]) as server:
        openai.OpenAI(base_url=server.base_url, api_key="x")
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import struct
import threading
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core.net import Served

CREATED = 1_700_000_000
DONE = b"data: [DONE]\n\n"
FRAGMENT = 4  # characters of tool-call arguments per chunk of an OpenAI-style stream
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


def default_usage() -> dict[str, int]:
    return {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}


@dataclass
class Reply:
    """One assistant turn: `message` is {"role": "assistant", "content": ..., "tool_calls": [...]}."""

    message: dict[str, Any]
    finish_reason: str
    model: str
    usage: dict[str, int] = field(default_factory=default_usage)
    id: str = "chatcmpl-scripted"
    created: int = CREATED


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def completion(reply: Reply) -> dict[str, Any]:
    """The non-streamed body."""
    return {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [{"index": 0, "message": reply.message, "finish_reason": reply.finish_reason}],
        "usage": reply.usage,
    }


def chunk(reply: Reply, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": reply.id,
        "object": "chat.completion.chunk",
        "created": reply.created,
        "model": reply.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def usage_chunk(reply: Reply, object_name: str = "chat.completion.chunk") -> dict[str, Any]:
    return {
        "id": reply.id,
        "object": object_name,
        "created": reply.created,
        "model": reply.model,
        "choices": [],
        "usage": reply.usage,
    }


def sse(event: Any) -> bytes:
    """One server-sent event: `data: <JSON>` (bytes are sent as they are), then a blank line."""
    return b"data: " + (event if isinstance(event, bytes) else json.dumps(event).encode()) + b"\n\n"


def words(text: str) -> list[str]:
    """`text` in pieces of one word and the space after it (joined, they are `text` again)."""
    return [piece for piece in re.findall(r"\S*\s*", text) if piece]


def openai_events(reply: Reply, include_usage: bool) -> list[bytes]:
    message = reply.message
    calls = message.get("tool_calls") or []
    chunks = [chunk(reply, {"role": "assistant", "content": None if calls else ""})]
    for index, call in enumerate(calls):
        head = {"index": index, "id": call["id"], "type": "function"}
        function = {"name": call["function"]["name"], "arguments": ""}
        chunks.append(chunk(reply, {"tool_calls": [{**head, "function": function}]}))
    pieces = [_fragments(call["function"]["arguments"]) for call in calls]
    for step in range(max(map(len, pieces), default=0)):
        for index, parts in enumerate(pieces):
            if step < len(parts):
                chunks.append(
                    chunk(reply, {"tool_calls": [{"index": index, "function": {"arguments": parts[step]}}]})
                )
    chunks += [chunk(reply, {"content": piece}) for piece in words(message.get("content") or "")]
    chunks.append(chunk(reply, {}, reply.finish_reason))
    if include_usage:
        chunks.append(usage_chunk(reply))
    return [*map(sse, chunks), DONE]


def _fragments(text: str) -> list[str]:
    return [text[i : i + FRAGMENT] for i in range(0, len(text), FRAGMENT)]


def mlx_events(reply: Reply, include_usage: bool) -> list[bytes]:
    message = reply.message
    events = [b": keepalive 5/5\n\n"]
    if message.get("content"):
        events.append(sse(chunk(reply, {"role": "assistant", "content": message["content"]})))
    calls = [dict(call, index=index) for index, call in enumerate(message.get("tool_calls") or [])]
    if calls:
        events.append(sse(chunk(reply, {"role": "assistant", "tool_calls": calls})))
    events.append(sse(chunk(reply, {"role": "assistant"}, reply.finish_reason)))
    if include_usage:
        events.append(sse(usage_chunk(reply, "chat.completion")))
    return [*events, DONE]


STREAM_STYLES = {"openai": openai_events, "mlx": mlx_events}


def wants_usage(request: dict) -> bool:
    return bool((request.get("stream_options") or {}).get("include_usage"))


class Http:
    """The response side of one request, for scripts."""

    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.keep_alive = True

    async def send(self, status: int, body: bytes | dict, content_type: str = "application/json") -> None:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        head = (
            f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        self.writer.write(head.encode() + data)
        await self.writer.drain()

    async def error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        await self.send(status, {"error": {"message": message, "type": kind, "code": status}})

    async def stream(self, events: Iterable[bytes] | AsyncIterable[bytes], *, end: bool = True) -> None:
        """An SSE response, one HTTP chunk per event; `end=False` drops the connection instead of ending it."""
        self.writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        if not hasattr(events, "__aiter__"):
            events = _aiter(events)
        async for event in events:
            self.writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await self.writer.drain()
        if end:
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
        else:
            self.keep_alive = False

    async def reply(self, request: dict, reply: Reply, style: str = "openai") -> None:
        """`reply` whole, or streamed in `style` ("openai" or "mlx") when the request asks for a stream."""
        if not request.get("stream"):
            await self.send(200, completion(reply))
        else:
            await self.stream(STREAM_STYLES[style](reply, wants_usage(request)))

    def reset(self) -> None:
        """Abort the connection with a TCP reset (what a crashed server looks like)."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()
        self.keep_alive = False


async def _aiter(items: Iterable[bytes]):
    for item in items:
        yield item


@dataclass
class Received:
    """One request the server received, as it arrived."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Script = Callable[[dict, Http], Awaitable[None]]


class ScriptedServer(Served):
    """The server, in a background thread (see the module doc). `received` keeps every request when
    `record`; `requests` counts the chat completions handed to the script."""

    def __init__(
        self, script: Script, *, models: Iterable[str] = (), host: str = "127.0.0.1", port: int = 0,
        record: bool = True,
    ):  # fmt: skip
        self.script = script
        self.models = list(models)
        self.host = host
        self.port = port
        self.record = record
        self.received: list[Received] = []
        self.requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[asyncio.Task] = set()

    def start(self) -> ScriptedServer:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._main(ready))
            except BaseException as error:  # reported to start() if it happened before `ready`
                failure.append(error)
                ready.set()

        self._thread = threading.Thread(target=run, name=f"scripted-server-{id(self):x}", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(
                f"scripted server did not start on {self.host}:{self.port}: {failure or 'timeout'}"
            )
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(10)
            self._thread = None

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        await self._stopping.wait()
        server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
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
                received = Received(method, target.split("?", 1)[0], headers, body)
                if self.record:
                    self.received.append(received)
                http = Http(writer)
                await self._route(received, http)
                if not http.keep_alive or headers.get("connection", "").lower() == "close":
                    break
        except (
            asyncio.IncompleteReadError,
            ConnectionError,
            asyncio.LimitOverrunError,
            asyncio.CancelledError,
        ):
            pass
        finally:
            self._connections.discard(task)
            writer.close()

    async def _route(self, received: Received, http: Http) -> None:
        path = received.path.rstrip("/")
        if received.method == "GET" and path == "/health":
            await http.send(200, {"status": "ok", **({"model": self.models[0]} if self.models else {})})
        elif received.method == "GET" and path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "flywheel"} for m in self.models]
            await http.send(200, {"object": "list", "data": data})
        elif received.method == "POST" and path in CHAT_PATHS:
            try:
                request = received.json()
                if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
                    raise TypeError("expected a JSON object with a messages list")
            except (ValueError, TypeError) as error:
                await http.error(400, f"bad request body: {error}")
                return
            self.requests += 1
            await self.script(request, http)
        else:
            await http.error(404, f"no route {received.method} {received.path}")


def serve_until_stopped(server: ScriptedServer, announce: Callable[[ScriptedServer], None]) -> None:
    """A CLI's main loop: start `server`, `announce` it, serve until SIGINT, SIGTERM or SIGHUP, then stop."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    server.start()
    try:
        announce(server)
        while not stop.wait(3600):
            pass
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
