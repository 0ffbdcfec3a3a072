"""Run mitmproxy in reverse mode, in-process, with the recording addon: `serve(...)`.

Only the mitmproxy addons a plain reverse proxy needs are loaded (core, proxyserver, next_layer,
errorcheck; tlsconfig for an https upstream): every hook of every loaded addon runs on every flow.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from core.trace import run_file_name

log = logging.getLogger("proxy")

DEFAULT_LISTEN = "127.0.0.1:8081"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def parse_upstream(url: str) -> str:
    """`http(s)://host:port` of the upstream server; ValueError with a one-line reason otherwise."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--upstream {url!r}: expected an http(s) URL such as http://127.0.0.1:8080")
    if parts.path not in ("", "/") or parts.query:
        raise ValueError(
            f"--upstream {url!r}: give the server's root URL (e.g. {parts.scheme}://{parts.netloc}), "
            "without a path such as /v1: request paths are forwarded unchanged"
        )
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"--upstream {url!r}: the port is not a number in 1-65535") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def parse_listen(spec: str) -> tuple[str, int]:
    """('host', port) from 'host:port', ':port' or 'port'; ValueError with a one-line reason otherwise."""
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ValueError(f"--listen {spec!r}: expected HOST:PORT, e.g. 127.0.0.1:8081") from None
    if not 0 <= number <= 65535:
        raise ValueError(f"--listen {spec!r}: port {number} is not in 0-65535")
    return host, number


class _Ready:
    """Reports the bound address once mitmproxy's servers are up (port 0 picks a free one)."""

    def __init__(self, callback: Callable[[str, int], None] | None):
        self.callback = callback

    def running(self) -> None:
        from mitmproxy import ctx

        addresses = ctx.master.addons.get("proxyserver").listen_addrs()
        if not addresses:
            log.error("proxy: no listening socket came up")
            ctx.master.shutdown()
            return
        host, port = addresses[0][:2]
        if self.callback is not None:
            self.callback(host, port)


async def serve(
    upstream: str,
    traces_dir: Path | str = "traces",
    listen_host: str = "127.0.0.1",
    listen_port: int = 8081,
    *,
    trace_file: Path | str | None = None,
    on_ready: Callable[[str, int, Path], None] | None = None,
    handle_signals: bool = True,
):
    """Run the recording reverse proxy until SIGINT/SIGTERM (or `master.shutdown()`); returns its Stats.

    `on_ready(host, port, trace_path)` is called once the socket is bound.
    """
    upstream = parse_upstream(upstream)
    trace_path = Path(trace_file) if trace_file is not None else Path(traces_dir) / run_file_name()

    from proxy.addon import Recorder

    recorder = Recorder(upstream, trace_path)  # starts the recorder process while mitmproxy imports

    from mitmproxy import options
    from mitmproxy.addons import core, errorcheck, next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

    master = Master(options.Options())
    ready = _Ready(None if on_ready is None else lambda host, port: on_ready(host, port, trace_path))
    addons = [core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer()]
    if upstream.startswith("https:"):
        addons.append(tlsconfig.TlsConfig())
    addons += [errorcheck.ErrorCheck(), ready, recorder]
    master.addons.add(*addons)
    master.options.update(
        mode=[f"reverse:{upstream}@{listen_port}"],
        listen_host=listen_host,
        # lazy: connect upstream when a request arrives, so an upstream that is down gets the client a
        # 502 instead of a closed connection
        connection_strategy="lazy",
    )
    try:
        recorder.records.wait_ready()
    except OSError:
        recorder.records.close(timeout=5)
        raise

    loop = asyncio.get_running_loop()
    if handle_signals:

        def stop(signum: int) -> None:
            loop.remove_signal_handler(signum)  # a second Ctrl-C interrupts for real
            master.shutdown()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
    try:
        await master.run()
    except SystemExit:  # errorcheck: the listening socket could not be opened (message already printed)
        recorder.done()
        if trace_path.is_file() and trace_path.stat().st_size == 0:
            trace_path.unlink()
        raise
    finally:
        loop.set_exception_handler(_quiet_cancellations)
    return recorder.stats


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """After the proxy stopped, asyncio cancels the handlers of connections still open (an agent's idle
    keep-alive pool); mitmproxy's stream callbacks then report each CancelledError as an error."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)
