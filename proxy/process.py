"""`RecordingProxy`: `python -m proxy` (what users run) as a managed child process (core/process.py).

with RecordingProxy("http://127.0.0.1:8080", "traces/") as proxy:
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x")
    ...
summary = proxy.summary  # {"recorded": ..., "streamed": ..., "errors": ..., "passed_through": ..., ...}
"""

from __future__ import annotations

import json
from pathlib import Path

from core.process import ManagedProcess, python_command
from proxy.recorder import ABANDON_SECONDS, DRAIN_SECONDS
from proxy.server import GRACE_SECONDS

# Stopping, the proxy may give exchanges in flight GRACE_SECONDS, spend DRAIN_SECONDS writing what is
# queued, then stop its recorder: wait longer than all of it before SIGKILL, or the summary and the last
# records are lost.
STOP_TIMEOUT = GRACE_SECONDS + DRAIN_SECONDS + ABANDON_SECONDS + 15.0


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
        self.stop_timeout = STOP_TIMEOUT
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
