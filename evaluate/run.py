"""`evaluate.run`: plan the sides, score them at turn and agent level, gate, and write the report.

    from evaluate import EvalConfig, run
    report = run(EvalConfig(adapter=Path("adapters/demo")))      # base vs adapter, turn and agent level
    report["gate"]["passed"], report["turns"]["candidate"]["rates"]

Turn level (`evaluate.turnlevel`, over `core.turns`): each held-out sample's final assistant turn is generated
in-process with mlx-lm (batched, greedy) or by an OpenAI-compatible server, parsed with the model's own tool
parser and scored by `core.scoring`. Agent level (`evaluate.agentlevel`, over `agent.episodes`): the held-out
tasks of a suite run through the real agent against `mlx_lm server`. With a baseline, both levels are compared
case by case (`evaluate.stats`); a baseline already scored as an earlier report's candidate is read back
(`evaluate.reuse`). The gate is `evaluate.gate`; rendering lives in `evaluate.report`. Writes
OUT/NAME.json, OUT/NAME.html and the resolved configuration OUT/NAME.toml. Importing this does not import mlx.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from core.config import save
from evaluate.config import EvalConfig, Plan, plan_sides
from evaluate.reuse import reused_baseline
from evaluate.served import side_identity


def report_header(config: EvalConfig, plan: Plan) -> dict[str, Any]:
    """What was evaluated and how: the fields every report starts with."""
    baseline = plan.baseline
    return {
        "name": plan.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": plan.model,
        "adapter": str(config.adapter) if config.adapter else None,
        "baseline_model": (baseline.server or baseline.model) if baseline else None,
        "server": config.server,
        "data": str(config.data) if config.turns else None,
        "tasks": config.tasks if config.agent else None,
        "labels": plan.labels,
        "identity": None,
        "config": config.to_dict(),
        "turns": None,
        "agent": None,
    }


def identify(config: EvalConfig, plan: Plan) -> dict[str, dict]:
    """Each side's identity (`evaluate.served`), every server verified to serve what the report names."""
    return {side.role: side_identity(side, config.server_model, config.api_key()) for side in plan.sides}


def run(config: EvalConfig, *, console=None) -> dict:
    """Evaluate, compare and write reports/NAME.json, NAME.html and NAME.toml; returns the report dict."""
    from rich.console import Console

    from evaluate import report as reporting
    from evaluate import stats
    from evaluate.agentlevel import evaluate_agent_level
    from evaluate.gate import gate
    from evaluate.turnlevel import evaluate_turn_level

    console = console or Console(stderr=True)
    plan = plan_sides(config)
    report = report_header(config, plan)
    # before anything is scored: which weights each side is, and that each server serves what is named
    identities = report["identity"] = identify(config, plan)
    reused = None
    if config.baseline_report is not None:  # the baseline was scored before, as an earlier report's candidate
        reused = reused_baseline(config, identities["baseline"])
        identities["baseline"]["scores_from"] = reused["report"]
        identities["baseline"]["agent_server"] = reused["identity"].get("agent_server")
    if config.turns:
        report["turns"] = evaluate_turn_level(config, plan, identities, console, reused)
    if config.agent:
        report["agent"] = evaluate_agent_level(config, plan, identities, reused)
    report["regressions"] = stats.regressions(report["turns"], report["agent"])
    report["gate"] = gate(config, report["turns"], report["agent"])
    json_path, html_path = reporting.write_reports(report, config.out_dir)
    toml_path = save(config, config.out_dir / f"{plan.name}.toml", header=f"python -m evaluate: {plan.name}")
    report["paths"] = {"json": str(json_path), "html": str(html_path), "config": str(toml_path)}
    return report
