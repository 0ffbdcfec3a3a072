"""Capture faults: does the recording proxy lose an exchange when things go wrong?

Each case runs the real `python -m proxy` in a process group of its own (as a terminal runs it) in front of
the scripted upstream (core/scripted.py, in this process, so it tells which requests reached it) or a real
`mlx_lm server`, sends traffic with one session id per request, does its fault, and accounts for every
request it sent:

    sent     requests the client started
    seen     of which the proxy certainly saw: the client got an answer, or the upstream got the request
    records  of which are records in the trace file
    losses   of which are counted losses in the side file beside it (id, time, reason)
    unseen   started, never answered, never at the upstream, neither recorded nor counted: they came
             while the proxy was stopping, which refuses them (the connection closes, nothing is
             forwarded) or no longer reads them

Every case must hold: every seen request is a record or a counted loss (records + losses = sent - unseen),
none twice, every line of the trace file parses, and the proxy's stop summary equals its files.

    uv run python bench/capture_faults.py                   # every case, writes docs/RELIABILITY.md
    uv run python bench/capture_faults.py --repeats 1 --ctrl-c-repeats 2 --no-write

tests/test_capture_faults.py runs each case once and asserts the same.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from core.process import project_environment, python_command  # noqa: E402
from core.trace import SESSION_HEADER, loss_file_for, read_trace_lines  # noqa: E402
from proxy.scripted_upstream import ScriptedUpstream  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RELIABILITY_MD = ROOT / "docs" / "RELIABILITY.md"
MIXED = [("echo", False), ("echo", True), ("parallel-tools", True), ("slow", True), ("mlx-style-tool", False)]
MLX_MODEL = "default_model"


# ------------------------------------------------------------------------------------------- accounting


@dataclass
class Outcome:
    case: str
    sent: int = 0
    seen: int = 0
    records: int = 0
    losses: int = 0
    unseen: int = 0
    missing: list[str] = field(default_factory=list)  # seen, yet neither a record nor a counted loss
    extra: list[str] = field(default_factory=list)  # records or losses of sessions never sent
    duplicates: int = 0
    bad_lines: list[str] = field(default_factory=list)  # trace lines that do not parse
    loss_reasons: dict[str, int] = field(default_factory=dict)
    summary: dict | None = None
    summary_matches: bool = False  # the stop summary's counts equal the trace file and the side file
    failures: list[str] = field(default_factory=list)  # the case's own checks that did not pass
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why the case could not run here
    seconds: float = 0.0

    def held(self) -> bool:
        """Every seen request accounted for, and the case's own checks passed."""
        return self.skipped is None and not self.problems() and not self.failures

    def problems(self) -> list[str]:
        found = []
        if self.missing:
            found.append(f"{len(self.missing)} seen but neither recorded nor counted: {self.missing[:3]}")
        if self.extra:
            found.append(f"records of requests never sent: {self.extra[:3]}")
        if self.duplicates:
            found.append(f"{self.duplicates} recorded or counted twice")
        if self.bad_lines:
            found.append(f"unreadable trace lines: {self.bad_lines[:2]}")
        if self.records + self.losses != self.sent - self.unseen:
            found.append(
                f"records {self.records} + losses {self.losses} != sent {self.sent} - unseen {self.unseen}"
            )
        if not self.summary_matches:
            found.append(f"summary {self.summary} does not match the files")
        return found


