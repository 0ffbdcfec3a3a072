"""`run(config)`: mlx-lm's own `train()` in-process, in five named phases.

    prepare    where the adapter goes, what to resume, nothing written yet
    preflight  data files, model, chat template and tool-call round trip, lengths, what trains, the loss, timing
    train      mlx-lm's `train()` with our batches (`train.batches`) and callback (`train.state`)
    select     which weights become adapters.safetensors (the last, or the best checkpoint by tool-call success)
    finalize   loss plot, manifest (`train.manifest.build`), optional fused model

mlx-lm provides the step (loss, gradients, gradient averaging across MLX distributed ranks, optimizer update,
compilation); the phases supply what it leaves to the caller.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from rich.console import Console

from train import adapters, checkpoint
from train import loss as loss_lib
from train import manifest as manifest_lib
from train import preflight as pf
from train.batches import TokenizedDataset, collate, make_iterate_batches
from train.config import ConfigError, TrainConfig, check, default_adapter_dir, to_toml
from train.config import save as save_config
from train.plot import plot_metrics
from train.state import METRICS, Run, RunCallback, StopTraining, rng_seed, setup_fingerprint

LOSS_PLOT = "loss.png"
CONFIG_COPY = "train.toml"
WEIGHTS = "adapters.safetensors"


def run(config: TrainConfig, console: Console | None = None) -> Path:
    """Train as configured; returns the adapter directory (adapters.safetensors, adapter_config.json,
    manifest.json, metrics.jsonl, loss.png, train.toml, checkpoints/)."""
    state = prepare(config, console or Console())
    preflight(state)
    train(state)
    select(state)
    finalize(state)
    return state.adapter_dir


# ------------------------------------------------------------------------------------------------ prepare


def prepare(config: TrainConfig, console: Console) -> Run:
    """Check the settings, find the adapter directory and the checkpoint to resume; print the config."""
    check(config)  # idempotent; library callers may build TrainConfig directly
    if config.adapter is None:
        config.adapter = default_adapter_dir()
    if not config.model:
        raise ConfigError("model: no model configured")
    adapter_dir = find_adapter_dir(config)
    config.adapter = str(adapter_dir)
    state = Run(config, adapter_dir, console)
    state.resume_from = checkpoint.latest(adapter_dir) if config.resume else None
    if config.resume and state.resume_from is None:
        raise ConfigError(
            f"--resume: no checkpoint with optimizer state in {adapter_dir / checkpoint.CHECKPOINTS}"
        )
    if not config.resume and (adapter_dir / WEIGHTS).exists():
        raise ConfigError(
            f"{adapter_dir} already holds an adapter; continue it with --resume or choose another --adapter"
        )
    if state.resume_from and state.resume_from["iteration"] >= config.iters:
        raise ConfigError(
            f"--resume: {adapter_dir} is already trained to iteration {state.resume_from['iteration']} "
            f"(iters = {config.iters}); raise --iters to train further"
        )
    if state.rank == 0:
        console.rule("python -m train")
        console.print(to_toml(config).split("\n", 1)[1].rstrip(), highlight=False)
        if config.extra.get("steps_per_report_adjusted_from"):
            console.print(
                f"[dim]steps_per_report {config.extra['steps_per_report_adjusted_from']} → {config.steps_per_report} "
                "so checkpoints fall on a report[/dim]"
            )
    return state


def find_adapter_dir(config: TrainConfig) -> Path:
    """The adapter directory; with --resume and no --adapter, the newest adapters/* with a checkpoint."""
    adapter_dir = Path(config.adapter)
    if (
        config.resume
        and "adapter" not in config.extra.get("from_flags", [])
        and config.extra.get("adapter_defaulted")
    ):
        candidates = (
            [d for d in adapter_dir.parent.glob("*") if checkpoint.latest(d)]
            if adapter_dir.parent.is_dir()
            else []
        )
        if candidates:
            return max(candidates, key=lambda d: (d / checkpoint.CHECKPOINTS).stat().st_mtime)
    return adapter_dir


# ---------------------------------------------------------------------------------------------- preflight


def preflight(state: Run) -> None:
    """Everything that can fail before the first step, and nothing written: files and JSON, then (with the
    model loaded) every sample's template rendering and tool-call round trip, lengths, what trains, the loss
    (checked against mlx-lm's), and a couple of timed steps."""
    from mlx_lm.utils import load

    config, console = state.config, state.console
    state.splits, state.warnings = pf.load_splits(
        Path(config.data), need_valid=config.select_by == "tool-success"
    )
    for warning in state.warnings:
        state.print(f"[yellow]warning:[/yellow] {warning}")
    with console.status("loading model") if state.rank == 0 else contextlib.nullcontext():
        state.model, state.tokenizer = load(config.model)
    state.model_path = resolve_model_path(config.model)
    check_samples(state)
    choose_trainable(state)
    choose_loss(state)
    if config.timing_steps:
        time_steps(state)


def check_samples(state: Run) -> None:
    """Round trip, tokens and the length report of every split; too-long samples with nothing left are dropped.
    Session samples stay whole where their spans exist (else they become per-turn samples, counted)."""
    config = state.config
    for split, samples in state.splits.items():
        pf.check_round_trip(state.tokenizer, samples)
        items, sessions = pf.tokenize_split(
            state.tokenizer,
            samples,
            mask_prompt=config.mask_prompt,
            max_seq_length=config.max_seq_length,
            whole_sessions=config.sessions == "whole",
        )
        report = pf.length_report(items, config.max_seq_length, str(Path(config.data) / f"{split}.jsonl"))
        report.sessions = sessions
        state.lengths[split] = report
        dropped = set(report.dropped)
        state.datasets[split] = [t for t in items if t.sample.where not in dropped]
        if state.rank == 0:
            pf.print_length_report(state.console, split, report, config.max_seq_length)
    if len(state.datasets["train"]) < config.batch_size:
        raise pf.PreflightError(
            f"{Path(config.data) / 'train.jsonl'}: {len(state.datasets['train'])} usable samples, "
            f"fewer than batch_size {config.batch_size}"
        )
    if state.datasets["valid"] and len(state.datasets["valid"]) < config.batch_size:
        state.print(
            f"[yellow]warning:[/yellow] valid split smaller than batch_size {config.batch_size}: no validation loss"
        )
        state.datasets["valid"] = []
    state.print(
        f"[green]preflight[/green] {sum(len(s) for s in state.splits.values())} samples render with the chat "
        "template and their tool calls parse back with the model's tool parser"
    )


def choose_trainable(state: Run) -> None:
    mx.random.seed(state.config.seed)
    setup = adapters.setup(state.model, state.config)
    state.adapter_config = setup["adapter_config"]
    for note in setup["notes"]:
        state.print(f"[dim]{note}[/dim]")
    if state.config.init_adapter:
        init_dir = Path(state.config.init_adapter)
        try:
            sha256 = adapters.load_initial(state.model, state.adapter_config, init_dir)
        except ValueError as error:
            raise pf.PreflightError(str(error)) from None
        state.config.extra["init_adapter_sha256"] = sha256
        state.print(f"starting from the weights of {init_dir} (sha256 {sha256[:12]})")
    state.trainable = adapters.trainable_summary(state.model)
    state.print(
        f"trainable parameters {state.trainable['trainable_parameters'] / 1e6:.3f}M of "
        f"{state.trainable['total_parameters'] / 1e6:.3f}M ({state.trainable['trainable_percent']:.2f}%)"
    )


def train_batches(state: Run):
    """One epoch's worth of training batches (and more) in the run's order, from iteration 0."""
    config = state.config
    return make_iterate_batches(config.seed)(
        TokenizedDataset(state.datasets["train"]),
        config.batch_size,
        config.max_seq_length,
        comm_group=state.world,
    )


def choose_loss(state: Run) -> None:
    config = state.config
    state.model.eval()  # no dropout while the two losses are compared
    token_lists = [
        t.tokens[: config.max_seq_length] for split in ("train", "valid") for t in state.datasets[split]
    ]
    state.loss_fn, state.loss_note = loss_lib.choose(
        state.model,
        check_batch(state),
        enabled=config.head_on_supervised,
        prefix_tokens=loss_lib.shared_prefix(token_lists),
        sessions=any(t.spans is not None for t in state.datasets["train"]),
    )
    state.print(f"[dim]{state.loss_note}[/dim]")


def check_batch(state: Run):
    """The batch the cheaper losses are checked on: the first training batch, or with session samples the
    shortest session and the shortest other sample (both kinds of mask, at the least cost)."""
    items = state.datasets["train"]
    sessions = sorted(
        (i for i, t in enumerate(items) if t.spans is not None), key=lambda i: len(items[i].tokens)
    )
    if not sessions:
        return next(train_batches(state))
    others = sorted((i for i, t in enumerate(items) if t.spans is None), key=lambda i: len(items[i].tokens))
    return collate(TokenizedDataset(items), sessions[:1] + others[:1], state.config.max_seq_length)


def time_steps(state: Run) -> None:
    config = state.config
    train_set = TokenizedDataset(state.datasets["train"])
    batches = list(
        make_iterate_batches(config.seed)(
            train_set, config.batch_size, config.max_seq_length, comm_group=state.world
        )
    )
    longest = max(batches, key=lambda b: b[0].shape[1])
    middle = sorted(batches, key=lambda b: b[0].shape[1])[len(batches) // 2]
    state.model.train()
    state.timing = timing = pf.time_steps(
        state.model, longest, middle, lambda: build_optimizer(config), config.timing_steps, loss=state.loss_fn
    )
    remaining = config.iters - (state.resume_from["iteration"] if state.resume_from else 0)
    state.print(
        f"[green]warm-up[/green] {timing['seconds_per_iteration']:.3f} s/iteration (median-length batch; longest "
        f"{timing['longest_batch_seconds']:.3f} s incl. compiling) → about "
        f"{format_duration(timing['seconds_per_iteration'] * remaining)} for {remaining} iterations, "
        f"peak memory {timing['peak_memory_gb']:.2f} GB"
    )


def build_optimizer(config: TrainConfig):
    import mlx.optimizers as optim
    from mlx_lm.tuner.utils import build_schedule

    learning_rate: Any = config.learning_rate
    if config.lr_schedule == "cosine":
        learning_rate = build_schedule(
            {
                "name": "cosine_decay",
                "arguments": [
                    config.learning_rate,
                    config.iters - config.lr_warmup,
                    config.min_learning_rate,
                ],
                "warmup": config.lr_warmup,
            }
        )
    elif config.lr_warmup:
        learning_rate = build_schedule(
            {
                "name": "linear_schedule",
                "arguments": [config.learning_rate, config.learning_rate, 1],
                "warmup": config.lr_warmup,
            }
        )
    if config.optimizer == "adamw":
        return optim.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay)
    return optim.Adam(learning_rate=learning_rate)


# -------------------------------------------------------------------------------------------------- train


def train(state: Run) -> None:
    """The optimizer (restored from the checkpoint when resuming), the files that go with the adapter, then
    mlx-lm's `train()` until `iters`, `stop_after` or early stopping."""
    from mlx_lm.tuner.trainer import TrainingArgs
    from mlx_lm.tuner.trainer import train as mlx_train

    from train.progress import train_ui

    config, adapter_dir = state.config, state.adapter_dir
    state.optimizer = build_optimizer(config)
    if state.resume_from:
        resume(state)
    mx.random.seed(rng_seed(config.seed, state.start))
    if config.select_by == "tool-success":
        samples = [{**t.data, "where": t.where} for s in state.splits["valid"] for t in s.per_turn()]
        state.select_samples = samples[: config.select_samples] if config.select_samples else samples
    if state.rank == 0:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, adapter_dir / CONFIG_COPY)
        (adapter_dir / "adapter_config.json").write_text(json.dumps(state.adapter_config, indent=2) + "\n")
        if not state.resume_from:
            (adapter_dir / METRICS).unlink(missing_ok=True)
    args = TrainingArgs(
        batch_size=config.batch_size,
        iters=config.iters - state.start,
        val_batches=config.val_batches,
        steps_per_report=config.steps_per_report,
        steps_per_eval=config.steps_per_eval,
        steps_per_save=config.iters + 1,  # checkpoints are the callback's (with optimizer state)
        max_seq_length=config.max_seq_length,
        adapter_file=str(adapter_dir / WEIGHTS),
        grad_checkpoint=config.grad_checkpoint,
        grad_accumulation_steps=config.grad_accumulation_steps,
    )
    valid = state.datasets["valid"]
    state.segment_start = time.time()
    try:
        with train_ui(state.start, config.iters, state.console):
            mlx_train(
                model=state.model,
                optimizer=state.optimizer,
                train_dataset=TokenizedDataset(state.datasets["train"]),
                val_dataset=TokenizedDataset(valid) if valid else None,
                args=args,
                loss=state.loss_fn,
                iterate_batches=make_iterate_batches(config.seed, state.start),
                training_callback=RunCallback(state),
            )
    except StopTraining as stop:
        state.status = str(stop)
        state.print(f"[yellow]{stop}[/yellow]")
    state.wall_time = time.time() - state.segment_start


def resume(state: Run) -> None:
    """Weights, optimizer state and bookkeeping from the last checkpoint; later checkpoints and metrics go."""
    config, adapter_dir, saved = state.config, state.adapter_dir, state.resume_from
    saved_setup = saved["state"].get("setup")
    if saved_setup and saved_setup != setup_fingerprint(state.adapter_config):
        raise ConfigError(
            f"--resume: {saved['path']} was trained with {saved_setup}, but the config now gives "
            f"{setup_fingerprint(state.adapter_config)}"
        )
    previous_data = ((manifest_lib.read(adapter_dir) or {}).get("data") or {}).get("files")
    if previous_data and previous_data != manifest_lib.data_files(Path(config.data)):
        state.print(
            f"[yellow]warning:[/yellow] the data in {config.data} changed since this adapter was started: "
            "the resumed run will not see the batches an uninterrupted run would have"
        )
    checkpoint.restore(saved, state.model, state.optimizer)
    state.start = saved["iteration"]
    state.tokens_before = saved["state"].get("trained_tokens", 0)
    state.selection = saved["state"].get("selection") or state.selection
    state.since_best = saved["state"].get("since_best", 0)
    state.last_train_loss = saved["state"].get("train_loss")
    state.last_val_loss = saved["state"].get("val_loss")
    if state.rank == 0:
        checkpoint.drop_after(adapter_dir, state.start)
        truncate_metrics(adapter_dir / METRICS, state.start)
    state.print(f"[green]resuming[/green] from {saved['path']} (iteration {state.start})")


def truncate_metrics(path: Path, iteration: int) -> None:
    """Keep metrics up to the resumed checkpoint (a crashed run may have logged past it)."""
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["iteration"] <= iteration
    ]
    # The val loss at the checkpoint iteration is measured again by the resumed run.
    keep = [
        line
        for line in keep
        if not (json.loads(line)["kind"] == "val" and json.loads(line)["iteration"] == iteration)
    ]
    path.write_text("".join(line + "\n" for line in keep))


# ------------------------------------------------------------------------------------------------- select


def select(state: Run) -> None:
    """adapters.safetensors: the best checkpoint by tool-call success, or the weights as training left them."""
    state.replicas = replica_check(state.model, state.world)
    if state.rank != 0:
        return
    found = checkpoint.list_checkpoints(state.adapter_dir)
    state.final_iteration = found[-1]["iteration"] if found else None
    weights_file = state.adapter_dir / WEIGHTS
    best_iteration = state.selection["best_iteration"]
    if state.config.select_by == "tool-success" and best_iteration is not None:
        best = checkpoint.checkpoint_dir(state.adapter_dir, best_iteration)
        shutil.copyfile(best / checkpoint.WEIGHTS, weights_file)
        state.print(
            f"[green]selected[/green] checkpoint {best.name} (exact tool-call accuracy {state.selection['best_score']:.3f})"
        )
    else:
        from mlx.utils import tree_flatten

        mx.save_safetensors(str(weights_file), dict(tree_flatten(state.model.trainable_parameters())))


def replica_check(model, world) -> bool | None:
    """With several ranks: do all hold the same weights (i.e. gradients were averaged)? None when alone."""
    if world.size() == 1:
        return None
    from mlx.utils import tree_flatten

    checksum = sum(
        mx.sum(v.astype(mx.float32) * (i + 1)).item()
        for i, (_, v) in enumerate(tree_flatten(model.trainable_parameters()))
    )
    gathered = mx.distributed.all_gather(mx.array([checksum]), stream=mx.cpu)
    values = gathered.tolist()
    return all(math.isclose(v, values[0], rel_tol=1e-6, abs_tol=1e-6) for v in values)


# ----------------------------------------------------------------------------------------------- finalize


def finalize(state: Run) -> None:
    """The loss plot, manifest.json and, with `fuse`, the fused model (rank 0 only)."""
    if state.rank != 0:
        return
    config, adapter_dir = state.config, state.adapter_dir
    plot_metrics(
        adapter_dir / METRICS,
        adapter_dir / LOSS_PLOT,
        title=f"{Path(config.model).name} · {adapter_dir.name}",
    )
    manifest = manifest_lib.build(state, manifest_lib.read(adapter_dir) if state.resume_from else None)
    manifest_lib.write(adapter_dir, manifest)
    if config.fuse:
        with state.console.status(f"fusing into {config.fuse}"):
            adapters.fuse(config.model, adapter_dir, config.fuse)
        manifest["fused"] = {
            "path": str(Path(config.fuse).resolve()),
            **manifest_lib.directory_digest(Path(config.fuse)),
        }
        manifest_lib.write(adapter_dir, manifest)
        state.print(f"[green]fused[/green] model written to {config.fuse}")
    state.print(f"[bold green]done[/bold green] {adapter_dir} ({state.status})")


def resolve_model_path(model: str) -> Path:
    path = Path(model)
    if path.exists():
        return path.resolve()
    from mlx_lm.utils import hf_repo_to_path

    return hf_repo_to_path(model)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
