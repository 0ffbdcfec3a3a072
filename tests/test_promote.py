"""The promotion rule (flywheel.promote): better at the job, significantly; no significant regression."""

from __future__ import annotations

import copy
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


# ---------------------------------------------------------------------------------------------- over-calling
# Real numbers through the real path: two policies served over HTTP (core.scripted), their answers parsed as
# mlx_lm server's are (core.turns) and scored (core.scoring), paired (evaluate.stats), then decided.

READ = {"type": "function", "function": {"name": "read_file", "parameters": {
    "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}}  # fmt: skip


def held_out_turns(calls: int, answers: int) -> list[dict]:
    """`calls` turns whose right answer is read_file(notes-i.txt), `answers` whose right answer is words."""
    import json

    samples = []
    for i in range(calls):
        call = {
            "type": "function",
            "function": {"name": "read_file", "arguments": json.dumps({"path": f"notes-{i}.txt"})},
        }
        samples.append({"messages": [{"role": "user", "content": f"Show me notes-{i}.txt"},
                                     {"role": "assistant", "content": None, "tool_calls": [call]}]})  # fmt: skip
    for i in range(answers):
        samples.append({"messages": [{"role": "user", "content": f"Question {i}: what does HTTP stand for?"},
                                     {"role": "assistant", "content": "HyperText Transfer Protocol."}]})  # fmt: skip
    for i, sample in enumerate(samples):
        sample.update(tools=[READ], where=f"held-out.jsonl:{i + 1}")
    return samples


def policy(calls_on: set[int], malformed_on: set[int]):
    """A policy that makes every right call, answers the questions, but calls read_file on questions
    `calls_on` and writes a call block the server drops (finish_reason tool_calls, no tool_calls) on
    `malformed_on`: what mlx_lm server answers for a malformed one."""
    import re

    from core.scripted import Reply, tool_call

    async def script(request: dict, http) -> None:
        text = request["messages"][-1]["content"]
        asked = re.match(r"Question (\d+)", text)
        message: dict = {"role": "assistant", "content": "HyperText Transfer Protocol."}
        finish = "stop"
        if not asked:
            path = re.search(r"notes-\d+\.txt", text).group()
            message = {"role": "assistant", "content": None,
                       "tool_calls": [tool_call("c1", "read_file", f'{{"path": "{path}"}}')]}  # fmt: skip
            finish = "tool_calls"
        elif int(asked[1]) in calls_on:
            message = {"role": "assistant", "content": None,
                       "tool_calls": [tool_call("c1", "read_file", '{"path": "http.txt"}')]}  # fmt: skip
            finish = "tool_calls"
        elif int(asked[1]) in malformed_on:
            message, finish = {"role": "assistant", "content": None}, "tool_calls"
        await http.reply(request, Reply(message, finish, "policy"))

    return script


def evaluation(base_policy, candidate_policy, agent_base: list[bool], agent_candidate: list[bool]) -> dict:
    """An evaluate report of candidate vs base: the held-out turns answered by each served policy, and the
    agent level as paired task outcomes."""
    from core.scripted import ScriptedServer
    from core.turns import evaluate_turns_server
    from evaluate.stats import compare_turns

    samples = held_out_turns(18, 12)
    sides = {}
    for role, script in (("baseline", base_policy), ("candidate", candidate_policy)):
        with ScriptedServer(script, models=["policy"]) as server:
            sides[role] = evaluate_turns_server(server.base_url, samples, model_name="policy").to_dict()
    turns = {**sides, "comparison": compare_turns(sides["baseline"], sides["candidate"])}
    return {**agent_report(agent_base, agent_candidate), "turns": turns}


def test_a_candidate_is_refused_for_over_calling_alone():
    """README's round numbers: the candidate solves 19/24 held-out tasks instead of 3/24 and keeps all 18
    exact calls, but calls a tool on 9 of 12 questions (5 structured calls, 3 dropped call blocks, and the one
    the base also calls on) where the base calls on 1: 8 turns only it called on, p = 2/2^8."""
    agent_base, agent_candidate = [True] * 3 + [False] * 21, [True] * 19 + [False] * 5
    report = evaluation(
        policy({0}, set()), policy({0, 1, 2, 3, 4, 5}, {6, 7, 8}), agent_base, agent_candidate
    )
    rates = {role: report["turns"][role]["rates"] for role in ("baseline", "candidate")}
    assert rates["baseline"]["exact_call_accuracy"] == rates["candidate"]["exact_call_accuracy"] == 1.0
    assert rates["baseline"]["over_call_rate"] == pytest.approx(1 / 12)
    assert rates["candidate"]["over_call_rate"] == pytest.approx(9 / 12)
    assert report["turns"]["candidate"]["codes"]["unexpected_call"] == 9  # dropped blocks are calls too

    decision = decide(report)
    checks = {check["check"]: check for check in decision["checks"]}
    assert [c for c, check in checks.items() if not check["passed"]] == [
        "held-out no-call turns: over-calling not significantly higher"
    ]
    assert decision["reason"].startswith("not promoted: held-out no-call turns: over-calling not significantly higher")
    assert "only the candidate" in decision["reason"] and "two-sided p = 0.0078" in decision["reason"]
    agent, exact, over = decision["checks"]
    assert agent["passed"] and agent["p_one_sided"] == pytest.approx(2**-16)
    assert exact["passed"] and exact["n"] == 18 and exact["p_two_sided"] == 1.0
    # the gate reads the evaluation's one over-calling rate, not a definition of its own
    assert (over["baseline"], over["candidate"]) == (
        rates["baseline"]["over_call_rate"],
        rates["candidate"]["over_call_rate"],
    )
    assert (over["n"], over["baseline_only"], over["candidate_only"]) == (12, 0, 8)
    assert over["p_two_sided"] == pytest.approx(2 / 2**8)

    # the same candidate calling on 2 more questions than the base only: p = 0.5, promoted
    mild = evaluation(policy({0}, set()), policy({0, 1}, {2}), agent_base, agent_candidate)
    assert decide(mild)["promoted"]
    # a report written before over_call_rate existed is judged the same, from its cases
    old = copy.deepcopy(report)
    for role in ("baseline", "candidate"):
        for case in old["turns"][role]["cases"]:
            del case["called"]
    del old["turns"]["comparison"]["paired"]["over_call_rate"]
    assert decide(old)["checks"][2] == over


def test_the_evaluate_gate_refuses_the_same_over_calling():
    """`python -m evaluate --fail-under X` with a baseline: the same rule as the loop's promotion."""
    from evaluate.config import EvalConfig
    from evaluate.gate import gate

    every = [True] * 24
    noisy = evaluation(policy({0}, set()), policy({0, 1, 2, 3, 4, 5}, {6, 7, 8}), every, every)
    result = gate(EvalConfig(fail_under=0.9), noisy["turns"], None)
    assert not result["passed"]
    assert [r["metric"] for r in result["checks"] if not r["passed"]] == ["over_call_rate"]
    assert (
        "over_call_rate 0.083 → 0.750 on 12 no-call cases (McNemar p=0.00781: a significant rise)"
        in result["summary"]
    )
    mild = evaluation(policy({0}, set()), policy({0, 1}, {2}), every, every)
    assert gate(EvalConfig(fail_under=0.9), mild["turns"], None)["passed"]
