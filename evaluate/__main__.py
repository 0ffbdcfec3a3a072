"""python -m evaluate: score a model or adapter by structured tool calls and agent task success."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.cli import command_parser, interrupt_on_stop_signals
from evaluate.config import EvalConfig

EPILOG = """\
examples:
  python -m evaluate --adapter adapters/demo                   # base vs adapter, turns + agent tasks
  python -m evaluate --adapter adapters/demo --no-agent --fail-under 0.8
  python -m evaluate --model models/qwen --no-agent            # just the model, no comparison
  python -m evaluate --server http://127.0.0.1:8080/v1 --no-agent   # any OpenAI-compatible endpoint
  python -m evaluate --adapter adapters/demo --no-agent --general    # + public BFCL cases (fetch them once)

Turn level: every sample of --data (mlx-lm chat JSONL; the last message is the assistant turn to score) is
generated greedily, parsed with the model's own tool parser (as mlx_lm server does) and given one code:
ok, no_call, unexpected_call, empty_answer, leaked_markup, unparseable, wrong_name, schema_invalid,
missing_required, unexpected_arg, wrong_value, wrong_count. The headline is exact-call accuracy on the turns
that call for a tool; over-calling (a call, structured or malformed, where no call is due) is printed next to
it; abstention accuracy (a real answer where no call is due) is reported apart. Agent
level: the held-out tasks of --tasks run through the reference agent against `mlx_lm server` (one per side);
answers are matched as values and tool use must be evidenced. With a baseline, each case is paired:
McNemar's exact p and a bootstrap 95% CI of the success-rate delta. Every server is checked to serve the
model the report names (its /v1/models answer and each response's model) before it is scored.

Settings can live in a TOML file (--config FILE; keys are the setting names, e.g. max_tokens = 64,
out_dir = "reports"); flags override it. Writes OUT/NAME.json, OUT/NAME.html (standalone) and the resolved
settings OUT/NAME.toml (`--config OUT/NAME.toml` repeats the run). Exit status: 0 ok; 1 a --fail-under
gate failed (the candidate's exact-call accuracy on call turns < X, or with --fail-under-agent its agent
task success rate < Y; an unmeasured metric fails; with a baseline, also a significant rise in over-calling,
McNemar p < 0.05); 2 bad input or a server not serving the named model.
"""


D = EvalConfig()  # the defaults, shown in --help; flags default to None so a --config file's values hold


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser(
        "python -m evaluate",
        "Evaluate a model (and adapter) on held-out tool-call turns and agent tasks, "
        "compare it with its base model, and write a JSON + HTML report.",
        EPILOG,
    )
    parser.add_argument("--config", type=Path, help="TOML file of settings (flags override it)")
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
    what.add_argument(
        "--baseline-adapter",
        type=Path,
        help="compare against this adapter of the same model (e.g. the one in use) instead of the base",
    )
    what.add_argument("--baseline-server", help="base URL of the baseline's endpoint, with --server")
    what.add_argument(
        "--baseline-report",
        type=Path,
        help="read the baseline's scores from this earlier report, where the same weights were the candidate "
        "on the same cases and settings (checked), instead of scoring it again",
    )
    what.add_argument(
        "--general",
        nargs="?",
        const="",
        metavar="CATEGORIES",
        help="also the general function-calling check on public BFCL cases (after `python -m models fetch "
        "bfcl-eval`), e.g. simple_python:100,multiple:50,irrelevance:50 (the default)",
    )
    what.add_argument("--server-model", help=f"model name sent to --server (default: {D.server_model})")
    what.add_argument(
        "--api-key-env",
        help=f"environment variable holding the API key for --server, if it needs one (default: {D.api_key_env})",
    )

    turns = parser.add_argument_group("turn level")
    turns.add_argument("--data", type=Path, help=f"held-out samples (default: {D.data})")
    turns.add_argument(
        "--no-turns", dest="turns", action="store_false", default=None, help="skip the turn-level evaluation"
    )
    turns.add_argument(
        "--limit",
        type=int,
        help="only the first N samples, and N held-out tasks taken one template at a time",
    )
    turns.add_argument(
        "--batch-size",
        type=int,
        help=f"answers generated together in-process; lower it if memory is short (default: {D.batch_size})",
    )
    turns.add_argument("--max-tokens", type=int, help=f"tokens per answer (default: {D.max_tokens})")
    turns.add_argument("--temperature", type=float, help=f"0 is greedy (default: {D.temperature})")
    turns.add_argument(
        "--concurrency", type=int, help=f"parallel requests with --server (default: {D.concurrency})"
    )
    turns.add_argument(
        "--normalize-strings",
        action="store_true",
        default=None,
        help="compare string arguments case-, space- and punctuation-insensitively (default: exact)",
    )

    agent = parser.add_argument_group("agent level")
    agent.add_argument(
        "--no-agent", dest="agent", action="store_false", default=None, help="skip the agent tasks"
    )
    agent.add_argument("--tasks", help=f"task suite name or JSON path (default: {D.tasks})")
    agent.add_argument(
        "--via-proxy", action="store_true", default=None, help="route the agent through the recording proxy"
    )
    agent.add_argument(
        "--traces", dest="traces_dir", type=Path, help="where --via-proxy records (default: OUT/NAME-traces)"
    )
    agent.add_argument(
        "--agent-max-steps", type=int, help=f"model requests per episode (default: {D.agent_max_steps})"
    )
    agent.add_argument(
        "--agent-timeout", type=float, help=f"seconds per episode (default: {D.agent_timeout})"
    )
    agent.add_argument(
        "--agent-concurrency",
        type=int,
        help="episodes in flight against one server: faster, batched decoding may move a near-tied greedy "
        f"choice, so a re-run may differ (default: {D.agent_concurrency}, repeatable)",
    )

    out = parser.add_argument_group("report")
    out.add_argument("--out", dest="out_dir", type=Path, help=f"report directory (default: {D.out_dir})")
    out.add_argument("--name", help="report name (default: the adapter's or model's directory name)")
    out.add_argument("--seed", type=int, help=f"bootstrap (and sampling) seed (default: {D.seed})")
    out.add_argument(
        "--fail-under", type=float, metavar="X", help="exit 1 if exact-call accuracy on call turns < X (0..1)"
    )
    out.add_argument(
        "--fail-under-agent", type=float, metavar="Y", help="exit 1 if agent task success < Y (0..1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    from core.config import ConfigError, flag_overrides, load
    from evaluate import EvalError, run
    from evaluate.report import print_summary

    args = build_parser().parse_args(argv)
    interrupt_on_stop_signals()
    try:
        config = load(EvalConfig, args.config, overrides=flag_overrides(args, EvalConfig))
        if config.general is None:
            report = run(config)
        else:
            from evaluate.general import run_general

            report = run_general(config, config.general or None)
    except (ConfigError, EvalError) as error:
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
