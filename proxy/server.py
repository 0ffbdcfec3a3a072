"""Run mitmproxy in reverse mode, in-process, with the recording addon: `serve(...)`.

Only the mitmproxy addons a plain reverse proxy needs are loaded (core, proxyserver, next_layer,
errorcheck; tlsconfig for an https upstream): every hook of every loaded addon runs on every flow.

Stopping: the first SIGINT (a terminal's Ctrl-C), SIGTERM or SIGHUP (a closed terminal) stops taking
traffic (the listening socket closes; a chat request on an open connection is refused: the connection is
closed, nothing is forwarded), lets the exchanges in flight finish for up to GRACE_SECONDS, records those
still unfinished as incomplete, and waits until the recorder has written every exchange
(recorder.DRAIN_SECONDS at most); later SIGTERMs and SIGHUPs are ignored (a wrapper's stop
may follow the terminal's Ctrl-C). A second SIGINT stops waiting: what is not written yet is abandoned,
counted and listed in the side file of losses.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from core.process import PROXY_GRACE_SECONDS
from core.trace import loss_file_for, run_file_name

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
        self.stop_requested = False  # a stop signal came before mitmproxy ran

    def running(self) -> None:
        from mitmproxy import ctx

        if self.stop_requested:
            ctx.master.shutdown()
            return

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
    policy: dict | None = None,
):
    """Run the recording reverse proxy until SIGINT/SIGTERM (or `master.shutdown()`); returns its Stats.

    `on_ready(host, port, trace_path)` is called once the socket is bound.
    """
    upstream = parse_upstream(upstream)
    trace_path = Path(trace_file) if trace_file is not None else Path(traces_dir) / run_file_name()
    # beside the trace file; in the traces directory when the trace file is a device such as /dev/full
    special = trace_path.exists() and not trace_path.is_file()
    losses = loss_file_for(trace_path, traces_dir if special else None)

    from proxy.addon import Recorder

    recorder = Recorder(upstream, trace_path, loss_file=losses, policy=policy)  # starts the recorder while mitmproxy imports

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
    if handle_signals:
        install_stop_signals(master, ready, recorder)
    try:
        recorder.records.wait_ready()
    except OSError:
        recorder.records.close(timeout=5)
        raise
    try:
        await master.run()
    except SystemExit:  # errorcheck: the listening socket could not be opened (message already printed)
        recorder.done()
        if trace_path.is_file() and trace_path.stat().st_size == 0:
            trace_path.unlink()
        raise
    finally:
        asyncio.get_running_loop().set_exception_handler(_quiet_cancellations)
    return recorder.stats


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_SECONDS = PROXY_GRACE_SECONDS


def install_stop_signals(master, ready: _Ready, recorder) -> None:
    """The first stop signal drains (see the module doc); after it, the event loop may be busy writing the
    last records, so the handlers that follow are plain ones, which Python runs in the main thread."""
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task] = []  # a reference, so the task is not collected

    def first(signum: int) -> None:
        name = signal.Signals(signum).name
        log.warning(
            "%s: stopping; %d exchanges in flight get %.0fs to finish, then every exchange is written. "
            "Ctrl-C again to abandon what is not written yet.",
            name,
            len(recorder.in_flight),
            GRACE_SECONDS,
        )
        for other in STOP_SIGNALS:
            loop.remove_signal_handler(other)
        signal.signal(signal.SIGINT, second)
        signal.signal(signal.SIGTERM, lambda *_: None)
        signal.signal(signal.SIGHUP, lambda *_: None)
        ready.stop_requested = recorder.stopping = True
        stopping.append(loop.create_task(stop_listening_then_shut_down(master, recorder)))

    def second(signum, frame) -> None:
        log.warning("SIGINT again: abandoning the exchanges not written yet")
        recorder.records.abandon.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, first, signum)


async def stop_listening_then_shut_down(master, recorder) -> None:
    """Close the listening sockets first (new connections are refused, not half-served), give the
    exchanges in flight GRACE_SECONDS to finish (a second Ctrl-C cuts it short), then stop."""
    try:
        await master.addons.get("proxyserver").servers.update([])
        deadline = time.monotonic() + GRACE_SECONDS
        while recorder.in_flight and time.monotonic() < deadline and not recorder.records.abandon.is_set():
            await asyncio.sleep(0.02)
    except Exception:
        log.exception("proxy: closing the listening socket failed; stopping anyway")
    finally:
        master.shutdown()


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict) -> None:
    """After the proxy stopped, asyncio cancels the handlers of connections still open (an agent's idle
    keep-alive pool) and drops those accepted while it was stopping; mitmproxy's stream callbacks then
    report each CancelledError, and asyncio each dropped task, as an error. Neither loses an exchange."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    if str(context.get("message", "")).startswith("Task was destroyed but it is pending"):
        return
    loop.default_exception_handler(context)
