"""The demo recipe end to end: teacher traces → curate → full fine-tune of the tiny student → held-out eval.

    uv run python bench/demo_recipe.py                       # the chosen recipe (suite demo), ~5 min here
    uv run python bench/demo_recipe.py --suite default --iters 500 --batch-size 8
    uv run python bench/demo_recipe.py --workdir /tmp/demo --reuse-data --iters 800   # retrain on the same data

Stages, each timed:
1. collect: the scripted demonstrator (`agent.teacher.Teacher`) behind the recording proxy
   (`proxy.RecordingProxy`); the reference pydantic-ai agent (`agent.episodes.run_episodes`) runs the suite's
   train tasks through the proxy, which writes the traces.
2. curate: `curate.run([traces], data, load_config(...))` → train/valid/test.jsonl.
3. train: `train.run(TrainConfig(...))`, full fine-tuning of the tiny base student (models.tinybase; lr 3e-4 cosine → 1e-5).
4. evaluate: the same agent on the suite's held-out tasks against `MlxServer(student)` and
   `MlxServer(student, adapter_path=adapter)`; paired McNemar exact test on the outcomes.

Prints a JSON summary (and writes it to WORKDIR/summary.json): per-stage seconds, sample counts, prompt
tokens per sample, training iterations and s/iteration, held-out success base vs trained per template, p.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402, F401  (binds the fast BLAS before anything imports mlx)


def collect(suite, traces_dir: Path, concurrency: int) -> dict:
    from agent.episodes import run_episodes
    from agent.teacher import Teacher
    from proxy import RecordingProxy

    started = time.monotonic()
    with Teacher(suite) as teacher, RecordingProxy(teacher.url, traces_dir) as recording:
        episodes = run_episodes(
            suite.train,
            recording.base_url,
            teacher.model_name,
            concurrency=concurrency,
            description="teacher",
        )
    return {
        "seconds": round(time.monotonic() - started, 1),
        "episodes": len(episodes),
        "teacher_success": sum(e.success for e in episodes),
        "summary": recording.summary,
    }


def curate_data(traces_dir: Path, data_dir: Path, split: tuple[float, float, float]) -> dict:
    import curate

    started = time.monotonic()
    report = curate.run([traces_dir], data_dir, curate.load_config(split=split, progress=False))
    if not report.kept:
        raise SystemExit(f"curate kept nothing: {report.failure_reason()}")
    return {"seconds": round(time.monotonic() - started, 1), "splits": report.split_counts}


def token_lengths(model: Path, data_dir: Path) -> dict:
    """Tokens per training sample (the whole rendered chat) and the supervised share."""
    from core.toolcalls import load_tokenizer

    tokenizer = load_tokenizer(model)
    totals = []
    for line in (data_dir / "train.jsonl").read_text().splitlines():
        sample = json.loads(line)
        ids = tokenizer.apply_chat_template(sample["messages"], tools=sample.get("tools"))
        totals.append(len(ids))
    return {
        "samples": len(totals),
        "mean": round(statistics.mean(totals), 1),
        "max": max(totals),
        "min": min(totals),
    }


def train_student(model: Path, data_dir: Path, adapter_dir: Path, args) -> dict:
    import train

    started = time.monotonic()
    config = train.TrainConfig(
        model=str(model),
        data=str(data_dir),
        adapter=str(adapter_dir),
        fine_tune_type=args.fine_tune_type,
        num_layers=-1,
        iters=args.iters,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_schedule="cosine",
        lr_warmup=min(50, args.iters // 4),
        min_learning_rate=1e-5,
        max_seq_length=args.max_seq_length,
        seed=args.seed,
        steps_per_report=max(args.iters // 10, 1),
        steps_per_eval=args.iters,
        val_batches=4,
        save_every=args.save_every or args.iters,
        timing_steps=0,
        **json.loads(args.train_extra),
    )
    train.run(config)
    seconds = time.monotonic() - started
    metrics = [json.loads(line) for line in (adapter_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [m for m in metrics if "train_loss" in m]
    return {
        "seconds": round(seconds, 1),
        "iters": args.iters,
        "s_per_iter": round(seconds / args.iters, 3),
        "final_train_loss": losses[-1]["train_loss"] if losses else None,
        "val_loss": next((m["val_loss"] for m in reversed(metrics) if "val_loss" in m), None),
    }


def evaluate_student(model: Path, adapter_dir: Path | None, tasks, args, label: str) -> tuple[list, float]:
    from agent.episodes import run_episodes
    from core.process import MlxServer

    started = time.monotonic()
    with MlxServer(model, adapter_path=adapter_dir, max_tokens=args.max_tokens) as server:
        episodes = run_episodes(
            tasks,
            server.base_url,
            "default_model",
            concurrency=args.eval_concurrency,
            description=label,
            max_steps=args.max_steps,
        )
    return episodes, round(time.monotonic() - started, 1)


def per_template(base: list, trained: list) -> dict:
    table = {}
    for b, t in zip(base, trained, strict=True):
        row = table.setdefault(b.template, {"n": 0, "base": 0, "trained": 0})
        row["n"] += 1
        row["base"] += b.success
        row["trained"] += t.success
    return table


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--suite", default="demo", help="suite name or path (default: demo)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep traces/data/adapter here")
    parser.add_argument("--reuse-data", action="store_true", help="skip collect+curate; use WORKDIR/data")
    parser.add_argument("--data-only", action="store_true", help="stop after collect+curate")
    parser.add_argument("--skip-base", action="store_true", help="don't evaluate the base model")
    parser.add_argument(
        "--model", type=Path, default=None, help="student model dir (default: the shipped tiny base)"
    )
    parser.add_argument("--iters", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--fine-tune-type", default="full", choices=["full", "lora", "dora"])
    parser.add_argument("--train-extra", default="{}", help="JSON of extra TrainConfig fields")
    parser.add_argument("--max-seq-length", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=0, help="checkpoint interval (default: iters)")
    parser.add_argument("--max-tokens", type=int, default=128, help="server generation limit")
    parser.add_argument("--max-steps", type=int, default=6, help="agent model requests per episode")
    parser.add_argument("--collect-concurrency", type=int, default=4)
    parser.add_argument("--eval-concurrency", type=int, default=1)
    parser.add_argument("--split", default="0.95,0.05,0", help="curate train,valid,test fractions")
    args = parser.parse_args(argv)

    from agent.tasks import load_suite
    from evaluate.stats import mcnemar_exact
    from models.tinybase import cached_base

    total_started = time.monotonic()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="flywheel-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    traces_dir, data_dir = workdir / "traces", workdir / "data"
    adapter_dir = workdir / f"adapter-{args.iters}-{args.batch_size}-{args.lr:g}-{args.seed}"
    suite = load_suite(args.suite)
    model = args.model or cached_base()
    result: dict = {
        "suite": suite.name,
        "train_tasks": len(suite.train),
        "held_out_tasks": len(suite.held_out),
    }
    result["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if not args.reuse_data:
        result["collect"] = collect(suite, traces_dir, args.collect_concurrency)
        split = tuple(float(x) for x in args.split.split(","))
        result["curate"] = curate_data(traces_dir, data_dir, split)
    result["tokens_per_sample"] = token_lengths(model, data_dir)
    if args.data_only:
        print(json.dumps(result, indent=1))
        return result
    result["train"] = train_student(model, data_dir, adapter_dir, args)
    if args.skip_base:
        base, base_s = None, 0.0
    else:
        base, base_s = evaluate_student(model, None, suite.held_out, args, "base")
    trained, trained_s = evaluate_student(model, adapter_dir, suite.held_out, args, "trained")
    base = base or [type(t)(**{**t.to_dict(), "success": False}) for t in trained]
    base_only = sum(b.success and not t.success for b, t in zip(base, trained, strict=True))
    trained_only = sum(t.success and not b.success for b, t in zip(base, trained, strict=True))
    result["evaluate"] = {
        "seconds_base": base_s,
        "seconds_trained": trained_s,
        "base_success": sum(e.success for e in base),
        "trained_success": sum(e.success for e in trained),
        "n": len(trained),
        "base_only": base_only,
        "trained_only": trained_only,
        "mcnemar_p": mcnemar_exact(base_only, trained_only),
        "per_template": per_template(base, trained),
        "base_assumed_zero": args.skip_base,
    }
    result["total_seconds"] = round(time.monotonic() - total_started, 1)
    result["load_average"] = os.getloadavg()
    (workdir / "summary.json").write_text(json.dumps(result, indent=1))
    (workdir / f"episodes-{adapter_dir.name}.json").write_text(
        json.dumps({"base": [e.to_dict() for e in base], "trained": [e.to_dict() for e in trained]}, indent=1)
    )
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
