"""Promote a new adapter only when it is measurably better than the one in use.

The rule, applied to an evaluation of the candidate against the current best on the same held-out cases
(`python -m evaluate --adapter NEW --baseline-adapter BEST`, paired case by case):

1. Better at the job: on held-out agent tasks the candidate solves more, with a one-sided exact McNemar test
   p < ALPHA (under "no better", each task that only one side solved is a fair coin; p = P(X >= tasks only the
   candidate solved)).
2. No significant regression on call turns: exact-call accuracy on held-out call turns does not fall with a
   two-sided McNemar p < ALPHA.
3. No significant rise in over-calling: on held-out turns whose right answer is no call, the share where the
   candidate calls a tool (structured or malformed) does not rise with a two-sided McNemar p < ALPHA.

All three must hold; a metric with no cases cannot block, and with no agent tasks nothing is promoted.
"""

from __future__ import annotations

import math
from typing import Any

from evaluate.stats import mcnemar_exact, paired_comparison

ALPHA = 0.05


def mcnemar_one_sided(base_only: int, adapter_only: int) -> float:
    """P(X >= adapter_only) for X ~ Binomial(base_only + adapter_only, 1/2): 1.0 when no task differs."""
    n = base_only + adapter_only
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(adapter_only, n + 1)) / 2**n


def over_called(case: dict[str, Any]) -> bool:
    """A turn whose right answer is no call, answered with a call (structured, or a call block the parser
    rejected: the agent would have been sent a call either way)."""
    return not case["expected_calls"] and bool(case["tool_calls"] or case["unparsed"])


def over_calling(baseline: dict, candidate: dict) -> dict[str, Any] | None:
    """Paired over-calling rates on the no-call turns both sides answered (None when there are none)."""
    pairs = [
        (over_called(b), over_called(c))
        for b, c in zip(baseline["cases"], candidate["cases"], strict=True)
        if not b["expected_calls"]
    ]
    if not pairs:
        return None
    return paired_comparison([b for b, _ in pairs], [c for _, c in pairs])


def decide(report: dict[str, Any], alpha: float = ALPHA) -> dict[str, Any]:
    """The promotion decision for an evaluate report of candidate vs current best, with its statistics."""
    checks: list[dict[str, Any]] = []
    agent = ((report.get("agent") or {}).get("comparison") or {}).get("success")
    if agent and agent["n"]:
        p = mcnemar_one_sided(agent["base_only"], agent["adapter_only"])
        checks.append(
            {
                "check": "held-out agent tasks: candidate solves more",
                "passed": p < alpha,
                "p_one_sided": p,
                "baseline": agent["base_rate"],
                "candidate": agent["adapter_rate"],
                "n": agent["n"],
                "baseline_only": agent["base_only"],
                "candidate_only": agent["adapter_only"],
            }
        )
    else:
        checks.append({"check": "held-out agent tasks: candidate solves more", "passed": False, "n": 0})
    turns = report.get("turns") or {}
    calls = ((turns.get("comparison") or {}).get("paired") or {}).get("exact_call_accuracy")
    if calls and calls["n"]:
        worse = calls["delta"] < 0 and calls["mcnemar_p"] < alpha
        checks.append(
            {
                "check": "held-out call turns: exact-call accuracy not significantly lower",
                "passed": not worse,
                "p_two_sided": calls["mcnemar_p"],
                "baseline": calls["base_rate"],
                "candidate": calls["adapter_rate"],
                "n": calls["n"],
            }
        )
    overcall = over_calling(turns["baseline"], turns["candidate"]) if turns.get("baseline") else None
    if overcall:
        rises = (
            overcall["delta"] > 0 and mcnemar_exact(overcall["base_only"], overcall["adapter_only"]) < alpha
        )
        checks.append(
            {
                "check": "held-out no-call turns: over-calling not significantly higher",
                "passed": not rises,
                "p_two_sided": overcall["mcnemar_p"],
                "baseline": overcall["base_rate"],
                "candidate": overcall["adapter_rate"],
                "n": overcall["n"],
            }
        )
    promoted = all(check["passed"] for check in checks)
    failed = [check["check"] for check in checks if not check["passed"]]
    return {
        "promoted": promoted,
        "alpha": alpha,
        "checks": checks,
        "reason": "every check passed" if promoted else "not promoted: " + "; ".join(failed),
    }
