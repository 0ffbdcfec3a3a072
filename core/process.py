"""Start `mlx_lm server` for a model (and optional adapter) on a free loopback port, always stop it.

with MlxServer(model_path, adapter_path=None) as server:
    client = openai.OpenAI(base_url=server.base_url, api_key="x")
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.net import free_port, wait_until_healthy


@dataclass
class MlxServer:
    model: str | Path
    adapter_path: str | Path | None = None
    host: str = "127.0.0.1"
    port: int | None = None
    max_tokens: int = 512
    extra_args: list[str] = field(default_factory=list)
    startup_timeout: float = 120.0
    log_path: Path | None = None
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL (what `openai.OpenAI(base_url=...)` and pydantic-ai want)."""
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "mlx_lm", "server", "--model", str(self.model)]
        cmd += ["--host", self.host, "--port", str(self.port), "--max-tokens", str(self.max_tokens)]
        if self.adapter_path is not None:
            cmd += ["--adapter-path", str(self.adapter_path)]
        return cmd + list(self.extra_args)

    def start(self) -> MlxServer:
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="mlx-server-", suffix=".log")[1])
        env = server_environment()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        try:
            wait_until_healthy(
                f"{self.url}/health", self.startup_timeout, lambda: self.process.poll() is None
            )
        except BaseException as error:
            self.stop()
            raise RuntimeError(
                f"mlx_lm server failed to start: {error}\n--- log tail ---\n{self.log_tail()}"
            ) from None
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> MlxServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def server_environment() -> dict[str, str]:
    """The environment for a child MLX process: offline hub, and the fast BLAS on Linux when present."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    try:
        from core.blas import child_environment
    except ImportError:
        return env
    return child_environment(env)
