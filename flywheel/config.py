"""The loop's settings: `python -m flywheel [--config flywheel.toml] [flags]` (a `core.config` Settings class)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from core.config import Settings, describe
from flywheel.stages import weights_identity

# The demo student's training recipe: LoRA on every linear layer of the tiny base, embeddings frozen, chosen by
# measurement (bench/demo_recipe.py; figures in docs/BENCHMARKS.md). A loop file's [train] table overrides it.
STUDENT_RECIPE: dict[str, Any] = {
    "fine_tune_type": "lora",
    "lora_rank": 32,
    "lora_scale": 2.0,
    "num_layers": -1,
    "iters": 1000,
    "batch_size": 8,
    "learning_rate": 1e-3,
    "lr_schedule": "cosine",
    "max_seq_length": 1024,
}
QUICK_ITERS = 150  # --quick: the CI-sized run
QUICK_EVAL_LIMIT = 6
QUICK_ATTEMPT_TASKS = 48


def checkpoints(iters: int) -> dict[str, int]:
    """Validation and checkpoints four times in a run of `iters` iterations."""
    return {"steps_per_eval": max(iters // 4, 1), "save_every": max(iters // 4, 1)}


class LoopConfig(Settings):
    """Settings of one turn of the flywheel: `python -m flywheel [--config flywheel.toml] [flags]`.

    Top-level keys are the fields below; a `[train]` table holds any `train.TrainConfig` setting and overrides
    the student recipe (STUDENT_RECIPE), checked against TrainConfig when the file is read."""

    student: str | None = None  # model directory; None: the shipped tiny base model (models.tinybase)
    teacher: str | None = None  # OpenAI-compatible base URL (…/v1); None: the scripted demonstrator
    teacher_model: str | None = None  # model name at the teacher; None: its first /v1/models entry
    teacher_api_key_env: str = "FLYWHEEL_TEACHER_API_KEY"  # the variable holding the teacher's key
    suite: str = "demo"
    quick: bool = False
    run: str | None = None  # None: derived from the settings, so a re-run reuses finished stages
    root: Path = Path(".")
    seed: int = Field(0, ge=0)
    # each train task is run this many times (the scripted teacher is deterministic, so the suite's own
    # variety matters more than repeats)
    episodes_per_task: int = Field(1, ge=1)
    agent_max_steps: int = Field(6, ge=1)
    eval_limit: int | None = Field(None, ge=1)  # held-out tasks and test samples evaluated (None: all)
    train: dict[str, Any] = Field(default_factory=dict)
    # curate's train/valid lines: one session sample per trajectory (true), or one sample per turn (false)
    sessions: bool = True
    # rounds ≥ 2: the best student so far attempts each train task `attempts` times at `temperature` (its own
    # successes join the training data); a new adapter is promoted only when it is better (flywheel.promote)
    rounds: int = Field(1, ge=1)
    attempts: int = Field(2, ge=1)
    temperature: float = Field(0.7, ge=0)
    attempt_concurrency: int = Field(4, ge=1)
    attempt_tasks: int | None = Field(None, ge=1)  # None: as many as the suite has train tasks
    # "fresh": new tasks drawn from the suite's train pools each round (new work, as a deployed student meets);
    # "train": the suite's own train tasks, which the teacher already solved
    attempt_on: Literal["fresh", "train"] = "fresh"
    # this many more fresh attempts, shared among templates by the first attempts (flywheel.rounds.focus_weights):
    # "failures", by how often the student failed them; "frontier", by successes × failures / attempts, so
    # a template it never solved gets none while another one it sometimes solves is there to learn from;
    # "optimistic", as "frontier" with a template it failed every time counted as solved once (four misses
    # do not tell a template it solves one time in three from one it never solves)
    attempt_focus: int = Field(0, ge=0)
    focus_on: Literal["failures", "frontier", "optimistic"] = "failures"
    # set: a template missed this many times in a round without one success gets no more focused attempts,
    # which then run in waves of `attempt_concurrency`, shared again after each wave (flywheel.rounds)
    focus_give_up_after: int | None = Field(None, ge=1)
    # tokens the served student may write per request while it attempts (a failing attempt that writes prose
    # runs to this limit, so it sets how long the attempts take)
    attempt_max_tokens: int = Field(512, ge=1)
    # rounds ≥ 2: the adapter in use continues for this many iterations on the training lines it has not
    # seen (its round's new successes) instead of a new adapter trained from the base for the recipe's iters
    top_up_iters: int | None = Field(None, ge=1)
    # or for this many passes over its lines (new and replayed; batches rounded up): a fixed count of
    # iterations covers a rare new line less often the more lines are replayed beside it
    top_up_passes: float | None = Field(None, gt=0)
    # beside those new lines, this many lines per new line that the adapter in use was trained on (drawn with
    # the seed from the round's train split): rehearsal, so that learning the new work does not unlearn the old
    top_up_replay: float = Field(0.0, ge=0)
    # new lines only from sessions of templates the student solved at most this share of its attempts this
    # round: a success where it nearly always succeeds teaches little, and many pull it toward their endings
    top_up_max_solve_rate: float = Field(1.0, ge=0, le=1)
    eval_concurrency: int = Field(1, ge=1)  # held-out episodes in flight against one server (1: repeatable)
    # tokens a side may write per held-out turn and agent request (evaluate's --max-tokens): a model that
    # writes prose instead of a call runs to this limit, so it sets how long the base's evaluation takes
    eval_max_tokens: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _one_top_up_length(self) -> LoopConfig:
        if self.top_up_iters and self.top_up_passes:
            raise ValueError(
                "top_up_iters and top_up_passes both set: the top-up's length is one or the other"
            )
        return self

    @property
    def tops_up(self) -> bool:
        """Rounds ≥ 2 continue the adapter in use (`top_up_iters` or `top_up_passes`) rather than train anew."""
        return bool(self.top_up_iters or self.top_up_passes)

    @field_validator("train")
    @classmethod
    def _train_settings_exist(cls, value: dict[str, Any]) -> dict[str, Any]:
        from train.config import TrainConfig

        owned = {"model", "data", "adapter", "seed", "init_adapter"} & set(value)
        if owned:
            raise ValueError(f"cannot set {sorted(owned)}: the loop sets them")
        try:
            TrainConfig.model_validate({**STUDENT_RECIPE, **value})
        except ValidationError as error:
            raise ValueError(describe(error, TrainConfig)) from None
        return value

    def teacher_api_key(self) -> str:
        return os.environ.get(self.teacher_api_key_env, "x")

    def effective(self) -> LoopConfig:
        """Quick mode: the CI-sized run (fewer iterations, fewer evaluation cases)."""
        if not self.quick:
            return self
        iters = min(self.train.get("iters", STUDENT_RECIPE["iters"]), QUICK_ITERS)
        return self.replace(
            train={**self.train, "iters": iters},
            eval_limit=self.eval_limit or QUICK_EVAL_LIMIT,
            attempt_tasks=self.attempt_tasks or QUICK_ATTEMPT_TASKS,
        )

    def train_settings(
        self,
        student: Path,
        data_dir: Path,
        adapter_dir: Path,
        init_adapter: Path | None = None,
        lines: int | None = None,
    ) -> dict[str, Any]:
        """The student's TrainConfig settings: the recipe, what follows from its iterations and learning rate,
        then the [train] table; from `init_adapter`, a top-up over `lines` lines: `top_up_iters` iterations, or
        `top_up_passes` passes over the lines (warm-up shortened to fit, a batch no larger than the lines)."""
        recipe = {**STUDENT_RECIPE, **self.train}
        iters, learning_rate = recipe["iters"], recipe["learning_rate"]
        derived = {
            "lr_warmup": min(50, iters // 10),
            "min_learning_rate": learning_rate / 100,
            **checkpoints(iters),
        }
        paths = {"model": str(student), "data": str(data_dir), "adapter": str(adapter_dir), "seed": self.seed}
        settings = {**STUDENT_RECIPE, **derived, **self.train, **paths}
        if init_adapter is None:
            return settings
        batch = min(settings["batch_size"], lines or settings["batch_size"])
        if self.top_up_passes:
            if not lines:
                raise ValueError("top_up_passes: how many lines the top-up trains on is needed")
            iters = math.ceil(self.top_up_passes * lines / batch)
        else:
            iters = self.top_up_iters or iters
        top_up = {
            "iters": iters,
            "batch_size": batch,
            "lr_warmup": min(settings["lr_warmup"], iters // 10),
            **checkpoints(iters),
        }
        return {**settings, **top_up, "init_adapter": str(init_adapter)}

    def run_name(self, student: Path) -> str:
        """`--run`, else derived from the settings: demo-…, quick-…, rounds-…, quick-rounds-…"""
        if self.run:
            return self.run
        kind = {(False, False): "demo", (True, False): "quick", (False, True): "rounds"}.get(
            (self.quick, self.rounds > 1), "quick-rounds"
        )
        return f"{kind}-{self.fingerprint(student)}"

    def fingerprint(self, student: Path | None = None) -> str:
        # `rounds` is left out so that a run can be extended by more rounds, reusing the ones it has
        ignored = ("run", "root", "teacher_api_key_env", "rounds")
        # a setting at its default is left out too, so that one a later version adds keeps every run's name
        defaults = type(self)().to_dict()
        settings = {k: v for k, v in self.to_dict().items() if k not in ignored and v != defaults.get(k)}
        if student is not None:
            settings["student_weights"] = weights_identity(student)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
