"""python -m train: fine-tune a model on tool-call data (LoRA, DoRA or full) with mlx-lm, in-process."""

from __future__ import annotations

import argparse
import os
import sys

from core.cli import command_parser, fail
from train.config import NO_MODEL_MESSAGE, ConfigError, resolve

PROG = "python -m train"
EPILOG = """\
settings come from, in order: defaults < train.toml (--config FILE, else ./train.toml if present) < flags.
The resolved config is printed and saved as ADAPTER/train.toml (reusable with --config).

examples:
  python -m train --model mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit --data data --adapter adapters/tools
  python -m train --model MODEL --lora-lm-head --iters 300 --select-by tool-success --patience 3
  python -m train --adapter adapters/tools --resume            # continue from the last checkpoint
  python -m train --model MODEL --fine-tune-type full --num-layers -1 --learning-rate 1e-4 --fuse fused/
  mlx.launch --hosts 10.0.0.1,10.0.0.2 --backend ring -- python -m train ...   # several Macs

outputs in ADAPTER/: adapters.safetensors + adapter_config.json (for `mlx_lm server --adapter-path ADAPTER`),
manifest.json, metrics.jsonl, loss.png, train.toml, checkpoints/NNNNNNN/ (each a loadable adapter).
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        PROG,
        "Fine-tune a model on curated tool-call data (mlx-lm chat JSONL: train.jsonl, valid.jsonl). "
        "Preflight checks the data against the model's chat template and tool parser before any step.",
        EPILOG,
    )
    add = p.add_argument
    on_off = argparse.BooleanOptionalAction
    add("--config", help="a train.toml (default: ./train.toml when present)")
    add("--model", help="local mlx-lm model directory or Hugging Face repo id")
    add("--data", help="directory with train.jsonl (required) and valid.jsonl (default: data)")
    add("--adapter", help="output directory (default: adapters/<timestamp>)")
    g = p.add_argument_group("what to train")
    g.add_argument("--fine-tune-type", choices=["lora", "dora", "full"], help="default: lora")
    g.add_argument("--num-layers", type=int, help="train the last N blocks; -1 = all (default: 16)")
    g.add_argument("--rank", "--lora-rank", dest="lora_rank", type=int, help="LoRA rank (default: 8)")
    g.add_argument("--lora-scale", type=float, help="LoRA scale (default: 20)")
    g.add_argument("--lora-dropout", type=float, help="LoRA dropout (default: 0)")
    g.add_argument(
        "--lora-keys", help="comma-separated module names to adapt (default: every linear in the blocks)"
    )
    g.add_argument(
        "--lora-lm-head",
        action=on_off,
        help="also adapt the output head (tied models: the shared embedding); for models whose tool-call tokens were never trained",
    )
    g.add_argument("--lora-embeddings", action=on_off, help="also adapt the input embedding")
    g.add_argument(
        "--mask-prompt", action=on_off, help="loss on the assistant turns only, not the prompt (default: on)"
    )
    g.add_argument(
        "--sessions",
        choices=["whole", "per-turn"],
        help='session samples ("supervise": "all_assistant_turns" or the indices of the turns): one sequence '
        "each, every supervised turn once (default: whole), or one sample per turn, as `mlx_lm lora` trains",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--iters", type=int, help="iterations (default: 1000)")
    g.add_argument("--batch-size", type=int, help="default: 4")
    g.add_argument("--learning-rate", type=float, help="default: 1e-5")
    g.add_argument("--lr-schedule", choices=["constant", "cosine"], help="default: constant")
    g.add_argument("--lr-warmup", type=int, help="linear warm-up iterations (default: 0)")
    g.add_argument("--min-learning-rate", type=float, help="end of the cosine decay (default: 0)")
    g.add_argument("--optimizer", choices=["adam", "adamw"], help="default: adam")
    g.add_argument("--weight-decay", type=float, help="adamw only (default: 0.01)")
    g.add_argument("--grad-accumulation-steps", type=int)
    g.add_argument("--grad-checkpoint", action=on_off, help="trade compute for memory")
    g.add_argument(
        "--head-on-supervised",
        action=on_off,
        help="compute the output head only where the loss counts (same loss, checked at start; default: on)",
    )
    g.add_argument(
        "--max-seq-length",
        type=int,
        help="longer samples are truncated, and counted in preflight (default: 2048)",
    )
    g.add_argument("--seed", type=int, help="weights init and data order (default: 0)")
    g.add_argument(
        "--init-adapter",
        metavar="DIR",
        help="start from this adapter's weights (same layers, rank and keys) instead of fresh LoRA weights",
    )
    g = p.add_argument_group("reports, checkpoints, selection")
    g.add_argument("--steps-per-report", type=int, help="default: 10")
    g.add_argument("--steps-per-eval", type=int, help="validation loss every N iterations (default: 200)")
    g.add_argument("--val-batches", type=int, help="validation batches per pass; -1 = all (default: 25)")
    g.add_argument("--save-every", type=int, help="checkpoint every N iterations (default: 100)")
    g.add_argument(
        "--resume",
        action=on_off,
        help="continue from the last checkpoint (weights, optimizer, data position)",
    )
    g.add_argument(
        "--stop-after",
        type=int,
        help="stop at this iteration (after its checkpoint); continue later with --resume",
    )
    g.add_argument(
        "--select-by",
        choices=["last", "tool-success"],
        help="which checkpoint becomes adapters.safetensors: the last, or the best exact tool-call accuracy on valid.jsonl",
    )
    g.add_argument(
        "--patience", type=int, help="with tool-success: stop after N checkpoints without improvement"
    )
    g.add_argument("--select-samples", type=int, help="valid samples scored per checkpoint; 0 = all")
    g.add_argument("--timing-steps", type=int, help="steps timed in preflight; 0 = skip (default: 2)")
    g.add_argument(
        "--fuse", metavar="OUT", help="also write base + adapter fused into the model directory OUT"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    config_path = args.pop("config")
    try:
        config = resolve(args, config_path)
    except ConfigError as error:
        return fail(PROG, error, 2)
    if not config.model:
        print(NO_MODEL_MESSAGE, file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from train.loop import run
    from train.preflight import PreflightError

    try:
        run(config)
    except PreflightError as error:
        return fail(PROG, error, 1, what="preflight failed")
    except ConfigError as error:
        return fail(PROG, error, 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
