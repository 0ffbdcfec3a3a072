"""`python -m flywheel serve`: a model (with an adapter) served by `mlx_lm server` behind the recording proxy.

    python -m flywheel serve --model PATH [--adapter DIR] [--listen 127.0.0.1:8081] [--traces traces/]

The server listens on a private loopback port; the proxy listens on `--listen` and records every exchange,
each record naming the policy that answered (model path, weights sha256, adapter path and sha256 from its
manifest). Point the agent at the printed base URL. Ctrl-C (or SIGTERM, or closing the terminal) stops both:
the proxy first, writing every completed exchange and its summary, then the server.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


def policy_identity(model: str | Path, adapter: Path | None, label: str | None = None) -> dict:
    """What answers: the label, the model's path and weights sha256, the adapter's path and sha256."""
    from evaluate.served import identity

    found = identity(str(model), adapter)
    return {
        "label": label,
        "model_path": found["model_path"] or str(model),
        "weights_sha256": found["weights_sha256"],
        "adapter_path": found["adapter"],
        "adapter_sha256": found["adapter_sha256"],
    }


@dataclass
class Served:
    base_url: str
    model: str
    adapter: Path | None
    policy: dict
    summary: dict = field(default_factory=dict)

    def describe(self) -> str:
        with_adapter = f" + adapter {self.adapter}" if self.adapter else ""
        return f"{self.base_url} → {self.model}{with_adapter}"


@contextmanager
def serving(
    model: str | Path,
    adapter: Path | None,
    traces: Path,
    *,
    listen_host: str = "127.0.0.1",
    listen_port: int | None = None,
    label: str | None = None,
    max_tokens: int = 512,
) -> Iterator[Served]:
    """`mlx_lm server` for `model` (+ `adapter`) on a free loopback port, the recording proxy in front of it;
    both stopped on exit (the proxy first, so that it drains)."""
    from core.process import MlxServer, RecordingProxy

    policy = policy_identity(model, adapter, label)
    with MlxServer(model, adapter_path=adapter, max_tokens=max_tokens) as server:
        recording = RecordingProxy(server.url, traces, listen_host, listen_port, policy=policy)
        served = Served("", str(model), adapter, policy)
        with recording:
            served.base_url = recording.base_url
            yield served
        served.summary = recording.summary or {}


def connection_line(base_url: str) -> str:
    root = base_url.removesuffix("/v1")
    return (
        f"serving at {base_url} (model name: default_model). "
        f"Punie: punie serve --model local:{base_url}/default_model · "
        f'pydantic-ai: OpenAIChatModel("default_model", provider=OpenAIProvider(base_url="{base_url}")) · '
        f"feedback: POST {root}/flywheel/feedback or python -m flywheel label last success · Ctrl-C stops"
    )


def wait_for_stop() -> str:
    """Block until SIGINT, SIGTERM or SIGHUP; returns the signal's name."""
    received: list[str] = []
    stopped = threading.Event()

    def handler(signum, frame) -> None:
        received.append(signal.Signals(signum).name)
        stopped.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    return received[0]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel serve",
        description="Serve a model (and adapter) with mlx_lm server behind the recording proxy, for your agent.",
    )
    parser.add_argument(
        "--model", required=True, help="model directory (or a Hugging Face id in the local cache)"
    )
    parser.add_argument("--adapter", type=Path, help="adapter directory (python -m train's output)")
    parser.add_argument(
        "--listen", default="127.0.0.1:8081", help="HOST:PORT of the proxy (default 127.0.0.1:8081)"
    )
    parser.add_argument(
        "--traces", type=Path, default=Path("traces"), help="where records go (default traces/)"
    )
    parser.add_argument("--policy", help="a label for this policy in every record (default: none)")
    parser.add_argument("--max-tokens", type=int, default=2048, help="the server's default max tokens")
    return parser


def main(argv: list[str] | None = None) -> int:
    from proxy.server import parse_listen

    args = build_parser().parse_args(argv)
    try:
        host, port = parse_listen(args.listen)
    except ValueError as error:
        print(f"python -m flywheel serve: error: {error}", file=sys.stderr)
        return 2
    if args.adapter is not None and not (args.adapter / "adapters.safetensors").is_file():
        print(f"python -m flywheel serve: error: {args.adapter}: no adapters.safetensors", file=sys.stderr)
        return 2
    try:
        with serving(
            args.model,
            args.adapter,
            args.traces,
            listen_host=host,
            listen_port=port or None,
            label=args.policy,
            max_tokens=args.max_tokens,
        ) as served:
            print(connection_line(served.base_url), flush=True)
            stopped_by = wait_for_stop()
            print(
                f"stopping ({stopped_by}): the proxy writes what it holds, then the server stops", flush=True
            )
    except (RuntimeError, TimeoutError, OSError) as error:
        print(f"python -m flywheel serve: error: {error}", file=sys.stderr)
        return 1
    summary = served.summary
    print(
        f"stopped: {summary.get('recorded', 0)} exchanges recorded in {summary.get('trace_file', args.traces)}"
        + (f", {summary['lost']} lost" if summary.get("lost") else ""),
        flush=True,
    )
    return 0
