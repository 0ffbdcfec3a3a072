"""The pass/fail gate of `--fail-under` and `--fail-under-agent` (exit status 1 when it fails)."""

from __future__ import annotations

from evaluate.config import EvalConfig


def gate(
    config: EvalConfig, turns: dict | None, agent: dict | None, general: dict | None = None
) -> dict | None:
    """`--fail-under X`: the candidate's turn-level exact-call accuracy must be ≥ X; `--fail-under-agent Y`:
    its agent task success rate ≥ Y. A metric that was not measured fails its gate. With a baseline, a gate
    also refuses a significant rise in over-calling on the user's answer turns and, with `--general`, on the
    public no-call cases (`evaluate.stats.significantly_worse`: the rule of every gate, the loop's promotion
    included)."""
    from evaluate.stats import significantly_worse

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
    for where, level in (("", turns), ("general ", general)):
        over = (((level or {}).get("comparison") or {}).get("paired") or {}).get("over_call_rate")
        if not over or not over["n"]:
            continue
        passed = not significantly_worse("over_call_rate", over)
        row = {
            "metric": f"{where}over_call_rate",
            "value": over["adapter_rate"],
            "baseline": over["base_rate"],
        }
        rows.append({**row, "p": over["mcnemar_p"], "passed": passed})
        summary += (
            f"; {where}over_call_rate {over['base_rate']:.3f} → {over['adapter_rate']:.3f} on {over['n']} "
            f"no-call cases (McNemar p={over['mcnemar_p']:.3g}: {'no significant rise' if passed else 'a significant rise'})"
        )
    return {"checks": rows, "passed": all(r["passed"] for r in rows), "summary": summary}
