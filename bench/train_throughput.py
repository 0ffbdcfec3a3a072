"""Training throughput: `python -m train` vs raw `python -m mlx_lm lora`, same model, data and LoRA settings.

    uv run python bench/train_throughput.py                      # tiny model, 120 iterations, 5 rounds
    uv run python bench/train_throughput.py --model PATH --iters 30 --batch-size 1 --rounds 1

Both run as child processes of this script with the same environment (the BLAS that
`core.blas.child_environment` selects; on Linux the library actually mapped into each child is read from
/proc/PID/maps while it trains), alternating raw/ours each round so machine load hits both alike.

Throughput is supervised tokens per second (the figure mlx-lm's trainer reports: tokens under the loss mask
per second of step time), the median over each run's report windows after the first (which includes
compilation). Ours comes from metrics.jsonl; mlx-lm's from its printed report lines (it has no other output).
Wall time is the whole process, start-up and (for ours) preflight included.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402, F401  (binds the fast BLAS before anything imports mlx)
from bench._report import write_section  # noqa: E402

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LAST_CPU_S = 0.0
MLX_REPORT = re.compile(r"^\s*(\d+)\s+([\d.]+)\s+[▼▲]\s+([\d,]+)\s+([\d.]+)k\s*$")


def child_env() -> dict[str, str]:
    from core.process import server_environment

    env = server_environment()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    env["COLUMNS"] = "200"
    return env


def watch_blas(process: subprocess.Popen, seen: dict) -> None:
    """Record which BLAS library the child has mapped (Linux: /proc/PID/maps)."""
    maps = Path(f"/proc/{process.pid}/maps")
    while process.poll() is None:
        try:
            text = maps.read_text()
        except OSError:
            break
        if "libmlx" in text or "mlx/core" in text:
            seen["blas"] = "openblas" if "openblas" in text else "reference (mlx-cpu bundled)"
            if "openblas" in text:
                break
        time.sleep(0.5)


def run_child(cmd: list[str], cwd: Path) -> tuple[str, float, str | None]:
    global LAST_CPU_S
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    process = subprocess.Popen(
        cmd, cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: dict = {"blas": None}
    watcher = None
    if sys.platform.startswith("linux"):
        watcher = threading.Thread(target=watch_blas, args=(process, seen), daemon=True)
        watcher.start()
    output, _ = process.communicate()
    wall = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    LAST_CPU_S = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if watcher:
        watcher.join(timeout=2)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} … failed ({process.returncode}):\n{output[-3000:]}")
    return output, wall, seen["blas"] if sys.platform.startswith("linux") else "Accelerate (macOS)"


def raw_mlx_lm(model: str, data: Path, out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "mlx_lm", "lora", "--model", model, "--data", str(data), "--train"]
    cmd += ["--adapter-path", str(out), "--iters", str(args.iters), "--batch-size", str(args.batch_size)]
    cmd += ["--num-layers", str(args.num_layers), "--learning-rate", str(args.learning_rate), "--mask-prompt"]
    cmd += [
        "--steps-per-report",
        str(args.report),
        "--steps-per-eval",
        str(args.iters + 1),
        "--val-batches",
        "1",
    ]
    cmd += ["--save-every", str(args.iters + 1), "--max-seq-length", str(args.max_seq_length), "--seed", "0"]
    output, wall, blas = run_child(cmd, out.parent)
    rows = [MLX_REPORT.match(ANSI.sub("", line)) for line in output.splitlines()]
    rates = [float(m.group(3).replace(",", "")) for m in rows if m]
    losses = [float(m.group(2)) for m in rows if m]
    if not rates:
        raise SystemExit(f"no report lines in mlx_lm lora output:\n{output[-2000:]}")
    return {
        "tokens_per_second": rates,
        "final_loss": losses[-1],
        "wall_s": wall,
        "cpu_s": LAST_CPU_S,
        "blas": blas,
    }


def ours(model: str, data: Path, out: Path, args) -> dict:
    cmd = [sys.executable, "-m", "train", "--model", model, "--data", str(data), "--adapter", str(out)]
    cmd += [
        "--iters",
        str(args.iters),
        "--batch-size",
        str(args.batch_size),
        "--num-layers",
        str(args.num_layers),
    ]
    cmd += ["--learning-rate", str(args.learning_rate), "--steps-per-report", str(args.report)]
    cmd += ["--steps-per-eval", str(args.iters + 1), "--val-batches", "1", "--save-every", str(args.iters)]
    cmd += ["--max-seq-length", str(args.max_seq_length), "--seed", "0", "--timing-steps", "0"]
    _, wall, blas = run_child(cmd, out.parent)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in metrics if m["kind"] == "train"]
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "tokens_per_second": [m["tokens_per_second"] for m in train],
        "final_loss": train[-1]["train_loss"],
        "wall_s": wall,
        "cpu_s": LAST_CPU_S,
        "blas": blas,
        "blas_manifest": (manifest.get("blas") or {}).get("blas"),
    }


def padding(model: str, data: Path, batch_size: int, max_seq_length: int) -> dict[str, dict[str, float]]:
    """Token positions computed per epoch (batch width x rows) by each batching, vs the real tokens in them.

    mlx-lm sorts with `CacheDataset.itemlen`, which is len() of the sample dict (2 for every chat sample), so
    its batches are consecutive file lines; ours sorts by token count. Both pad to 1 + a multiple of 32."""
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(Path(model))
    samples = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    cache = CacheDataset(ChatDataset(samples, tokenizer, mask_prompt=True))
    lengths = [min(len(cache[i][0]), max_seq_length) for i in range(len(cache))]
    orders = {
        "mlx_lm lora": sorted(range(len(cache)), key=cache.itemlen),
        "python -m train": sorted(range(len(cache)), key=lambda i: lengths[i]),
    }
    out = {}
    for name, order in orders.items():
        computed = real = 0
        for start in range(0, len(order) - batch_size + 1, batch_size):
            group = [lengths[i] for i in order[start : start + batch_size]]
            width = min(1 + 32 * ((max(group) + 31) // 32), max_seq_length)
            computed += width * batch_size
            real += sum(group)
        out[name] = {"computed": computed, "real": real, "efficiency": real / computed}
    return out


def steady(rates: list[float]) -> float:
    return statistics.median(rates[1:] if len(rates) > 2 else rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="model directory (default: the tiny random test model)")
    parser.add_argument("--samples", type=int, default=400, help="training samples (tool_call_samples)")
    parser.add_argument("--iters", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=-1)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-seq-length", type=int, default=2048)
    parser.add_argument("--report", type=int, default=10, help="steps per report window")
    parser.add_argument("--rounds", type=int, default=5, help="raw/ours pairs, alternating")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args()

    from models.tiny import tool_call_samples

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="train-bench-") as scratch:
        scratch = Path(scratch)
        if args.model:
            model = args.model
        else:
            from models.tiny import cached_model

            model = str(cached_model("random"))
        data = scratch / "data"
        data.mkdir()
        for name, n, seed in (("train", args.samples, 1), ("valid", 16, 2)):
            (data / f"{name}.jsonl").write_text(
                "".join(json.dumps(s) + "\n" for s in tool_call_samples(n, seed))
            )

        pads = padding(model, data, args.batch_size, args.max_seq_length)
        results: dict[str, list[dict]] = {"mlx_lm lora": [], "python -m train": []}
        for round_no in range(args.rounds):
            for name, fn in (("mlx_lm lora", raw_mlx_lm), ("python -m train", ours)):
                out = scratch / f"{name.split()[-1]}-{round_no}"
                result = fn(model, data, out, args)
                results[name].append(result)
                print(
                    f"round {round_no + 1} {name:<16} {steady(result['tokens_per_second']):8.0f} tok/s  "
                    f"wall {result['wall_s']:6.1f} s  cpu {result['cpu_s']:6.1f} s  final loss {result['final_loss']:.3f}  BLAS {result['blas']}",
                    flush=True,
                )

    def median_of(name: str, key: str) -> float:
        values = [steady(r["tokens_per_second"]) if key == "tps" else r[key] for r in results[name]]
        return statistics.median(values)

    raw_tps, our_tps = median_of("mlx_lm lora", "tps"), median_of("python -m train", "tps")
    ratio = our_tps / raw_tps
    # Each round runs raw then ours back to back: the per-round ratio cancels most of the drift in machine load.
    paired = [
        steady(o["tokens_per_second"]) / steady(r["tokens_per_second"])
        for r, o in zip(results["mlx_lm lora"], results["python -m train"], strict=True)
    ]
    rows = []
    for name in results:
        for i, r in enumerate(results[name]):
            rows.append(
                f"| {name} | {i + 1} | {steady(r['tokens_per_second']):,.0f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} "
                f"| {r['final_loss']:.3f} | {r['blas']} |"
            )
    body = f"""\
