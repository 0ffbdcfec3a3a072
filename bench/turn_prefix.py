"""Turn-level evaluation with the prompts' shared prefix read once vs every prompt read whole.

    uv run python bench/turn_prefix.py [--model DIR] [--adapter DIR] [--n 48] [--rounds 2]

Held-out turns made as the loop makes them: the scripted teacher solves the demo suite's train tasks through
the recording proxy and curate splits the sessions (into a temporary directory, removed after); the test
split's first N turns are generated in-process by `core.generation.generate_turns` (greedy, batch 16, 256
tokens), `share_prefix` on and off, in interleaved rounds. Reports wall time, the speed-up, the prompt tokens
read, and every output that differs between the two (target 0). Default model: Qwen2.5-Coder-0.5B-Instruct
(`uv run python -m models fetch qwen2.5-coder-0.5b` first). Writes its section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._report import publish  # noqa: E402
from bench.real_model import add_model_arguments, resolve_model  # noqa: E402


def held_out_turns(student: Path, work: Path) -> Path:
    """The demo suite's test split, collected from the scripted teacher and curated for `student`."""
    from rich.console import Console

    from agent.tasks import load_suite
    from flywheel.collect import collect
    from flywheel.config import LoopConfig
    from flywheel.steps import curate_round

    config, console = LoopConfig(root=work), Console(file=io.StringIO())
    collect(config, load_suite(config.suite), work / "traces", console)
    curate_round([work / "traces"], work / "data", config, student, console)
    return work / "data" / "test.jsonl"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_arguments(parser)
    parser.add_argument("--n", type=int, default=48, help="held-out turns (default: %(default)s)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved timing rounds (default: %(default)s)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from mlx_lm import load

    from core.generation import generate_turns, shared_prefix_length
    from core.toolcalls import prompt_tokens
    from core.turns import load_samples, split_sample

    model_dir = resolve_model(args.model)
    with tempfile.TemporaryDirectory(prefix="turn-prefix-") as work:
        samples = load_samples(held_out_turns(model_dir, Path(work)))[: args.n]
    model, tokenizer = load(str(model_dir), adapter_path=str(args.adapter) if args.adapter else None)
    prompts = [prompt_tokens(tokenizer, *split_sample(sample)[:2]) for sample in samples]
    shared = shared_prefix_length(prompts)
    walls: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, list] = {}
    load_1 = os.getloadavg()[0]
    for _ in range(args.rounds):
        for share in (True, False):
            started = time.perf_counter()
            outputs[share] = generate_turns(model, tokenizer, prompts, batch_size=16, share_prefix=share)
            walls[share].append(time.perf_counter() - started)
            print(f"share_prefix={share}: {walls[share][-1]:.1f} s", flush=True)
    differ = [i for i, (a, b) in enumerate(zip(outputs[True], outputs[False], strict=True)) if a != b]
    best = {share: min(times) for share, times in walls.items()}
    whole = sum(map(len, prompts))
    once = shared + whole - shared * len(prompts)
    rows = [
        f"| path | prompt tokens read | wall s (best of {args.rounds}) | speed-up |",
        "|---|---:|---:|---:|",
        f"| every prompt read whole | {whole:,} | {best[False]:.1f} | 1.00× |",
        f"| shared prefix read once (`generate_turns`) | {once:,} | {best[True]:.1f} | "
        f"**{best[False] / best[True]:.2f}×** |",
    ]
    body = (
        f"Model `{model_dir.name}`{f' + adapter `{args.adapter}`' if args.adapter else ''}; {len(prompts)} "
        f"held-out turns of the demo suite (scripted teacher → proxy → curate's test split), mean prompt "
        f"{whole / len(prompts):.0f} tokens, of which the first {shared} (system prompt and tool listing) are "
        f"shared by every prompt. Greedy, batch 16, max_tokens 256, "
        f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}.\n\n"
        + "\n".join(rows)
        + f"\n\nOutputs that differ between the two paths: **{len(differ)}** of {len(prompts)} (target 0)"
        f"{f': {differ[:10]}' if differ else ''}. Load average (1 min) {load_1:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end."
    )
    publish(
        "turn_prefix", "Turn-level evaluation: the shared prompt prefix read once", body, not args.no_write
    )
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
