"""The recorder process: builds trace records from finished exchanges and appends them to the trace file.

It runs apart from mitmproxy's process so that parsing, reassembly, redaction, validation and writing
never hold the interpreter lock the proxy's event loop needs (on a thread, every socket wait of the
loop could cost up to a switch interval while the recorder computes), and so they use another core.
The proxy side only puts each `Exchange` on a multiprocessing queue, whose feeder thread pickles it
(a memory copy) and writes it to a pipe: traffic never waits for recording.

Nothing is lost silently. An exchange handed over stays *pending* on the proxy side until the recorder
acknowledges it: written (with the file's size after it), or lost (a failed write, and why). If the
recorder process dies, the proxy starts a new one and hands it every pending exchange again; the new one
first reads what was written after the last acknowledged record, so what the old one wrote but never
acknowledged is acknowledged, not written twice. An exchange whose recorder died twice, and every
exchange that cannot be recorded at all, is a counted loss: in the summary and, one JSON line each (id,
time, reason, session_id), in a side file beside the trace file (`core.trace.loss_file_for`).

Signals: a terminal's Ctrl-C and a closed terminal reach the whole process group, so the recorder ignores
SIGINT and SIGHUP; it stops when the proxy says so, after writing everything queued (or when the proxy is
gone and the queue is empty). SIGTERM makes it stop after the record in hand (the proxy sends it when a
second Ctrl-C abandons the rest).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any

from core.process import PROXY_ABANDON_SECONDS, PROXY_DRAIN_SECONDS
from core.trace import TraceWriter, loss_file_for, utc_now

log = logging.getLogger("proxy")

DRAIN_SECONDS = PROXY_DRAIN_SECONDS  # how long stopping waits for the recorder to write what is queued
ABANDON_SECONDS = PROXY_ABANDON_SECONDS  # after a second Ctrl-C: for the recorder to finish the record in hand
RESTART_INTERVAL = 1.0  # a recorder that dies this soon, having written nothing, is restarted after a pause
MAX_ATTEMPTS = 3  # recorders that may die holding an exchange before it is counted lost
MAX_RESTARTS = 20


class LossLog:
    """The side file of exchanges that are not in the trace file. Lines that cannot be written now (the
    disk is full) are kept and written with the next loss or at close."""

    def __init__(self, path: Path):
        self.path = path
        self.by_reason: Counter[str] = Counter()
        self._unwritten: list[dict] = []
        self._writer: TraceWriter | None = None

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def add(self, exchange_id: str, session_id: str | None, reason: str) -> None:
        self.by_reason[reason.split(":", 1)[0]] += 1
        self._unwritten.append(
            {"id": exchange_id, "time": utc_now(), "reason": reason, "session_id": session_id}
        )
        self.flush()

    def flush(self) -> None:
        try:
            if self._unwritten and self._writer is None:
                self._writer = TraceWriter(self.path.parent, self.path.name)
            while self._unwritten:
                self._writer.write(self._unwritten[0])
                self._unwritten.pop(0)
        except OSError as problem:
            log.error("recorder: cannot write the list of losses %s yet: %s", self.path, problem)

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()


@dataclass
class _Child:
    """One recorder process and its pipes."""

    process: Any
    queue: Any
    results: Any
    started: float = field(default_factory=time.monotonic)
    ready: bool = False
    said_bye: bool = False
    acknowledged: int = 0
    listener: threading.Thread | None = None


class RecordWriter:
    """Proxy side: hands exchanges to the recorder process; `close()` drains and returns the counts."""

    def __init__(self, path: Path, fsync: bool = False, loss_file: Path | None = None):
        self.path = Path(path)
        self.fsync = fsync
        self.losses = LossLog(Path(loss_file) if loss_file else loss_file_for(self.path))
        self.counts: Counter[str] = Counter()
        self.restarts = 0
        self.abandoned = 0
        self.abandon = threading.Event()  # set by a second Ctrl-C: stop draining
        self._pending: dict[str, Any] = {}  # handed over, not acknowledged yet
        self._attempts: Counter[str] = Counter()
        self._offset: int | None = None  # the file's size after the last acknowledged record
        self._changed = threading.Condition()
        self._alive = False  # the current child can take exchanges
        self._closing = False
        self._stopping = False  # no more restarts
        self._broken: str | None = None  # why no recorder can run
        self._ready = threading.Event()
        self._final: dict | None = None
        self._context = multiprocessing.get_context("spawn")  # no fork of a process with threads
        self._child = self._start()

    def _start(self) -> _Child:
        queue = self._context.Queue()
        results, child_end = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=record_process,
            args=(queue, child_end, str(self.path), self.fsync, os.getpid(), self._offset),
            name="flywheel-recorder",
            daemon=True,
        )
        process.start()
        child_end.close()
        child = _Child(process, queue, results)
        child.listener = threading.Thread(
            target=self._listen, args=(child,), name="recorder-acks", daemon=True
        )
        child.listener.start()
        self._alive = True
        return child

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the recorder opened the trace file; OSError with its reason if it could not."""
        if not self._ready.wait(timeout):
            raise OSError(f"the recorder process did not start within {timeout:.0f}s")
        if self._broken:
            raise OSError(self._broken)

    def submit(self, exchange: Any) -> None:
        with self._changed:
            if exchange.closed:  # already handed over (hooks can fire twice while the proxy stops)
                return
            exchange.closed = True
            if self._final is not None:  # every hook ran before close(): a bug, said loudly
                log.error(
                    "recorder: exchange %s arrived after the recorder stopped; not recorded", exchange.id
                )
                return
            if self._broken:
                self._lose(exchange.id, exchange.session_id, f"recorder_unavailable: {self._broken}")
                return
            self._pending[exchange.id] = exchange
            if self._alive:
                self._attempts[exchange.id] += 1
                self._child.queue.put(exchange)  # never blocks: the feeder thread writes to the pipe

    def lose(self, exchange_id: str, session_id: str | None, reason: str) -> None:
        """Count an exchange that never reached the recorder."""
        with self._changed:
            self._lose(exchange_id, session_id, reason)

    def _lose(self, exchange_id: str, session_id: str | None, reason: str, quiet: bool = False) -> None:
        self.losses.add(exchange_id, session_id, reason)
        count = self.losses.count
        if not quiet and (count in (1, 10, 100) or count % 1000 == 0):
            log.error(
                "recorder: an exchange was not recorded (%s); %d so far, listed in %s",
                reason,
                count,
                self.losses.path,
            )

    # ------------------------------------------------------------------------- acknowledgements, restarts

    def _listen(self, child: _Child) -> None:
        while True:
            try:
                message = child.results.recv()
            except (EOFError, OSError):
                break
            with self._changed:
                self._acknowledge(child, message)
                self._changed.notify_all()
        child.process.join(5)
        with self._changed:
            self._changed.notify_all()
            if child is not self._child or child.said_bye or self._stopping:
                return
            self._alive = False
            if not child.ready:
                self._broken = (
                    self._broken or f"the recorder process exited with code {child.process.exitcode} at start"
                )
                if self.restarts == 0:
                    self._ready.set()
                    return
        self._replace(child)

    def _acknowledge(self, child: _Child, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            child.ready = True
            self._offset = message[1] if self._offset is None else self._offset
            self._ready.set()
        elif kind == "failed":
            self._broken = message[1]
        elif kind == "written":
            _, exchange_id, stream, error, offset = message
            child.acknowledged += 1
            self._attempts.pop(exchange_id, None)
            if self._pending.pop(exchange_id, None) is not None:
                self.counts.update(recorded=1, streamed=int(stream), errors=int(error))
            self._offset = max(self._offset or 0, offset)
        elif kind == "lost":
            _, exchange_id, reason = message
            child.acknowledged += 1
            self._attempts.pop(exchange_id, None)
            exchange = self._pending.pop(exchange_id, None)
            if exchange is not None:
                self._lose(exchange_id, exchange.session_id, reason)
        elif kind == "bye":
            child.said_bye = True

    def _replace(self, dead: _Child) -> None:
        """Start a new recorder and hand it what the dead one had not acknowledged."""
        log.error(
            "recorder process exited (code %s) with %d exchanges not acknowledged; starting a new one that "
            "writes them (traffic is unaffected)",
            dead.process.exitcode,
            len(self._pending),
        )
        with contextlib.suppress(Exception):
            dead.queue.cancel_join_thread()
            dead.queue.close()
        if dead.acknowledged == 0 and time.monotonic() - dead.started < RESTART_INTERVAL:
            time.sleep(RESTART_INTERVAL)  # it dies as soon as it starts: do not spin
        with self._changed:
            for exchange_id, exchange in list(self._pending.items()):
                if self._attempts[exchange_id] >= MAX_ATTEMPTS:
                    del self._pending[exchange_id], self._attempts[exchange_id]
                    self._lose(
                        exchange_id, exchange.session_id, f"recorder_died: {MAX_ATTEMPTS} times holding it"
                    )
            if self._stopping:
                return
            if self.restarts >= MAX_RESTARTS and not self._broken:
                self._broken = f"the recorder process died {self.restarts + 1} times"
            if self._broken:
                for exchange_id, exchange in list(self._pending.items()):
                    self._lose(exchange_id, exchange.session_id, f"recorder_unavailable: {self._broken}")
                self._pending.clear()
                self._attempts.clear()
                self._changed.notify_all()
                return
            self.restarts += 1
            self._child = self._start()
            for exchange_id, exchange in self._pending.items():
                self._attempts[exchange_id] += 1
                self._child.queue.put(exchange)
            if self._closing:
                self._child.queue.put(None)

    # ---------------------------------------------------------------------------------------- close

    def close(self, timeout: float = DRAIN_SECONDS) -> dict[str, Any]:
        """Let the recorder write everything queued (until `timeout`, or `abandon` is set), stop it, count
        what is left as lost, and return the counts (idempotent)."""
        with self._changed:
            if self._final is not None:
                return self._final
            self._closing = True
            if self._alive:
                self._child.queue.put(None)
        deadline = time.monotonic() + timeout
        reason = None
        with self._changed:
            while True:
                child = self._child
                if not self._pending and (
                    child.said_bye or child.process.exitcode is not None or self._broken
                ):
                    break
                if self.abandon.is_set():
                    reason = "abandoned"
                    break
                if time.monotonic() > deadline:
                    reason = "drain_timeout"
                    break
                self._changed.wait(0.1)
            self._stopping = True
        self._stop_child(child, graceful=reason is None)
        if reason is not None:
            self._settle_unacknowledged()
        with self._changed:
            if self._pending:
                log.error(
                    "recorder: %d exchanges not written (%s); listed in %s",
                    len(self._pending), reason or "recorder_stopped", self.losses.path,
                )  # fmt: skip
            for exchange_id, exchange in list(self._pending.items()):
                self._lose(exchange_id, exchange.session_id, reason or "recorder_stopped", quiet=True)
            if reason == "abandoned":
                self.abandoned = len(self._pending)
            self._pending.clear()
            self._attempts.clear()
            self.losses.close()
            self._final = {
                "recorded": self.counts["recorded"],
                "streamed": self.counts["streamed"],
                "errors": self.counts["errors"],
                "recording_failures": self.losses.count,
                "losses": dict(self.losses.by_reason),
                "loss_file": str(self.losses.path) if self.losses.count else None,
                "abandoned": self.abandoned,
                "recorder_restarts": self.restarts,
            }
        return self._final

    def _settle_unacknowledged(self) -> None:
        """After stopping a recorder that had not finished: what it wrote but never acknowledged is recorded,
        not lost; a line it was writing when killed is cut back."""
        with contextlib.suppress(OSError):
            TraceWriter(self.path.parent, self.path.name).close()
        found = written_after(self.path, self._offset)
        with self._changed:
            for exchange_id in [i for i in self._pending if i in found]:
                stream, error, _ = found[exchange_id]
                del self._pending[exchange_id]
                self.counts.update(recorded=1, streamed=int(stream), errors=int(error))

    def _stop_child(self, child: _Child, graceful: bool) -> None:
        """Graceful: it said bye, wait for it to exit. Otherwise SIGTERM (it finishes the record in hand),
        then SIGKILL; either way read its last acknowledgements before counting anything lost."""
        if not graceful and child.process.exitcode is None:
            child.process.terminate()
        child.process.join(ABANDON_SECONDS if not graceful else 5)
        if child.process.exitcode is None:
            child.process.kill()
            child.process.join(5)
        # what it never read stays in the queue's pipe: do not let this process wait at exit to flush it
        child.queue.cancel_join_thread()
        if child.listener is not None:
            child.listener.join(5)


# --------------------------------------------------------------------------------------- the child side


def _next(queue, parent: int, stop: threading.Event):
    """The next exchange; None at the end, on SIGTERM, or when the proxy died (SIGKILL) and the queue is empty."""
    while not stop.is_set():
        try:
            return queue.get(timeout=0.5)
        except Empty:
            if os.getppid() != parent:
                return None
    return None


def _send(results, message: tuple) -> None:
    with contextlib.suppress(OSError):  # the proxy is gone: keep writing what is queued
        results.send(message)


def written_after(path: Path, offset: int | None) -> dict[str, tuple[bool, bool, int]]:
    """Records in `path` after byte `offset`: id -> (stream, has error, file size after it)."""
    found: dict[str, tuple[bool, bool, int]] = {}
    if offset is None or not path.is_file():
        return found
    with open(path, "rb") as handle:
        handle.seek(offset)
        position = offset
        for raw in handle:
            position += len(raw)
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("id"), str):
                found[record["id"]] = (bool(record.get("stream")), record.get("error") is not None, position)
    return found


