"""Loopback helpers shared by the proxy, the managed processes, the scripted server and tests."""

from __future__ import annotations

import socket
import time

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, timeout: float, is_alive=lambda: True, fatal_statuses=()) -> None:
    """Poll `url` until it answers 200, the deadline passes, `is_alive()` turns false, or it answers one of
    `fatal_statuses` (a server saying it will never be healthy)."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not is_alive():
            raise RuntimeError(f"process serving {url} exited before it became healthy")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            if response.status_code in fatal_statuses:
                raise RuntimeError(f"{url} answered HTTP {response.status_code}: {response.text[:200]}")
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            last_error = type(error).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s ({last_error})")


class Served:
    """Something serving HTTP on `host:port` that `start()`s and `stop()`s: its URLs and the `with` protocol."""

    host: str
    port: int | None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """OpenAI-compatible base URL (what `openai.OpenAI(base_url=...)` and pydantic-ai want)."""
        return f"{self.url}/v1"

    def start(self):
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
