"""What the recording proxy adds to each request: the same requests direct vs through `python -m proxy`.

A fast scripted OpenAI-compatible upstream (proxy/scripted_upstream.py, its own managed process) answers
in well under a millisecond, so the proxy's cost is not drowned by model time. One run measures, direct and
proxied: non-stream latency p50/p99, streamed time to first chunk p50/p99, requests/s at concurrency
1, 8 and 64, and counts the records of 64 concurrent streams (must be all of them). Optionally one row
against a real `mlx_lm server` with the tiny random model. The client is a minimal asyncio HTTP/1.1
client with keep-alive connections, so client overhead is small and the same on both paths.

    uv run python bench/proxy_overhead.py              # writes docs/BENCHMARKS.md section proxy_overhead
    uv run python bench/proxy_overhead.py --quick --no-mlx --no-write
    uv run python bench/proxy_overhead.py --profile    # cProfile of the proxy process under load
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.process import ManagedProcess, python_command  # noqa: E402
from core.trace import SESSION_HEADER, read_trace_lines  # noqa: E402
from proxy import RecordingProxy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MESSAGES = [
    {"role": "system", "content": "You are a coding agent. Use the tools."},
    {"role": "user", "content": "Read src/app.py and tell me what main() does."},
]


class Connection:
    """One keep-alive HTTP/1.1 connection: POST a JSON body, read the response (Content-Length or chunked)."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port, self.headers = host, port, headers or {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Connection:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes, float, float]:
        """(status, body, seconds to the first body byte, seconds to the end)."""
        extra = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer sk-bench\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        if self.writer is None or self.writer.is_closing():
            await self.open()
        started = time.perf_counter()
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        first = None
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
            first = time.perf_counter()
        else:
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
                if first is None:
                    first = time.perf_counter()
            data = b"".join(parts)
        ended = time.perf_counter()
        if headers.get("connection", "").lower() == "close" or status_line.startswith(b"HTTP/1.0"):
            self.writer.close()  # e.g. mlx_lm.server (HTTP/1.0): the next post reconnects
        return status, data, (first or ended) - started, ended - started


def body(stream: bool, max_tokens: int | None = None, model: str = "echo") -> bytes:
    request = {"model": model, "messages": MESSAGES, "stream": stream, "temperature": 0}
    if max_tokens:
        request["max_tokens"] = max_tokens
    return json.dumps(request).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def latencies(targets: dict[str, int], n: int, stream: bool, block: int = 50) -> dict[str, list[float]]:
    """Sequential requests on one connection per target, alternating targets in blocks to share drift.
    Returns, per target, the total time (non-stream) or the time to first chunk (stream) in ms."""
    connections = {name: await Connection("127.0.0.1", port).open() for name, port in targets.items()}
    payload = body(stream)
    results: dict[str, list[float]] = {name: [] for name in targets}
    for connection in connections.values():  # warm-up
        for _ in range(20):
            await connection.post("/v1/chat/completions", payload)
    for _ in range(0, n, block):
        for name, connection in connections.items():
            for _ in range(block):
                status, _, first, total = await connection.post("/v1/chat/completions", payload)
                assert status == 200, status
                results[name].append((first if stream else total) * 1000)
    for connection in connections.values():
        connection.close()
    return results


async def throughput(
    port: int, concurrency: int, seconds: float, stream: bool, headers=None
) -> tuple[float, int]:
    """Requests/s with `concurrency` connections each sending back-to-back for `seconds`."""
    payload = body(stream)
    connections = [await Connection("127.0.0.1", port, headers).open() for _ in range(concurrency)]
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker(connection: Connection) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            status, _, _, _ = await connection.post("/v1/chat/completions", payload)
            assert status == 200, status
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return done / elapsed, done


