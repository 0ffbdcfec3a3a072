"""One turn of the flywheel: collect traces through the proxy, curate, train, evaluate.

    from flywheel.loop import LoopConfig, run_loop
    result = run_loop(LoopConfig(quick=True))

Each stage writes its artifacts under the run's name (traces/RUN/, data/RUN/, adapters/RUN/,
reports/RUN.{json,html}) and a completion marker; a re-run with the same settings reuses every completed
stage, and a stage left incomplete by an interrupted run is moved aside (never overwritten).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from rich.console import Console

from core import config as config_lib
from core.config import Settings, describe

STAGE_MARKER = ".flywheel-stage.json"


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

    @field_validator("train")
    @classmethod
    def _train_settings_exist(cls, value: dict[str, Any]) -> dict[str, Any]:
        from train.config import TrainConfig

        owned = {"model", "data", "adapter", "seed"} & set(value)
        if owned:
            raise ValueError(f"[train] cannot set {sorted(owned)}: the loop sets them")
        try:
            TrainConfig.model_validate({**STUDENT_RECIPE, **value})
        except ValidationError as error:
            raise ValueError(f"[train] {describe(error, TrainConfig)}") from None
        return value

    def teacher_api_key(self) -> str:
        return os.environ.get(self.teacher_api_key_env, "x")

    def effective(self) -> LoopConfig:
        """Quick mode: the CI-sized run (fewer iterations, fewer evaluation cases)."""
        if not self.quick:
            return self
        iters = min(self.train.get("iters", STUDENT_RECIPE["iters"]), QUICK_ITERS)
        return self.replace(train={**self.train, "iters": iters}, eval_limit=self.eval_limit or QUICK_EVAL_LIMIT)

    def train_settings(self, student: Path, data_dir: Path, adapter_dir: Path) -> dict[str, Any]:
        """The student's TrainConfig settings: the recipe, what follows from its iterations and learning rate,
        then the [train] table."""
        recipe = {**STUDENT_RECIPE, **self.train}
        iters, learning_rate = recipe["iters"], recipe["learning_rate"]
        derived = {
            "lr_warmup": min(50, iters // 10),
            "min_learning_rate": learning_rate / 100,
            "steps_per_eval": max(iters // 4, 1),
            "save_every": max(iters // 4, 1),
        }
        paths = {"model": str(student), "data": str(data_dir), "adapter": str(adapter_dir), "seed": self.seed}
        return {**STUDENT_RECIPE, **derived, **self.train, **paths}

    def fingerprint(self, student: Path | None = None) -> str:
        settings = {k: v for k, v in self.to_dict().items() if k not in ("run", "root", "teacher_api_key_env")}
        if student is not None:
            settings["student_weights"] = weights_identity(student)
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]


@dataclass
class LoopResult:
    run: str
    traces_dir: Path
    data_dir: Path
    adapter_dir: Path
    report_json: Path
    report_html: Path
    collection: dict
    report: dict
    stage_seconds: dict[str, float]
    reused: list[str]


class LoopError(RuntimeError):
    """A stage could not produce its artifact; the message says which and why."""


def stage_done(path: Path) -> dict | None:
    marker = path / STAGE_MARKER if path.is_dir() else path.with_name(path.name + STAGE_MARKER)
    if marker.exists():
        return json.loads(marker.read_text())
    return None


def mark_done(path: Path, info: dict) -> None:
    marker = path / STAGE_MARKER if path.is_dir() else path.with_name(path.name + STAGE_MARKER)
    marker.write_text(json.dumps({**info, "completed": dt.datetime.now(dt.UTC).isoformat()}, indent=2) + "\n")


def weights_identity(model_dir: Path) -> str:
    """Cheap identity of a model's weights (sizes plus the first and last MiB of each file): a changed student
    must not reuse the stages trained on the old one."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(size - (1 << 20), 0))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def move_aside(path: Path) -> Path | None:
    """An interrupted stage's leftovers are kept, renamed, never overwritten."""
    if not path.exists():
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.incomplete-{stamp}")
    path.rename(target)
    return target


