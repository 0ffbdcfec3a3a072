"""The capture faults that need no signal, run by bench/capture_faults.py on one proxy: upstream reset and
client disconnect mid-stream, a client reading one byte at a time, 64 concurrent streams, a 10 MB request,
non-UTF-8 and invalid-JSON bodies; each case's records checked for what they must say."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx

from bench.capture_harness import GroupProxy, Outcome, Traffic, account
from core.trace import SESSION_HEADER, read_trace_lines
from proxy.scripted_upstream import ScriptedUpstream

MLX_MODEL = "default_model"


def read_byte_by_byte(url: str, session: str, body: dict) -> bytes:
    """POST over a raw socket and read the response one byte per recv, slowly (a slow client)."""
    host, port = url.split("//")[1].split(":")
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{SESSION_HEADER}: {session}\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    received = bytearray()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.sendall(head.encode() + data)
        while byte := sock.recv(1):
            received += byte
            if len(received) % 64 == 0:
                time.sleep(0.001)
    return bytes(received)


def traffic_faults(upstream: ScriptedUpstream, work: Path, mlx_url: str | None = None) -> list[Outcome]:
    """Faults that need no signal, on one proxy (stopped with SIGTERM at the end): upstream reset mid-stream,
    client disconnect mid-stream, a client reading one byte at a time (through a second proxy in front of
    `mlx_url`, a real mlx_lm server, when given), 64 concurrent streams, a 10 MB request, non-UTF-8 and
    invalid-JSON bodies (which must reach the upstream unchanged)."""
    traffic = {case: Traffic("", case) for case in TRAFFIC_CASES}
    seconds: dict[str, float] = {}
    with (
        GroupProxy(upstream.url, work / "shared") as proxy,
        GroupProxy(mlx_url, work / "mlx") if mlx_url else contextlib.nullcontext() as mlx_proxy,
    ):
        for case, run in TRAFFIC_CASES.items():
            traffic[case].url = mlx_proxy.url if case == "byte-at-a-time" and mlx_proxy else proxy.url
            started = time.monotonic()
            run(traffic[case], upstream, bool(mlx_proxy))
            seconds[case] = time.monotonic() - started
        time.sleep(0.3)
        summaries = {}
        for running in filter(None, (proxy, mlx_proxy)):
            os.kill(running.pid, signal.SIGTERM)
            summaries[running] = running.finish()
    outcomes = []
    for case in TRAFFIC_CASES:
        behind = mlx_proxy if case == "byte-at-a-time" and mlx_proxy else proxy
        scripted = None if behind is mlx_proxy else upstream
        outcome = account(case, traffic[case], behind.trace_file, summaries[behind], scripted)
        outcome.failures += traffic[case].failures + record_failures(
            case, traffic[case].prefix, behind.trace_file
        )
        outcome.seconds = seconds[case]
        outcomes.append(outcome)
    return outcomes


def upstream_reset(traffic: Traffic, upstream: ScriptedUpstream, real: bool) -> None:
    """Five streams whose upstream connection is reset (TCP RST) after the first chunk."""
    with httpx.Client(timeout=30) as client:
        for _ in range(5):
            traffic.send(client, "reset", True)


def client_disconnect(traffic: Traffic, upstream: ScriptedUpstream, real: bool) -> None:
    """Five slow streams the client hangs up on after the first chunk."""
    body = {
        "model": "slow",
        "stream": True,
        "pause": 0.2,
        "messages": [{"role": "user", "content": "a b c d e"}],
    }
    with httpx.Client(timeout=30) as client:
        for _ in range(5):
            session = traffic.session()
            headers = {SESSION_HEADER: session}
            with client.stream(
                "POST", f"{traffic.url}/v1/chat/completions", json=body, headers=headers
            ) as response:
                traffic.answered.add(session)
                next(response.iter_raw())


def byte_at_a_time(traffic: Traffic, upstream: ScriptedUpstream, real: bool) -> None:
    """Three streams read one byte per recv, slowly, through a 1 KiB receive buffer."""
    content = "Read notes.txt and tell me " + "more " * 60
    body = {"model": MLX_MODEL if real else "echo", "stream": True, "max_tokens": 48,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
    for _ in range(3):
        session = traffic.session()
        raw = read_byte_by_byte(traffic.url, session, body)
        if raw.startswith(b"HTTP/"):
            traffic.answered.add(session)
        if b"data: [DONE]" not in raw:
            traffic.failures.append(f"{session}: the stream did not end with [DONE]")


def concurrent_64(traffic: Traffic, upstream: ScriptedUpstream, real: bool) -> None:
    """64 streams at once, each in flight for a while (a pause before every chunk)."""

    def one(_: int) -> None:
        with httpx.Client(timeout=60) as own:
            traffic.send(own, "slow", True, "a b c d e f g h", pause=0.02)

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        list(pool.map(one, range(64)))


def ten_mb_request(traffic: Traffic, upstream: ScriptedUpstream, real: bool) -> None:
    """One request of 10 MB (a 10-million-character user message), recorded whole."""
    with httpx.Client(timeout=120) as client:
        traffic.send(client, "mlx-style-tool", False, "z" * 10_000_000)


def bad_body(traffic: Traffic, upstream: ScriptedUpstream, real: bool) -> None:
    """A body that is not UTF-8 and one that is not JSON: forwarded byte for byte, answered by the upstream."""
    with httpx.Client(timeout=30) as client:
        for raw in (b'\xff\xfe{"model": "echo", \x80}', b'{"model": "echo", "messages": ['):
            session = traffic.session()
            headers = {SESSION_HEADER: session, "Content-Type": "application/json"}
            response = client.post(f"{traffic.url}/v1/chat/completions", content=raw, headers=headers)
            traffic.answered.add(session)
            arrived = [r.body for r in upstream.received if r.headers.get(SESSION_HEADER.lower()) == session]
            if arrived != [raw] or response.status_code != 400:
                traffic.failures.append(
                    f"{session}: upstream got {arrived!r:.60}, client {response.status_code}"
                )


TRAFFIC_CASES = {
    "upstream-reset": upstream_reset,
    "client-disconnect": client_disconnect,
    "byte-at-a-time": byte_at_a_time,
    "concurrent-64": concurrent_64,
    "10mb-request": ten_mb_request,
    "bad-body": bad_body,
}


def record_failures(case: str, prefix: str, trace_file: Path) -> list[str]:
    """What the records of `case` must say, for each that does not."""
    notes = []
    for line in read_trace_lines([trace_file]):
        record = line.record or {}
        session = str(record.get("session_id"))
        if not session.startswith(prefix):
            continue
        error = (record.get("error") or {}).get("type")
        complete = record.get("complete")
        expected_error = {"upstream-reset": "upstream_error", "client-disconnect": "client_disconnected"}
        if case in expected_error and (complete or error != expected_error[case]):
            notes.append(f"{session}: complete={complete} error={error}")
        elif case in ("concurrent-64", "byte-at-a-time") and not complete:
            notes.append(f"{session}: incomplete ({error})")
        elif case == "10mb-request":
            content = record["request"]["messages"][0]["content"] if record.get("request") else ""
            if len(content) != 10_000_000 or not complete:
                notes.append(f"{session}: recorded {len(content)} characters, complete={complete}")
        elif case == "bad-body" and (error != "bad_request" or "non_json_request" not in record["flags"]):
            notes.append(f"{session}: error={error} flags={record['flags']}")
    return notes
