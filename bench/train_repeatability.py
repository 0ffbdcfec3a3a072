"""Same command + seed → same numbers? `train.run` twice (or more) on the demo's data, compared bitwise.

    uv run python bench/train_repeatability.py                     # 3 runs, 150 iterations (the quick demo's)
    uv run python bench/train_repeatability.py --runs 2 --iters 60 --processes

The data is the quick demo's (flywheel's collect and curate stages, as bench/session_training.py builds it);
the settings are the demo student's recipe (flywheel.config.STUDENT_RECIPE). Each run is compared with the first:
every train and validation loss in metrics.jsonl (as written, i.e. bitwise for a float64 repr), and every
tensor of adapters.safetensors (bytes). `--processes` runs each training in a fresh `python -m train`
process (as a user repeating a command does); `--blas-threads N,M` repeats the runs with OPENBLAS_NUM_THREADS
set to each value, to see whether the BLAS thread count changes the numbers. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402, F401  (binds the fast BLAS before anything imports mlx)


def losses(adapter: Path) -> list[tuple[str, int, float]]:
    rows = [json.loads(line) for line in (adapter / "metrics.jsonl").read_text().splitlines()]
    return [
        (m["kind"], m["iteration"], m.get("train_loss", m.get("val_loss")))
        for m in rows
        if m["kind"] in ("train", "val")
    ]


def tensor_digests(adapter: Path) -> dict[str, str]:
    import mlx.core as mx
    import numpy as np

    return {
        name: hashlib.sha256(np.array(value).tobytes()).hexdigest()
        for name, value in sorted(mx.load(str(adapter / "adapters.safetensors")).items())
    }


def compare(first: Path, other: Path) -> dict:
    a, b = losses(first), losses(other)
    differing = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    wa, wb = tensor_digests(first), tensor_digests(other)
    return {
        "losses": len(a),
        "losses_identical": not differing,
        "first_difference": differing[0] if differing else None,
        "max_relative_loss_difference": max(
            (abs(x[2] - y[2]) / abs(x[2]) for x, y in differing), default=0.0
        ),
        "tensors": len(wa),
        "tensors_identical": sum(wa[k] == wb.get(k) for k in wa),
        "weights_file_identical": (first / "adapters.safetensors").read_bytes()
        == (other / "adapters.safetensors").read_bytes(),
    }


def settings(data: Path, adapter: Path, model: Path, args) -> dict:
    from flywheel.config import LoopConfig

    loop = LoopConfig(train={"iters": args.iters})
    return loop.train_settings(model, data, adapter) | {"seed": args.seed, "timing_steps": 0}


def run_in_process(config: dict) -> None:
    from rich.console import Console

    import train

    train.run(train.TrainConfig(**config), console=Console(quiet=True))


def run_as_process(config: dict, env: dict[str, str]) -> None:
    import train
    from train.config import save

    toml = Path(config["adapter"]).with_suffix(".toml")
    save(train.TrainConfig(**config), toml)
    done = subprocess.run(
        [sys.executable, "-m", "train", "--config", str(toml)], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--iters", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--processes", action="store_true", help="each run in a fresh python -m train")
    parser.add_argument("--blas-threads", default="", help="comma-separated OPENBLAS_NUM_THREADS values")
    args = parser.parse_args(argv)

    from rich.console import Console

    from bench.session_training import demo_data
    from core.process import server_environment

    result: dict = {"runs": args.runs, "iters": args.iters, "seed": args.seed, "processes": args.processes}
    with tempfile.TemporaryDirectory(prefix="repeat-bench-") as scratch:
        work = Path(scratch)
        samples, student, _ = demo_data(work / "demo", Console(stderr=True))
        result["train_samples"] = len(samples)
        variants = [t.strip() for t in args.blas_threads.split(",") if t.strip()] or [None]
        adapters = []
        for threads in variants:
            for index in range(args.runs):
                adapter = work / f"adapter-{threads or 'default'}-{index}"
                config = settings(work / "demo" / "data", adapter, student, args)
                env = server_environment()
                env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
                if threads:
                    env["OPENBLAS_NUM_THREADS"] = threads
                started = time.perf_counter()
                if args.processes or threads:
                    run_as_process(config, env)
                else:
                    run_in_process(config)
                print(
                    f"run {threads or 'default'}/{index + 1}: {time.perf_counter() - started:.0f} s",
                    flush=True,
                )
                adapters.append((threads, adapter))
        # Each run against the first of its variant; each variant's first against the very first run.
        firsts = {}
        for threads, adapter in adapters:
            firsts.setdefault(threads, adapter)
        first = adapters[0][1]
        result["comparisons"] = [
            {"blas_threads": threads, "run": adapter.name, "against": base.name, **compare(base, adapter)}
            for threads, adapter in adapters[1:]
            for base in ([firsts[threads]] if adapter != firsts[threads] else [first])
        ]
        result["blas"] = json.loads((first / "manifest.json").read_text()).get("blas")
        result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
