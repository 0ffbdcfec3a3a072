"""`run(config)`: preflight, then mlx-lm's own `train()` in-process, with checkpoints that resume exactly.

mlx-lm provides the step (loss, gradients, gradient averaging across MLX distributed ranks, optimizer update,
compilation) and `TrainingCallback`; this module supplies what it leaves to the caller:

- the data as pre-tokenized (tokens, offset) pairs, rendered as mlx_lm.server renders a conversation;
- `iterate_batches`, passed to `train()`: length-sorted batches (by real token count) in an order that is a
  pure function of (seed, iteration), so a resumed run sees exactly the batches the uninterrupted one would
  have (mlx-lm's own shuffles numpy's global RNG, which its validation passes also consume);
- a callback that writes metrics.jsonl, checkpoints (weights + optimizer state), scores checkpoints by
  tool-call success, and stops early.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.tuner.callbacks import TrainingCallback
from rich.console import Console

from train import adapters, checkpoint
from train import loss as loss_lib
from train import manifest as manifest_lib
from train import preflight as pf
from train.config import ConfigError, TrainConfig, default_adapter_dir, to_toml, validate
from train.loss import supervised_positions
from train.plot import plot_metrics

METRICS = "metrics.jsonl"
LOSS_PLOT = "loss.png"
CONFIG_COPY = "train.toml"
EVAL_ORDER_SEED = 0x5EED_0E7A  # the validation subset is fixed for a run, independent of training


class StopTraining(Exception):
    """Raised from the callback to end mlx-lm's training loop early (stop_after, patience)."""


class TokenizedDataset:
    """(tokens, offset) pairs, the item format mlx-lm's batching and loss expect."""

    def __init__(self, items: list[pf.Tokenized]):
        self.items = [(t.tokens, t.offset) for t in items]

    def __getitem__(self, idx: int):
        return self.items[idx]

    def __len__(self):
        return len(self.items)

    def itemlen(self, idx: int) -> int:
        return len(self.items[idx][0])


def rng_seed(seed: int, iteration: int) -> int:
    """MLX's global key is reseeded at every checkpoint, so dropout after a resume matches."""
    return (seed * 1_000_003 + iteration) % 2**63


def make_iterate_batches(seed: int, start_iteration: int = 0):
    """An `iterate_batches` for mlx-lm's `train()`/`evaluate()` (same signature and batch format).

    Batches are contiguous runs of the length-sorted samples (little padding). Training (`loop=True`) visits
    them in epoch e in the order `default_rng([seed, e]).permutation(...)`, starting at global batch
    `start_iteration`. Evaluation (`loop=False`) uses one fixed order, so every validation pass sees the same
    subset. Sequences longer than max_seq_length are cut (preflight reported how many)."""

    def iterate_batches(dataset, batch_size, max_seq_length, loop=False, comm_group=None, **_):
        order = sorted(range(len(dataset)), key=dataset.itemlen)
        if len(dataset) < batch_size:
            raise ValueError(
                f"Dataset must have at least batch_size={batch_size} examples but only has {len(dataset)}."
            )
        offset, step = (comm_group.rank(), comm_group.size()) if comm_group is not None else (0, 1)
        if batch_size % step != 0:
            raise ValueError("The batch size must be divisible by the number of workers")
        batches = [
            order[i + offset : i + offset + batch_size : step]
            for i in range(0, len(order) - batch_size + 1, batch_size)
        ]
        if not loop:
            for i in np.random.default_rng([seed, EVAL_ORDER_SEED]).permutation(len(batches)):
                yield collate(dataset, batches[i], max_seq_length)
            return
        position = start_iteration
        while True:
            epoch, index = divmod(position, len(batches))
            permutation = np.random.default_rng([seed, epoch]).permutation(len(batches))
            for i in permutation[index:]:
                yield collate(dataset, batches[i], max_seq_length)
            position = (epoch + 1) * len(batches)

    return iterate_batches


