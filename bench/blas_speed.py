"""How much faster MLX runs on this Linux CPU with OpenBLAS than with the wheel's reference BLAS.

Each variant runs in its own subprocess (the BLAS is chosen before mlx is imported): f32 matmul GFLOP/s at a
few sizes, and tokens/s of full fine-tuning of the tiny model (`models.tiny`) with mlx-lm's trainer.
With `--lora-model DIR` (e.g. the output of `python -m models fetch qwen2.5-coder-0.5b`) it also
times LoRA steps of that model. Figures go to docs/BENCHMARKS.md (section `blas_speed`) and, as JSON, stdout.

    uv run python bench/blas_speed.py
    uv run python bench/blas_speed.py --lora-model ~/.cache/flywheel/models/qwen2.5-coder-0.5b --lora-steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("reference", "openblas")
SIZES = (128, 256, 512, 1024)


def worker(variant: str, out: Path, tiny_steps: int, lora_model: str | None, lora_steps: int) -> None:
    if variant == "reference":
        os.environ["FLYWHEEL_BLAS"] = "reference"
    from core.blas import blas_status, ensure_fast_blas, matmul_gflops

    ensure_fast_blas()
    result = {"variant": variant, "blas": blas_status(), "load_average": os.getloadavg()[0]}
    # best of three short windows: other processes on the machine only ever slow a window down
    result["matmul_gflops"] = {
        n: round(max(matmul_gflops(n, seconds=0.2) for _ in range(3)), 2) for n in SIZES
    }
    result["tiny_train"] = train_speed(None, tiny_steps, lora=False)
    if lora_model:
        result["lora"] = {"model": Path(lora_model).name, **train_speed(lora_model, lora_steps, lora=True)}
    out.write_text(json.dumps(result))


def train_speed(model_dir: str | None, steps: int, lora: bool) -> dict:
    """Tokens/s and s/step of mlx-lm's `train` over `steps` measured steps (after `steps` warm-up steps)."""
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import TrainingArgs, TrainingCallback, train
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from models.tiny import build_tiny_model, tool_call_samples

    with tempfile.TemporaryDirectory() as scratch:
        if model_dir is None:
            model_dir = str(build_tiny_model(Path(scratch) / "tiny", seed=0))
        model, tokenizer = load(model_dir)
        mx.random.seed(0)
        if lora:
            model.freeze()
            linear_to_lora_layers(model, 4, {"rank": 8, "scale": 20.0, "dropout": 0.0})
        batch_size = 1 if lora else 4
        samples = tool_call_samples(64, seed=0)
        if lora:  # plain chat turns: any model's template renders them (SmolLM2's has no tool support)
            samples = [
                {"messages": [s["messages"][1], s["messages"][-1]]}
                for s in tool_call_samples(256, seed=0)
                if s["messages"][-1].get("content")
            ][:64]
        data = CacheDataset(ChatDataset(samples, tokenizer, mask_prompt=False))

        class Reports(TrainingCallback):
            def __init__(self):
                self.reports = []

            def on_train_loss_report(self, info):
                self.reports.append(info)

        reports = Reports()
        args = TrainingArgs(
            batch_size=batch_size,
            iters=2 * steps,
            steps_per_report=steps,
            steps_per_save=10**9,
            max_seq_length=2048,
            adapter_file=str(Path(scratch) / "adapters.safetensors"),
        )
        start = time.perf_counter()
        train(model, optim.Adam(learning_rate=1e-5), data, args=args, training_callback=reports)
        measured = reports.reports[-1]  # the first window includes compilation
        return {
            "steps": steps,
            "batch_size": batch_size,
            "tokens_per_second": round(measured["tokens_per_second"], 1),
            "seconds_per_step": round(1 / measured["iterations_per_second"], 3),
            "wall_seconds": round(time.perf_counter() - start, 1),
        }


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        command = [sys.executable, __file__, "--worker", variant, "--worker-out", out.name]
        command += ["--tiny-steps", str(args.tiny_steps), "--lora-steps", str(args.lora_steps)]
        if args.lora_model:
            command += ["--lora-model", args.lora_model]
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FLYWHEEL_BLAS")}
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"bench worker {variant} failed:\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def report(results: dict[str, dict]) -> str:
    ref, fast = results["reference"], results["openblas"]
    lib = fast["blas"].get("library") or "(OpenBLAS not in use: not installed?)"
    config = fast["blas"].get("openblas", {}).get("config", "")
    lines = [
        f"Reference: the `mlx[cpu]` wheel's own BLAS (`FLYWHEEL_BLAS=reference`). OpenBLAS: `{lib}` {config}.",
        "",
        "| measure | reference BLAS | OpenBLAS | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for n in SIZES:
        r, f = ref["matmul_gflops"][str(n)], fast["matmul_gflops"][str(n)]
        lines.append(f"| f32 matmul {n}x{n}, GFLOP/s | {r:.1f} | {f:.1f} | {f / r:.1f}x |")
    for key in ("tiny_train", "lora"):
        if key not in ref:
            continue
        r, f = ref[key], fast[key]
        title = (
            "tiny model full fine-tune" if key == "tiny_train" else f"{r['model']} LoRA (rank 8, 4 layers)"
        )
        batch = f"batch {r['batch_size']}"
        lines.append(
            f"| {title}, tokens/s ({batch}) | {r['tokens_per_second']:.0f} | {f['tokens_per_second']:.0f} "
            f"| {f['tokens_per_second'] / r['tokens_per_second']:.1f}x |"
        )
        lines.append(
            f"| {title}, s/step | {r['seconds_per_step']:.3f} | {f['seconds_per_step']:.3f} "
            f"| {r['seconds_per_step'] / f['seconds_per_step']:.1f}x |"
        )
    lines += [
        "",
        "Each variant ran in its own process; training figures exclude the first (compiling) window. "
        f"Load average (1 min) before each variant: reference {ref['load_average']:.1f}, "
        f"OpenBLAS {fast['load_average']:.1f} (other work on the machine lowers both).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Matmul GFLOP/s and training tokens/s of MLX with the reference BLAS vs OpenBLAS.",
        epilog="example: uv run python bench/blas_speed.py --tiny-steps 20",
    )
    parser.add_argument(
        "--tiny-steps", type=int, default=20, help="measured tiny-model steps (after as many warm-up)"
    )
    parser.add_argument("--lora-model", help="also time LoRA steps of this mlx-lm model directory")
    parser.add_argument(
        "--lora-steps", type=int, default=2, help="measured LoRA steps (after as many warm-up)"
    )
    parser.add_argument(
        "--no-write", action="store_true", help="print JSON only, leave docs/BENCHMARKS.md alone"
    )
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, args.worker_out, args.tiny_steps, args.lora_model, args.lora_steps)

    from rich.console import Console

    console = Console(stderr=True)
    results = {}
    for variant in VARIANTS:
        with console.status(f"measuring with {variant} BLAS..."):
            start = time.perf_counter()
            results[variant] = run_variant(variant, args)
        console.print(f"{variant}: done in {time.perf_counter() - start:.0f} s")
    body = report(results)
    print(json.dumps(results, indent=2))
    console.print(body, markup=False)
    if not args.no_write:
        from bench._report import write_section

        write_section("blas_speed", "OpenBLAS vs the reference BLAS of mlx[cpu] (Linux CPU)", body)


if __name__ == "__main__":
    main()