class Traffic:
    """Requests through the proxy, one session id each; remembers which were started and which answered."""

    def __init__(self, url: str, case: str):
        self.url, self.case = url, case
        self.prefix = f"{case}-{uuid.uuid4().hex[:8]}-"  # unique per run: the upstream's log spans runs
        self.started: list[str] = []
        self.answered: set[str] = set()
        self.stop = threading.Event()
        self.failures: list[str] = []  # what went wrong that the counts do not show
        self._count = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def session(self) -> str:
        with self._lock:
            self._count += 1
            session = f"{self.prefix}{self._count:05d}"
            self.started.append(session)
        return session

    def send(self, client: httpx.Client, model: str, stream: bool, content: str = "hi", **extra) -> str:
        """One request, read to its end; returns the session id. Errors are the fault under test: kept quiet."""
        session = self.session()
        body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": content}], **extra}
        try:
            with client.stream(
                "POST", f"{self.url}/v1/chat/completions", json=body, headers={SESSION_HEADER: session}
            ) as response:
                self.answered.add(session)
                for _ in response.iter_raw():
                    pass
        except httpx.HTTPError:
            pass
        return session

    def start(self, workers: int, plan=MIXED) -> None:
        def work(offset: int) -> None:
            with httpx.Client(timeout=30) as client:
                n = offset
                while not self.stop.is_set():
                    model, stream = plan[n % len(plan)]
                    n += 1
                    if n % 17 == 0:  # other paths pass through unrecorded, in between
                        with contextlib.suppress(httpx.HTTPError):
                            client.get(f"{self.url}/health", timeout=5)
                    before = len(self.answered)
                    self.send(client, model, stream, f"request {n}", pause=0.02)
                    if len(self.answered) == before and not self._reachable():
                        return  # the proxy is gone

        self._threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    def _reachable(self) -> bool:
        host, port = self.url.split("//")[1].split(":")
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    def join(self, timeout: float = 60) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout)


