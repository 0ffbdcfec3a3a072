"""Agent-level evaluation: held-out episodes one at a time vs several at once against one `mlx_lm server`.

    uv run python bench/agent_concurrency.py [--model DIR] [--adapter DIR] [--suite demo_rare_work]
        [--n 16] [--concurrency 4,8]

mlx_lm server decodes concurrent requests in one batch (continuous batching, when a request carries no seed:
the agent's never do). The suite's first N held-out tasks (round robin over templates, as evaluate picks
them) are run by the reference agent, greedy, once with one episode at a time and once with `--concurrency`
episodes in flight for each level given, against the same server. Reports wall time, the speed-up, and every
episode whose verdict, calls or answer differ from one at a time (batched decoding pads prompts, which may
move a near-tied greedy choice). Default model: Qwen2.5-Coder-0.5B-Instruct (`uv run python -m models fetch qwen2.5-coder-0.5b`).
Writes its section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import publish  # noqa: E402
from bench.real_model import add_model_arguments, resolve_model  # noqa: E402


def behaviour(episode) -> tuple:
    """What an episode did: its verdict, its calls in order, its answer."""
    return (episode.success, [(c["name"], c["arguments"]) for c in episode.calls], episode.answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--suite", default="demo_rare_work", help="task suite (default: %(default)s)")
    parser.add_argument("--n", type=int, default=16, help="held-out tasks (default: %(default)s)")
    parser.add_argument(
        "--concurrency", default="4,8", help="episodes in flight, comma-separated (default: %(default)s)"
    )
    parser.add_argument("--max-steps", type=int, default=6, help="agent steps (default: %(default)s)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from agent.episodes import run_episodes
    from agent.tasks import load_suite, round_robin
    from core.process import MlxServer

    levels = [1, *(int(x) for x in args.concurrency.split(",") if x.strip() and int(x) > 1)]
    model_dir = resolve_model(args.model)
    tasks = round_robin(load_suite(args.suite).held_out, args.n)
    walls: dict[int, float] = {}
    episodes: dict[int, list] = {}
    load_1 = os.getloadavg()[0]
    with MlxServer(model_dir, adapter_path=args.adapter) as server:
        for concurrency in levels:
            started = time.perf_counter()
            episodes[concurrency] = run_episodes(
                tasks,
                server.base_url,
                "default_model",
                concurrency=concurrency,
                max_steps=args.max_steps,
                description=f"concurrency {concurrency}",
            )
            walls[concurrency] = time.perf_counter() - started
    differ = {
        c: [a.task_id for a, b in zip(episodes[1], episodes[c], strict=True) if behaviour(a) != behaviour(b)]
        for c in levels
    }
    solved = {c: sum(e.success for e in runs) for c, runs in episodes.items()}
    steps = sum(e.steps for e in episodes[1])
    rows = [
        "| episodes in flight | wall s | solved | speed-up | episodes that differ from one at a time |",
        "|---:|---:|---:|---:|---|",
    ] + [
        f"| {c} | {walls[c]:.1f} | {solved[c]}/{len(tasks)} | **{walls[1] / walls[c]:.2f}×** | "
        f"{len(differ[c])}{f': {differ[c]}' if differ[c] else ''} |"
        for c in levels
    ]
    body = (
        f"Model `{model_dir.name}`{f' + adapter `{args.adapter}`' if args.adapter else ''}; the first "
        f"{len(tasks)} held-out tasks of `{args.suite}` (round robin over templates), the reference agent, "
        f"greedy, {args.max_steps} steps at most ({steps} model requests at one in flight), one `mlx_lm "
        f"server`, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}.\n\n"
        + "\n".join(rows)
        + "\n\nAn episode differs when its verdict, its calls or its answer do. Load average (1 min) "
        f"{load_1:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
    )
    publish(
        "agent_concurrency",
        "Agent-level evaluation: episodes in flight against one server",
        body,
        not args.no_write,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
