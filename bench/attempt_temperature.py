"""Round-2 attempts: how often the adapter in use solves fresh train tasks of its weak templates, by temperature.

    uv run python bench/attempt_temperature.py --adapter DIR [--model DIR] [--suite demo_rare_work]
        [--tasks count_lines:16,copy_value:8,append_line:8] [--temperatures 0.7,1.0,1.3]

The flywheel's round k ≥ 2 learns only from attempts that succeed (`flywheel.rounds.attempt`). Where the
student nearly never succeeds, the question is whether sampling hotter, or simply more attempts, finds
successes. The same fresh train-pool tasks (never held-out ones) are attempted once per temperature, served
as the loop serves the student (`flywheel.serve.serving`: `mlx_lm server` behind the recorder, 128 tokens
per request, 8 episodes in flight), and judged by the tasks' own checks. Writes its section of
docs/BENCHMARKS.md. Default model: Qwen2.5-Coder-0.5B-Instruct (`uv run python -m models fetch qwen2.5-coder-0.5b`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import publish  # noqa: E402
from bench.real_model import add_model_arguments, resolve_model  # noqa: E402


def parse_counts(text: str) -> dict[str, int]:
    return {name: int(count) for name, count in (part.split(":") for part in text.split(","))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--suite", default="demo_rare_work", help="task suite (default: %(default)s)")
    parser.add_argument(
        "--tasks", default="count_lines:16,copy_value:8,append_line:8", help="template:count,…"
    )
    parser.add_argument(
        "--temperatures", default="0.7,1.0,1.3", help="comma-separated (default: %(default)s)"
    )
    parser.add_argument("--draw", type=int, default=77, help="which fresh tasks (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    if args.adapter is None:
        parser.error("--adapter: the adapter in use, whose attempts are measured")

    from agent.episodes import run_episodes_retrying
    from agent.tasks import fresh_train_tasks, load_suite
    from flywheel.serve import serving

    model_dir = resolve_model(args.model)
    tasks = fresh_train_tasks(load_suite(args.suite), parse_counts(args.tasks), args.draw)
    tried = Counter(task.template for task in tasks)
    rows = []
    traces = Path(tempfile.mkdtemp(prefix="attempt-temperature-"))
    try:
        with serving(model_dir, Path(args.adapter), traces / "traces", max_tokens=128) as served:
            for temperature in (float(t) for t in args.temperatures.split(",")):
                start = time.perf_counter()
                episodes = run_episodes_retrying(
                    tasks, served.base_url, "default_model", concurrency=8, max_steps=8,
                    temperature=temperature, description=f"temperature {temperature}",
                )  # fmt: skip
                solved = Counter(e.template for e in episodes if e.success)
                cells = " | ".join(f"{solved[t]}/{n}" for t, n in tried.items())
                rows.append(f"| {temperature} | {cells} | {time.perf_counter() - start:.0f} |")
    finally:
        shutil.rmtree(traces)
    body = (
        f"Model `{model_dir.name}` + adapter `{args.adapter}`; the same {len(tasks)} fresh train-pool tasks of "
        f"`{args.suite}` (draw {args.draw}) at each temperature, the agent's 6 steps + 2, 128 tokens per request, "
        "8 episodes in flight, judged by each task's own check.\n\n"
        f"| temperature | {' | '.join(tried)} | wall s |\n|---|{'---:|' * len(tried)}---:|\n"
        + "\n".join(rows)
    )
    publish(
        "attempt_temperature",
        "Round-2 attempts on the weak templates, by temperature",
        body,
        not args.no_write,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
