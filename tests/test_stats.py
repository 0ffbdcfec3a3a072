"""Paired statistics: McNemar's exact test, the seeded bootstrap CI, comparisons and regression flags."""

from __future__ import annotations

import math
import random

import pytest

from agent.episodes import summarize as agent_summary
from evaluate.stats import (
    bootstrap_delta_ci,
    compare_agent,
    compare_turns,
    mcnemar_exact,
    paired_comparison,
    regressions,
)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 2 * 0.5**5
    assert mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # symmetric
    assert mcnemar_exact(1, 9) == pytest.approx(22 / 1024)  # R: binom.test(1, 10)$p.value = 0.02148
    assert mcnemar_exact(3, 3) == 1.0  # capped
    assert mcnemar_exact(10, 30) == pytest.approx(0.002221, rel=1e-3)  # R: binom.test(10, 40)


def test_mcnemar_matches_brute_force_binomial():
    for b in range(0, 12):
        for c in range(0, 12):
            n = b + c
            if n == 0:
                continue
            probs = [math.comb(n, k) / 2**n for k in range(n + 1)]
            observed = probs[b]
            brute = sum(p for p in probs if p <= observed + 1e-12)  # two-sided by probability ordering
            assert mcnemar_exact(b, c) == pytest.approx(min(1.0, brute))


def test_bootstrap_is_seeded_and_brackets_the_delta():
    rng = random.Random(1)
    base = [rng.random() < 0.4 for _ in range(200)]
    adapter = [b or rng.random() < 0.3 for b in base]
    delta = (sum(adapter) - sum(base)) / len(base)
    low, high = bootstrap_delta_ci(base, adapter, seed=7)
    assert (low, high) == bootstrap_delta_ci(base, adapter, seed=7)
    assert (low, high) != bootstrap_delta_ci(base, adapter, seed=8)
    assert low <= delta <= high
    assert low > 0  # the adapter only adds successes here
    assert high - low < 0.2


def test_bootstrap_identical_sides_is_zero():
    same = [True, False, True, True]
    assert bootstrap_delta_ci(same, same) == (0.0, 0.0)


def test_bootstrap_rejects_unpaired():
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_delta_ci([True], [True, False])


def test_paired_comparison_counts():
    base = [True, True, False, False, False]
    adapter = [True, False, True, True, False]
    result = paired_comparison(base, adapter)
    assert (result["both"], result["base_only"], result["adapter_only"], result["neither"]) == (1, 1, 2, 1)
    assert result["base_rate"] == pytest.approx(0.4) and result["adapter_rate"] == pytest.approx(0.6)
    assert result["delta"] == pytest.approx(0.2)
    assert result["mcnemar_p"] == pytest.approx(mcnemar_exact(1, 2))
    assert result["ci_low"] <= result["delta"] <= result["ci_high"]


def _case(where: str, code: str, expected_calls: list, **checks) -> dict:
    return {
        "where": where,
        "code": code,
        "expected_calls": expected_calls,
        "parsed": checks.get("parsed", code == "ok"),
        "names_match": checks.get("names_match", code == "ok"),
        "schema_valid": checks.get("schema_valid", code == "ok"),
    }


def _results(cases: list[dict]) -> dict:
    from collections import Counter

    codes = Counter(c["code"] for c in cases)
    per_tool: dict = {}
    for c in cases:
        tool = c["expected_calls"][0]["name"] if c["expected_calls"] else "(no call)"
        row = per_tool.setdefault(tool, {"n": 0, "ok": 0})
        row["n"] += 1
        row["ok"] += c["code"] == "ok"
    return {"cases": cases, "codes": dict(codes), "per_tool": per_tool}


READ = [{"name": "read_file", "arguments": {"path": "a"}}]