Same model ({Path(model).name if args.model else "tiny random Qwen2-style test model, tied embeddings"}), same data
({args.samples} `tool_call_samples`), LoRA rank 8 / scale 20 on {"all" if args.num_layers == -1 else args.num_layers} layers,
batch {args.batch_size}, {args.iters} iterations, lr {args.learning_rate}, prompt masked, max_seq_length {args.max_seq_length};
{args.rounds} rounds alternating raw / ours. Throughput = supervised tokens per second of step time (the trainer's own
figure), median over report windows of {args.report} steps after the first; wall = whole process incl. start-up
(ours also runs preflight: round trip of every sample, length histogram).

| trainer | round | tokens/s | wall s | CPU s | final loss | BLAS mapped in the child |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

**`python -m train` / `mlx_lm lora`: {statistics.median(paired):.2f}× tokens/s** (median of the per-round ratios
{", ".join(f"{p:.2f}" for p in paired)}; ratio of the medians {ratio:.2f}×, {our_tps:,.0f} vs {raw_tps:,.0f} tokens/s).
Both run mlx-lm's own compiled `train()` step; two things differ. The loss: ours computes the output head
on supervised positions only (`train/loss.py`, same value and gradients; every layer trains here, so the
frozen-prefix part does not apply; `bench/train_step_cost.py` isolates it). Batching: token positions computed per epoch
(deterministic, from the tokenized data): mlx_lm lora {pads["mlx_lm lora"]["computed"]:,} for
{pads["mlx_lm lora"]["real"]:,} real tokens ({pads["mlx_lm lora"]["efficiency"]:.0%} useful); python -m train
{pads["python -m train"]["computed"]:,} ({pads["python -m train"]["efficiency"]:.0%} useful). mlx-lm's
`CacheDataset.itemlen` is len() of the sample dict (2 for every chat sample), so its "length-sorted" batches are
consecutive file lines; ours are sorted by token count.
Load average during the run: {load_before:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs share this
machine; the per-round spread shows the noise).
"""
    print(body)
    if not args.no_write:
        write_section("train_throughput", "Training throughput: python -m train vs mlx_lm lora", body)


if __name__ == "__main__":
    main()
