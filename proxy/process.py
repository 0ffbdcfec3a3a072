"""`RecordingProxy`: run `python -m proxy` as a child process (what users run) and wait until it listens.

with RecordingProxy("http://127.0.0.1:8080", "traces/") as proxy:
    client = openai.OpenAI(base_url=proxy.base_url, api_key="x")
    ...
summary = proxy.summary  # {"recorded": ..., "streamed": ..., "errors": ..., "passed_through": ..., ...}
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


class RecordingProxy:
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
    ):
        self.upstream = upstream
        self.traces_dir = Path(traces_dir)
        self.listen_host = listen_host
        self.listen_port = listen_port  # None: a free port
        self.trace_file: Path | None = Path(trace_file) if trace_file else None
        self.startup_timeout = startup_timeout
        self.log_path = log_path
        self.port: int | None = None
        self.summary: dict | None = None
        self.process: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    @property
    def url(self) -> str:
        return f"http://{self.listen_host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL through the proxy (for openai / pydantic-ai clients)."""
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "proxy", "--upstream", self.upstream, "--json"]
        cmd += ["--listen", f"{self.listen_host}:{self.listen_port or 0}", "--traces", str(self.traces_dir)]
        if self.trace_file is not None:
            cmd += ["--trace-file", str(self.trace_file)]
        return cmd

    def start(self) -> RecordingProxy:
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="flywheel-proxy-", suffix=".log")[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PACKAGE_ROOT), env.get("PYTHONPATH")]))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
            )
        threading.Thread(target=self._read_stdout, name="proxy-stdout", daemon=True).start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise TimeoutError(
                    f"proxy did not listen within {self.startup_timeout:.0f}s\n{self.log_tail()}"
                ) from None
            if line is None:
                self.process.wait()
                raise RuntimeError(
                    f"proxy exited with code {self.process.returncode} before listening\n{self.log_tail()}"
                )
            event = _parse_event(line)
            if event.get("event") == "listening":
                self.port = int(event["port"])
                self.trace_file = Path(event["trace_file"])
                return self

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stop(self, timeout: float = 30.0) -> dict | None:
        """Stop the proxy (SIGTERM: it drains its queue and writes every record) and return its summary."""
        if self.process is None:
            return self.summary
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        while True:
            try:
                line = self._lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            event = _parse_event(line)
            if event.get("event") == "stopped":
                self.summary = event
        self.process = None
        return self.summary

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _parse_event(line: str) -> dict:
    try:
        event = json.loads(line)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}
