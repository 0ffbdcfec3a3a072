"""The reference agent (real pydantic-ai over real HTTP, real sandboxed tools) and the task suite."""

from __future__ import annotations

import importlib
import json
import socket
import threading
import time

import pytest

from agent.episodes import Episode, run_episode, run_episodes
from agent.tasks import SuiteError, Task, ToolUse, load_suite, run_checks
from agent.teacher import Teacher
from agent.tools import AGENT_TOOLS
from core.trace import SESSION_HEADER


def first(suite, template: str, split: str = "train") -> Task:
    return next(t for t in suite.split(split) if t.template == template)


# ------------------------------------------------------------------------------------------- the suite


def test_suite_shape(suite):
    assert len(suite.train) + len(suite.held_out) >= 30
    assert {t.split for t in suite.train} == {"train"} and {t.split for t in suite.held_out} == {"held_out"}
    train_prompts = {t.prompt for t in suite.train}
    assert not train_prompts & {t.prompt for t in suite.held_out}
    unseen = set(suite.templates("held_out")) - set(suite.templates("train"))
    assert len(unseen) >= 2
    assert {
        "read_value",
        "create_file",
        "replace_value",
        "find_definition",
        "run_script",
        "copy_value",
        "say_word",
    } <= set(suite.templates("train"))
    assert len({t.id for t in suite.tasks}) == len(suite.tasks)
    assert max(len(t.prompt) for t in suite.tasks) <= 60  # short prompts: the student pays per token
    again = load_suite("default")
    assert [t.to_dict() for t in again.tasks] == [t.to_dict() for t in suite.tasks]  # seeded: deterministic


def test_held_out_draws_new_names(suite):
    train_files = {t.params.get("file") for t in suite.train} - {None}
    held_files = {t.params.get("file") for t in suite.held_out} - {None}
    assert held_files and not train_files & held_files


def test_checkers_pass_and_fail_on_real_files(suite, tmp_path):
    task = first(suite, "replace_value")
    key, new, old = task.params["key"], task.params["new"], task.params["value"]
    original = task.files[task.params["file"]]
    (tmp_path / task.params["file"]).write_text(original)
    assert [r.passed for r in run_checks(task, tmp_path, "Done.")] == [False, False, True]
    (tmp_path / task.params["file"]).write_text(original.replace(f"{key} = {old}", f"{key} = {new}"))
    assert all(r.passed for r in run_checks(task, tmp_path, "Done."))
    read = first(suite, "read_value")
    path, value = read.params["file"], read.params["value"]
    opened = [ToolUse("read_file", {"path": path}, True, read.files[path])]
    assert all(r.passed for r in run_checks(read, tmp_path, f"It is {value}.", opened))
    both = f"{value} or {read.params['other_value']}"
    assert not all(r.passed for r in run_checks(read, tmp_path, both, opened))
    # the right value without the evidence that the file was read (text alone) fails
    assert [r.passed for r in run_checks(read, tmp_path, f"It is {value}.")] == [True, False]
    failed = [ToolUse("read_file", {"path": path}, False, "Error: no such file")]
    assert not all(r.passed for r in run_checks(read, tmp_path, f"It is {value}.", failed))


@pytest.mark.parametrize(
    ("answer", "passes"),
    [
        ("{n}", True),
        ("There are {n} lines in `{file}`.", True),
        ("{n}0", False),  # not the number as a whole number
        ("{n}.5", False),
        ("1 2 3 4 5 6 7 8 9", False),  # a list of candidates contains it, and competitors
        ("{n} or maybe {m}", False),
        ("", False),
    ],
)
def test_answers_are_matched_as_values(suite, tmp_path, answer, passes):
    task = first(suite, "count_lines", "held_out")
    n, path = task.params["n"], task.params["file"]
    text = answer.format(n=n, m=int(n) + 1, file=path)
    counted = [ToolUse("run_command", {"command": "wc", "args": ["-l", path]}, True, f"{n} {path}\n")]
    assert all(r.passed for r in run_checks(task, tmp_path, text, counted)) is passes


