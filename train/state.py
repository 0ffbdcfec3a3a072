"""The state of one training run, shared by its phases (`train.loop`) and by mlx-lm's training callback.

The callback writes metrics.jsonl, checkpoints (weights + optimizer state), scores checkpoints by tool-call
success and stops early; every iteration it reports is absolute (a resumed run continues the count).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.tuner.callbacks import TrainingCallback
from rich.console import Console

from train import checkpoint
from train.config import TrainConfig

METRICS = "metrics.jsonl"


class StopTraining(Exception):
    """Raised from the callback to end mlx-lm's training loop early (stop_after, patience)."""


def rng_seed(seed: int, iteration: int) -> int:
    """MLX's global key is reseeded at every checkpoint, so dropout after a resume matches."""
    return (seed * 1_000_003 + iteration) % 2**63


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


class Run:
    """What the phases of a run produce, in the order they produce it."""

    def __init__(self, config: TrainConfig, adapter_dir: Path, console: Console):
        self.config = config
        self.adapter_dir = adapter_dir
        self.console = console
        self.started = time.time()
        self.world = mx.distributed.init()
        self.rank = self.world.rank()
        self.resume_from: dict | None = None
        # preflight
        self.splits: dict[str, list] = {}
        self.warnings: list[str] = []
        self.lengths: dict[str, Any] = {}
        self.datasets: dict[str, list] = {}
        self.model = self.tokenizer = self.model_path = None
        self.adapter_config: dict = {}
        self.trainable: dict = {}
        self.loss_fn = None
        self.loss_note = ""
        self.timing: dict | None = None
        # train
        self.optimizer = None
        self.start = 0
        self.tokens_before = 0
        self.trained_tokens = 0
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self.select_samples: list[dict] = []
        self.selection: dict[str, Any] = {
            "by": config.select_by,
            "curve": [],
            "best_iteration": None,
            "best_score": None,
        }
        self.since_best = 0
        self.status = "finished"
        self.segment_start = 0.0
        self.wall_time = 0.0
        # select
        self.replicas: bool | None = None
        self.final_iteration: int | None = None

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
