"""Evaluate a model or adapter by what the agent will actually get: structured tool calls and finished tasks.

    from evaluate import EvalConfig, run
    report = run(EvalConfig(adapter=Path("adapters/demo")))      # base vs adapter, turn and agent level
    report["gate"]["passed"], report["turns"]["candidate"]["rates"]

Turn level (`core.turns`): each held-out sample's final assistant turn is generated in-process with
mlx-lm (batched, greedy) or by an OpenAI-compatible server, parsed with the model's own tool parser and scored
by `core.scoring`. Agent level (`agent.episodes`): the held-out tasks of a suite run through the real
agent against `mlx_lm server`. With a baseline, both levels are compared case by case (`evaluate.stats`).
Rendering lives in `evaluate.report`. Importing this package does not import mlx.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MANIFEST_MODEL_KEYS = ("base_model_path", "base_model")


class EvalError(ValueError):
    """Bad input (missing file, unreadable manifest, ...): the message says which and what to do."""


@dataclass
class EvalConfig:
    adapter: Path | None = None
    model: str | None = None  # default: the base model in the adapter's manifest.json
    baseline: bool | None = None  # None: on when an adapter or a baseline model is given
    baseline_model: str | None = None  # default: `model` (without the adapter)
    data: Path = Path("data/test.jsonl")
    limit: int | None = None  # only the first N samples / held-out tasks
    turns: bool = True
    agent: bool = True
    tasks: str = "default"
    via_proxy: bool = False
    traces_dir: Path | None = None  # where --via-proxy records (default: OUT/NAME-traces)
    server: str | None = None  # an OpenAI-compatible base URL (…/v1) instead of in-process models
    baseline_server: str | None = None
    server_model: str = "default_model"
    api_key: str | None = None
    concurrency: int = 1  # parallel requests on the server path
    out_dir: Path = Path("reports")
    name: str | None = None
    batch_size: int = 16
    max_tokens: int = 256
    temperature: float = 0.0
    normalize_strings: bool = False
    seed: int = 0
    agent_max_steps: int = 8
    agent_timeout: float = 120.0
    fail_under: float | None = None  # gate on the candidate's turn-level exact-call accuracy
    fail_under_agent: float | None = None  # gate on the candidate's agent task success rate


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


# ---------------------------------------------------------------------------------------------- turn level


def turn_results(
    config: EvalConfig,
    samples: list[dict],
    *,
    model: str | None,
    adapter: Path | None,
    server: str | None,
    progress: Callable[[int, int], None] | None = None,
):
    """TurnResults for one side: an in-process model (+ adapter), or a server."""
    from core.scoring import normalize_text
    from core.turns import evaluate_turns, evaluate_turns_server

    normalize = normalize_text if config.normalize_strings else None
    if server:
        return evaluate_turns_server(
            server,
            samples,
            model_name=config.server_model,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            concurrency=config.concurrency,
            api_key=config.api_key,
            normalize=normalize,
            progress=progress,
        )
    import mlx.core as mx
    from mlx_lm import load

    loaded, tokenizer = load(str(model), adapter_path=str(adapter) if adapter else None)
    try:
        return evaluate_turns(
            loaded,
            tokenizer,
            samples,
            batch_size=config.batch_size,
            max_tokens=config.max_tokens,
            temperature=config.temperature,
            seed=config.seed,
            normalize=normalize,
            progress=progress,
        )
    finally:
        del loaded
        gc.collect()
        mx.clear_cache()


# ---------------------------------------------------------------------------------------------- agent level


def agent_episodes(
    config: EvalConfig,
    tasks: list,
    *,
    model: str | None,
    adapter: Path | None,
    server: str | None,
    label: str,
) -> tuple[list[dict], dict | None]:
    """Run the held-out tasks through the real agent against `server`, or a fresh `mlx_lm server` (through the
    recording proxy with `via_proxy`). Returns the episodes and, through the proxy, {"trace_file", "summary"}."""
    from agent.episodes import run_episodes

    options = {"max_steps": config.agent_max_steps, "timeout": config.agent_timeout}
    description = f"agent · {label}"
    if server:
        episodes = run_episodes(tasks, server, config.server_model, description=description, **options)
        return [e.to_dict() for e in episodes], None
    from core.process import MlxServer

    with MlxServer(model, adapter_path=adapter, max_tokens=config.max_tokens) as mlx_server:
        if not config.via_proxy:
            episodes = run_episodes(
                tasks, mlx_server.base_url, "default_model", description=description, **options
            )
            return [e.to_dict() for e in episodes], None
        from proxy import RecordingProxy

        traces = Path(config.traces_dir or config.out_dir / f"{default_name(config)}-traces") / label
        recording = RecordingProxy(mlx_server.url, traces)
        with recording:
            episodes = run_episodes(
                tasks, recording.base_url, "default_model", description=description, **options
            )
    return [e.to_dict() for e in episodes], {
        "trace_file": str(recording.trace_file),
        "summary": recording.summary,
    }


# ---------------------------------------------------------------------------------------------- gate


def gate(config: EvalConfig, turns: dict | None, agent: dict | None) -> dict | None:
    """`--fail-under X`: the candidate's turn-level exact-call accuracy must be ≥ X; `--fail-under-agent Y`:
    its agent task success rate ≥ Y. A metric that was not measured fails its gate."""
    checks = []
    if config.fail_under is not None:
        value = turns["candidate"]["rates"].get("exact_call_accuracy") if turns else None
        checks.append(("exact_call_accuracy", value, config.fail_under))
    if config.fail_under_agent is not None:
        value = agent["candidate"]["summary"].get("success_rate") if agent else None
        checks.append(("agent_success_rate", value, config.fail_under_agent))
    if not checks:
        return None
    rows = [
        {"metric": m, "value": v, "threshold": t, "passed": v is not None and v >= t} for m, v, t in checks
    ]
    summary = "; ".join(
        f"{r['metric']} {'not measured' if r['value'] is None else f'{r["value"]:.3f}'} "
        f"{'≥' if r['passed'] else '<'} {r['threshold']}"
        for r in rows
    )
    return {"checks": rows, "passed": all(r["passed"] for r in rows), "summary": summary}


# ---------------------------------------------------------------------------------------------- run


def run(config: EvalConfig, *, console=None) -> dict:
    """Evaluate, compare and write reports/NAME.json and NAME.html; returns the report dict."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from evaluate import report as reporting
    from evaluate import stats

    console = console or Console(stderr=True)
    if config.adapter is not None and config.server:
        raise EvalError("--adapter and --server exclude each other: a server already has its model loaded")
    model = config.model
    if not config.server:
        if model is None and config.adapter is None:
            raise EvalError("nothing to evaluate: give --adapter, --model or --server")
        if model is None:
            model = read_manifest_model(config.adapter)
        if not Path(model).exists() and not re.fullmatch(r"[\w.-]+/[\w.-]+", model):
            raise EvalError(f"{model}: model directory not found")
        if config.adapter is not None and not (Path(config.adapter) / "adapters.safetensors").is_file():
            raise EvalError(f"{config.adapter}: no adapters.safetensors (not an adapter directory?)")
    use_baseline = config.baseline
    if use_baseline is None:
        use_baseline = (
            config.adapter is not None or config.baseline_model is not None or bool(config.baseline_server)
        )
    baseline_model = config.baseline_model or model
    baseline_server = config.baseline_server
    if use_baseline and config.server and not baseline_server:
        raise EvalError("--baseline with --server needs --baseline-server URL (the base model's endpoint)")
    if use_baseline and not config.server and config.adapter is None and config.baseline_model is None:
        raise EvalError("--baseline without --adapter needs --baseline-model PATH to compare against")

    name = default_name(config)
    labels = {"candidate": "adapter" if config.adapter else "model", "baseline": "base"}
    report: dict[str, Any] = {
        "name": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": model,
        "adapter": str(config.adapter) if config.adapter else None,
        "baseline_model": (baseline_server or baseline_model) if use_baseline else None,
        "server": config.server,
        "data": str(config.data) if config.turns else None,
        "tasks": config.tasks if config.agent else None,
        "labels": labels,
        "config": {
            k: v for k, v in json.loads(json.dumps(asdict(config), default=str)).items() if k != "api_key"
        },
        "turns": None,
        "agent": None,
    }
    sides = [("candidate", model, config.adapter, config.server)]
    if use_baseline:
        sides.insert(0, ("baseline", baseline_model, None, baseline_server))

    if config.turns:
        from core.turns import load_samples

        try:
            samples = load_samples(config.data)
        except (FileNotFoundError, ValueError) as error:
            raise EvalError(str(error)) from None
        samples = samples[: config.limit] if config.limit else samples
        turns: dict[str, Any] = {"baseline": None, "comparison": None}
        for side, side_model, side_adapter, side_server in sides:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, transient=False) as bar:
                bar_id = bar.add_task(f"turns · {labels[side]}", total=len(samples))
                results = turn_results(
                    config,
                    samples,
                    model=side_model,
                    adapter=side_adapter,
                    server=side_server,
                    progress=lambda done, total, b=bar, i=bar_id: b.update(i, completed=done),
                )
            turns[side] = results.to_dict()
        if use_baseline:
            turns["comparison"] = stats.compare_turns(turns["baseline"], turns["candidate"], seed=config.seed)
        report["turns"] = turns

    if config.agent:
        from agent.tasks import load_suite

        try:
            suite = load_suite(config.tasks)
        except (FileNotFoundError, ValueError) as error:
            raise EvalError(f"--tasks {config.tasks}: {error}") from None
        tasks = suite.held_out[: config.limit] if config.limit else suite.held_out
        agent: dict[str, Any] = {
            "suite": config.tasks,
            "n_tasks": len(tasks),
            "baseline": None,
            "comparison": None,
        }
        for side, side_model, side_adapter, side_server in sides:
            episodes, recorded = agent_episodes(
                config, tasks, model=side_model, adapter=side_adapter, server=side_server, label=labels[side]
            )
            agent[side] = {"episodes": episodes, "summary": stats.agent_summary(episodes), "proxy": recorded}
        if use_baseline:
            agent["comparison"] = stats.compare_agent(
                agent["baseline"]["episodes"], agent["candidate"]["episodes"], seed=config.seed
            )
        report["agent"] = agent

    report["regressions"] = stats.regressions(report["turns"], report["agent"])
    report["gate"] = gate(config, report["turns"], report["agent"])
    json_path, html_path = reporting.write_reports(report, config.out_dir)
    report["paths"] = {"json": str(json_path), "html": str(html_path)}
    return report