def test_words_are_matched_as_words_without_rival_files(suite, tmp_path):
    task = first(suite, "find_definition", "held_out")
    target, other = task.params["target"], task.params["first"]
    shown = [ToolUse("read_file", {"path": target}, True, task.files[target])]
    assert all(r.passed for r in run_checks(task, tmp_path, f"`{target}` defines it.", shown))
    for answer in (f"{target}x", f"{other} or {target}", " ".join(task.files)):
        assert not all(r.passed for r in run_checks(task, tmp_path, answer, shown)), answer
    plain = first(suite, "say_word", "held_out")
    assert all(r.passed for r in run_checks(plain, tmp_path, plain.params["word"]))  # no tool needed
    assert not plain.needs_tools and task.needs_tools


def test_bad_suite_files_name_the_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(
        json.dumps(
            {"templates": [{"name": "t", "prompt": "Read {file}.", "checks": [], "count": {"train": 1}}]}
        )
    )
    with pytest.raises(SuiteError, match=r"bad.json: templates\[0\].checks: must be a non-empty list"):
        load_suite(path)
    template = {"name": "t", "prompt": "Read {nope}.", "checks": [{"type": "answer_contains", "value": "x"}]}
    path.write_text(json.dumps({"templates": [{**template, "count": {"train": 1}}]}))
    with pytest.raises(SuiteError, match=r"templates\[0\].prompt: unknown parameter \{nope\}"):
        load_suite(path)
    path.write_text('{"templates": [\n  oops]}')
    with pytest.raises(SuiteError, match=r"bad.json:2: invalid JSON"):
        load_suite(path)
    with pytest.raises(SuiteError, match="not one of default"):
        load_suite("no-such-suite")
    path.write_text(json.dumps({"extends": "nope", "templates": []}))
    with pytest.raises(SuiteError, match=r"bad.json: extends: 'nope' is not one of default, demo"):
        load_suite(path)


def test_a_suite_that_extends_another_draws_its_tasks_unchanged():
    """demo_mixed = the demo's tasks, drawn exactly as in `demo` (the same prompts, files and checks), plus
    questions none of the agent's tools serves; the teacher answers those without a call."""
    from agent.actions import Answer, solve
    from agent.tasks import fresh_train_tasks

    demo, mixed = load_suite("demo"), load_suite("demo_mixed")
    for split in ("train", "held_out"):
        theirs = [t for t in mixed.split(split) if t.template in demo.templates()]
        assert [t.to_dict() for t in theirs] == [t.to_dict() for t in demo.split(split)]
    extra = [t for t in mixed.tasks if t.template not in demo.templates()]
    assert {t.template for t in extra} == {"add_numbers", "count_apples"} and len(extra) == 72
    assert not any(t.needs_tools for t in extra)
    assert all(solve(t, []) == Answer(str(int(t.params["a"]) + int(t.params["b"]))) for t in extra)
    fresh = fresh_train_tasks(mixed, 2, draw=1)  # the merged file, not only the extending one
    assert {t.template for t in fresh} == set(mixed.templates("train")) and len(fresh) == 18


