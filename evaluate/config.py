"""What to evaluate and how: `EvalConfig` (a `core.config.Settings`: TOML file + flags), and the sides it names.

    config = load(EvalConfig, "eval.toml", overrides={"limit": 8})   # unknown or mistyped keys are refused
    plan = plan_sides(config)           # the candidate (and baseline): model, adapter or server of each

Every key of an eval TOML file is a field below, spelt as the field (the flags use dashes: `--max-tokens`,
and `--out`, `--traces` set `out_dir`, `traces_dir`). The API key is never a setting: `api_key_env` names
the environment variable that holds it, so a saved configuration carries no secret.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import Field

from core.config import Settings

MANIFEST_MODEL_KEYS = ("base_model_path", "base_model")
Rate = Annotated[float, Field(ge=0, le=1)]
Positive = Annotated[int, Field(ge=1)]


class EvalError(ValueError):
    """Bad input (missing file, unreadable manifest, ...): the message says which and what to do."""


class EvalConfig(Settings):
    adapter: Path | None = None
    model: str | None = None  # default: the base model in the adapter's manifest.json
    baseline: bool | None = None  # None: on when an adapter or a baseline model is given
    baseline_model: str | None = None  # default: `model` (without the adapter)
    baseline_adapter: Path | None = (
        None  # compare against this adapter (e.g. the one in use) instead of the base
    )
    # the baseline's scores from this earlier report, where the same weights were the candidate (evaluate.reuse)
    baseline_report: Path | None = None
    data: Path = Path("data/test.jsonl")
    limit: Positive | None = None  # the first N samples; N held-out tasks taken one template at a time
    turns: bool = True
    agent: bool = True
    tasks: str = "default"
    via_proxy: bool = False
    traces_dir: Path | None = None  # where via_proxy records (default: OUT/NAME-traces)
    server: str | None = None  # an OpenAI-compatible base URL (…/v1) instead of in-process models
    baseline_server: str | None = None
    server_model: str = "default_model"
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the servers' API key
    concurrency: Positive = 1  # parallel requests on the server path
    out_dir: Path = Path("reports")
    name: str | None = None
    batch_size: Positive = 16
    max_tokens: Positive = 256
    temperature: Annotated[float, Field(ge=0)] = 0.0
    normalize_strings: bool = False
    seed: int = 0
    agent_max_steps: Positive = 8
    agent_timeout: Annotated[float, Field(gt=0)] = 120.0
    agent_concurrency: Positive = 1  # episodes in flight against one server (1: a re-run repeats exactly)
    fail_under: Rate | None = None  # gate on the candidate's exact-call accuracy on call turns
    fail_under_agent: Rate | None = None  # gate on the candidate's agent task success rate
    general: str | None = None  # BFCL categories of the general check (evaluate.general); "" = the default

    def api_key(self) -> str | None:
        """The servers' API key, read from the environment when a server is evaluated (never stored)."""
        return os.environ.get(self.api_key_env) if self.server else None


@dataclass(frozen=True)
class Side:
    """One evaluated side: a local model (+ adapter) or an OpenAI-compatible server."""

    role: str  # "baseline" or "candidate"
    label: str  # what tables call it: "base", "adapter" or "model"
    model: str | None  # with a server: the model the report names and the server must serve (None: unnamed)
    adapter: Path | None
    server: str | None


@dataclass(frozen=True)
class Plan:
    name: str
    model: str | None
    sides: list[Side]  # the baseline first when there is one

    @property
    def baseline(self) -> Side | None:
        return next((side for side in self.sides if side.role == "baseline"), None)

    @property
    def labels(self) -> dict[str, str]:
        baseline = self.baseline
        return {"candidate": self.sides[-1].label, "baseline": baseline.label if baseline else "base"}


