"""Does the README's first command give the same answer twice? `python -m flywheel` N times, each in its own root.

    uv run python bench/demo_repeatability.py                  # 3 runs, 2 at a time (as a busy machine runs them)
    uv run python bench/demo_repeatability.py --runs 2 --quick --parallel 1 --no-report

Each run is the README's command (`python -m flywheel --root TMP/run-K`, plus `--quick` with --quick) in a fresh
process. Compared with the first run: the adapter's sha256 (bitwise equal weights), every held-out agent task's
verdict and every held-out turn's verdict code. Concurrent runs load the machine on purpose: the numbers must not
depend on what else runs. Writes the `demo_repeatability` section of docs/BENCHMARKS.md (unless --no-report).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._report import publish  # noqa: E402


def run_demo(root: Path, quick: bool) -> dict:
    command = [sys.executable, "-m", "flywheel", "--root", str(root)] + (["--quick"] if quick else [])
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, COLUMNS="200")
    )
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")
    (report,) = [p for p in (root / "reports").glob("*.json") if not p.name.endswith(".flywheel-stage.json")]
    return {"seconds": seconds, **outcome(json.loads(report.read_text()))}


def outcome(report: dict) -> dict:
    """What a run decided: its adapter, its agent verdicts per task, its turn verdict codes per case."""
    agent, turns = report["agent"], report["turns"]
    exact = turns["comparison"]["paired"]["exact_call_accuracy"]
    return {
        "adapter_sha256": report["identity"]["candidate"]["adapter_sha256"],
        "solved": sum(e["success"] for e in agent["candidate"]["episodes"]),
        "tasks": len(agent["candidate"]["episodes"]),
        "exact": round(exact["adapter_rate"] * exact["n"]),
        "call_turns": exact["n"],
        "task_verdicts": {e["task_id"]: e["success"] for e in agent["candidate"]["episodes"]},
        "turn_codes": [case["code"] for case in turns["candidate"]["cases"]],
    }


def markdown(runs: list[dict], args) -> str:
    first = runs[0]
    command = "python -m flywheel" + (" --quick" if args.quick else "")
    lines = [
        f"`{command}` run {len(runs)} times, {args.parallel} at a time, each in a fresh process and its own root.",
        "",
        "| run | wall s | held-out tasks solved | exact call on held-out call turns | adapter sha256 "
        "| task verdicts = run 1 | turn verdicts = run 1 |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for index, run in enumerate(runs, 1):
        same_tasks = run["task_verdicts"] == first["task_verdicts"]
        same_turns = run["turn_codes"] == first["turn_codes"]
        lines.append(
            f"| {index} | {run['seconds']:.0f} | {run['solved']}/{run['tasks']} | {run['exact']}/{run['call_turns']} "
            f"| `{run['adapter_sha256'][:16]}` | {'yes' if same_tasks else 'no'} | {'yes' if same_turns else 'no'} |"
        )
    identical = all(r["adapter_sha256"] == first["adapter_sha256"] for r in runs)
    verdict = (
        "**Identical**: every run trained bitwise the same adapter and reached the same verdict on every task and turn."
        if identical and all(r["task_verdicts"] == first["task_verdicts"] for r in runs)
        else "**Not identical**: the runs above differ (see the columns)."
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return "\n".join([*lines, "", verdict, f"Load average at the end (1, 5, 15 min): {load}."])


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2, help="runs at a time")
    parser.add_argument("--quick", action="store_true", help="the CI-sized demo")
    parser.add_argument("--no-report", action="store_true", help="print, do not write docs/BENCHMARKS.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="demo-repeat-") as scratch:
        roots = [Path(scratch) / f"run-{k}" for k in range(1, args.runs + 1)]
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = list(pool.map(lambda root: run_demo(root, args.quick), roots))
    for index, run in enumerate(runs, 1):
        print(
            f"run {index}: {run['solved']}/{run['tasks']} solved, {run['exact']}/{run['call_turns']} exact, "
            f"adapter {run['adapter_sha256'][:16]}, {run['seconds']:.0f} s",
            flush=True,
        )
    publish(
        "demo_repeatability", "The demo, run again: the same answer", markdown(runs, args), not args.no_report
    )
    return runs


if __name__ == "__main__":
    main()
