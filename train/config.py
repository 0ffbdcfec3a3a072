"""The training configuration: one dataclass, filled from defaults < train.toml < command-line flags.

Nothing here imports mlx, so `python -m train` can set up the BLAS before MLX loads.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_FILE = "train.toml"

FINE_TUNE_TYPES = ("lora", "dora", "full")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
SELECT_BY = ("last", "tool-success")

NO_MODEL_MESSAGE = """\
python -m train: no model configured. Set one on the command line:

    python -m train --model mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit

or in ./train.toml (read automatically from the current directory):

    model = "mlx-community/Qwen2.5-Coder-0.5B-Instruct-4bit"
    data = "data"
    adapter = "adapters/tool-calls"

The model is a local mlx-lm model directory or a Hugging Face repo id."""


class ConfigError(ValueError):
    """A bad configuration value; the message names the file or flag and the field."""


@dataclass
class TrainConfig:
    model: str | None = None
    data: str = "data"
    adapter: str | None = None  # adapter directory; None: adapters/<timestamp>
    # What to train
    fine_tune_type: str = "lora"  # lora | dora | full
    num_layers: int = 16  # last N transformer blocks; -1 = all (full + -1 also trains embeddings and head)
    lora_rank: int = 8
    lora_scale: float = 20.0
    lora_dropout: float = 0.0
    lora_keys: list[str] | None = None  # module names to adapt; None = every linear layer in the blocks
    lora_lm_head: bool = False  # also adapt the output head (the embedding when tied)
    lora_embeddings: bool = False  # also adapt the input embedding
    mask_prompt: bool = True  # loss on the final assistant turn only
    # How
    iters: int = 1000
    batch_size: int = 4
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"  # constant | cosine (decays to min_learning_rate)
    lr_warmup: int = 0  # linear warm-up iterations
    min_learning_rate: float = 0.0
    optimizer: str = "adam"  # adam | adamw
    weight_decay: float = 0.01  # adamw only
    grad_accumulation_steps: int = 1
    grad_checkpoint: bool = False
    head_on_supervised: bool = True  # output head on supervised positions only (same loss, less work)
    max_seq_length: int = 2048
    seed: int = 0
    # Reporting, checkpoints, selection
    steps_per_report: int = 10
    steps_per_eval: int = 200
    val_batches: int = 25  # -1 = the whole valid split
    save_every: int = 100
    resume: bool = False
    stop_after: int | None = None  # stop at this iteration (after its checkpoint); continue with --resume
    select_by: str = "last"  # last | tool-success
    patience: int = 0  # with tool-success: stop after N checkpoints without improvement; 0 = never
    select_samples: int = 0  # valid samples scored per checkpoint; 0 = all
    timing_steps: int = 2  # preflight warm-up steps timed; 0 = skip the timing
    fuse: str | None = None  # also write a fused model directory here
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # not a setting: provenance notes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        return data


FIELD_NAMES = [f.name for f in fields(TrainConfig) if f.name != "extra"]


def default_adapter_dir(now: dt.datetime | None = None) -> str:
    return "adapters/" + (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")


def read_toml(path: Path) -> dict[str, Any]:
    """The settings in a train.toml (flat keys; `-` and `_` both accepted); unknown keys are errors."""
    try:
        with open(path, "rb") as file:
            data = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: invalid TOML: {error}") from None
    if "train" in data and isinstance(data["train"], dict):  # a [train] table is accepted too
        data = {**{k: v for k, v in data.items() if k != "train"}, **data["train"]}
    settings = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(f"{path}: unknown setting {key!r} (known: {', '.join(FIELD_NAMES)})")
        settings[name] = value
    return settings


def resolve(
    flags: dict[str, Any], config_path: str | Path | None = None, cwd: Path | None = None
) -> TrainConfig:
    """Defaults, then the config file (`config_path`, else ./train.toml when present), then flags that were given.

    `flags` maps field names to values, None meaning "not given on the command line"."""
    cwd = Path.cwd() if cwd is None else cwd
    settings: dict[str, Any] = {}
    source = None
    if config_path is not None:
        source = Path(config_path)
    elif (cwd / CONFIG_FILE).is_file():
        source = cwd / CONFIG_FILE
    if source is not None:
        settings.update(read_toml(source))
    for name, value in flags.items():
        if name not in FIELD_NAMES:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            settings[name] = value
    config = TrainConfig()
    for name, value in settings.items():
        setattr(
            config, name, _coerce(name, value, source if name not in flags or flags[name] is None else None)
        )
    config.extra["config_file"] = str(source) if source else None
    config.extra["from_flags"] = sorted(k for k, v in flags.items() if v is not None)
    if config.adapter is None:
        config.adapter = default_adapter_dir()
        config.extra["adapter_defaulted"] = True
    validate(config)
    return config


def _coerce(name: str, value: Any, source: Path | None) -> Any:
    where = f"{source}: " if source else "--" + name.replace("_", "-") + ": "
    default = getattr(TrainConfig(), name)
    kind = {f.name: f.type for f in fields(TrainConfig)}[name]
    if value is None:
        return None
    if "list" in str(kind):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}{name} must be a list of strings, got {value!r}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{name} must be true or false, got {value!r}")
        return value
    if "int" in str(kind) and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        raise ConfigError(f"{where}{name} must be an integer, got {value!r}")
    if "float" in str(kind):
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}{name} must be a number, got {value!r}")
    if not isinstance(value, str):
        raise ConfigError(f"{where}{name} must be a string, got {value!r}")
    return value


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for values that cannot work; align report steps with checkpoints."""

    def fail(name: str, message: str):
        raise ConfigError(f"{name}: {message}")

    if config.fine_tune_type not in FINE_TUNE_TYPES:
        fail("fine_tune_type", f"{config.fine_tune_type!r} is not one of {', '.join(FINE_TUNE_TYPES)}")
    if config.optimizer not in OPTIMIZERS:
        fail("optimizer", f"{config.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if config.lr_schedule not in LR_SCHEDULES:
        fail("lr_schedule", f"{config.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}")
    if config.select_by not in SELECT_BY:
        fail("select_by", f"{config.select_by!r} is not one of {', '.join(SELECT_BY)}")
    for name in ("iters", "batch_size", "save_every", "steps_per_report", "steps_per_eval"):
        if getattr(config, name) < 1:
            fail(name, f"must be at least 1, got {getattr(config, name)}")
    if config.grad_accumulation_steps < 1:
        fail("grad_accumulation_steps", "must be at least 1")
    if config.num_layers == 0 or config.num_layers < -1:
        fail("num_layers", f"must be -1 (all) or a positive number, got {config.num_layers}")
    if config.lora_rank < 1:
        fail("lora_rank", "must be at least 1")
    if not 0.0 <= config.lora_dropout < 1.0:
        fail("lora_dropout", "must be in [0, 1)")
    if config.learning_rate <= 0:
        fail("learning_rate", "must be positive")
    if config.seed < 0:
        fail("seed", "must not be negative")
    if config.max_seq_length < 2:
        fail("max_seq_length", "must be at least 2")
    if config.patience < 0 or config.select_samples < 0 or config.timing_steps < 0 or config.lr_warmup < 0:
        fail("patience/select_samples/timing_steps/lr_warmup", "must not be negative")
    if config.lr_warmup >= config.iters and config.lr_warmup:
        fail("lr_warmup", f"({config.lr_warmup}) must be smaller than iters ({config.iters})")
    if config.fine_tune_type == "full" and (
        config.lora_lm_head or config.lora_embeddings or config.lora_keys
    ):
        fail(
            "lora_lm_head/lora_embeddings/lora_keys",
            "apply to lora and dora; full fine-tuning with num_layers = -1 already trains the head and embeddings",
        )
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


def to_toml(config: TrainConfig) -> str:
    """The resolved config as a train.toml that `--config` reads back (None values are left out)."""
    lines = ["# Resolved training config, written by python -m train; reuse with --config."]
    for name, value in config.to_dict().items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        elif isinstance(value, list):
            text = "[" + ", ".join(json.dumps(v) for v in value) + "]"
        else:
            text = json.dumps(value)
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"
