"""Every server subprocess the project starts is a `ManagedProcess`: `mlx_lm server` (`MlxServer` below), the
recording proxy (`proxy.RecordingProxy`) and any python-module server run as a child.

    with MlxServer(model_path, adapter_path=None) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")

    with ManagedProcess(python_command("proxy.scripted_upstream"), ready_event="listening") as upstream:
        httpx.get(f"{upstream.url}/health")

A managed process listens on a free loopback port, is waited for until it is ready (its health URL answers
200, or it prints a readiness event, a JSON line such as {"event": "listening", "port": 8081}, on stdout),
writes its output to a temporary log file that `stop()` always removes (its tail is quoted in any startup
or exit error first), and is always stopped: a `with` block stops it on exceptions and KeyboardInterrupt.

Ctrl-C, one behaviour for all: children stay in the caller's process group, so a terminal's Ctrl-C (SIGINT
to the whole foreground group) reaches them together with the caller; each child of ours handles SIGINT and
SIGTERM by finishing what it completed (the proxy writes every completed exchange) and exits. `stop()`
sends SIGTERM and waits `stop_timeout`, longer than the child's own drain deadline, then SIGKILL; a second
Ctrl-C while it waits kills at once. On Linux each child also gets PR_SET_PDEATHSIG(SIGTERM), so it never
outlives a parent killed by SIGKILL (only for children started from the main thread: the signal follows the
thread that started the child). Nothing of this changes on macOS, where PR_SET_PDEATHSIG does not exist.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from core.net import Served, free_port, wait_until_healthy

log = logging.getLogger("flywheel")

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TAIL_LINES = 30
READER_JOIN_SECONDS = 5.0  # a grandchild that inherited stdout may keep the pipe open after the child exits
PR_SET_PDEATHSIG = 1


class ProcessError(RuntimeError):
    """A managed process did not start; the message quotes the tail of its log."""


def python_command(module: str, *args: str) -> list[str]:
    """`python -m module args...` with this interpreter."""
    return [sys.executable, "-m", module, *map(str, args)]


def project_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with the project importable, for `python -m <our module>` children."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def server_environment() -> dict[str, str]:
    """The environment for a child MLX process: offline hub, and the fast BLAS on Linux when present."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        from core.blas import child_environment
    except ImportError:
        return env
    return child_environment(env)


