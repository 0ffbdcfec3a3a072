"""python -m proxy: record an agent's chat-completions traffic to an OpenAI-compatible server."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

from core.cli import command_parser, fail
from proxy.server import DEFAULT_LISTEN, LOOPBACK_HOSTS, parse_listen, parse_upstream, serve

PROG = "python -m proxy"
EPILOG = """\
example:
  python -m mlx_lm server --model ./my-model --port 8080 &
  python -m proxy --upstream http://127.0.0.1:8080
  # point the agent at http://127.0.0.1:8081/v1 instead of :8080/v1

Every POST /v1/chat/completions becomes one line of traces/<start time>Z-<pid>.jsonl (schema:
core/schemas/trace-record.v1.schema.json), streamed or not; other paths are forwarded unrecorded.
Secrets in messages are replaced by [REDACTED:<kind>]; request headers are not stored, except
X-Flywheel-Session (the session id).

Ctrl-C (or SIGTERM, or closing the terminal) stops taking traffic, writes every finished exchange
(those still in flight are recorded as incomplete) and prints a one-line summary whose counts are what
the trace file holds. Ctrl-C again exits at once: what was not written yet is abandoned and counted.
An exchange that cannot be recorded (full disk, ...) is listed, with its reason, in
<trace file>.losses.ndjson beside the trace file, and counted in the summary.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        PROG,
        "Reverse proxy (mitmproxy) in front of an OpenAI-compatible server that records every "
        "chat-completions exchange as a trace record, forwarding streams chunk by chunk.",
        EPILOG,
    )
    parser.add_argument(
        "--upstream", required=True, help="root URL of the model server, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN}; port 0 picks a free one). "
        "Binding beyond loopback (0.0.0.0) exposes your agent's traffic to the network.",
    )
    parser.add_argument(
        "--traces", default="traces", type=Path, help="directory for trace files (default traces/)"
    )
    parser.add_argument(
        "--trace-file", type=Path, help="append to this file instead of a new file per run under --traces"
    )
    parser.add_argument(
        "--policy", help="a label for what answers, kept in every record (e.g. 'qwen-tools-v3', 'round-2')"
    )
    parser.add_argument(
        "--policy-json",
        type=json.loads,
        help="the whole policy object (what `python -m flywheel serve` passes: paths and sha256s)",
    )
    parser.add_argument(
        "--json", action="store_true", help="print the startup and summary lines as JSON (for wrappers)"
    )
    return parser


def policy_of(args: argparse.Namespace) -> dict | None:
    """--policy-json, with --policy as its label; checked against the schema's policy object."""
    from core.trace import schema

    policy = dict(args.policy_json or {})
    if args.policy is not None:
        policy["label"] = args.policy
    known = set(schema()["properties"]["policy"]["properties"])
    if unknown := set(policy) - known:
        raise ValueError(
            f"--policy-json: unknown fields {sorted(unknown)} (known: {', '.join(sorted(known))})"
        )
    return policy or None


def summary_line(stats: dict, trace_file: Path, seconds: float) -> str:
    line = (
        f"proxy stopped after {seconds:.0f}s: {stats['recorded']} exchanges recorded "
        f"({stats['streamed']} streamed), {stats['errors']} with errors, {stats['passed_through']} passed through"
    )
    if stats["recording_failures"]:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(stats["losses"].items()))
        line += f", {stats['recording_failures']} NOT RECORDED ({reasons}; listed in {stats['loss_file']})"
    if stats["abandoned"]:
        line += f"; a second Ctrl-C abandoned {stats['abandoned']}"
    return line + f" -> {trace_file}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        upstream = parse_upstream(args.upstream)
        host, port = parse_listen(args.listen)
        policy = policy_of(args)
    except ValueError as error:
        return fail(PROG, error, 2)
    logging.basicConfig(level=logging.WARNING, format="proxy: %(levelname)s: %(message)s", stream=sys.stderr)
    if host not in LOOPBACK_HOSTS:
        logging.getLogger("proxy").warning(
            "listening on %s, beyond loopback: anyone who can reach this port can use your model server "
            "and their traffic lands in your traces",
            host,
        )
    started = time.monotonic()
    where: dict = {}

    def ready(bound_host: str, bound_port: int, trace_path: Path) -> None:
        where.update(host=bound_host, port=bound_port, trace_file=str(trace_path))
        url = f"http://{bound_host}:{bound_port}"
        if args.json:
            line = json.dumps(
                {"event": "listening", "url": url, "base_url": f"{url}/v1", "upstream": upstream, **where}
            )
        else:
            line = (
                f"proxy listening on {url} (agents: base_url {url}/v1) -> upstream {upstream}; "
                f"recording POST /v1/chat/completions to {trace_path}. Ctrl-C stops."
            )
        print(line, flush=True)

    try:
        stats = asyncio.run(
            serve(
                upstream,
                args.traces,
                host,
                port,
                trace_file=args.trace_file,
                on_ready=ready,
                policy=policy,
            )
        ).as_dict()
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    except OSError as error:
        return fail(PROG, error, 1)
    seconds = time.monotonic() - started
    trace_file = Path(where.get("trace_file", args.trace_file or args.traces))
    try:  # after SIGHUP the terminal may be gone
        if args.json:
            print(
                json.dumps({"event": "stopped", "seconds": round(seconds, 3), **stats, **where}), flush=True
            )
        else:
            print(summary_line(stats, trace_file, seconds), flush=True)
    except OSError:
        pass
    return 130 if stats["abandoned"] else 0


if __name__ == "__main__":
    sys.exit(main())
