"""Loopback helpers shared by the proxy, the server manager and tests."""

from __future__ import annotations

import socket
import time

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, timeout: float, is_alive=lambda: True) -> None:
    """Poll `url` until it answers 200, the deadline passes, or `is_alive()` turns false."""
    deadline = time.monotonic() + timeout
    last_error = "no answer"
    while time.monotonic() < deadline:
        if not is_alive():
            raise RuntimeError(f"process serving {url} exited before it became healthy")
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as error:
            last_error = type(error).__name__
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s ({last_error})")