def _die_with_parent():
    """preexec_fn giving the child PR_SET_PDEATHSIG(SIGTERM) on Linux; None elsewhere, and off the main thread
    (the signal fires when the *thread* that forked the child ends, which for a worker thread is too early)."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
        if os.getppid() != parent:  # the parent died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


class ManagedProcess(Served):
    """One server subprocess: started, waited for, logged to a temp file, always stopped (see the module doc).

    `command` is the argv (subclasses build it in `command()`); `health_path` makes readiness an HTTP 200 on
    that path of `url`; `ready_event` makes it a JSON line {"event": ready_event, "port": N, ...} on stdout
    (every JSON line the child prints is kept in `events`; other stdout lines go to the log). Without
    either, the process is ready once started. `port=None` takes a free port (with `ready_event`, the
    child binds port 0 and reports the port it got). `log_path` keeps the log there instead of in a temp
    file that `stop()` removes.
    """

    log_prefix = "server"  # the temp log is <log_prefix>-XXXXXXXX.log
    health_path: str | None = None
    ready_event: str | None = None
    fatal_statuses: tuple[int, ...] = ()  # health answers that mean "never": stop waiting at once

    def __init__(
        self,
        command: Sequence[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        health_path: str | None = None,
        ready_event: str | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 10.0,
        env: dict[str, str] | None = None,
        log_path: Path | str | None = None,
    ):
        self.argv = list(command) if command is not None else None
        self.host = host
        self.port = port
        if health_path is not None:
            self.health_path = health_path
        if ready_event is not None:
            self.ready_event = ready_event
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.env = env
        self.log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen | None = None
        self.events: list[dict] = []
        self.exit_error: str | None = None  # set when the child exited on its own with an error
        self._own_log = False
        self._last_tail = ""
        self._stopped = False
        self._reader: threading.Thread | None = None
        self._events_changed = threading.Condition()
        self._stdout_closed = False

    @property
    def name(self) -> str:
        return self.log_prefix

    def command(self) -> list[str]:
        if self.argv is None:
            raise NotImplementedError(f"{type(self).__name__} has no command")
        return self.argv

    def environment(self) -> dict[str, str]:
        return project_environment(self.env)

    def on_ready(self, event: dict) -> None:
        """Called with the readiness event (subclasses read what the child reported)."""

    # ------------------------------------------------------------------------------------------ start

    def start(self) -> ManagedProcess:
        if self.process is not None:
            raise RuntimeError(f"{self.name} was already started")
        try:
            self._launch()
            self._wait_until_ready()
        except BaseException as error:
            tail = self.log_tail()
            self.stop(interrupted=True)
            if not isinstance(error, Exception):  # KeyboardInterrupt, SystemExit: stopped, and on it goes
                raise
            raise ProcessError(f"{self.name} failed to start: {error}\n--- log tail ---\n{tail}") from None
        return self

    def _launch(self) -> None:
        if self.port is None and self.ready_event is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            handle, path = tempfile.mkstemp(prefix=f"{self.log_prefix}-", suffix=".log")
            os.close(handle)
            self.log_path, self._own_log = Path(path), True
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.ready_event else log_file,
                stderr=log_file,
                env=self.environment(),
                preexec_fn=_die_with_parent(),
            )
        if self.ready_event:
            self._reader = threading.Thread(target=self._read_stdout, name=f"{self.name}-stdout", daemon=True)
            self._reader.start()

    def _wait_until_ready(self) -> None:
        if self.ready_event:
            event = self.wait_for_event(self.ready_event, self.startup_timeout)
            if event is None:
                if self.process.poll() is not None or self._stdout_closed:
                    try:
                        code = self.process.wait(READER_JOIN_SECONDS)
                    except subprocess.TimeoutExpired:
                        code = "unknown (it closed its stdout)"
                    raise RuntimeError(f"it exited with code {code} before it was ready")
                raise TimeoutError(f"no {self.ready_event!r} event within {self.startup_timeout:.0f}s")
            if "port" in event:
                self.port = int(event["port"])
            self.on_ready(event)
        elif self.health_path is not None:
            wait_until_healthy(
                f"{self.url}{self.health_path}",
                self.startup_timeout,
                lambda: self.process.poll() is None,
                self.fatal_statuses,
            )

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        with open(self.log_path, "ab") as log_file:
            for line in self.process.stdout:
                event = _event(line)
                if event is None:
                    log_file.write(line)
                    log_file.flush()
                    continue
                with self._events_changed:
                    self.events.append(event)
                    self._events_changed.notify_all()
        with self._events_changed:
            self._stdout_closed = True
            self._events_changed.notify_all()

    def wait_for_event(self, name: str, timeout: float) -> dict | None:
        """The first JSON event called `name` the child printed, waiting up to `timeout` s; None if the
        child closed its stdout (exited) or the time ran out first."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            while True:
                found = next((e for e in self.events if e.get("event") == name), None)
                remaining = deadline - time.monotonic()
                if found is not None or self._stdout_closed or remaining <= 0:
                    return found
                self._events_changed.wait(min(remaining, 0.5))

    # ------------------------------------------------------------------------------------------- stop

    def stop(self, *, interrupted: bool = False) -> None:
        """SIGTERM, wait `stop_timeout`, SIGKILL; then remove the temp log. Idempotent. A child that had
        already exited with an error is reported (with its log's tail) unless `interrupted` (Ctrl-C)."""
        process = self.process
        if process is None or self._stopped:
            return
        self._stopped = True
        try:
            if process.poll() is None:
                self._terminate(process)
            elif process.returncode != 0 and not interrupted:
                self.exit_error = (
                    f"{self.name} (pid {process.pid}) exited on its own with code {process.returncode}\n"
                    f"--- log tail ---\n{self.log_tail()}"
                )
                log.warning(self.exit_error)
        finally:
            if self._reader is not None:
                self._reader.join(READER_JOIN_SECONDS)
            self._last_tail = self.log_tail()
            if self._own_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)

    def _terminate(self, process: subprocess.Popen) -> None:
        try:
            process.send_signal(signal.SIGTERM)
            process.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0fs of SIGTERM: killing it", self.name, self.stop_timeout)
            process.kill()
            process.wait()
        except KeyboardInterrupt:  # another Ctrl-C while waiting: stop now
            process.kill()
            process.wait()
            raise

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        """The last lines of the log (after `stop()` removed a temp log: what it held then), without the
        access-log lines of our own health polls."""
        if self.log_path is None or not self.log_path.exists():
            return self._last_tail
        text = self.log_path.read_text(errors="replace").splitlines()
        if self.health_path is not None:
            text = [line for line in text if f'"GET {self.health_path} ' not in line]
        return "\n".join(text[-lines:])

    def __exit__(self, exc_type, *exc_info) -> None:
        self.stop(interrupted=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))