def read_losses(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def account(
    case: str, traffic: Traffic, trace_file: Path, summary: dict | None, upstream: ScriptedUpstream | None
) -> Outcome:
    """The outcome of `case`: the sessions `traffic` started, against the trace file, the side file of
    losses, the upstream's log and the proxy's summary."""
    prefix = traffic.prefix
    loss_file = (
        Path(summary["loss_file"]) if summary and summary.get("loss_file") else loss_file_for(trace_file)
    )
    lines = list(read_trace_lines([trace_file])) if trace_file.is_file() else []
    bad = [f"{line.where}: {line.error}" for line in lines if line.error]
    records = [line.record for line in lines if line.record is not None]
    losses = read_losses(loss_file)
    mine = [r.get("session_id") for r in records if str(r.get("session_id")).startswith(prefix)]
    my_losses = [entry for entry in losses if str(entry.get("session_id")).startswith(prefix)]
    lost = [entry.get("session_id") for entry in my_losses]
    sent = [s for s in traffic.started if s.startswith(prefix)]
    reached = set(traffic.answered)
    if upstream is not None:
        reached |= {r.headers.get(SESSION_HEADER.lower()) for r in upstream.received}
    seen = {s for s in sent if s in reached}
    accounted = set(mine) | set(lost)
    outcome = Outcome(case, sent=len(sent), seen=len(seen), records=len(mine), losses=len(lost))
    outcome.missing = sorted(seen - accounted)
    outcome.extra = sorted(accounted - set(sent))
    outcome.unseen = len(set(sent) - seen - accounted)
    outcome.duplicates = len(mine) + len(lost) - len(accounted)
    outcome.bad_lines = bad
    outcome.loss_reasons = dict(Counter(str(entry.get("reason", "")).split(":")[0] for entry in my_losses))
    outcome.summary = summary
    outcome.summary_matches = bool(summary) and (
        summary.get("recorded") == len(records)
        and summary.get("errors") == sum(r.get("error") is not None for r in records)
        and summary.get("recording_failures", 0) == len(losses)
    )
    return outcome


# ------------------------------------------------------------------------------------ the proxy, as run


class GroupProxy:
    """`python -m proxy --json` in a process group of its own (a terminal's foreground job)."""

    def __init__(self, upstream: str, work: Path, trace_file: Path | None = None):
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        command = python_command("proxy", "--upstream", upstream, "--json", "--listen", "127.0.0.1:0")
        command += ["--traces", str(work / "traces")]
        if trace_file is not None:
            command += ["--trace-file", str(trace_file)]
        self.stderr_path = work / "proxy.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=project_environment(), stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True,
            )  # fmt: skip
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the proxy did not start: {self.stderr_path.read_text()[-2000:]}")
        event = json.loads(line)
        self.url, self.trace_file = event["url"], Path(event["trace_file"])
        self.pid = self.process.pid

    def records(self) -> int:
        return self.trace_file.read_bytes().count(b"\n") if self.trace_file.exists() else 0

    def wait_for_records(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.records() < count and time.monotonic() < deadline:
            time.sleep(0.02)

    def recorder(self) -> int:
        return recorder_pid(self.pid)

    def finish(self, timeout: float = 90) -> dict | None:
        """Wait for the proxy to exit; its "stopped" event (None if it printed none)."""
        try:
            out, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, _ = self.process.communicate()
        events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return next((e for e in reversed(events) if e.get("event") == "stopped"), None)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def __enter__(self) -> GroupProxy:
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.poll() is None:
            self.kill()
            self.process.wait()


def recorder_pid(proxy_pid: int) -> int:
    """The recorder child of a proxy process (not multiprocessing's resource tracker), via /proc."""
    children = [
        int(c)
        for t in Path(f"/proc/{proxy_pid}/task").iterdir()
        for c in (t / "children").read_text().split()
    ]
    for child in children:
        command = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        if b"multiprocessing.spawn" in command and b"resource_tracker" not in command:
            return child
    raise AssertionError(f"no recorder process among {children}")


# ------------------------------------------------------------------------------------------- the cases


def stop_during_traffic(
    name: str, upstream: ScriptedUpstream, work: Path, stop, workers: int = 16
) -> Outcome:
    """Mixed traffic from `workers` clients (plain, streamed, parallel tool calls, slow streams); `stop(proxy)`
    once 20 records are written; then account."""
    started = time.monotonic()
    with GroupProxy(upstream.url, work) as proxy:
        traffic = Traffic(proxy.url, name)
        traffic.start(workers)
        proxy.wait_for_records(20)
        notes = stop(proxy) or []
        summary = proxy.finish()
        traffic.join()
    outcome = account(name, traffic, proxy.trace_file, summary, upstream)
    outcome.notes += notes
    if proxy.process.returncode not in (0, 130):
        outcome.failures.append(f"exit code {proxy.process.returncode}: {proxy.stderr()[-500:]}")
    outcome.seconds = time.monotonic() - started
    return outcome


def ctrl_c(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """A terminal's Ctrl-C: SIGINT to the proxy's whole process group (its recorder too) mid-traffic."""
    return stop_during_traffic("ctrl-c", upstream, work, lambda p: os.killpg(p.pid, signal.SIGINT))


def sigterm(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """SIGTERM to the proxy alone (a service manager, or RecordingProxy.stop) mid-traffic."""
    return stop_during_traffic("sigterm", upstream, work, lambda p: os.kill(p.pid, signal.SIGTERM))


def sighup(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """A closed terminal: SIGHUP to the whole process group mid-traffic."""
    return stop_during_traffic("sighup", upstream, work, lambda p: os.killpg(p.pid, signal.SIGHUP))


def second_ctrl_c(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """Ctrl-C twice: the recorder is held (SIGSTOP, a stalled disk) so the first Ctrl-C has a backlog to
    drain; the second must exit at once and count what it abandoned."""
    waited: list[float] = []

    def twice(proxy: GroupProxy) -> list[str]:
        os.kill(proxy.recorder(), signal.SIGSTOP)
        time.sleep(1.0)  # exchanges pile up, unwritten
        os.killpg(proxy.pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(proxy.pid, signal.SIGINT)
        asked = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.wait(30)
        waited.append(time.monotonic() - asked)
        return [f"exited {waited[0]:.1f}s after the second Ctrl-C"]

    outcome = stop_during_traffic("second-ctrl-c", upstream, work, twice)
    if not (outcome.summary or {}).get("abandoned"):
        outcome.failures.append("the summary names no abandoned exchange")
    if waited[0] > 5:
        outcome.failures.append(f"it took {waited[0]:.1f}s to exit after the second Ctrl-C")
    return outcome


def recorder_killed(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """SIGKILL the recorder process twice mid-traffic, once while it held a backlog it had not acknowledged
    (stopped first, so exchanges queued to it); then stop the proxy with SIGTERM."""
    growth: list[int] = []

    def kill_recorder(proxy: GroupProxy) -> list[str]:
        first = proxy.recorder()
        os.kill(first, signal.SIGSTOP)
        time.sleep(0.5)
        os.kill(first, signal.SIGKILL)
        for _ in range(2):
            before = proxy.records()
            proxy.wait_for_records(before + 10, timeout=30)
            growth.append(proxy.records() - before)
        os.kill(proxy.recorder(), signal.SIGKILL)
        before = proxy.records()
        proxy.wait_for_records(before + 10, timeout=30)
        growth.append(proxy.records() - before)
        os.kill(proxy.pid, signal.SIGTERM)
        return [f"records after each kill: {growth}"]

    outcome = stop_during_traffic("recorder-sigkill", upstream, work, kill_recorder)
    if min(growth) < 10:
        outcome.failures.append(f"recording did not resume after a kill: {growth} new records")
    return outcome


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `path`; None, or why it cannot be done here."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
    except OSError as error:
        return f"mount: {error}"
    return None if result.returncode == 0 else f"mount -t tmpfs not permitted: {result.stderr.strip()}"


def disk_full(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """The trace file on a small tmpfs that fills up mid-line (a filler takes the rest), then gets space
    again (the filler removed). No line may be torn or merged; every failed write is a counted loss."""
    mount = work / "tmpfs"
    if reason := mount_tmpfs(mount, "256k"):
        return Outcome("disk-full", skipped=reason)
    started = time.monotonic()
    try:
        filler = mount / "filler"
        filler.write_bytes(b"\0" * (256 * 1024 - 60 * 1024))
        with GroupProxy(upstream.url, work / "run", trace_file=mount / "trace.jsonl") as proxy:
            traffic = Traffic(proxy.url, "disk-full")
            with httpx.Client(timeout=30) as client:
                for n in range(24):
                    traffic.send(client, "echo", n % 2 == 1, f"{n} " + "x" * 6000)
                    time.sleep(0.02)  # one at a time: each record meets the disk as it is
                time.sleep(0.5)
                filler.unlink()
                for n in range(8):
                    traffic.send(client, "echo", n % 2 == 1, f"after {n} " + "y" * 6000)
            time.sleep(0.5)
            os.kill(proxy.pid, signal.SIGTERM)
            summary = proxy.finish()
        outcome = account("disk-full", traffic, proxy.trace_file, summary, upstream)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    if not outcome.losses:
        outcome.failures.append("no write failed: the disk never filled")
    outcome.seconds = time.monotonic() - started
    return outcome


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


# --------------------------------------------------------------------------------------------- the table

SIGNAL_CASES = {
    "ctrl-c": ctrl_c,
    "sigterm": sigterm,
    "sighup": sighup,
    "second-ctrl-c": second_ctrl_c,
    "recorder-sigkill": recorder_killed,
    "disk-full": disk_full,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case (default 3)")
    parser.add_argument("--ctrl-c-repeats", type=int, default=10, help="runs of the Ctrl-C case (default 10)")
    parser.add_argument("--no-mlx", action="store_true", help="byte-at-a-time from the scripted upstream")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/RELIABILITY.md")
    args = parser.parse_args()
    from rich.progress import Progress

    runs: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="capture-faults-") as scratch, ScriptedUpstream() as upstream:
        mlx = start_mlx(args.no_mlx)
        try:
            plan = [
                (name, args.ctrl_c_repeats if name == "ctrl-c" else args.repeats) for name in SIGNAL_CASES
            ]
            plan.append(("traffic", args.repeats))
            with Progress() as progress:
                task = progress.add_task("capture faults", total=sum(n for _, n in plan))
                for name, repeats in plan:
                    for run in range(repeats):
                        work = Path(scratch) / f"{name}-{run}"
                        if name == "traffic":
                            outcomes = traffic_faults(upstream, work, mlx.url if mlx else None)
                        else:
                            outcomes = [SIGNAL_CASES[name](upstream, work)]
                        for outcome in outcomes:
                            runs.setdefault(outcome.case, []).append(outcome)
                            status = "held" if outcome.held() else outcome.problems() + outcome.failures
                            progress.console.print(f"{outcome.case} #{run + 1}: {status} {outcome.notes}")
                        progress.advance(task)
        finally:
            if mlx:
                mlx.stop()
    table = report(runs, mlx is not None)
    print(table)
    if not args.no_write:
        write_report(table)


def start_mlx(disabled: bool):
    if disabled:
        return None
    from core.process import MlxServer
    from models.tiny import cached_model

    return MlxServer(cached_model("tool-calling"), max_tokens=48).start()


def report(runs: dict[str, list[Outcome]], real_mlx: bool) -> str:
    lines = [
        "| case | runs | sent | seen | records | counted losses (reason) | unseen | held | summary = file | "
        "max s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, outcomes in runs.items():
        if all(o.skipped for o in outcomes):
            lines.append(f"| {case} | 0 | skipped: {outcomes[0].skipped} |||||||")
            continue
        reasons = Counter()
        for o in outcomes:
            reasons.update(o.loss_reasons)
        held = sum(o.held() for o in outcomes)
        lines.append(
            f"| {case} | {len(outcomes)} | {sum(o.sent for o in outcomes)} | {sum(o.seen for o in outcomes)} | "
            f"{sum(o.records for o in outcomes)} | {sum(o.losses for o in outcomes)}"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})" if reasons else "")
            + f" | {sum(o.unseen for o in outcomes)} | {held}/{len(outcomes)} | "
            f"{sum(o.summary_matches for o in outcomes)}/{len(outcomes)} | {max(o.seconds for o in outcomes):.1f} |"
        )
    upstream = "a real `mlx_lm server` (tiny tool model)" if real_mlx else "the scripted upstream"
    cases = {**SIGNAL_CASES, **TRAFFIC_CASES}
    lines += ["", "What each case does:", ""]
    lines += [f"- {name}: {' '.join(run.__doc__.split())}" for name, run in cases.items() if name in runs]
    lines += [
        "",
        "_sent_: requests the client started; _seen_: of which the client got an answer or the upstream got "
        "the request (the proxy certainly saw them); _records_, _counted losses_: of the case's requests, "
        "lines in the trace file and in the side file of losses; _unseen_: started but never answered, never "
        "at the upstream, neither recorded nor counted (they came while the proxy was stopping: refused, nothing "
        "forwarded, or not read at all); _held_: "
        "runs where every seen request is a record or a counted loss, none twice, no unreadable line, and "
        "the case's own checks passed; _summary = file_: runs whose stop summary equals the trace file and "
        f"the side file. Byte-at-a-time reads a stream from {upstream}; the other cases use the scripted "
        "upstream (it tells which requests reached it).",
    ]
    return "\n".join(lines)


def write_report(table: str) -> None:
    from bench._report import write_section

    if not RELIABILITY_MD.exists():
        RELIABILITY_MD.write_text(
            "# Reliability\n\nEvery table below was written by the script named in its section; re-run it to "
            "refresh.\n"
        )
    write_section(
        "capture_faults", "Capture faults: every exchange a record or a counted loss", table, RELIABILITY_MD
    )


if __name__ == "__main__":
    main()