def test_compare_turns_and_regression_flags():
    base = _results(
        [
            _case("t:1", "no_call", READ),
            _case("t:2", "no_call", READ),
            _case("t:3", "ok", []),
            _case("t:4", "ok", []),
        ]
    )
    adapter = _results(
        [
            _case("t:1", "ok", READ),
            _case("t:2", "ok", READ),
            _case("t:3", "unexpected_call", []),
            _case("t:4", "ok", []),
        ]
    )
    comparison = compare_turns(base, adapter)
    exact = comparison["paired"]["exact_call_accuracy"]
    assert (exact["n"], exact["base_rate"], exact["adapter_rate"]) == (2, 0.0, 1.0)
    abstention = comparison["paired"]["abstention_accuracy"]
    assert (abstention["n"], abstention["delta"]) == (2, -0.5)
    assert comparison["codes"]["unexpected_call"] == {"base": 0, "adapter": 1, "delta": 1}
    assert comparison["per_tool"]["read_file"]["delta"] == 1.0
    assert len(comparison["changed_cases"]) == 3

    flags = regressions({"comparison": comparison}, None)
    metrics = {(f["kind"], f["metric"]) for f in flags}
    assert ("rate", "abstention_accuracy") in metrics  # abstention worse than baseline
    assert ("code", "unexpected_call") in metrics
    assert ("tool", "(no call)") in metrics
    assert ("rate", "exact_call_accuracy") not in metrics  # improved
    assert all(not f["significant"] for f in flags)  # 1 discordant pair is never significant


def test_compare_turns_rejects_different_cases():
    a = _results([_case("t:1", "ok", [])])
    b = _results([_case("t:2", "ok", [])])
    with pytest.raises(ValueError, match="same cases"):
        compare_turns(a, b)
    # cases that record their prompt pair by position, prompt and reference, wherever the file was read from
    prompt = [{"role": "user", "content": "Read a."}]

    def scored(where: str, messages: list) -> dict:
        return _results([{**_case(where, "ok", READ), "index": 0, "messages": messages, "reference": READ}])

    compare_turns(scored("/old/test.jsonl:1", prompt), scored("/moved/test.jsonl:1", prompt))
    with pytest.raises(ValueError, match="same cases"):
        compare_turns(scored("t:1", prompt), scored("t:1", [{"role": "user", "content": "Read b."}]))


def test_agent_summary_comparison_and_flags():
    def episode(task, success, invalid=0):
        return {
            "task_id": task,
            "success": success,
            "tool_calls": 2,
            "invalid_calls": invalid,
            "retries": invalid,
            "steps": 3,
            "wall_s": 1.5,
            "error": None,
        }

    base = [episode("a", True), episode("b", True), episode("c", False)]
    adapter = [episode("a", False, invalid=2), episode("b", True), episode("c", False)]
    summary = agent_summary(adapter)
    assert summary["success_rate"] == pytest.approx(1 / 3) and summary["mean_invalid_calls"] == pytest.approx(
        2 / 3
    )
    comparison = compare_agent(base, adapter)
    assert comparison["success"]["base_only"] == 1 and comparison["success"]["n"] == 3
    agent = {
        "comparison": comparison,
        "baseline": {"summary": agent_summary(base)},
        "candidate": {"summary": summary},
    }
    flags = {f["metric"] for f in regressions(None, agent)}
    assert flags == {"agent_success_rate", "mean_invalid_calls"}


def test_over_calling_that_rises_is_a_regression():
    """over_call_rate is paired over the no-call cases, and lower is better: a rise is flagged, a fall is not."""
    base = _results([_case("t:1", "ok", []), _case("t:2", "ok", []), _case("t:3", "unexpected_call", [])])
    adapter = _results([_case("t:1", "unexpected_call", []), _case("t:2", "ok", []), _case("t:3", "ok", [])])
    for side in (base, adapter):
        for case in side["cases"]:
            case["called"] = case["code"] == "unexpected_call"
    adapter["cases"][1]["called"] = True  # a third call, so the rate rises
    adapter["cases"][1]["code"] = "unexpected_call"
    over = compare_turns(base, adapter)["paired"]["over_call_rate"]
    assert (over["n"], over["base_rate"], over["adapter_rate"]) == (3, 1 / 3, 2 / 3)
    flags = regressions({"comparison": compare_turns(base, adapter)}, None)
    assert any(f["metric"] == "over_call_rate" and "rose" in f["message"] for f in flags)
    assert not any(
        f["metric"] == "over_call_rate"
        for f in regressions({"comparison": compare_turns(adapter, base)}, None)
    )
    del base["cases"][2]["called"]  # a report written before the field: no call recorded
    assert compare_turns(base, adapter)["paired"]["over_call_rate"]["base_rate"] == 0.0