def test_work_the_teacher_does_not_show_is_met_fresh_after_deployment(tmp_path):
    """demo_new_work: the teacher's tasks are the demo's minus three templates; demo_rare_work: only 4 of their
    40 each. The held-out tasks stay the demo's, and a round's fresh work draws those templates from their
    train pools (never the held-out names)."""
    from agent.tasks import fresh_train_tasks
    from flywheel.config import LoopConfig
    from flywheel.rounds import attempted_tasks

    demo, new, rare = load_suite("demo"), load_suite("demo_new_work"), load_suite("demo_rare_work")
    limited = {"count_lines", "copy_value", "append_line"}
    assert set(new.demonstrated) == set(rare.demonstrated) == limited
    shown = [t for t in demo.train if t.template not in limited]
    assert [t.to_dict() for t in new.train] == [t.to_dict() for t in shown]
    few = [t for t in demo.train if t.template in limited and int(t.id.rsplit("-", 1)[1]) < 4]
    assert [t.to_dict() for t in rare.train] == [t.to_dict() for t in demo.train if t in shown or t in few]
    assert len(few) == 12
    for suite in (new, rare):
        assert [t.to_dict() for t in suite.held_out] == [t.to_dict() for t in demo.held_out]
    fresh = fresh_train_tasks(new, 3, draw=2)
    assert {t.template for t in fresh} == set(demo.templates("train")) and len(fresh) == 21
    held_out_values = {v for t in new.held_out for v in t.params.values()}
    files = {t.params["file"] for t in fresh if t.template in limited and "file" in t.params}
    assert files and not files & held_out_values  # train pools, never the held-out names
    picked = attempted_tasks(new, LoopConfig(attempt_tasks=14), draw=2)
    assert {t.template for t in picked} == set(new.attempted_templates()) and len(picked) == 14
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"extends": "demo", "demonstrated": {"count_line": 0}}))
    with pytest.raises(SuiteError, match=r"bad.json: demonstrated.count_line: not a template of this suite"):
        load_suite(path)
    path.write_text(json.dumps({"extends": "demo", "demonstrated": {"count_lines": -1}}))
    with pytest.raises(
        SuiteError, match=r"bad.json: demonstrated.count_lines: must be a non-negative integer"
    ):
        load_suite(path)


# ------------------------------------------------------------------------------------------- the agent


def test_requests_carry_session_header_exact_tools_and_temperature_zero(suite):
    task = first(suite, "replace_value")
    with Teacher(suite, record=True) as teacher:
        episode = run_episode(task, teacher.base_url, teacher.model_name, session_id="sess-42")
    assert episode.success and episode.steps == 3 == len(teacher.recorded)
    for request in teacher.recorded:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers[SESSION_HEADER.lower()] == "sess-42"
        assert request["body"]["tools"] == AGENT_TOOLS
        assert request["body"]["temperature"] == 0
        assert request["body"]["messages"][1] == {"role": "user", "content": task.prompt}
    assert episode.tool_calls == 2 and episode.calls[0] == {
        "name": "read_file",
        "arguments": {"path": task.params["file"]},
        "ok": True,
    }
    assert episode.models == [teacher.model_name]


def test_streaming_episodes_succeed(suite):
    tasks = [
        first(suite, t, "held_out") for t in ("find_definition", "run_script", "append_line", "say_word")
    ]
    with Teacher(suite) as teacher:
        episodes = run_episodes(tasks, teacher.base_url, teacher.model_name, stream=True, show_progress=False)
    assert [(e.task_id, e.success) for e in episodes] == [(t.id, True) for t in tasks]


def test_sandbox_refusals_reach_the_model_as_tool_results(suite):
    task = first(suite, "say_word")
    with Teacher(suite, policy="escape") as teacher:
        episode = run_episode(task, teacher.base_url, teacher.model_name)
    assert episode.error is None and episode.invalid_calls == 0 and episode.retries == 0
    assert episode.tool_calls == 6 == episode.tool_errors
    lines = episode.answer.splitlines()
    assert len(lines) == 6 and all(line.startswith("Error: ") for line in lines)
    assert "not allowed" in lines[0] and "'bash' is not allowed" in lines[5]
    assert not episode.success


def test_invalid_arguments_are_retried_and_counted(suite):
    task = first(suite, "copy_value")
    with Teacher(suite, policy="flaky") as teacher:
        episode = run_episode(task, teacher.base_url, teacher.model_name)
    assert episode.success
    assert episode.invalid_calls == 1 and episode.retries == 1 and episode.tool_calls == 3
    assert episode.calls[0] == {"name": "read_file", "arguments": {"file": "?"}, "ok": False}
    assert [call["ok"] for call in episode.calls[1:]] == [True, True]


def test_a_looping_model_ends_as_a_failure_at_the_step_limit(suite):
    task = first(suite, "read_value")
    with Teacher(suite, policy="loop") as teacher:
        started = time.monotonic()
        episode = run_episode(task, teacher.base_url, teacher.model_name, max_steps=5)
        assert time.monotonic() - started < 30
        assert teacher.requests == 5
    assert not episode.success and episode.steps == 5 and episode.tool_calls == 5
    assert episode.error.startswith("UsageLimitExceeded")


