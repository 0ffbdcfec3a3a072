"""The training configuration: a `core.config` Settings class, filled from defaults < train.toml < flags.

Types, ranges and unknown keys are checked by the class (one line naming the file or flag and the key);
`check` adds what spans several settings. Nothing here imports mlx, so `python -m train` parses its
configuration before MLX loads.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator

from core import config as config_lib
from core.config import ConfigError, Settings

__all__ = ["ConfigError", "TrainConfig", "check", "read_toml", "resolve", "save", "to_toml"]

CONFIG_FILE = "train.toml"
HEADER = "Resolved training config, written by python -m train; reuse with --config."

NO_MODEL_MESSAGE = """\
python -m train: no model configured. Set one on the command line:

    python -m train --model mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit

or in ./train.toml (read automatically from the current directory):

    model = "mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit"
    data = "data"
    adapter = "adapters/tool-calls"

The model is a local mlx-lm model directory or a Hugging Face repo id."""


class TrainConfig(Settings):
    model: str | None = None
    data: str = "data"
    adapter: str | None = None  # adapter directory; None: adapters/<timestamp>
    # What to train
    fine_tune_type: Literal["lora", "dora", "full"] = "lora"
    num_layers: int = 16  # last N transformer blocks; -1 = all (full + -1 also trains embeddings and head)
    lora_rank: int = Field(8, ge=1)
    lora_scale: float = 20.0
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    lora_keys: list[str] | None = None  # module names to adapt; None = every linear layer in the blocks
    lora_lm_head: bool = False  # also adapt the output head (the embedding when tied)
    lora_embeddings: bool = False  # also adapt the input embedding
    # start from this adapter's weights (trained with the same layers, rank and keys) instead of fresh ones
    init_adapter: str | None = None
    mask_prompt: bool = True  # loss on the assistant turns only (the final one; a session sample's supervised ones)
    # session samples (`"supervise"`: "all_assistant_turns" or the turns' indices): one sequence each ("whole";
    # per-turn where the chat template does not allow it), or one sample per supervised turn as `mlx_lm lora`
    # would need
    sessions: Literal["whole", "per-turn"] = "whole"
    # How
    iters: int = Field(1000, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine decays to min_learning_rate
    lr_warmup: int = Field(0, ge=0)  # linear warm-up iterations
    min_learning_rate: float = 0.0
    optimizer: Literal["adam", "adamw"] = "adam"
    weight_decay: float = 0.01  # adamw only
    grad_accumulation_steps: int = Field(1, ge=1)
    grad_checkpoint: bool = False
    head_on_supervised: bool = True  # output head on supervised positions only (same loss, less work)
    max_seq_length: int = Field(2048, ge=2)
    seed: int = Field(0, ge=0)
    # Reporting, checkpoints, selection
    steps_per_report: int = Field(10, ge=1)
    steps_per_eval: int = Field(200, ge=1)
    val_batches: int = 25  # -1 = the whole valid split
    save_every: int = Field(100, ge=1)
    resume: bool = False
    stop_after: int | None = None  # stop at this iteration (after its checkpoint); continue with --resume
    select_by: Literal["last", "tool-success"] = "last"
    patience: int = Field(
        0, ge=0
    )  # with tool-success: stop after N checkpoints without improvement; 0 = never
    select_samples: int = Field(0, ge=0)  # valid samples scored per checkpoint; 0 = all
    timing_steps: int = Field(2, ge=0)  # preflight warm-up steps timed; 0 = skip the timing
    fuse: str | None = None  # also write a fused model directory here

    # Not a setting: where the values came from (config file, flags, adjustments), for the manifest.
    _notes: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def extra(self) -> dict[str, Any]:
        return self._notes

    @field_validator("model", "data", "adapter", "fuse", "init_adapter", mode="before")
    @classmethod
    def _path_as_text(cls, value: Any) -> Any:
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @field_validator("lora_keys", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):  # --lora-keys q_proj,v_proj (and the same in a file)
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("num_layers")
    @classmethod
    def _layers(cls, value: int) -> int:
        if value == 0 or value < -1:
            raise ValueError(f"num_layers: must be -1 (all) or a positive number, got {value}")
        return value


def default_adapter_dir(now: dt.datetime | None = None) -> str:
    return "adapters/" + (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")


def read_toml(path: Path | str) -> dict[str, Any]:
    """The settings of a train.toml: flat keys (`-` and `_` both accepted), or a `[train]` table; an unknown
    key is refused naming the file and the key."""
    data = config_lib.read_toml(path)
    if isinstance(data.get("train"), dict):
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    settings = {key.replace("-", "_"): value for key, value in data.items()}
    config_lib.validate_keys(TrainConfig, settings, str(path))
    return settings


def resolve(
    flags: Mapping[str, Any], config_path: str | Path | None = None, cwd: Path | None = None
) -> TrainConfig:
    """Defaults, then the config file (`config_path`, else ./train.toml when present), then the flags given.

    `flags` maps setting names to values, None meaning "not given on the command line"."""
    cwd = Path.cwd() if cwd is None else cwd
    source = Path(config_path) if config_path is not None else cwd / CONFIG_FILE
    from_file: dict[str, Any] = {}
    if config_path is not None or source.is_file():
        from_file = read_toml(source)
        config_lib.validate(TrainConfig, from_file, str(source))
    else:
        source = None
    given = {name: value for name, value in flags.items() if value is not None}
    config = config_lib.load(TrainConfig, overrides=given, base=from_file)
    config.extra["config_file"] = str(source) if source else None
    config.extra["from_flags"] = sorted(given)
    if config.adapter is None:
        config.adapter = default_adapter_dir()
        config.extra["adapter_defaulted"] = True
    return check(config)


def check(config: TrainConfig) -> TrainConfig:
    """ConfigError for settings that cannot work together; aligns report steps with checkpoints (in place)."""

    def fail(name: str, message: str):
        raise ConfigError(f"{name}: {message}")

    if config.lr_warmup >= config.iters and config.lr_warmup:
        fail("lr_warmup", f"({config.lr_warmup}) must be smaller than iters ({config.iters})")
    if config.fine_tune_type == "full" and (
        config.lora_lm_head or config.lora_embeddings or config.lora_keys
    ):
        fail(
            "lora_lm_head/lora_embeddings/lora_keys",
            "apply to lora and dora; full fine-tuning with num_layers = -1 already trains the head and embeddings",
        )
    if config.init_adapter and config.fine_tune_type == "full":
        fail("init_adapter", "applies to lora and dora (full fine-tuning has no adapter to start from)")
    if config.patience and config.select_by != "tool-success":
        fail("patience", "needs select_by = 'tool-success' (early stopping is judged by tool-call success)")
    if config.stop_after is not None and not 0 < config.stop_after < config.iters:
        fail("stop_after", f"must be between 1 and iters - 1 ({config.iters - 1}), got {config.stop_after}")
    # Checkpoints are written from the metrics report, and a resumed run must restart on a report (and
    # gradient-accumulation) boundary: make the report interval divide every checkpoint iteration.
    if config.save_every % config.grad_accumulation_steps:
        fail("save_every", f"({config.save_every}) must be a multiple of grad_accumulation_steps")
    report = math.gcd(config.steps_per_report, config.save_every)
    if config.stop_after is not None:
        if config.stop_after % config.grad_accumulation_steps:
            fail("stop_after", "must be a multiple of grad_accumulation_steps")
        report = math.gcd(report, config.stop_after)
    if report != config.steps_per_report:
        config.extra["steps_per_report_adjusted_from"] = config.steps_per_report
        config.steps_per_report = report
    return config


def to_toml(config: TrainConfig) -> str:
    """The resolved config as a train.toml that `--config` reads back (None values are left out)."""
    return config_lib.to_toml(config, HEADER)


def save(config: TrainConfig, path: Path) -> Path:
    return config_lib.save(config, path, HEADER)
