"""python -m evaluate: score a model or adapter by structured tool calls and agent task success."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  python -m evaluate --adapter adapters/demo                   # base vs adapter, turns + agent tasks
  python -m evaluate --adapter adapters/demo --no-agent --fail-under 0.8
  python -m evaluate --model models/qwen --no-agent            # just the model, no comparison
  python -m evaluate --server http://127.0.0.1:8080/v1 --no-agent   # any OpenAI-compatible endpoint

Turn level: every sample of --data (mlx-lm chat JSONL; the last message is the assistant turn to score) is
generated greedily, parsed with the model's own tool parser (as mlx_lm server does) and given one code:
ok, no_call, unexpected_call, leaked_markup, unparseable, wrong_name, schema_invalid, missing_required,
unexpected_arg, wrong_value, wrong_count. Agent level: the held-out tasks of --tasks run through the
reference agent against `mlx_lm server` (one per side). With a baseline, each case is paired: McNemar's
exact p and a bootstrap 95% CI of the success-rate delta.

Writes OUT/NAME.json and OUT/NAME.html (standalone). Exit status: 0 ok; 1 a --fail-under gate failed
(the candidate's turn-level exact-call accuracy < X, or with --fail-under-agent its agent task success
rate < Y; an unmeasured metric fails); 2 bad input.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluate",
        description="Evaluate a model (and adapter) on held-out tool-call turns and agent tasks, "
        "compare it with its base model, and write a JSON + HTML report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--adapter", type=Path, help="adapter directory (from python -m train)")
    what.add_argument(
        "--model", help="model directory; default: the base model in the adapter's manifest.json"
    )
    what.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also evaluate the baseline and compare (default: on with --adapter or --baseline-model)",
    )
    what.add_argument(
        "--baseline-model", help="baseline model directory (default: --model without the adapter)"
    )
    what.add_argument(
        "--server", help="OpenAI-compatible base URL (…/v1) to evaluate instead of a local model"
    )
    what.add_argument("--baseline-server", help="base URL of the baseline's endpoint, with --server")
    what.add_argument(
        "--server-model", default="default_model", help="model name sent to --server (default: %(default)s)"
    )
    what.add_argument(
        "--api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the API key for --server, if it needs one (default: %(default)s)",
    )

    turns = parser.add_argument_group("turn level")
    turns.add_argument(
        "--data", type=Path, default=Path("data/test.jsonl"), help="held-out samples (default: %(default)s)"
    )
    turns.add_argument(
        "--no-turns", dest="turns", action="store_false", help="skip the turn-level evaluation"
    )
    turns.add_argument("--limit", type=int, help="only the first N samples (and N held-out tasks)")
    turns.add_argument(
        "--batch-size",
        type=int,
        default=16,
        help="answers generated together in-process; lower it if memory is short (default: %(default)s)",
    )
    turns.add_argument("--max-tokens", type=int, default=256, help="tokens per answer (default: %(default)s)")
    turns.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default: %(default)s)")
    turns.add_argument(
        "--concurrency", type=int, default=1, help="parallel requests with --server (default: %(default)s)"
    )
    turns.add_argument(
        "--normalize-strings",
        action="store_true",
        help="compare string arguments case-, space- and punctuation-insensitively (default: exact)",
    )

    agent = parser.add_argument_group("agent level")
    agent.add_argument("--no-agent", dest="agent", action="store_false", help="skip the agent tasks")
    agent.add_argument(
        "--tasks", default="default", help="task suite name or JSON path (default: %(default)s)"
    )
    agent.add_argument("--via-proxy", action="store_true", help="route the agent through the recording proxy")
    agent.add_argument("--traces", type=Path, help="where --via-proxy records (default: OUT/NAME-traces)")
    agent.add_argument(
        "--agent-max-steps", type=int, default=8, help="model requests per episode (default: %(default)s)"
    )
    agent.add_argument(
        "--agent-timeout", type=float, default=120.0, help="seconds per episode (default: %(default)s)"
    )

    out = parser.add_argument_group("report")
    out.add_argument(
        "--out", type=Path, default=Path("reports"), help="report directory (default: %(default)s)"
    )
    out.add_argument("--name", help="report name (default: the adapter's or model's directory name)")
    out.add_argument(
        "--seed", type=int, default=0, help="bootstrap (and sampling) seed (default: %(default)s)"
    )
    out.add_argument("--fail-under", type=float, metavar="X", help="exit 1 if exact-call accuracy < X (0..1)")
    out.add_argument(
        "--fail-under-agent", type=float, metavar="Y", help="exit 1 if agent task success < Y (0..1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from evaluate import EvalConfig, EvalError, run
    from evaluate.report import print_summary

    args = build_parser().parse_args(argv)
    if not args.turns and not args.agent:
        print("error: --no-turns and --no-agent leave nothing to evaluate", file=sys.stderr)
        return 2
    for flag in ("fail_under", "fail_under_agent"):
        value = getattr(args, flag)
        if value is not None and not 0 <= value <= 1:
            print(
                f"error: --{flag.replace('_', '-')} {value}: expected a rate between 0 and 1", file=sys.stderr
            )
            return 2
    config = EvalConfig(
        adapter=args.adapter,
        model=args.model,
        baseline=args.baseline,
        baseline_model=args.baseline_model,
        data=args.data,
        limit=args.limit,
        turns=args.turns,
        agent=args.agent,
        tasks=args.tasks,
        via_proxy=args.via_proxy,
        traces_dir=args.traces,
        server=args.server,
        baseline_server=args.baseline_server,
        server_model=args.server_model,
        api_key=os.environ.get(args.api_key_env) if args.server else None,
        concurrency=args.concurrency,
        out_dir=args.out,
        name=args.name,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        normalize_strings=args.normalize_strings,
        seed=args.seed,
        agent_max_steps=args.agent_max_steps,
        agent_timeout=args.agent_timeout,
        fail_under=args.fail_under,
        fail_under_agent=args.fail_under_agent,
    )
    try:
        report = run(config)
    except EvalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough for the headline table on one line per row
        console = Console(width=132)
    print_summary(report, console)
    console.print(f"report: {report['paths']['html']} (JSON: {report['paths']['json']})")
    gate = report.get("gate")
    return 1 if gate and not gate["passed"] else 0


if __name__ == "__main__":
    sys.exit(main())
