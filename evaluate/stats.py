"""Paired statistics for base vs adapter on the same cases (pure Python: math.comb and random).

    paired_comparison(base_success, adapter_success, seed=0)
    → {"n", "base_rate", "adapter_rate", "delta", "ci_low", "ci_high", "mcnemar_p", "base_only", "adapter_only", ...}

McNemar's exact test: under "no difference" each discordant pair (one side succeeds, the other fails) is a fair
coin, so the two-sided p-value is the binomial tail of the smaller discordant count, doubled, capped at 1.
The confidence interval of the success-rate delta is a seeded percentile bootstrap over cases (pairs resampled
together, so the pairing is kept).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Sequence

from core.turns import LOWER_IS_BETTER, made_call


def mcnemar_exact(base_only: int, adapter_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (1.0 when there are none)."""
    n = base_only + adapter_only
    if n == 0:
        return 1.0
    k = min(base_only, adapter_only)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_delta_ci(
    base: Sequence[bool],
    adapter: Sequence[bool],
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(adapter) - mean(base) over paired cases."""
    if len(base) != len(adapter):
        raise ValueError(f"paired samples differ in length: {len(base)} vs {len(adapter)}")
    n = len(base)
    if n == 0:
        return (math.nan, math.nan)
    differences = [int(a) - int(b) for b, a in zip(base, adapter, strict=True)]
    rng = random.Random(seed)
    deltas = sorted(sum(differences[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    alpha = (1 - level) / 2
    low = deltas[max(0, math.floor(alpha * resamples))]
    high = deltas[min(resamples - 1, math.ceil((1 - alpha) * resamples) - 1)]
    return (low, high)


def paired_comparison(
    base: Sequence[bool], adapter: Sequence[bool], *, seed: int = 0, resamples: int = 2000
) -> dict:
    """Success rates, their delta with a bootstrap 95% CI, and McNemar's exact p on the same cases."""
    if len(base) != len(adapter):
        raise ValueError(f"paired samples differ in length: {len(base)} vs {len(adapter)}")
    n = len(base)
    base_only = sum(1 for b, a in zip(base, adapter, strict=True) if b and not a)
    adapter_only = sum(1 for b, a in zip(base, adapter, strict=True) if a and not b)
    both = sum(1 for b, a in zip(base, adapter, strict=True) if a and b)
    base_rate = sum(map(bool, base)) / n if n else None
    adapter_rate = sum(map(bool, adapter)) / n if n else None
    low, high = bootstrap_delta_ci(base, adapter, seed=seed, resamples=resamples) if n else (None, None)
    return {
        "n": n,
        "base_rate": base_rate,
        "adapter_rate": adapter_rate,
        "delta": adapter_rate - base_rate if n else None,
        "ci_low": low,
        "ci_high": high,
        "ci_level": 0.95,
        "bootstrap_resamples": resamples,
        "bootstrap_seed": seed,
        "mcnemar_p": mcnemar_exact(base_only, adapter_only),
        "both": both,
        "base_only": base_only,
        "adapter_only": adapter_only,
        "neither": n - both - base_only - adapter_only,
    }


# ---------------------------------------------------------------------------------------------- comparisons

# Which cases each turn-level rate counts, and the per-case boolean it averages (see core.turns).
RATE_CASES = {
    "parsed_call_rate": ("call", "parsed"),
    "name_accuracy": ("call", "names_match"),
    "schema_valid_rate": ("call", "schema_valid"),
    "exact_call_accuracy": ("call", "ok"),
    "over_call_rate": ("abstain", "called"),
    "abstention_accuracy": ("abstain", "ok"),
    "turn_success_rate": ("all", "ok"),
}
# Codes whose growth is flagged even when the headline rates hold.
WATCHED_CODES = ("leaked_markup", "unparseable", "unexpected_call", "empty_answer", "schema_invalid")


def _case_value(case: dict, field: str) -> bool:
    if field == "ok":
        return case["code"] == "ok"
    if field == "called" and field not in case:  # a report older than the field
        return made_call(case.get("tool_calls"), case.get("unparsed"))
    return bool(case[field])


def same_case_key(case: dict) -> str:
    """What makes two scored turns the same case: position, prompt and reference (not the file's path, which a
    report read back from a moved directory names differently). A result that records no prompt: its place."""
    if "messages" not in case:
        return case["where"]
    return json.dumps([case.get("index"), case["messages"], case.get("reference")], sort_keys=True)


def compare_turns(base: dict, adapter: dict, *, seed: int = 0) -> dict:
    """Paired comparison of two turn-level results (`TurnResults.to_dict()`) on the same cases."""
    base_cases, adapter_cases = base["cases"], adapter["cases"]
    if list(map(same_case_key, base_cases)) != list(map(same_case_key, adapter_cases)):
        raise ValueError("base and adapter results are not over the same cases")
    paired = {}
    for rate, (subset, field) in RATE_CASES.items():
        pairs = [
            (_case_value(b, field), _case_value(a, field))
            for b, a in zip(base_cases, adapter_cases, strict=True)
            if subset == "all" or (subset == "call") == bool(b["expected_calls"])
        ]
        if pairs:
            paired[rate] = paired_comparison([b for b, _ in pairs], [a for _, a in pairs], seed=seed)
    codes = {
        code: {"base": base["codes"].get(code, 0), "adapter": n, "delta": n - base["codes"].get(code, 0)}
        for code, n in adapter["codes"].items()
    }
    per_tool = {}
    for tool in sorted(set(base["per_tool"]) | set(adapter["per_tool"])):
        b = base["per_tool"].get(tool, {"n": 0, "ok": 0})
        a = adapter["per_tool"].get(tool, {"n": 0, "ok": 0})
        base_rate = b["ok"] / b["n"] if b["n"] else None
        adapter_rate = a["ok"] / a["n"] if a["n"] else None
        per_tool[tool] = {
            "n": a["n"],
            "base_ok": b["ok"],
            "adapter_ok": a["ok"],
            "base_rate": base_rate,
            "adapter_rate": adapter_rate,
            "delta": adapter_rate - base_rate if base_rate is not None and adapter_rate is not None else None,
        }
    changed = [
        {"where": b["where"], "base": b["code"], "adapter": a["code"]}
        for b, a in zip(base_cases, adapter_cases, strict=True)
        if b["code"] != a["code"]
    ]
    return {"paired": paired, "codes": codes, "per_tool": per_tool, "changed_cases": changed}


def compare_agent(base: list[dict], adapter: list[dict], *, seed: int = 0) -> dict:
    """Paired success statistics over the tasks both sides ran (matched by task_id)."""
    by_task = {e["task_id"]: e for e in base}
    pairs = [
        (bool(by_task[e["task_id"]]["success"]), bool(e["success"]))
        for e in adapter
        if e["task_id"] in by_task
    ]
    return {"success": paired_comparison([b for b, _ in pairs], [a for _, a in pairs], seed=seed)}


def got_worse(rate: str, stat: dict | None) -> bool:
    """A paired rate moved the wrong way: fell, or rose for a rate where lower is better (over_call_rate)."""
    if not stat or stat["delta"] is None:
        return False
    return stat["delta"] > 0 if rate in LOWER_IS_BETTER else stat["delta"] < 0


def significantly_worse(rate: str, stat: dict | None, alpha: float = 0.05) -> bool:
    """The regression rule of every gate: the rate got worse with a two-sided exact McNemar p < alpha."""
    return got_worse(rate, stat) and stat["mcnemar_p"] < alpha


def rate_regressions(paired: dict[str, dict], *, alpha: float = 0.05, where: str = "") -> list[dict]:
    """A flag for every paired rate that got worse: fell, or rose for a rate where lower is better."""
    flags = []
    for rate, stat in paired.items():
        if got_worse(rate, stat):
            flags.append(
                {
                    "kind": "rate",
                    "metric": f"{where}{rate}",
                    "base": stat["base_rate"],
                    "adapter": stat["adapter_rate"],
                    "p": stat["mcnemar_p"],
                    "significant": significantly_worse(rate, stat, alpha),
                    "message": f"{where}{rate} {'rose' if rate in LOWER_IS_BETTER else 'fell'} from {stat['base_rate']:.1%} "
                    f"to {stat['adapter_rate']:.1%} over {stat['n']} cases (McNemar p={stat['mcnemar_p']:.3g})",
                }
            )
    return flags


def regressions(turns: dict | None, agent: dict | None, *, alpha: float = 0.05) -> list[dict]:
    """Where the adapter is worse than the base: every headline rate that fell, watched error codes that grew,
    tools whose success fell, agent success that fell or invalid calls that grew. `significant` marks a
    McNemar p below `alpha` (with few cases most flags are not significant: read them as warnings)."""
    flags = []
    if turns and turns.get("comparison"):
        comparison = turns["comparison"]
        flags += rate_regressions(comparison["paired"], alpha=alpha)
        for code in WATCHED_CODES:
            row = comparison["codes"].get(code)
            if row and row["delta"] > 0:
                flags.append(
                    {
                        "kind": "code",
                        "metric": code,
                        "base": row["base"],
                        "adapter": row["adapter"],
                        "significant": False,
                        "message": f"{code} grew from {row['base']} to {row['adapter']} cases",
                    }
                )
        for tool, row in comparison["per_tool"].items():
            if row["delta"] is not None and row["delta"] < 0:
                flags.append(
                    {
                        "kind": "tool",
                        "metric": tool,
                        "base": row["base_rate"],
                        "adapter": row["adapter_rate"],
                        "significant": False,
                        "message": f"{tool}: success fell from {row['base_ok']}/{row['n']} to {row['adapter_ok']}/{row['n']}",
                    }
                )
    if agent and agent.get("comparison"):
        stat = agent["comparison"]["success"]
        if stat["n"] and stat["delta"] < 0:
            flags.append(
                {
                    "kind": "agent",
                    "metric": "agent_success_rate",
                    "base": stat["base_rate"],
                    "adapter": stat["adapter_rate"],
                    "p": stat["mcnemar_p"],
                    "significant": stat["mcnemar_p"] < alpha,
                    "message": f"agent task success fell from {stat['base_rate']:.1%} to {stat['adapter_rate']:.1%} "
                    f"over {stat['n']} tasks (McNemar p={stat['mcnemar_p']:.3g})",
                }
            )
        b, a = agent["baseline"]["summary"], agent["candidate"]["summary"]
        if (a.get("mean_invalid_calls") or 0) > (b.get("mean_invalid_calls") or 0):
            flags.append(
                {
                    "kind": "agent",
                    "metric": "mean_invalid_calls",
                    "base": b.get("mean_invalid_calls"),
                    "adapter": a.get("mean_invalid_calls"),
                    "significant": False,
                    "message": f"invalid tool calls per episode grew from {b.get('mean_invalid_calls'):.2f} "
                    f"to {a.get('mean_invalid_calls'):.2f}",
                }
            )
    return flags