def _event(line: bytes) -> dict | None:
    """A JSON object line with an "event" key, else None."""
    if not line.lstrip().startswith(b"{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


class MlxServer(ManagedProcess):
    """`mlx_lm server` for a model (and optional adapter) on a free loopback port; ready when /health answers."""

    log_prefix = "mlx-server"
    health_path = "/health"
    fatal_statuses = (503,)  # its generation thread died (e.g. the model did not load): it never recovers

    def __init__(
        self,
        model: str | Path,
        adapter_path: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        max_tokens: int = 512,
        extra_args: Sequence[str] = (),
        startup_timeout: float = 120.0,
        log_path: Path | str | None = None,
    ):
        super().__init__(host=host, port=port, startup_timeout=startup_timeout, log_path=log_path)
        self.model = model
        self.adapter_path = adapter_path
        self.max_tokens = max_tokens
        self.extra_args = list(extra_args)

    @property
    def name(self) -> str:
        return "mlx_lm server"

    def command(self) -> list[str]:
        cmd = python_command("mlx_lm", "server", "--model", str(self.model))
        cmd += ["--host", self.host, "--port", str(self.port), "--max-tokens", str(self.max_tokens)]
        if self.adapter_path is not None:
            cmd += ["--adapter-path", str(self.adapter_path)]
        return cmd + self.extra_args

    def environment(self) -> dict[str, str]:
        return server_environment()


# How long `python -m proxy` may take to stop once signalled: exchanges in flight get PROXY_GRACE_SECONDS, the
# recorder PROXY_DRAIN_SECONDS to write what is queued, and PROXY_ABANDON_SECONDS after a second Ctrl-C. They
# live here because the wrapper below must wait longer than all of them before SIGKILL, or the summary and the
# last records are lost; the proxy takes them from here.
PROXY_GRACE_SECONDS = 2.0
PROXY_DRAIN_SECONDS = 30.0
PROXY_ABANDON_SECONDS = 1.0
PROXY_STOP_TIMEOUT = PROXY_GRACE_SECONDS + PROXY_DRAIN_SECONDS + PROXY_ABANDON_SECONDS + 15.0


class RecordingProxy(ManagedProcess):
    """Ready when the child prints its "listening" event (it binds a free port itself); `stop()` returns the
    summary from its "stopped" event."""

    log_prefix = "flywheel-proxy"
    ready_event = "listening"

    def __init__(
        self,
        upstream: str,
        traces_dir: Path | str,
        listen_host: str = "127.0.0.1",
        listen_port: int | None = None,
        *,
        trace_file: Path | str | None = None,
        startup_timeout: float = 60.0,
        log_path: Path | None = None,
        policy: dict | None = None,
    ):
        super().__init__(
            host=listen_host, port=listen_port, startup_timeout=startup_timeout, log_path=log_path
        )
        self.stop_timeout = PROXY_STOP_TIMEOUT
        self.upstream = upstream
        self.traces_dir = Path(traces_dir)
        self.listen_port = listen_port  # None: a free port
        self.trace_file: Path | None = Path(trace_file) if trace_file else None
        self.policy = policy  # recorded in every record (`python -m proxy --policy-json`)

    @property
    def name(self) -> str:
        return "proxy"

    @property
    def listen_host(self) -> str:
        return self.host

    def command(self) -> list[str]:
        cmd = python_command("proxy", "--upstream", self.upstream, "--json")
        cmd += ["--listen", f"{self.host}:{self.listen_port or 0}", "--traces", str(self.traces_dir)]
        if self.trace_file is not None:
            cmd += ["--trace-file", str(self.trace_file)]
        if self.policy:
            cmd += ["--policy-json", json.dumps(self.policy)]
        return cmd

    def on_ready(self, event: dict) -> None:
        self.trace_file = Path(event["trace_file"])

    @property
    def summary(self) -> dict | None:
        """The proxy's own counts, printed when it stopped (None before, or if it died without them)."""
        return next((e for e in reversed(self.events) if e.get("event") == "stopped"), None)

    def stop(self, timeout: float | None = None, *, interrupted: bool = False) -> dict | None:
        """Stop the proxy (SIGTERM: it writes every finished exchange) and return its summary."""
        if timeout is not None:
            self.stop_timeout = timeout
        super().stop(interrupted=interrupted)
        return self.summary
