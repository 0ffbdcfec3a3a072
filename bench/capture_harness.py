"""What the capture fault cases (bench/capture_faults.py, bench/capture_traffic.py) share: the recording proxy
run as a terminal runs it (`GroupProxy`), traffic through it with one session id per request (`Traffic`),
and the accounting of every request sent against the trace file, the side file of losses, the upstream's
log and the proxy's stop summary (`Outcome`, `account`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.process import project_environment, python_command
from core.trace import SESSION_HEADER, loss_file_for, read_trace_lines
from proxy.scripted_upstream import ScriptedUpstream

ROOT = Path(__file__).resolve().parent.parent
MIXED = [("echo", False), ("echo", True), ("parallel-tools", True), ("slow", True), ("mlx-style-tool", False)]


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
