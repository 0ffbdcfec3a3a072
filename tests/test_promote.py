"""The promotion rule (flywheel.promote): better at the job, significantly; no significant regression."""

from __future__ import annotations

import math

import pytest

from evaluate.stats import paired_comparison
from flywheel.promote import decide, mcnemar_one_sided


def agent_report(base: list[bool], candidate: list[bool], turns: dict | None = None) -> dict:
    return {"agent": {"comparison": {"success": paired_comparison(base, candidate)}}, "turns": turns}


def turn_case(expected: bool, called: bool, ok: bool) -> dict:
    return {
        "expected_calls": [{"name": "read_file"}] if expected else [],
        "tool_calls": [{"name": "read_file"}] if called else [],
        "unparsed": [],
        "code": "ok" if ok else "wrong_value",
    }


def turns_report(base_cases: list[dict], candidate_cases: list[dict]) -> dict:
    from evaluate.stats import compare_turns

    def results(cases):
        return {
            "cases": [
                {**c, "where": f"t{i}", "names_match": True, "parsed": True, "schema_valid": True}
                for i, c in enumerate(cases)
            ],
            "codes": {},
            "per_tool": {},
        }

    baseline, candidate = results(base_cases), results(candidate_cases)
    return {"baseline": baseline, "candidate": candidate, "comparison": compare_turns(baseline, candidate)}


def test_one_sided_mcnemar_is_the_binomial_upper_tail():
    assert mcnemar_one_sided(0, 0) == 1.0
    assert mcnemar_one_sided(0, 5) == pytest.approx(1 / 32)
    assert mcnemar_one_sided(1, 7) == pytest.approx(sum(math.comb(8, i) for i in (7, 8)) / 256)
    assert mcnemar_one_sided(5, 0) == 1.0  # worse is never "better"


def test_a_significantly_better_candidate_is_promoted():
    base = [False] * 10 + [True] * 5
    candidate = [True] * 10 + [True] * 5  # 10 tasks only the candidate solved, none the other way
    decision = decide(agent_report(base, candidate))
    assert decision["promoted"] and decision["checks"][0]["p_one_sided"] == pytest.approx(2**-10)


@pytest.mark.parametrize(
    ("base", "candidate"),
    [
        ([False] * 4 + [True] * 6, [True] * 4 + [True] * 6),  # better, but 4 discordant tasks: p = 1/16
        ([True] * 10, [True] * 10),  # the same
        ([True] * 10, [False] * 10),  # worse
        ([], []),  # nothing measured
    ],
)
def test_no_significant_gain_keeps_the_current_adapter(base, candidate):
    assert not decide(agent_report(base, candidate))["promoted"]


def test_a_significant_regression_on_call_turns_blocks_promotion():
    base = [False] * 10 + [True] * 5
    candidate = [True] * 15
    calls_base = [turn_case(True, True, True) for _ in range(8)]
    calls_candidate = [turn_case(True, True, False) for _ in range(8)]  # every call now wrong (p = 1/128)
    decision = decide(agent_report(base, candidate, turns_report(calls_base, calls_candidate)))
    assert not decision["promoted"] and "exact-call accuracy" in decision["reason"]


def test_more_over_calling_blocks_promotion():
    base = [False] * 10 + [True] * 5
    candidate = [True] * 15
    quiet = [turn_case(False, False, True) for _ in range(8)]
    noisy = [turn_case(False, True, False) for _ in range(8)]  # calls a tool where none fits, 8 of 8
    decision = decide(agent_report(base, candidate, turns_report(quiet, noisy)))
    assert not decision["promoted"] and "over-calling" in decision["reason"]
    assert decide(agent_report(base, candidate, turns_report(quiet, quiet)))["promoted"]