def read_manifest_model(adapter: Path) -> str:
    """The base model an adapter was trained from, the first that exists on disk of: manifest.json
    `base_model_path`, `base_model` (a string, or train's {"path", "name"}), mlx-lm's adapter_config.json
    `model`; else the first of them (a hub name, resolved by mlx-lm from its local cache)."""
    adapter = Path(adapter)
    if not adapter.is_dir():
        raise EvalError(f"{adapter}: adapter directory not found")
    candidates: list[str] = []
    manifest = adapter / "manifest.json"
    if manifest.is_file():
        try:
            data = json.loads(manifest.read_text())
        except json.JSONDecodeError as error:
            raise EvalError(f"{manifest}: not valid JSON ({error.msg}); pass --model") from None
        for key in MANIFEST_MODEL_KEYS if isinstance(data, dict) else ():
            value = data.get(key)
            if isinstance(value, dict):  # train's manifest: "base_model": {"name": ..., "path": ...}
                candidates += [
                    str(value[k]) for k in ("path", "name") if isinstance(value.get(k), str) and value[k]
                ]
            elif isinstance(value, str) and value:
                candidates.append(value)
    config = adapter / "adapter_config.json"
    if config.is_file():
        try:
            value = json.loads(config.read_text()).get("model")
        except (json.JSONDecodeError, AttributeError):
            value = None
        if value:
            candidates.append(str(value))
    for candidate in candidates:
        if Path(candidate).exists():
            return candidate
    if candidates:  # a hub name: mlx-lm resolves it from the local cache
        return candidates[0]
    raise EvalError(
        f"{adapter}: no base model recorded (manifest.json keys {' / '.join(MANIFEST_MODEL_KEYS)}, "
        "adapter_config.json 'model'); pass --model PATH"
    )


def default_name(config: EvalConfig) -> str:
    if config.name:
        return config.name
    source = config.adapter or config.model or config.server or "eval"
    stem = Path(str(source).rstrip("/")).name if config.adapter or config.model else "server"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem) or "eval"


def candidate_model(config: EvalConfig) -> str | None:
    """The candidate's model: `model`, else the adapter's base model; checked to exist (or be a hub name)."""
    if config.adapter is not None and config.server:
        raise EvalError("--adapter and --server exclude each other: a server already has its model loaded")
    model = config.model
    if config.server:
        return model
    if model is None and config.adapter is None:
        raise EvalError("nothing to evaluate: give --adapter, --model or --server")
    if model is None:
        model = read_manifest_model(config.adapter)
    if not Path(model).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
        raise EvalError(f"{model}: model directory not found")
    if config.adapter is not None and not (Path(config.adapter) / "adapters.safetensors").is_file():
        raise EvalError(f"{config.adapter}: no adapters.safetensors (not an adapter directory?)")
    return model


def plan_sides(config: EvalConfig) -> Plan:
    """The sides to evaluate, or EvalError saying which setting is missing or contradictory."""
    if not config.turns and not config.agent:
        raise EvalError("--no-turns and --no-agent leave nothing to evaluate")
    model = candidate_model(config)
    use_baseline = config.baseline
    if use_baseline is None:
        use_baseline = (
            config.adapter is not None
            or config.baseline_model is not None
            or config.baseline_adapter is not None
            or config.baseline_report is not None
            or bool(config.baseline_server)
        )
    if config.baseline_adapter is not None and (config.server or config.baseline_server):
        raise EvalError("--baseline-adapter compares two adapters of a local model: not with --server")
    if (
        config.baseline_adapter is not None
        and not (Path(config.baseline_adapter) / "adapters.safetensors").is_file()
    ):
        raise EvalError(f"{config.baseline_adapter}: no adapters.safetensors (not an adapter directory?)")
    if config.baseline_report is not None and not use_baseline:
        raise EvalError("--baseline-report gives a baseline's scores: it needs a baseline to compare against")
    if use_baseline and config.server and not config.baseline_server:
        raise EvalError("--baseline with --server needs --baseline-server URL (the base model's endpoint)")
    if use_baseline and not config.server and config.adapter is None and config.baseline_model is None:
        raise EvalError("--baseline without --adapter needs --baseline-model PATH to compare against")
    label = "adapter" if config.adapter else "model"
    sides = [Side("candidate", label, model, config.adapter, config.server)]
    if use_baseline:
        # a baseline server is checked against --baseline-model only: the candidate's model says nothing of it
        base_model = config.baseline_model if config.baseline_server else (config.baseline_model or model)
        base_label = "baseline adapter" if config.baseline_adapter else "base"
        sides.insert(
            0, Side("baseline", base_label, base_model, config.baseline_adapter, config.baseline_server)
        )
    return Plan(default_name(config), model, sides)