def record_process(queue, results, path: str, fsync: bool, parent: int, resume: int | None) -> None:
    """Child process main: records until it gets None, acknowledging each exchange."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    logging.basicConfig(level=logging.WARNING, format="proxy: %(levelname)s: %(message)s")
    from proxy.capture import checked_record, fallback_record

    target = Path(path)
    try:
        writer = TraceWriter(target.parent, target.name, fsync=fsync)
    except OSError as problem:
        _send(results, ("failed", f"cannot open the trace file {target}: {problem}"))
        return
    if writer.cut_bytes:
        log.warning("recorder: cut %d bytes of an unfinished last line from %s", writer.cut_bytes, target)
    already = written_after(target, resume)
    _send(results, ("ready", writer.size()))
    failures = 0
    while (exchange := _next(queue, parent, stop)) is not None:
        if exchange.id in already:  # written by a recorder that died before it acknowledged it
            _send(results, ("written", exchange.id, *already.pop(exchange.id)))
            continue
        try:
            record = checked_record(exchange, writer.run_id)
        except Exception as problem:  # the last line of defence: still record that the exchange happened
            log.exception("recorder: building the record of %s failed", exchange.id)
            record = fallback_record(exchange, writer.run_id, f"{type(problem).__name__}: {problem}")
        try:
            offset = writer.write(record)
        except Exception as problem:  # disk full, permissions, an unserialisable value
            failures += 1
            if failures in (1, 10, 100) or failures % 1000 == 0:
                log.error(
                    "recorder: could not write to %s (%s: %s); traffic still flows (%d records lost so far)",
                    writer.path, type(problem).__name__, problem, failures,
                )  # fmt: skip
            _send(results, ("lost", exchange.id, f"write_failed: {type(problem).__name__}: {problem}"))
            continue
        _send(results, ("written", exchange.id, bool(record["stream"]), record["error"] is not None, offset))
    with contextlib.suppress(OSError):
        writer.close()
    if not stop.is_set():
        _send(results, ("bye",))