async def burst(port: int, concurrency: int, per_connection: int, session: str) -> int:
    """`concurrency` connections each sending `per_connection` streamed requests at once; returns count."""
    connections = [
        await Connection("127.0.0.1", port, {SESSION_HEADER: session}).open() for _ in range(concurrency)
    ]
    payload = body(True)

    async def worker(connection: Connection) -> int:
        for _ in range(per_connection):
            status, data, _, _ = await connection.post("/v1/chat/completions", payload)
            assert status == 200 and data.rstrip().endswith(b"data: [DONE]"), data[-80:]
        return per_connection

    sent = sum(await asyncio.gather(*(worker(c) for c in connections)))
    for connection in connections:
        connection.close()
    return sent


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds so far of a process and its descendants (the proxy's recorder process);
    Linux /proc only, None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) or 0.0 for child in children)


def start_upstream() -> tuple[ManagedProcess, str]:
    """The scripted upstream in its own process (so it does not share the client's or the proxy's GIL)."""
    process = ManagedProcess(python_command("proxy.scripted_upstream", "--port", "0"), ready_event="listening")
    return process.start(), process.url


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def summarize(direct: list[float], proxied: list[float]) -> dict:
    row = {}
    for q in (50, 99):
        d, p = percentile(direct, q), percentile(proxied, q)
        row[f"p{q}"] = {"direct_ms": round(d, 3), "proxy_ms": round(p, 3), "added_ms": round(p - d, 3)}
        row[f"p{q}"]["ratio"] = round(p / d, 2) if d else None
    row["mean_added_ms"] = round(statistics.fmean(proxied) - statistics.fmean(direct), 3)
    return row


def mlx_row(n: int) -> dict | None:
    """Non-stream latency direct vs proxied against a real mlx_lm server with the tiny random model."""
    try:
        from core.process import MlxServer
        from models.tiny import build_tiny_model
    except ImportError as error:
        print(f"mlx row skipped: {error}", file=sys.stderr)
        return None
    model_dir = Path(tempfile.mkdtemp(prefix="bench-tiny-"))
    build_tiny_model(model_dir)
    with (
        MlxServer(model_dir, max_tokens=8) as server,
        RecordingProxy(server.url, tempfile.mkdtemp()) as proxy,
    ):
        targets = {"direct": server.port, "proxy": proxy.port}

        async def run():
            connections = {k: await Connection("127.0.0.1", p).open() for k, p in targets.items()}
            payload = body(False, max_tokens=8, model="default_model")
            times = {k: [] for k in targets}
            for c in connections.values():
                for _ in range(5):
                    await c.post("/v1/chat/completions", payload)
            for _ in range(n):
                for k, c in connections.items():
                    status, _, _, total = await c.post("/v1/chat/completions", payload)
                    assert status == 200
                    times[k].append(total * 1000)
            for c in connections.values():
                c.close()
            return times

        times = asyncio.run(run())
    return summarize(times["direct"], times["proxy"])


def redaction_speed(characters: int = 1_000_000, repeats: int = 5) -> dict:
    """Secret redaction (proxy/redact.py, run by the recorder on every string of every record) of real Python
    source (the installed openai package): cold, and from the history cache, against the baseline of
    `json.dumps` of the same text (which writing the record costs anyway). Best of `repeats` each."""
    import importlib.util

    from proxy import redact

    package = Path(importlib.util.find_spec("openai").origin).parent
    text = "".join(path.read_text() for path in sorted(package.rglob("*.py")))[:characters]

    def best(run) -> float:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            run()
            times.append(time.perf_counter() - started)
        return min(times)

    def cold() -> None:
        redact._cache.clear()
        redact.redact_text(text)

    baseline, cold_s = best(lambda: json.dumps(text)), best(cold)
    cached_s = best(lambda: redact.redact_text(text))
    megabytes = len(text) / 1e6
    return {
        "megabytes": round(megabytes, 3),
        "cold_mb_s": round(megabytes / cold_s, 1),
        "cached_us": round(cached_s * 1e6, 1),
        "json_dumps_mb_s": round(megabytes / baseline, 1),
        "cold_vs_json_dumps": round(cold_s / baseline, 2),
    }


