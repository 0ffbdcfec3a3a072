"""Cost of one LoRA training step by loss (train.loss): mlx-lm's default vs the head on supervised positions only
vs that plus the frozen blocks run once on the shared prompt prefix.

    uv run python bench/train_step_cost.py                         # Qwen2.5-Coder-0.5B when cached, else tiny
    uv run python bench/train_step_cost.py --model PATH --num-layers 8 --rounds 3

Same model, LoRA setup, batches and compiled step as `python -m train` (`train.preflight.time_steps`: forward,
backward and the optimizer update, mlx-lm's compile); each round times every loss in turn so machine load hits
all alike; the figure is the median over rounds. Samples are the tiny model's tool-call chat samples (the agent's
system prompt and tools, so every prompt shares the same system prompt + tool listing) rendered with the
model's own chat template. Before timing, each loss's value and gradients are compared with mlx-lm's default.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402, F401  (binds the fast BLAS before anything imports mlx)
from bench._report import publish  # noqa: E402


def default_model() -> str:
    from models.fetch import cached_model_dir
    from models.tiny import cached_model

    qwen = cached_model_dir("qwen2.5-coder-0.5b")
    if qwen is not None:
        return str(qwen)

    return str(cached_model("random"))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", help="mlx-lm model directory (default: cached Qwen2.5-Coder-0.5B, else tiny)"
    )
    parser.add_argument("--num-layers", type=int, default=8, help="LoRA on the last N blocks (default 8)")
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--no-lm-head", action="store_true", help="leave the output head frozen")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per loss per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load

    from models.tiny import tool_call_samples
    from train import adapters
    from train import loss as loss_lib
    from train import preflight as pf
    from train.batches import TokenizedDataset, make_iterate_batches
    from train.config import TrainConfig
    from train.loop import build_optimizer

    model_path = args.model or default_model()
    model, tokenizer = load(model_path)
    config = TrainConfig(
        model=model_path,
        num_layers=args.num_layers,
        lora_rank=args.lora_rank,
        lora_lm_head=not args.no_lm_head,
        batch_size=args.batch_size,
        learning_rate=1e-4,
    )
    samples = [
        pf.Sample(where=f"tool_call_samples:{i + 1}", data=s) for i, s in enumerate(tool_call_samples(16, 7))
    ]
    items = [pf.tokenize(tokenizer, s, True) for s in samples]
    mx.random.seed(0)
    adapters.setup(model, config)
    model.eval()
    batches = sorted(
        make_iterate_batches(0)(TokenizedDataset(items), args.batch_size, 4096), key=lambda b: b[0].shape[1]
    )
    batch = batches[len(batches) // 2]
    prefix_tokens = loss_lib.shared_prefix([t.tokens for t in items])
    prefix = loss_lib.build_prefix(model, prefix_tokens) if prefix_tokens else None
    losses = {"mlx-lm default": loss_lib.full_loss, "head on supervised positions": loss_lib.supervised_loss}
    if prefix is not None:
        losses["+ frozen prefix once"] = loss_lib.make_prefix_loss(prefix)

    def value_and_grads(fn):
        (value, _), grads = nn.value_and_grad(model, fn)(model, *batch)
        mx.eval(value, grads)
        return value.item(), dict(tree_flatten(grads))

    reference = value_and_grads(loss_lib.full_loss)
    agreement = {}
    for name, fn in losses.items():
        value, grads = value_and_grads(fn)
        worst = max(
            float(np.max(np.abs(np.array(grads[k]) - np.array(g))) / (np.max(np.abs(np.array(g))) + 1e-12))
            for k, g in reference[1].items()
        )
        agreement[name] = {"loss": value, "max_relative_grad_difference": worst}

    load_start = os.getloadavg()
    seconds: dict[str, list[float]] = {name: [] for name in losses}
    memory: dict[str, float] = {}
    started = time.perf_counter()
    for round_index in range(args.rounds):
        for name, fn in losses.items():
            timing = pf.time_steps(model, batch, batch, lambda: build_optimizer(config), args.steps, loss=fn)
            seconds[name].append(timing["seconds_per_iteration"])
            memory[name] = max(memory.get(name, 0), timing["peak_memory_gb"])
            print(f"round {round_index + 1} {name}: {timing['seconds_per_iteration']:.3f} s/step", flush=True)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    base = median["mlx-lm default"]
    result = {
        "model": model_path,
        "tokens": int(batch[0].shape[1]) - 1,
        "supervised": int(batch[3].sum().item()),
        "prefix": prefix.length if prefix is not None else 0,
        "frozen_blocks": prefix.frozen if prefix is not None else 0,
        "seconds": seconds,
        "median": median,
        "speedup": {name: base / value for name, value in median.items()},
        "peak_memory_gb": memory,
        "agreement": agreement,
        "load": [load_start, os.getloadavg()],
        "wall_s": time.perf_counter() - started,
    }
    lines = [
        f"Model `{Path(model_path).name}`, LoRA rank {args.lora_rank} on the last {args.num_layers} blocks"
        f"{'' if args.no_lm_head else ' + lm_head'}, batch {args.batch_size} of {result['tokens']} input tokens "
        f"({result['supervised']} supervised; the first {result['prefix']} shared by every sample). "
        f"{args.rounds} rounds × {args.steps} timed steps per loss, interleaved; median.",
        "",
        "| loss | s/step | speed-up vs default | peak memory GB | loss value | max rel. grad diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in losses:
        lines.append(
            f"| {name} | {median[name]:.3f} | {result['speedup'][name]:.2f}× | {memory[name]:.2f} | "
            f"{agreement[name]['loss']:.5f} | {agreement[name]['max_relative_grad_difference']:.1e} |"
        )
    lines += [
        "",
        f"Load average {load_start[0]:.2f} at the start, {result['load'][1][0]:.2f} at the end "
        f"({os.cpu_count()} cores).",
    ]
    publish("train_step_cost", "Training step cost by loss (train.loss)", "\n".join(lines), not args.no_write)
    return result


if __name__ == "__main__":
    main()