def test_a_hanging_server_ends_as_a_timeout(suite):
    """A server that accepts the connection and never answers: the episode times out, it does not hang."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        accepted = []
        threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
        started = time.monotonic()
        episode = run_episode(
            first(suite, "say_word"), f"http://127.0.0.1:{server.getsockname()[1]}/v1", "m", timeout=2
        )
        assert time.monotonic() - started < 10
    assert not episode.success and episode.error.startswith("TimeoutError")
    assert isinstance(episode, Episode) and episode.steps == 0


def test_recording_proxy_sees_every_agent_request(suite, tmp_path):
    proxy = importlib.import_module("proxy")
    if not hasattr(proxy, "RecordingProxy"):
        pytest.skip("proxy.RecordingProxy not written yet")
    from core.trace import read_records

    tasks = [first(suite, t) for t in ("read_value", "find_definition", "say_word")]
    streamed = first(suite, "copy_value")
    with Teacher(suite) as teacher, proxy.RecordingProxy(teacher.url, tmp_path / "traces") as recording:
        episodes = run_episodes(tasks, recording.base_url, teacher.model_name, show_progress=False)
        episodes.append(run_episode(streamed, recording.base_url, teacher.model_name, stream=True))
        summary = recording.stop()
        trace_file = recording.trace_file
    assert all(e.success for e in episodes), [(e.task_id, e.error, e.failed_checks) for e in episodes]
    records = list(read_records([trace_file]))
    assert len(records) == sum(e.steps for e in episodes) == teacher.requests
    assert summary is None or summary.get("recorded", len(records)) == len(records)
    sessions = [r["session_id"] for r in records]
    assert sorted(set(sessions)) == sorted(e.session_id for e in episodes)
    for episode in episodes:
        assert sessions.count(episode.session_id) == episode.steps


def test_a_lost_tool_call_is_counted_and_fails(suite):
    """mlx_lm.server's answer to malformed tool JSON (finish_reason tool_calls, no calls): pydantic-ai resends,
    then gives up; the episode fails with every empty response counted."""
    task = first(suite, "read_value")
    with Teacher(suite, policy="lost-call") as teacher:
        for stream in (False, True):
            episode = run_episode(task, teacher.base_url, teacher.model_name, stream=stream, tool_retries=2)
            assert not episode.success and episode.error.startswith("UnexpectedModelBehavior")
            assert episode.empty_responses == episode.steps == 3 and episode.retries == 2
            assert episode.tool_calls == 0 and episode.answer is None


@pytest.mark.slow
def test_agent_runs_against_a_real_mlx_server(suite, tool_server):
    """The same agent against `mlx_lm server` serving the tiny tool-calling model: episodes end (no hang), and
    whatever the model does is counted; a tiny model is not expected to solve the tasks."""
    tasks = [first(suite, t) for t in ("read_value", "create_file", "run_script", "say_word")]
    episodes = run_episodes(
        tasks, tool_server.base_url, "default_model", max_steps=4, timeout=180, show_progress=False
    )
    names = {tool["function"]["name"] for tool in AGENT_TOOLS}
    for episode in episodes:
        assert 1 <= episode.steps <= 4
        assert episode.error is None or episode.error.split(":")[0] in {
            "UsageLimitExceeded",
            "UnexpectedModelBehavior",
        }, episode.error
        assert all(call["name"] in names or episode.invalid_calls for call in episode.calls)
    assert sum(e.tool_calls for e in episodes) >= 1  # the tool-calling model does call tools


def test_a_limited_evaluation_meets_every_template_in_turn(suite):
    from agent.tasks import round_robin

    templates = suite.templates("held_out")
    picked = round_robin(suite.held_out, len(templates))
    assert [t.template for t in picked] == list(dict.fromkeys(t.template for t in suite.held_out))
    assert sorted(t.template for t in picked) == sorted(templates)
    assert round_robin(suite.held_out) == round_robin(suite.held_out, None) and len(
        round_robin(suite.held_out)
    ) == len(suite.held_out)
    second = round_robin(suite.held_out, 2 * len(templates))[len(templates) :]
    assert {t.template for t in second} == set(templates) and not {t.id for t in second} & {
        t.id for t in picked
    }


def test_a_failing_server_is_told_apart_from_a_failing_model(suite, tmp_path):
    """Nothing listening, a proxy whose upstream is gone (502): server failures. A model that answers wrongly
    or loops: the model's own failures. Rounds refuse to label or train on the first kind."""
    from agent.episodes import server_failed
    from core.net import free_port
    from core.process import RecordingProxy

    task = first(suite, "read_value")
    nobody = run_episode(task, f"http://127.0.0.1:{free_port()}/v1", "m", timeout=5)
    with RecordingProxy(f"http://127.0.0.1:{free_port()}", tmp_path / "traces") as recording:
        gone = run_episode(task, recording.base_url, "m", timeout=10)
    with Teacher(suite, policy="answer-only") as teacher:
        wrong = run_episode(task, teacher.base_url, teacher.model_name)
    with Teacher(suite, policy="loop") as teacher:
        looping = run_episode(task, teacher.base_url, teacher.model_name, max_steps=3)
    assert [server_failed(e) for e in (nobody, gone, wrong, looping)] == [True, True, False, False], [
        e.error for e in (nobody, gone, wrong, looping)
    ]