def run_loop(config: LoopConfig, console: Console | None = None) -> LoopResult:
    import curate
    import evaluate
    import train
    from agent.tasks import load_suite
    from flywheel.collect import collect
    from models.tinybase import cached_base

    console = console or Console(stderr=True)
    config = config.effective()
    root = Path(config.root)
    student = Path(config.student) if config.student else cached_base()
    name = config.run or f"{'quick' if config.quick else 'demo'}-{config.fingerprint(student)}"
    traces_dir, data_dir = root / "traces" / name, root / "data" / name
    adapter_dir, reports_dir = root / "adapters" / name, root / "reports"
    report_json = reports_dir / f"{name}.json"
    seconds: dict[str, float] = {}
    reused: list[str] = []
    suite = load_suite(config.suite)

    def stage(title: str, artifact: Path) -> bool:
        """Print the stage header; True when its artifact is already complete (reuse it)."""
        if stage_done(artifact):
            console.print(f"[bold]{title}[/] → {artifact} [green](reused: complete from an earlier run)[/]")
            reused.append(title)
            return True
        if (aside := move_aside(artifact)) is not None:
            console.print(f"  [yellow]kept an interrupted earlier attempt as {aside}[/]")
        console.print(f"[bold]{title}[/] → {artifact}")
        return False

    config_lib.save(config, reports_dir / f"{name}.flywheel.toml", header=f"python -m flywheel, run {name}")
    console.rule(f"flywheel run [bold]{name}[/]")
    console.print(f"[bold]1 student[/] → {student}")

    # 2–3: teacher behind the recording proxy, agent on the train tasks
    started = time.monotonic()
    if not stage("2-3 collect traces (teacher → proxy → agent)", traces_dir):
        traces_dir.mkdir(parents=True)
        collection = collect(config, suite, traces_dir, console)
        (traces_dir / "collection.json").write_text(json.dumps(collection, indent=2) + "\n")
        mark_done(traces_dir, {"stage": "collect", "recorded": collection["recorded"]})
    collection = json.loads((traces_dir / "collection.json").read_text())
    console.print(
        f"  {collection['episodes']} episodes ({collection['solved']} solved by the teacher), "
        f"{collection['agent_requests']} agent requests, {collection['recorded']} exchanges recorded"
    )
    seconds["collect"] = time.monotonic() - started

    # 4: curate
    started = time.monotonic()
    if not stage("4 curate", data_dir):
        report = curate.run([traces_dir], data_dir, curate.load_config(seed=config.seed, model=str(student)))
        report.print_summary(console)
        if reason := report.failure_reason():
            raise LoopError(f"curate: {reason}")
        mark_done(data_dir, {"stage": "curate", "split": report.split_counts})
    seconds["curate"] = time.monotonic() - started

    # 5: train the student
    started = time.monotonic()
    if not stage("5 train the student", adapter_dir):
        settings = config.train_settings(student, data_dir, adapter_dir)
        train.run(train.TrainConfig(**settings), console=console)
        mark_done(adapter_dir, {"stage": "train"})
    seconds["train"] = time.monotonic() - started

    # 6: evaluate base vs adapter, held-out tasks (agent) and the test split (turns)
    started = time.monotonic()
    if not stage("6 evaluate base vs adapter", report_json):
        test_split = data_dir / "test.jsonl"
        eval_config = evaluate.EvalConfig(
            adapter=adapter_dir,
            model=str(student),
            data=test_split,
            turns=test_split.exists() and test_split.stat().st_size > 0,
            tasks=config.suite,
            out_dir=reports_dir,
            name=name,
            limit=config.eval_limit,
            agent_max_steps=config.agent_max_steps,
            seed=config.seed,
        )
        report = evaluate.run(eval_config, console=console)
        mark_done(report_json, {"stage": "evaluate"})
    report = json.loads(report_json.read_text())
    seconds["evaluate"] = time.monotonic() - started

    return LoopResult(
        run=name,
        traces_dir=traces_dir,
        data_dir=data_dir,
        adapter_dir=adapter_dir,
        report_json=report_json,
        report_html=report_json.with_suffix(".html"),
        collection=collection,
        report=report,
        stage_seconds=seconds,
        reused=reused,
    )