def profile_proxy(upstream_url: str, seconds: float, concurrency: int = 8) -> str:
    """cProfile of an in-process proxy's event-loop thread under a non-stream load (`concurrency`
    connections); the recorder thread is not included. Top functions by own time and by cumulative time."""
    import cProfile
    import io
    import pstats
    import threading

    from mitmproxy import ctx

    from proxy.server import serve

    ready: dict = {}
    profiler = cProfile.Profile()

    def run_proxy():
        async def main():
            ready["loop"] = asyncio.get_running_loop()
            await serve(
                upstream_url,
                tempfile.mkdtemp(),
                "127.0.0.1",
                0,
                on_ready=lambda host, port, path: ready.update(port=port),
                handle_signals=False,
            )

        asyncio.run(main())

    thread = threading.Thread(target=run_proxy, daemon=True)
    thread.start()
    while "port" not in ready:
        time.sleep(0.05)

    def load(duration: float) -> dict:  # from another process, so the client does not share our GIL
        command = [sys.executable, __file__, "--load", str(ready["port"]), str(duration), str(concurrency)]
        return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)

    load(1.0)  # warm-up
    ready["loop"].call_soon_threadsafe(profiler.enable)
    measured = load(seconds)
    ready["loop"].call_soon_threadsafe(profiler.disable)
    rps, count = measured["rps"], measured["requests"]
    time.sleep(0.5)
    ready["loop"].call_soon_threadsafe(ctx.master.shutdown)
    thread.join(30)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    return f"{rps:.0f} req/s ({count} requests) while profiled\n" + out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--no-mlx", action="store_true", help="skip the row against mlx_lm server")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/BENCHMARKS.md")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the proxy process")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="scheduling priority increment for this run and its children (negative needs root): on a "
        "busy shared machine, -10 keeps other work from adding time-slice waits to every hop",
    )
    parser.add_argument("--load", nargs=3, metavar=("PORT", "SECONDS", "CONCURRENCY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        port, duration, concurrency = int(args.load[0]), float(args.load[1]), int(args.load[2])
        rps, count = asyncio.run(throughput(port, concurrency, duration, False))
        print(json.dumps({"rps": rps, "requests": count}))
        return
    if args.nice:
        os.nice(args.nice)
    n = 400 if args.quick else 2000
    seconds = 1.5 if args.quick else 4.0

    upstream, upstream_url = start_upstream()
    traces = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    results: dict = {
        "requests_per_percentile": n,
        "load_average_before": os.getloadavg()[0],
        "nice": os.nice(0),
        "redaction": redaction_speed(),
    }
    try:
        if args.profile:
            print(profile_proxy(upstream_url, seconds))
            return
        with RecordingProxy(upstream_url, traces) as proxy:
            targets = {"direct": port_of(upstream_url), "proxy": proxy.port}
            pid = proxy.process.pid
            cpu_before = cpu_seconds(pid)
            plain = asyncio.run(latencies(targets, n, stream=False))
            cpu_plain = cpu_seconds(pid)
            results["non_stream_latency"] = summarize(plain["direct"], plain["proxy"])
            streamed = asyncio.run(latencies(targets, n, stream=True))
            cpu_streamed = cpu_seconds(pid)
            results["stream_ttfc"] = summarize(streamed["direct"], streamed["proxy"])
            if cpu_before is not None:  # warm-up requests (20) count too
                results["proxy_cpu_ms_per_request"] = {
                    "non_stream": round((cpu_plain - cpu_before) / (n + 20) * 1000, 3),
                    "stream": round((cpu_streamed - cpu_plain) / (n + 20) * 1000, 3),
                }
            results["throughput"] = {}
            for concurrency in (1, 8, 64):
                row = {}
                for name, port in targets.items():
                    rps, _ = asyncio.run(throughput(port, concurrency, seconds, stream=False))
                    row[f"{name}_rps"] = round(rps)
                row["ratio"] = round(row["proxy_rps"] / row["direct_rps"], 2)
                results["throughput"][concurrency] = row
            session = f"bench-{uuid.uuid4().hex[:8]}"
            per_connection = 5 if args.quick else 10
            started = time.perf_counter()
            sent = asyncio.run(burst(proxy.port, 64, per_connection, session))
            burst_seconds = time.perf_counter() - started
            summary = proxy.stop()
        records = [
            line.record
            for line in read_trace_lines([proxy.trace_file])
            if line.record and line.record["session_id"] == session
        ]
        results["streams_64"] = {
            "sent": sent,
            "recorded": len(records),
            "complete": sum(r["complete"] for r in records),
            "lost": sent - len(records),
            "seconds": round(burst_seconds, 2),
        }
        results["proxy_summary"] = summary
    finally:
        upstream.stop()
    if not args.no_mlx:
        try:
            results["mlx_server"] = mlx_row(15 if args.quick else 40)
        except Exception as error:  # the proxy figures above stand on their own
            print(f"mlx row failed: {error!r}", file=sys.stderr)
    results["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(results, indent=2))
    if not args.no_write:
        from bench._report import write_section

        write_section("proxy_overhead", "Recording proxy overhead", report(results))


def report(results: dict) -> str:
    lat, ttfc = results["non_stream_latency"], results["stream_ttfc"]
    lines = [
        f"Same requests direct to a scripted upstream vs through `python -m proxy` (mitmproxy 12, recording "
        f"on); {results['requests_per_percentile']} requests per path for latencies, alternated in blocks. "
        f"Load average (1 min) {results['load_average_before']:.1f} before, {results['load_average_after']:.1f} "
        f"after (nice {results['nice']}): on a busy machine every extra process hop can wait for a time "
        "slice, which shows in p99.",
        "",
        "| measure | direct | through proxy | added | ratio |",
        "|---|---|---|---|---|",
    ]
    for label, row in (("non-stream latency", lat), ("stream time to first chunk", ttfc)):
        for q in ("p50", "p99"):
            r = row[q]
            lines.append(
                f"| {label} {q} | {r['direct_ms']:.2f} ms | {r['proxy_ms']:.2f} ms | "
                f"+{r['added_ms']:.2f} ms | {r['ratio']}x |"
            )
    if results.get("proxy_cpu_ms_per_request"):
        cpu = results["proxy_cpu_ms_per_request"]
        lines += [
            "",
            f"CPU time per request of the proxy and its recorder process (mitmproxy + recording): "
            f"{cpu['non_stream']:.2f} ms non-stream, {cpu['stream']:.2f} ms streamed.",
        ]
    lines += ["", "| concurrency | direct req/s | through proxy req/s | ratio |", "|---|---|---|---|"]
    for concurrency, row in results["throughput"].items():
        lines.append(f"| {concurrency} | {row['direct_rps']} | {row['proxy_rps']} | {row['ratio']}x |")
    s = results["streams_64"]
    lines += [
        "",
        f"64 concurrent streams: {s['sent']} streamed requests in {s['seconds']} s, {s['recorded']} records "
        f"({s['complete']} complete), **{s['lost']} lost**.",
    ]
    if results.get("mlx_server"):
        m = results["mlx_server"]
        lines += [
            "",
            f"Against `mlx_lm server` (tiny random model, 8 tokens): p50 {m['p50']['direct_ms']:.1f} ms direct, "
            f"{m['p50']['proxy_ms']:.1f} ms through the proxy (+{m['p50']['added_ms']:.2f} ms); "
            f"p99 +{m['p99']['added_ms']:.2f} ms. mlx_lm.server answers HTTP/1.0 and closes every "
            "connection, so through the proxy each request also pays mitmproxy's Python-level connection "
            "setup twice (agent side and upstream side), on top of the per-request cost above.",
        ]
    r = results["redaction"]
    lines += [
        "",
        "What dominates (`--profile`, cProfile of the proxy's event loop): mitmproxy's own per-request "
        "machinery (sans-IO HTTP/1 layers, one asyncio task per hook, each hook dispatched to every loaded "
        "addon), most of the CPU line above. The recording hooks only take references; parsing, "
        "redaction, validation and writing (about 0.3 ms of CPU per small record) run in the recorder "
        "process, on the other core, off the event loop. Secret redaction (proxy/redact.py) of "
        f"{r['megabytes']:.1f} MB of real Python source: {r['cold_mb_s']:.0f} MB/s, {r['cold_vs_json_dumps']:.1f}x "
        f"the time of `json.dumps` of the same text ({r['json_dumps_mb_s']:.0f} MB/s); a text seen before (an "
        f"agent resends its history every turn) comes from the cache in {r['cached_us']:.0f} µs.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
