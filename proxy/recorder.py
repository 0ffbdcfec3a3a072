"""The recorder process: builds trace records from finished exchanges and appends them to the trace file.

It runs apart from mitmproxy's process so that parsing, reassembly, redaction, validation and writing
never hold the interpreter lock the proxy's event loop needs (on a thread, every socket wait of the
loop could cost up to a switch interval while the recorder computes), and so they use another core.
The proxy side only puts each `Exchange` on a multiprocessing queue, whose feeder thread pickles it
(a memory copy) and writes it to a pipe. If the recorder process dies, the proxy logs it, counts what
it could not hand over, and starts a new one: traffic never waits for it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from pathlib import Path
from queue import Empty
from typing import Any

log = logging.getLogger("proxy")

RESTART_INTERVAL = 1.0  # a recorder that dies sooner after its start is not restarted at once


class RecordWriter:
    """Proxy side: hands exchanges to the recorder process; `close()` returns the recorder's counts."""

    def __init__(self, path: Path, fsync: bool = False):
        self.path = Path(path)
        self.fsync = fsync
        self.lost = 0  # exchanges not handed over because the recorder process was gone
        self.restarts = 0
        self._totals: dict[str, int] = {}  # counts of recorder processes that ended before close()
        self._final: dict[str, int] | None = None
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._start()

    def _start(self) -> None:
        self.queue = self._context.Queue()
        self.results, child_end = self._context.Pipe(duplex=False)
        self.process = self._context.Process(
            target=record_process,
            args=(self.queue, child_end, str(self.path), self.fsync, os.getpid()),
            name="flywheel-recorder",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self._started = time.monotonic()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the recorder opened the trace file; OSError with its reason if it could not."""
        deadline = time.monotonic() + timeout
        while not self.results.poll(0.05):
            if self.process.exitcode is not None:
                raise OSError(f"the recorder process exited with code {self.process.exitcode} at start")
            if time.monotonic() > deadline:
                raise OSError(f"the recorder process did not start within {timeout:.0f}s")
        status, detail = self.results.recv()
        if status != "ready":
            raise OSError(detail)

    def submit(self, exchange: Any) -> None:
        exchange.closed = True
        if self.process.exitcode is not None:  # the recorder died (a bug, the OOM killer): start another
            if time.monotonic() - self._started < RESTART_INTERVAL:
                self.lost += 1  # it dies as soon as it starts: do not spin
                return
            self._restart()
        self.queue.put(exchange)  # never blocks: the feeder thread writes to the pipe

    def _restart(self) -> None:
        log.error(
            "recorder process exited (code %s); exchanges queued to it are lost; starting a new one "
            "(traffic is unaffected)",
            self.process.exitcode,
        )
        self._collect(self.results)
        with contextlib.suppress(Exception):
            self.queue.cancel_join_thread()
            self.queue.close()
        self.restarts += 1
        self._start()

    def _collect(self, connection) -> None:
        with contextlib.suppress(EOFError, OSError):
            while connection.poll(0):
                status, detail = connection.recv()
                if status == "stats":
                    for key, value in detail.items():
                        self._totals[key] = self._totals.get(key, 0) + value

    def close(self, timeout: float = 60.0) -> dict[str, int]:
        """Let the recorder write everything queued, stop it, and return its counts (idempotent)."""
        if self._final is not None:
            return self._final
        totals = dict(self._totals)
        with contextlib.suppress(Exception):
            self.queue.put(None)
        deadline = time.monotonic() + timeout
        stats = None
        while stats is None and time.monotonic() < deadline:
            if not self.results.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if not self.process.is_alive():
                    break
                continue
            try:
                status, detail = self.results.recv()
            except EOFError:
                break
            if status == "stats":
                stats = detail
        if stats is None:
            log.error("recorder: no final counts from the recorder process; some records may be missing")
            stats = {}
        for key, value in stats.items():
            totals[key] = totals.get(key, 0) + value
        totals["recording_failures"] = totals.get("recording_failures", 0) + self.lost
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
        self._final = totals
        return totals


def _next(queue, parent: int):
    """The next exchange; None at the end, or when the proxy died without saying so (SIGKILL)."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except Empty:
            if os.getppid() != parent:
                return None


def record_process(queue, results, path: str, fsync: bool, parent: int) -> None:
    """Child process main: records until it gets None, then sends its counts."""
    logging.basicConfig(level=logging.WARNING, format="proxy: %(levelname)s: %(message)s")
    from core.trace import TraceWriter
    from proxy.capture import checked_record, fallback_record

    target = Path(path)
    try:
        writer = TraceWriter(target.parent, target.name, fsync=fsync)
    except OSError as problem:
        results.send(("failed", f"cannot open the trace file {target}: {problem}"))
        return
    results.send(("ready", None))
    stats = {"recorded": 0, "streamed": 0, "errors": 0, "recording_failures": 0}
    while (exchange := _next(queue, parent)) is not None:
        try:
            record = checked_record(exchange, writer.run_id)
        except Exception as problem:  # the last line of defence: still record that the exchange happened
            log.exception("recorder: building the record of %s failed", exchange.id)
            record = fallback_record(exchange, writer.run_id, f"{type(problem).__name__}: {problem}")
        try:
            writer.write(record)
        except Exception as problem:  # disk full, permissions, an unserialisable value
            stats["recording_failures"] += 1
            failures = stats["recording_failures"]
            if failures in (1, 10, 100) or failures % 1000 == 0:
                log.error(
                    "recorder: could not write to %s (%s: %s); traffic still flows (%d records lost so far)",
                    writer.path,
                    type(problem).__name__,
                    problem,
                    failures,
                )
            writer = _reopen(writer)
            continue
        stats["recorded"] += 1
        stats["streamed"] += bool(exchange.streamed)
        stats["errors"] += record["error"] is not None
    with contextlib.suppress(OSError):
        writer.close()
    with contextlib.suppress(OSError):
        results.send(("stats", stats))


def _reopen(writer):
    """After a failed write: drop the file object, whose buffer still holds the line that failed (it would
    grow with every record while the disk is full, and land later, out of order)."""
    from core.trace import TraceWriter

    with contextlib.suppress(OSError):
        writer.close()
    try:
        return TraceWriter(writer.directory, writer.path.name, fsync=writer.fsync)
    except OSError as problem:
        log.error("recorder: cannot reopen %s: %s", writer.path, problem)
        return writer
