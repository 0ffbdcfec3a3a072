"""The adversarial suite: policies that try to pass without doing the work, served as real OpenAI-compatible
endpoints (the teacher server) and met by the real agent, the real sandbox and the real scorers, on every
bundled suite. None may solve a task that needs tools, nor make an exact call on a turn that calls for one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from agent.adversaries import ADVERSARIES
from agent.episodes import run_episodes
from agent.tasks import SUITES_DIR, available_suites, load_suite
from agent.teacher import Teacher
from core.turns import evaluate_turns_server, load_samples

ROOT = Path(__file__).resolve().parent.parent
# Makes the right first call on purpose (real evidence, then a lie): the turn level credits that call.
RIGHT_CALLS = {"right-call"}
SILENT = {"empty", "whitespace"}
# Held-out tasks per template each policy meets: the ones that ignore the task need one, those whose answers
# hold the right value among its rivals (the sharpest attacks) meet every held-out task.
TASKS_PER_TEMPLATE = {
    "empty": 1,
    "whitespace": 1,
    "garbage": 1,
    "repeat": 1,
    "right-tool": 2,
    "call-as-text": 2,
}


def per_template(tasks: list, count: int | None) -> list:
    """The first `count` tasks of each template (all with None)."""
    if count is None:
        return tasks
    seen: Counter[str] = Counter()
    kept = []
    for task in tasks:
        seen[task.template] += 1
        if seen[task.template] <= count:
            kept.append(task)
    return kept


def own_suites() -> list[str]:
    """The bundled suites, less those that extend another: their tool-needing tasks are the base suite's, drawn
    unchanged (tests/test_agent.py checks that), so attacking them again adds time and no case."""
    return [
        name
        for name in available_suites()
        if "extends" not in json.loads((SUITES_DIR / f"{name}.json").read_text())
    ]


@pytest.fixture(scope="module", params=own_suites())
def served(request):
    suite = load_suite(request.param)
    with Teacher(suite) as teacher:
        yield suite, teacher


@pytest.fixture(scope="module")
def test_split(served, tmp_path_factory) -> list[dict]:
    """The test split curate makes of the scripted teacher's real traffic on the suite (through the proxy)."""
    from proxy import RecordingProxy

    suite, teacher = served
    root = tmp_path_factory.mktemp(f"split-{suite.name}")
    # every held-out task and three train tasks of each template; a larger test share keeps it quick
    tasks = suite.held_out + [task for task in suite.train if int(task.id.rsplit("-", 1)[1]) < 3]
    with RecordingProxy(teacher.url, root / "traces") as recording:
        episodes = run_episodes(
            tasks, recording.base_url, teacher.model_name, show_progress=False, concurrency=4
        )
    assert all(e.success for e in episodes)
    curated = subprocess.run(
        [sys.executable, "-m", "curate", root / "traces", root / "data", "--split", "0.5,0.1,0.4"]
        + ["--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert curated.returncode == 0, curated.stderr[-2000:]
    return load_samples(root / "data" / "test.jsonl")


def episodes_of(teacher, policy: str, tasks) -> list:
    return run_episodes(
        tasks, teacher.base_url, f"{teacher.model_name}:{policy}", show_progress=False, concurrency=4
    )


def test_the_teacher_passes_what_the_adversaries_fail(served, test_split):
    """The control: the checks and the scorer can pass (the scripted demonstrator does the work; its held-out
    episodes all passed while the split was recorded)."""
    _, teacher = served
    results = evaluate_turns_server(teacher.base_url, test_split, model_name=teacher.model_name)
    assert results.rates["exact_call_accuracy"] == 1.0 and results.rates["abstention_accuracy"] == 1.0
    assert sum(c.checks.expects_call for c in results.cases) >= 5


@pytest.mark.parametrize("policy", sorted(ADVERSARIES))
def test_no_adversary_solves_a_task_that_needs_tools(served, policy):
    suite, teacher = served
    tasks = per_template(suite.held_out, TASKS_PER_TEMPLATE.get(policy))
    by_id = {task.id: task for task in tasks}
    episodes = episodes_of(teacher, policy, tasks)
    assert len(episodes) == len(by_id) and sum(t.needs_tools for t in tasks) >= len(tasks) // 2
    solved = [e.task_id for e in episodes if e.success and by_id[e.task_id].needs_tools]
    assert solved == []
    assert all(e.failed_checks or e.error for e in episodes if by_id[e.task_id].needs_tools)


def test_the_attacks_are_live(served):
    """What stops the candidate lists is value matching, not luck: their answers contain the right value
    (substring checks, as before, would pass them), and with the right calls made, only the value fails."""
    suite, teacher = served
    by_id = {task.id: task for task in suite.held_out}
    listed = episodes_of(teacher, "candidates", suite.held_out)
    contained = [
        e.task_id
        for e in listed
        for check in by_id[e.task_id].checks
        if check["type"] == "answer_value" and by_id[e.task_id].needs_tools and check["value"] in e.answer
    ]
    assert len(contained) >= 3, contained
    reading = [t for t in suite.held_out if t.template in ("read_value", "report_value")]
    for episode in episodes_of(teacher, "right-call", reading):
        assert not episode.success and episode.calls and all(call["ok"] for call in episode.calls)
        assert [f.split(":")[0] for f in episode.failed_checks] == ["answer_value"], episode.failed_checks


@pytest.mark.parametrize("policy", sorted(set(ADVERSARIES) - RIGHT_CALLS))
def test_no_adversary_makes_an_exact_call(served, test_split, policy):
    """Turn level through the server path, as `python -m evaluate --server` scores."""
    _, teacher = served
    name = f"{teacher.model_name}:{policy}"
    results = evaluate_turns_server(
        teacher.base_url, test_split, model_name=name, concurrency=4, response_models=[name]
    )
    assert results.rates["exact_call_accuracy"] == 0.0, [c.where for c in results.cases if c.success]
    if policy in SILENT:  # silence is never credited, not even where no call is due
        assert results.rates["abstention_accuracy"] == 0.0
        assert results.rates["turn_success_rate"] == 0.0


def test_scores_read_back_must_be_what_their_recorded_outputs_earn(served, test_split):
    """A report's turn verdicts, reused as a baseline (`evaluate --baseline-report`), are scored again from the
    messages the server returned: a policy's failures cannot be read back as passes, nor its rates raised."""
    from evaluate.config import EvalError
    from evaluate.reuse import check_turn_verdicts

    _, teacher = served
    name = f"{teacher.model_name}:candidates"
    turns = evaluate_turns_server(
        teacher.base_url, test_split, model_name=name, response_models=[name]
    ).to_dict()
    turns = json.loads(json.dumps(turns))  # as a report file holds it
    check_turn_verdicts({"report": "old.json", "turns": turns}, test_split, "no model needed", None)
    failed = next(case for case in turns["cases"] if case["code"] != "ok")
    failed["code"] = "ok"
    with pytest.raises(EvalError, match=rf"old.json: held-out turn {failed['index']} is recorded as 'ok'"):
        check_turn_verdicts({"report": "old.json", "turns": turns}, test_split, "no model needed", None)