def collate(dataset, indices: list[int], max_seq_length: int):
    """mlx-lm's padding: to 1 + a multiple of 32, capped at max_seq_length; returns (batch, [offset, length]) plus
    the supervised positions and their weights (`train.loss`)."""
    items = [dataset[j] for j in indices]
    lengths = [min(len(tokens), max_seq_length) for tokens, _ in items]
    pad_to = 32
    width = min(1 + pad_to * ((max(lengths) + pad_to - 1) // pad_to), max_seq_length)
    batch = np.zeros((len(items), width), np.int32)
    for row, ((tokens, _), length) in enumerate(zip(items, lengths, strict=True)):
        batch[row, :length] = tokens[:length]
    offsets = np.array([[off, length] for (_, off), length in zip(items, lengths, strict=True)], np.int32)
    positions, weights = supervised_positions(offsets, width)
    return mx.array(batch), mx.array(offsets), mx.array(positions), mx.array(weights)


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


class RunCallback(TrainingCallback):
    """Metrics, checkpoints, tool-success selection and early stopping, in absolute iterations."""

    def __init__(self, run: Run):
        self.run = run

    def on_val_loss_report(self, info: dict):
        run = self.run
        run.record(
            {
                "kind": "val",
                "iteration": run.start + info["iteration"],
                "val_loss": info["val_loss"],
                "val_time_s": info["val_time"],
            }
        )
        run.last_val_loss = info["val_loss"]

    def on_train_loss_report(self, info: dict):
        run = self.run
        iteration = run.start + info["iteration"]
        run.last_train_loss = info["train_loss"]
        run.record(
            {
                "kind": "train",
                "iteration": iteration,
                "train_loss": info["train_loss"],
                "learning_rate": info["learning_rate"],
                "tokens_per_second": info["tokens_per_second"],
                "iterations_per_second": info["iterations_per_second"],
                "trained_tokens": run.tokens_before + info["trained_tokens"],
                "peak_memory_gb": info["peak_memory"],
            }
        )
        run.trained_tokens = run.tokens_before + info["trained_tokens"]
        config = run.config
        stopping = config.stop_after is not None and iteration == config.stop_after
        if iteration % config.save_every == 0 or iteration == config.iters or stopping:
            run.save_checkpoint(iteration)
        if stopping:
            raise StopTraining(
                f"stopped at iteration {iteration} as asked (stop_after); continue with --resume"
            )
        if config.patience and run.since_best >= config.patience:
            raise StopTraining(
                f"early stop at iteration {iteration}: no better tool-call success in {config.patience} checkpoints"
            )


class Run:
    """State shared by `run()` and its callback."""

    def __init__(self, config: TrainConfig, adapter_dir: Path, console: Console):
        self.config = config
        self.adapter_dir = adapter_dir
        self.console = console
        self.world = mx.distributed.init()
        self.rank = self.world.rank()
        self.start = 0
        self.tokens_before = 0
        self.trained_tokens = 0
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self.loss_note = ""
        self.model = self.tokenizer = self.optimizer = None
        self.adapter_config: dict = {}
        self.select_samples: list[dict] = []
        self.selection: dict[str, Any] = {
            "by": config.select_by,
            "curve": [],
            "best_iteration": None,
            "best_score": None,
        }
        self.since_best = 0

    def print(self, text: str) -> None:
        if self.rank == 0:
            self.console.print(text)

    def record(self, entry: dict) -> None:
        if self.rank == 0:
            with open(self.adapter_dir / METRICS, "a") as file:
                file.write(json.dumps(entry) + "\n")

    def save_checkpoint(self, iteration: int) -> None:
        score = self.score(iteration) if self.config.select_by == "tool-success" else None
        mx.random.seed(
            rng_seed(self.config.seed, iteration)
        )  # after scoring: a resumed run starts from this key
        state = {
            "trained_tokens": self.trained_tokens,
            "train_loss": self.last_train_loss,
            "val_loss": self.last_val_loss,
            "selection": self.selection,
            "since_best": self.since_best,
            "setup": setup_fingerprint(self.adapter_config),
        }
        if self.rank == 0:
            path = checkpoint.save(
                self.adapter_dir, iteration, self.model, self.optimizer, self.adapter_config, state
            )
            entry = {
                "kind": "checkpoint",
                "iteration": iteration,
                "path": str(path.relative_to(self.adapter_dir)),
            }
            if score is not None:
                entry["tool_success"] = score
            self.record(entry)
            best = (
                ""
                if score is None
                else f"  exact tool-call accuracy {score:.3f} (best {self.selection['best_score']:.3f} @ {self.selection['best_iteration']})"
            )
            self.print(f"  [green]checkpoint[/green] {path.relative_to(self.adapter_dir)}{best}")

    def score(self, iteration: int) -> float:
        """Exact tool-call accuracy on the valid split (evaluate's scorer), computed on rank 0 and shared."""
        value = 0.0
        if self.rank == 0:
            from core.turns import evaluate_turns

            self.model.eval()
            try:
                results = evaluate_turns(self.model, self.tokenizer, self.select_samples)
            finally:
                self.model.train()
            metric = (
                "exact_call_accuracy"
                if results.rates["exact_call_accuracy"] is not None
                else "turn_success_rate"
            )
            value = float(results.rates[metric] or 0.0)
            self.selection["curve"].append(
                {"iteration": iteration, "score": value, "metric": metric, "rates": dict(results.rates)}
            )
        if self.world.size() > 1:
            value = mx.distributed.all_sum(mx.array(value), stream=mx.cpu).item()
            if self.rank != 0:
                self.selection["curve"].append({"iteration": iteration, "score": value})
        if self.selection["best_score"] is None or value > self.selection["best_score"]:
            self.selection.update(best_iteration=iteration, best_score=value)
            self.since_best = 0
        else:
            self.since_best += 1
        return value


def setup_fingerprint(adapter_config: dict) -> dict:
    keys = (
        "model",
        "fine_tune_type",
        "num_layers",
        "lora_parameters",
        "lora_lm_head",
        "lora_embeddings",
        "optimizer",
    )
    return {k: adapter_config.get(k) for k in keys}


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


def run(config: TrainConfig, console: Console | None = None) -> Path:
    """Train as configured; returns the adapter directory (adapters.safetensors, adapter_config.json,
    manifest.json, metrics.jsonl, loss.png, train.toml, checkpoints/)."""
    from mlx_lm.tuner.trainer import TrainingArgs
    from mlx_lm.tuner.trainer import train as mlx_train
    from mlx_lm.utils import load

    console = console or Console()
    validate(config)  # idempotent; library callers may build TrainConfig directly
    if config.adapter is None:
        config.adapter = default_adapter_dir()
    if not config.model:
        raise ConfigError("model: no model configured")
    started = time.time()
    adapter_dir = find_adapter_dir(config)
    config.adapter = str(adapter_dir)
    run_state = Run(config, adapter_dir, console)
    rank = run_state.rank

    resume_from = checkpoint.latest(adapter_dir) if config.resume else None
    if config.resume and resume_from is None:
        raise ConfigError(
            f"--resume: no checkpoint with optimizer state in {adapter_dir / checkpoint.CHECKPOINTS}"
        )
    if not config.resume and (adapter_dir / "adapters.safetensors").exists():
        raise ConfigError(
            f"{adapter_dir} already holds an adapter; continue it with --resume or choose another --adapter"
        )
    if resume_from and resume_from["iteration"] >= config.iters:
        raise ConfigError(
            f"--resume: {adapter_dir} is already trained to iteration {resume_from['iteration']} (iters = {config.iters}); "
            "raise --iters to train further"
        )
    if rank == 0:
        console.rule("python -m train")
        console.print(to_toml(config).split("\n", 1)[1].rstrip(), highlight=False)
        if config.extra.get("steps_per_report_adjusted_from"):
            console.print(
                f"[dim]steps_per_report {config.extra['steps_per_report_adjusted_from']} → {config.steps_per_report} "
                "so checkpoints fall on a report[/dim]"
            )

    # Preflight, part 1: files and JSON, before loading the model.
    splits, warnings = pf.load_splits(Path(config.data), need_valid=config.select_by == "tool-success")
    for warning in warnings:
        run_state.print(f"[yellow]warning:[/yellow] {warning}")

    with console.status("loading model") if rank == 0 else _nullcontext():
        model, tokenizer = load(config.model)
    model_path = resolve_model_path(config.model)

    # Preflight, part 2: chat template, tool-call round trip, tokens and lengths.
    lengths: dict[str, pf.SplitReport] = {}
    datasets: dict[str, list[pf.Tokenized]] = {}
    for split, samples in splits.items():
        pf.check_round_trip(tokenizer, samples)
        items = [pf.tokenize(tokenizer, s, config.mask_prompt) for s in samples]
        lengths[split] = pf.length_report(
            items, config.max_seq_length, str(Path(config.data) / f"{split}.jsonl")
        )
        dropped = set(lengths[split].dropped)
        datasets[split] = [t for t in items if t.sample.where not in dropped]
        if rank == 0:
            pf.print_length_report(console, split, lengths[split], config.max_seq_length)
    if len(datasets["train"]) < config.batch_size:
        raise pf.PreflightError(
            f"{Path(config.data) / 'train.jsonl'}: {len(datasets['train'])} usable samples, fewer than batch_size {config.batch_size}"
        )
    if datasets["valid"] and len(datasets["valid"]) < config.batch_size:
        run_state.print(
            f"[yellow]warning:[/yellow] valid split smaller than batch_size {config.batch_size}: no validation loss"
        )
        datasets["valid"] = []
    run_state.print(
        f"[green]preflight[/green] {sum(len(s) for s in splits.values())} samples render with the chat template and "
        "their tool calls parse back with the model's tool parser"
    )

    # What to train.
    mx.random.seed(config.seed)
    setup = adapters.setup(model, config)
    run_state.adapter_config = setup["adapter_config"]
    for note in setup["notes"]:
        run_state.print(f"[dim]{note}[/dim]")
    trainable = adapters.trainable_summary(model)
    run_state.print(
        f"trainable parameters {trainable['trainable_parameters'] / 1e6:.3f}M of {trainable['total_parameters'] / 1e6:.3f}M "
        f"({trainable['trainable_percent']:.2f}%)"
    )
    train_set = TokenizedDataset(datasets["train"])
    valid_set = TokenizedDataset(datasets["valid"]) if datasets["valid"] else None

    def all_batches():
        return make_iterate_batches(config.seed)(
            train_set, config.batch_size, config.max_seq_length, comm_group=run_state.world
        )

    model.eval()  # no dropout while the two losses are compared
    token_lists = [tokens[: config.max_seq_length] for tokens, _ in train_set.items]
    token_lists += [tokens[: config.max_seq_length] for tokens, _ in (valid_set.items if valid_set else [])]
    loss_fn, loss_note = loss_lib.choose(
        model,
        next(all_batches()),
        enabled=config.head_on_supervised,
        prefix_tokens=loss_lib.shared_prefix(token_lists),
    )
    run_state.print(f"[dim]{loss_note}[/dim]")
    run_state.loss_note = loss_note

    # Preflight, part 3: time a couple of real steps.
    timing = None
    if config.timing_steps:
        batches = list(all_batches())
        longest = max(batches, key=lambda b: b[0].shape[1])
        middle = sorted(batches, key=lambda b: b[0].shape[1])[len(batches) // 2]
        model.train()
        timing = pf.time_steps(
            model, longest, middle, lambda: build_optimizer(config), config.timing_steps, loss=loss_fn
        )
        remaining = config.iters - (resume_from["iteration"] if resume_from else 0)
        run_state.print(
            f"[green]warm-up[/green] {timing['seconds_per_iteration']:.3f} s/iteration (median-length batch; longest "
            f"{timing['longest_batch_seconds']:.3f} s incl. compiling) → about {format_duration(timing['seconds_per_iteration'] * remaining)} "
            f"for {remaining} iterations, peak memory {timing['peak_memory_gb']:.2f} GB"
        )

    optimizer = build_optimizer(config)
    run_state.model, run_state.tokenizer, run_state.optimizer = model, tokenizer, optimizer
    if resume_from:
        saved_setup = resume_from["state"].get("setup")
        if saved_setup and saved_setup != setup_fingerprint(run_state.adapter_config):
            raise ConfigError(
                f"--resume: {resume_from['path']} was trained with {saved_setup}, but the config now gives "
                f"{setup_fingerprint(run_state.adapter_config)}"
            )
        previous_data = ((read_json(adapter_dir / manifest_lib.MANIFEST) or {}).get("data") or {}).get(
            "files"
        )
        if previous_data and previous_data != manifest_lib.data_files(Path(config.data)):
            run_state.print(
                f"[yellow]warning:[/yellow] the data in {config.data} changed since this adapter was started: "
                "the resumed run will not see the batches an uninterrupted run would have"
            )
        checkpoint.restore(resume_from, model, optimizer)
        run_state.start = resume_from["iteration"]
        run_state.tokens_before = resume_from["state"].get("trained_tokens", 0)
        run_state.selection = resume_from["state"].get("selection") or run_state.selection
        run_state.since_best = resume_from["state"].get("since_best", 0)
        run_state.last_train_loss = resume_from["state"].get("train_loss")
        run_state.last_val_loss = resume_from["state"].get("val_loss")
        if rank == 0:
            checkpoint.drop_after(adapter_dir, run_state.start)
            truncate_metrics(adapter_dir / METRICS, run_state.start)
        run_state.print(f"[green]resuming[/green] from {resume_from['path']} (iteration {run_state.start})")
    mx.random.seed(rng_seed(config.seed, run_state.start))

    if config.select_by == "tool-success":
        samples = [{**s.data, "where": s.where} for s in splits["valid"]]
        run_state.select_samples = samples[: config.select_samples] if config.select_samples else samples

    if rank == 0:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        (adapter_dir / CONFIG_COPY).write_text(to_toml(config))
        (adapter_dir / "adapter_config.json").write_text(
            json.dumps(run_state.adapter_config, indent=2) + "\n"
        )
        if not resume_from:
            (adapter_dir / METRICS).unlink(missing_ok=True)

    args = TrainingArgs(
        batch_size=config.batch_size,
        iters=config.iters - run_state.start,
        val_batches=config.val_batches,
        steps_per_report=config.steps_per_report,
        steps_per_eval=config.steps_per_eval,
        steps_per_save=config.iters + 1,  # checkpoints are the callback's (with optimizer state)
        max_seq_length=config.max_seq_length,
        adapter_file=str(adapter_dir / "adapters.safetensors"),
        grad_checkpoint=config.grad_checkpoint,
        grad_accumulation_steps=config.grad_accumulation_steps,
    )
    from train.progress import train_ui

    status = "finished"
    segment_start = time.time()
    try:
        with train_ui(run_state.start, config.iters, console):
            mlx_train(
                model=model,
                optimizer=optimizer,
                train_dataset=train_set,
                val_dataset=valid_set,
                args=args,
                loss=loss_fn,
                iterate_batches=make_iterate_batches(config.seed, run_state.start),
                training_callback=RunCallback(run_state),
            )
    except StopTraining as stop:
        status = str(stop)
        run_state.print(f"[yellow]{stop}[/yellow]")
    wall_time = time.time() - segment_start

    replicas = replica_check(model, run_state.world)
    final_iteration = last_checkpoint_iteration(adapter_dir) if rank == 0 else None
    if rank == 0:
        weights_file = adapter_dir / "adapters.safetensors"
        if config.select_by == "tool-success" and run_state.selection["best_iteration"] is not None:
            best = checkpoint.checkpoint_dir(adapter_dir, run_state.selection["best_iteration"])
            shutil.copyfile(best / checkpoint.WEIGHTS, weights_file)
            run_state.print(
                f"[green]selected[/green] checkpoint {best.name} (exact tool-call accuracy {run_state.selection['best_score']:.3f})"
            )
        else:
            from mlx.utils import tree_flatten

            mx.save_safetensors(str(weights_file), dict(tree_flatten(model.trainable_parameters())))
        plot_metrics(
            adapter_dir / METRICS,
            adapter_dir / LOSS_PLOT,
            title=f"{Path(config.model).name} · {adapter_dir.name}",
        )
        previous = read_json(adapter_dir / manifest_lib.MANIFEST) if resume_from else None
        segments = (previous or {}).get("segments", [])
        segments.append(
            {
                "started": iso(segment_start),
                "wall_time_s": round(wall_time, 3),
                "from_iteration": run_state.start,
                "to_iteration": final_iteration,
                "status": status,
            }
        )
        manifest = {
            "format": "flywheel-train-manifest/1",
            "adapter_dir": str(adapter_dir.resolve()),
            "status": status,
            "base_model": {
                "name": config.model,
                "path": str(model_path),
                **manifest_lib.directory_digest(model_path),
            },
            "data": {
                "dir": str(Path(config.data).resolve()),
                "files": manifest_lib.data_files(Path(config.data)),
                "curate_report": manifest_lib.curate_report(Path(config.data)),
            },
            "config": config.to_dict(),
            "config_notes": {k: v for k, v in config.extra.items() if k not in ("adapter_defaulted",)},
            "adapter_config": run_state.adapter_config,
            "seed": config.seed,
            "versions": manifest_lib.versions(),
            "git": manifest_lib.git_state(),
            "command": manifest_lib.command_line(),
            "blas": manifest_lib.blas(),
            "loss": run_state.loss_note,
            "distributed": {
                "world_size": run_state.world.size(),
                "gradient_averaging": "mlx_lm.tuner.trainer: average_gradients (all_sum / world size) every update",
                "replicas_identical": replicas,
            },
            "trainable": trainable,
            "preflight": {
                "warnings": warnings,
                "lengths": {k: asdict(v) for k, v in lengths.items()},
                "warmup": timing,
            },
            "final": {
                "iteration": final_iteration,
                "train_loss": run_state.last_train_loss,
                "val_loss": run_state.last_val_loss,
                "trained_tokens": run_state.trained_tokens,
            },
            "selection": run_state.selection if config.select_by == "tool-success" else {"by": "last"},
            "started": iso(started),
            "finished": iso(time.time()),
            "wall_time_s": round(sum(s["wall_time_s"] for s in segments), 3),
            "segments": segments,
            "outputs": {
                name: manifest_lib.sha256_file(adapter_dir / name)
                for name in ("adapters.safetensors", "adapter_config.json", METRICS)
                if (adapter_dir / name).exists()
            },
        }
        manifest_lib.write(adapter_dir, manifest)
        if config.fuse:
            with console.status(f"fusing into {config.fuse}"):
                adapters.fuse(config.model, adapter_dir, config.fuse)
            manifest["fused"] = {
                "path": str(Path(config.fuse).resolve()),
                **manifest_lib.directory_digest(Path(config.fuse)),
            }
            manifest_lib.write(adapter_dir, manifest)
            run_state.print(f"[green]fused[/green] model written to {config.fuse}")
        run_state.print(f"[bold green]done[/bold green] {adapter_dir} ({status})")
    return adapter_dir


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


def last_checkpoint_iteration(adapter_dir: Path) -> int | None:
    found = checkpoint.list_checkpoints(adapter_dir)
    return found[-1]["iteration"] if found else None


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


def resolve_model_path(model: str) -> Path:
    path = Path(model)
    if path.exists():
        return path.resolve()
    from mlx_lm.utils import hf_repo_to_path

    return hf_repo_to_path(model)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def iso(timestamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
