"""Promote a new adapter only when it is measurably better than the one in use.

The rule, applied to an evaluation of the candidate against the current best on the same held-out cases
(`python -m evaluate --adapter NEW --baseline-adapter BEST`, paired case by case):

1. Better at the job: on held-out agent tasks the candidate solves more, with a one-sided exact McNemar test
   p < ALPHA (under "no better", each task that only one side solved is a fair coin; p = P(X >= tasks only the
   candidate solved)).
2. No significant regression on call turns: exact-call accuracy on held-out call turns does not fall with a
   two-sided exact McNemar p < ALPHA.
3. No significant rise in over-calling: over-calling (`over_call_rate`, defined once in `core.turns`: on held-out
   turns whose right answer is no call, the share where the model calls a tool, structured or a malformed call
   block) does not rise with a two-sided exact McNemar p < ALPHA. E.g. 1/12 → 9/12 answer turns with a call
   (8 turns only the candidate called on, none the other way: p = 2/2^8 = 0.0078) refuses a candidate that
   solves 19/24 agent tasks instead of 3/24 and keeps every exact call.

Checks 2 and 3 read the evaluation's own paired statistics (`evaluate.stats.compare_turns`) and apply the one
regression rule of every gate (`evaluate.stats.significantly_worse`). All three must hold; a metric with no
cases cannot block, and with no agent tasks nothing is promoted.
"""

from __future__ import annotations

import math
from typing import Any

from evaluate.stats import compare_turns, significantly_worse

ALPHA = 0.05
# (rate, check) the turn level adds to the rule: the headline, and over-calling next to it
TURN_CHECKS = (
    ("exact_call_accuracy", "held-out call turns: exact-call accuracy not significantly lower"),
    ("over_call_rate", "held-out no-call turns: over-calling not significantly higher"),
)


def mcnemar_one_sided(base_only: int, adapter_only: int) -> float:
    """P(X >= adapter_only) for X ~ Binomial(base_only + adapter_only, 1/2): 1.0 when no task differs."""
    n = base_only + adapter_only
    if n == 0:
        return 1.0
    return sum(math.comb(n, i) for i in range(adapter_only, n + 1)) / 2**n


def turn_statistics(turns: dict) -> dict[str, dict]:
    """The paired turn-level rates of an evaluation; recomputed from its cases for a report written before it
    had over_call_rate."""
    paired = (turns.get("comparison") or {}).get("paired") or {}
    answer_turns = any(not c["expected_calls"] for c in (turns.get("baseline") or {}).get("cases", []))
    if "over_call_rate" not in paired and answer_turns and turns.get("candidate"):
        paired = compare_turns(turns["baseline"], turns["candidate"])["paired"]
    return paired


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
    paired = turn_statistics(report.get("turns") or {})
    for rate, check in TURN_CHECKS:
        stat = paired.get(rate)
        if stat and stat["n"]:
            checks.append(
                {
                    "check": check,
                    "rate": rate,
                    "passed": not significantly_worse(rate, stat, alpha),
                    "p_two_sided": stat["mcnemar_p"],
                    "baseline": stat["base_rate"],
                    "candidate": stat["adapter_rate"],
                    "n": stat["n"],
                    "baseline_only": stat["base_only"],
                    "candidate_only": stat["adapter_only"],
                }
            )
    promoted = all(check["passed"] for check in checks)
    failed = [explain(check, alpha) for check in checks if not check["passed"]]
    return {
        "promoted": promoted,
        "alpha": alpha,
        "checks": checks,
        "reason": "every check passed" if promoted else "not promoted: " + "; ".join(failed),
    }


def explain(check: dict[str, Any], alpha: float) -> str:
    """A failed check with its evidence, e.g. "held-out agent tasks: candidate solves more (candidate 56% vs
    baseline 50% of 48; 4 cases only the candidate, 1 only the baseline; one-sided p = 0.19, alpha 0.05)"."""
    if not check.get("n"):
        return f"{check['check']} (no cases)"
    sided = "one-sided" if "p_one_sided" in check else "two-sided"
    p = check.get("p_one_sided", check.get("p_two_sided"))
    return (
        f"{check['check']} (candidate {check['candidate']:.0%} vs baseline {check['baseline']:.0%} of {check['n']}; "
        f"{check['candidate_only']} cases only the candidate, {check['baseline_only']} only the baseline; "
        f"{sided} p = {p:.2g}, alpha {alpha})"
    )
