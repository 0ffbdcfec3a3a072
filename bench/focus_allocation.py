"""Where round 2's focused attempts go, and how many successes of a rare template they find, by allocation rule.

    uv run python bench/focus_allocation.py --collections RUN_DIR/traces/*/round-2/collection.json …
        [--suite demo_rare_work] [--trials 1000] [--target count_lines]

Round 2 learns only from the attempts that succeed (`flywheel.rounds.attempt`), and on the Qwen runs it was
promoted when its attempts found several successes of the one rare template the student sometimes solves.
This benchmark replays the loop's own allocation code (`flywheel.rounds.focused_attempts`: `focused_tasks`,
or `focus_in_waves` for `focus_give_up_after`) on the suite's real fresh tasks, with each attempt succeeding at
its template's success rate pooled from the given collection.json files (measured attempts of one adapter),
many times over, and counts where the attempts went and how many succeeded. The model is not run: the rates
are the measurement, the allocation is the code under test. Writes its section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import publish  # noqa: E402

# (focused attempts, give up after k misses; None: one share, as `focused_tasks` gives it)
RULES = [(48, None), (64, None), (64, 6), (64, 10), (64, 15), (96, 15)]


def pooled_rates(paths: list[Path]) -> tuple[dict[str, float], dict[str, tuple[int, int]]]:
    solved, tried = Counter(), Counter()
    for path in paths:
        for template, v in json.loads(path.read_text())["by_template"].items():
            solved[template] += v["solved"]
            tried[template] += v["episodes"]
    return {t: solved[t] / n for t, n in tried.items()}, {t: (solved[t], n) for t, n in tried.items()}


def one_round(suite, config, rates: dict[str, float], draw: int, rng: random.Random) -> list:
    """The attempts of one simulated round: the first ones, then the focused ones by the loop's own code."""
    from flywheel.rounds import attempted_tasks, focused_attempts

    def run(tasks, description=""):
        return [SimpleNamespace(template=t.template, success=rng.random() < rates.get(t.template, 0.0), error=None)
                for t in tasks]  # fmt: skip

    tasks = attempted_tasks(suite, config, draw)
    return focused_attempts(suite, tasks, run(tasks), config, draw, run)[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--collections", nargs="+", type=Path, required=True, help="collection.json files")
    parser.add_argument("--suite", default="demo_rare_work", help="task suite (default: %(default)s)")
    parser.add_argument(
        "--trials", type=int, default=1000, help="simulated rounds per rule (default: %(default)s)"
    )
    parser.add_argument(
        "--target", default="count_lines", help="the rare template counted (default: %(default)s)"
    )
    parser.add_argument("--enough", type=int, default=4, help="successes of it that count as several")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from agent.tasks import load_suite
    from flywheel.config import LoopConfig

    rates, counts = pooled_rates(args.collections)
    suite = load_suite(args.suite)
    base = LoopConfig(
        suite=args.suite, attempt_tasks=21, attempts=1, focus_on="optimistic", attempt_concurrency=8
    )
    rows = []
    for budget, give_up in RULES:
        config = base.replace(attempt_focus=budget, focus_give_up_after=give_up)
        rng = random.Random(f"{budget}:{give_up}")
        target_tried, target_solved, enough, solved_other = [], [], 0, []
        for trial in range(args.trials):
            episodes = one_round(suite, config, rates, 1 + trial % 50, rng)
            mine = [e for e in episodes if e.template == args.target]
            target_tried.append(len(mine))
            target_solved.append(sum(e.success for e in mine))
            enough += target_solved[-1] >= args.enough
            solved_other.append(sum(e.success for e in episodes if e.template != args.target))
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        rows.append(
            f"| {budget} | {give_up or 'never (one share)'} | {mean(target_tried):.1f} | {mean(target_solved):.2f} "
            f"| {enough / args.trials:.2f} | {mean(solved_other):.1f} |"
        )
    measured = ", ".join(f"{t} {s}/{n}" for t, (s, n) in sorted(counts.items()))
    body = (
        f"Success rates pooled from {len(args.collections)} measured rounds of attempts ({measured}); "
        f"`{args.suite}`'s fresh train tasks, 21 first attempts (3 per template), then the focused ones "
        f'(`focus_on = "optimistic"`, waves of 8 when a template is given up after k misses); {args.trials} '
        f"simulated rounds per rule, draws 1-50.\n\n"
        f"| focused attempts | given up after k misses | `{args.target}` attempts | `{args.target}` successes "
        f"| share of rounds with ≥ {args.enough} | successes of other templates |\n|---:|---|---:|---:|---:|---:|\n"
        + "\n".join(rows)
    )
    publish(
        "focus_allocation",
        "Round-2 focused attempts: where they go, by allocation rule",
        body,
        not args.no_write,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
