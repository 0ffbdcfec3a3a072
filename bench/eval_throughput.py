"""Turn-level evaluation throughput: one HTTP request at a time vs our batched in-process path, same cases.

    uv run python bench/eval_throughput.py [--n 64] [--batch-sizes 16,32] [--max-tokens 256] [--model DIR]

(a) each case sent one at a time to `mlx_lm server` (what the seeds' harness did), the returned message scored;
(b) `core.turns.evaluate_turns`: the same prompts in-process through mlx-lm's BatchGenerator, greedy, at
each batch size given (the first is the CLI's default and gives the headline ratio).
Both at temperature 0 on the tool-calling tiny model (default) with held-out samples. Reports cases/s, the
speed-up (target ≥ 3×), and every case whose verdict or output differs between the paths (target 0).
Writes its section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import os

# The tiny model's matrices are too small for OpenBLAS threads to pay: on a busy CPU they spin and cost the
# batched path (whose matrices cross OpenBLAS's threading threshold) more than the one-at-a-time path. One
# thread for both paths (the server inherits it), as models.tiny builds with; set it to compare others.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import write_section  # noqa: E402

HELD_OUT_SEED = 20_240  # tool_call_samples seed never used for training the tiny model (seed 0)


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far; Linux /proc only, None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_cpu(function, server_pid: int | None = None):
    """(result, CPU seconds of this process plus the server's while `function` ran, or None)."""
    server_before = process_cpu_s(server_pid) if server_pid else 0.0
    before = time.process_time()
    result = function()
    used = time.process_time() - before
    if server_pid:
        server_after = process_cpu_s(server_pid)
        if server_before is None or server_after is None:
            return result, None
        used += server_after - server_before
    return result, used


def output_key(case) -> tuple:
    """What the agent would see: content, calls (name + canonical arguments), whether a block was rejected."""
    return (
        case.turn.content,
        tuple(call.canonical() for call in case.turn.tool_calls),
        bool(case.turn.unparsed),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=64, help="cases (default: %(default)s)")
    parser.add_argument(
        "--batch-sizes",
        default="16,32",
        help="in-process batch sizes, comma-separated (default: %(default)s)",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds (default: %(default)s)"
    )
    parser.add_argument(
        "--model", type=Path, help="model directory (default: the cached tool-calling tiny model)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from rich.console import Console

    from core.process import MlxServer
    from core.turns import evaluate_turns, evaluate_turns_server
    from models.tiny import tool_call_samples

    console = Console()
    if args.model is None:
        from models.tiny import cached_model

        args.model = cached_model("tool-calling")
    model_path = Path(args.model)
    samples = tool_call_samples(args.n, HELD_OUT_SEED)
    load_before = os.getloadavg()[0]

    from mlx_lm import load

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    started = time.perf_counter()
    model, tokenizer = load(str(model_path))
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    http_runs, batched_runs = [], {b: [] for b in batch_sizes}
    cpu: dict = {"http": [], **{b: [] for b in batch_sizes}}
    with MlxServer(model_path, max_tokens=args.max_tokens) as server:
        server_start_s = time.perf_counter() - started
        evaluate_turns_server(server.base_url, samples[:1], max_tokens=args.max_tokens)  # warm-up
        evaluate_turns(model, tokenizer, samples[:1], max_tokens=args.max_tokens)  # warm-up
        # interleaved rounds, so both paths see the same (shared, noisy) machine; best of the rounds counts
        for round_no in range(1, args.rounds + 1):
            # (a) one request at a time over HTTP to mlx_lm server
            run, used = timed_cpu(
                lambda: evaluate_turns_server(server.base_url, samples, max_tokens=args.max_tokens),
                server.process.pid,
            )
            http_runs.append(run)
            cpu["http"].append(used)
            line = f"round {round_no}: (a) HTTP {http_runs[-1].wall_s:.2f} s"
            # (b) batched in-process
            for batch_size in batch_sizes:
                run, used = timed_cpu(
                    lambda b=batch_size: evaluate_turns(
                        model, tokenizer, samples, batch_size=b, max_tokens=args.max_tokens
                    )
                )
                batched_runs[batch_size].append(run)
                cpu[batch_size].append(used)
                line += f", (b) batch {batch_size} {batched_runs[batch_size][-1].wall_s:.2f} s"
            console.print(line)

    def best(runs):
        return min(runs, key=lambda r: r.wall_s)

    def median_s(runs) -> float:
        return statistics.median(r.wall_s for r in runs)

    http = best(http_runs)
    a_rate = args.n / http.wall_s
    headline = best(batched_runs[batch_sizes[0]])
    ratio = http.wall_s / headline.wall_s
    median_ratio = median_s(http_runs) / median_s(batched_runs[batch_sizes[0]])
    tokens_a = sum(c.completion_tokens or 0 for c in http.cases)

    def cpu_cell(key) -> str:
        values = [v for v in cpu[key] if v is not None]
        return f"{statistics.median(values):.2f}" if values else "—"

    def cpu_median(key) -> float | None:
        values = [v for v in cpu[key] if v is not None]
        return statistics.median(values) if values else None

    cpu_a, cpu_b = cpu_median("http"), cpu_median(batch_sizes[0])
    cpu_ratio = f"{cpu_a / cpu_b:.2f}×" if cpu_a and cpu_b else "not measured"

    def rates(results) -> str:
        return ", ".join(f"{k} {v:.2f}" for k, v in results.rates.items() if v is not None)

    lines = [
        f"{args.n} held-out turns (`tool_call_samples({args.n}, {HELD_OUT_SEED})`), model `{model_path.name}` "
        f"(tool-calling tiny model), temperature 0, max_tokens {args.max_tokens}, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')} for both paths.",
        "",
        f"Best of {args.rounds} interleaved rounds (median in brackets):",
        "",
        "| path | wall (s) | cases/s | speed-up | CPU s (median) | verdicts ≠ (a) | outputs ≠ (a) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| (a) `mlx_lm server`, one request at a time (seeds' harness) | {http.wall_s:.2f} "
        f"({median_s(http_runs):.2f}) | {a_rate:.2f} | 1.00× | {cpu_cell('http')} | — | — |",
    ]
    all_diffs = {}
    for batch_size, runs in batched_runs.items():
        verdict_diffs, output_diffs = [], []
        for results in runs:  # every round of (b) against the first round of (a)
            for a, b in zip(http_runs[0].cases, results.cases, strict=True):
                if a.verdict.code != b.verdict.code:
                    verdict_diffs.append((a.where, a.verdict.code, b.verdict.code))
                if output_key(a) != output_key(b):
                    output_diffs.append(a.where)
        all_diffs[batch_size] = (verdict_diffs, output_diffs)
        fastest = best(runs)
        speedup = http.wall_s / fastest.wall_s
        bold = "**" if batch_size == batch_sizes[0] else ""
        lines.append(
            f"| (b) in-process `BatchGenerator`, batch {batch_size} (`evaluate_turns`) | {fastest.wall_s:.2f} "
            f"({median_s(runs):.2f}) | {args.n / fastest.wall_s:.2f} | {bold}{speedup:.2f}×{bold} "
            f"({median_s(http_runs) / median_s(runs):.2f}×) | {cpu_cell(batch_size)} | {len(verdict_diffs)} "
            f"| {len(output_diffs)} |"
        )
    headline_diffs = all_diffs[batch_sizes[0]][0]
    http_self_diffs = sum(
        a.verdict.code != b.verdict.code
        for run in http_runs[1:]
        for a, b in zip(http_runs[0].cases, run.cases, strict=True)
    )
    lines += [
        "",
        f"Completion tokens: {tokens_a} on (a) (the server counts each stop token), "
        f"{sum(c.completion_tokens or 0 for c in headline.cases)} on (b). Set-up, not in the timings: server start "
        f"{server_start_s:.1f} s; in-process model load {load_s:.1f} s; one warm-up case on each path first. "
        f"1-minute load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at the end (a shared machine "
        "slows both paths). CPU s: this process plus, for (a), the server process (from /proc), for one "
        "pass over the cases.",
        f"Batch {batch_sizes[0]} is the CLI default (`--batch-size`). Target ≥ 3×: "
        f"{'met' if ratio >= 3 else 'NOT met'} on wall time ({ratio:.2f}× best of {args.rounds}, "
        f"{median_ratio:.2f}× median); CPU time ratio {cpu_ratio}. "
        f"Verdicts that differ between (a) and (b) at temperature 0, over all rounds: **{len(headline_diffs)}** "
        f"(target 0); the (a) rounds among themselves: {http_self_diffs}.",
        f"(a) rates: {rates(http)}.",
        f"(b) rates: {rates(headline)}.",
    ]
    for batch_size, (verdict_diffs, _) in all_diffs.items():
        for where, code_a, code_b in verdict_diffs[:10]:
            lines.append(f"- batch {batch_size}, {where}: HTTP `{code_a}`, in-process `{code_b}`")
    body = "\n".join(lines)
    console.print(body)
    print(
        json.dumps(
            {
                "cases": args.n,
                "http_s": [r.wall_s for r in http_runs],
                "batched_s": {b: [r.wall_s for r in runs] for b, runs in batched_runs.items()},
                "ratio_best": ratio,
                "ratio_median": median_ratio,
                "cpu_s": {str(k): v for k, v in cpu.items()},
                "cpu_ratio": cpu_a / cpu_b if cpu_a and cpu_b else None,
                "verdict_diffs": {b: len(d[0]) for b, d in all_diffs.items()},
                "output_diffs": {b: len(d[1]) for b, d in all_diffs.items()},
            }
        )
    )
    if not args.no_write:
        write_section(
            "eval_throughput", "Turn-level evaluation throughput (HTTP one at a time vs batched)", body
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
