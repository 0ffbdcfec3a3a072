"""The pass/fail gate of `--fail-under` and `--fail-under-agent` (exit status 1 when it fails)."""

from __future__ import annotations

from evaluate.config import EvalConfig


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