def test_evaluation_runs_an_episode_the_server_dropped_again(suite, flaky_teacher):
    """An episode that ends in a server error says nothing about the model: evaluate runs it once more, alone,
    instead of scoring it a failure (with episodes in flight, a loaded mlx_lm server drops one now and then)."""
    from agent.episodes import SERVER_ERRORS, server_failed
    from evaluate.agentlevel import run_tasks
    from evaluate.config import EvalConfig

    tasks = suite.held_out[:4]
    with flaky_teacher(suite, drops=2) as teacher:
        plain = run_episodes(tasks, teacher.base_url, teacher.model_name, concurrency=2, show_progress=False)
    assert sum(map(server_failed, plain)) == 2 and sum(e.success for e in plain) == 2  # what a retry repairs
    config = EvalConfig(agent_concurrency=2, agent_max_steps=6)
    with flaky_teacher(suite, drops=2) as teacher:
        episodes = run_tasks(config, tasks, teacher.base_url, teacher.model_name, "agent · flaky")
        assert len(teacher.dropped) == 2
    assert [e.task_id for e in episodes] == [t.id for t in tasks]
    assert all(e.success and not e.error for e in episodes)
    again = [e for e in episodes if e.first_try_error]  # what the first try ended in stays on record
    assert len(again) == 2 and all(e.first_try_error.split(":")[0] in SERVER_ERRORS for e in again)


class SlowTeacher(Teacher):
    """The scripted teacher, answering each request after `delay` seconds."""

    def __init__(self, suite, delay: float):
        super().__init__(suite)
        self.delay = delay

    async def answer(self, request, http):
        import asyncio

        await asyncio.sleep(self.delay)
        await super().answer(request, http)


def test_episodes_in_flight_get_time_limits_scaled_to_their_number(suite):
    """A time limit is for an episode alone: with N in flight each gets N times it, so that a loaded server
    never turns into a time-out (which would score the server, not the model)."""
    task = next(
        t for t in suite.held_out if t.template == "read_value"
    )  # read the file, then answer: 2 requests
    with SlowTeacher(suite, delay=0.4) as teacher:
        alone = run_episodes([task], teacher.base_url, teacher.model_name, timeout=0.6, show_progress=False)
        assert alone[0].error.startswith("TimeoutError")
        three = run_episodes(
            [task] * 3, teacher.base_url, teacher.model_name, timeout=0.6, concurrency=3, show_progress=False
        )
    assert all(e.success for e in three), [e.error for e in three]
