"""The scripted demonstrator: its HTTP protocol, and that it solves the whole suite through the real agent."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from agent.episodes import run_episodes, summarize
from agent.tasks import load_suite
from agent.teacher import MODEL_NAME, Answer, Call, Step, Teacher, next_action
from agent.tools import AGENT_TOOLS


@pytest.fixture(scope="module")
def teacher(suite):
    with Teacher(suite) as running:
        yield running


def chat_body(task, **extra) -> dict:
    return {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": task.prompt}],
        "tools": AGENT_TOOLS,
        **extra,
    }


def test_health_and_models(teacher):
    assert httpx.get(f"{teacher.url}/health").json()["status"] == "ok"
    models = [m["id"] for m in httpx.get(f"{teacher.base_url}/models").json()["data"]]
    assert MODEL_NAME in models
    assert "scripted-demonstrator" in MODEL_NAME


def test_non_stream_tool_call_is_openai_shaped(teacher, suite):
    task = next(t for t in suite.train if t.template == "read_value")
    response = httpx.post(f"{teacher.base_url}/chat/completions", json=chat_body(task)).json()
    assert response["model"] == MODEL_NAME
    choice = response["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"path": task.params["file"]}
    assert response["usage"]["total_tokens"] > 0


def read_sse(response: httpx.Response) -> list:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_stream_sends_fragments_usage_and_done(teacher, suite):
    task = next(t for t in suite.train if t.template == "create_file")
    body = chat_body(task, stream=True, stream_options={"include_usage": True})
    with httpx.stream("POST", f"{teacher.base_url}/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_sse(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(chunk["model"] == MODEL_NAME for chunk in chunks)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    fragments = [d["tool_calls"][0]["function"]["arguments"] for d in deltas if d.get("tool_calls")]
    assert len(fragments) >= 3  # name first, then the arguments in pieces
    assert json.loads("".join(fragments)) == {
        "path": task.params["file"],
        "content": task.params["text"] + "\n",
    }
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "tool_calls"
    plain = httpx.post(f"{teacher.base_url}/chat/completions", json=chat_body(task)).json()
    assert plain["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "".join(fragments)


def test_bad_requests_get_clear_errors(teacher):
    response = httpx.post(f"{teacher.base_url}/chat/completions", content=b"{not json")
    assert response.status_code == 400 and "bad request body" in response.json()["error"]["message"]
    response = httpx.post(
        f"{teacher.base_url}/chat/completions", json={"model": f"{MODEL_NAME}:nope", "messages": []}
    )
    assert response.status_code == 404 and "unknown policy" in response.json()["error"]["message"]


def test_unknown_prompt_gets_a_failing_answer(teacher):
    body = {
        "model": MODEL_NAME,
        "messages": [{"role": "user", "content": "Write a compiler."}],
        "tools": AGENT_TOOLS,
    }
    message = httpx.post(f"{teacher.base_url}/chat/completions", json=body).json()["choices"][0]["message"]
    assert "no task" in message["content"]


def test_policy_reads_values_from_tool_results_not_from_the_task(suite):
    task = next(t for t in suite.train if t.template == "read_value")
    key, value = task.params["key"], task.params["value"]
    assert next_action("solve", task, []) == Call("read_file", {"path": task.params["file"]})
    done = next_action("solve", task, [Step("read_file", {"path": task.params["file"]}, f"{key} = 4242\n")])
    assert done == Answer("4242")
    missing = next_action("solve", task, [Step("read_file", {}, "Error: no such file")])
    assert value not in missing.text
    script = next(t for t in suite.train if t.template == "run_script")
    ran = next_action(
        "solve", script, [Step("run_command", {}, json.dumps({"exit_code": 0, "output": "77\n"}))]
    )
    assert ran == Answer("77")


def test_teacher_solves_every_train_and_held_out_task(suite, teacher):
    """Real pydantic-ai agent, real HTTP, real tool execution in sandboxes, declarative checkers."""
    before = teacher.requests
    started = time.monotonic()
    episodes = run_episodes(suite.tasks, teacher.base_url, teacher.model_name, show_progress=False)
    wall = time.monotonic() - started
    failures = [(e.task_id, e.error, e.failed_checks, e.answer) for e in episodes if not e.success]
    assert failures == []
    assert len(episodes) == len(suite.train) + len(suite.held_out) >= 30
    summary = summarize(episodes)
    assert summary["invalid_calls"] == 0 and summary["errors"] == 0
    assert teacher.requests - before == sum(e.steps for e in episodes)
    # every template that needs tools used them; say_word needs none
    for template, totals in summary["by_template"].items():
        assert (totals["tool_calls"] == 0) == (template == "say_word"), template
    print(
        f"\nfull suite against the teacher: {len(episodes)} episodes, {summary['tool_calls']} tool calls, "
        f"{teacher.requests - before} requests, {wall:.1f}s wall"
    )


def test_answer_only_policy_fails_the_checkers(suite):
    """A policy that answers without tools fails every template's checkers (so the checkers can fail)."""
    one_per_template = list({task.template: task for task in suite.tasks}.values())
    assert len(one_per_template) == len(suite.templates())
    with Teacher(suite, policy="answer-only") as lazy:
        episodes = run_episodes(one_per_template, lazy.base_url, lazy.model_name, show_progress=False)
    assert [e.task_id for e in episodes if e.success] == []
    assert all(e.tool_calls == 0 and e.error is None and e.answer == "Done." for e in episodes)
    assert all(e.failed_checks for e in episodes)


def test_cli_help():
    result = subprocess.run(
        [sys.executable, "-m", "agent.teacher", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "scripted demonstrator" in result.stdout and "example:" in result.stdout


def test_teacher_solves_the_demo_suite():
    """The demo (`python -m flywheel`) trains on this suite's teacher traces and scores its held-out tasks:
    every task must be solvable. The train tasks are solved in the demo's own collection (tests/test_demo.py:
    every episode collected succeeds); the held-out ones, never collected, here."""
    demo = load_suite("demo")
    assert not {t.prompt for t in demo.train} & {t.prompt for t in demo.held_out}
    with Teacher(demo) as demo_teacher:
        episodes = run_episodes(
            demo.held_out, demo_teacher.base_url, demo_teacher.model_name, show_progress=False
        )
    assert [e.task_id for e in episodes if not e.success] == []
