"""`python -m flywheel serve`: the student served behind the recorder for a real agent; every record names the
policy; user feedback over HTTP lands beside the traces; a terminal's Ctrl-C stops everything, losing nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from core.outcomes import read_outcomes
from core.trace import read_records

ROOT = Path(__file__).resolve().parent.parent


def start_serve(*args: str) -> tuple[subprocess.Popen, str, str]:
    """`python -m flywheel serve ...` in a process group of its own, as a terminal would run it; its base URL
    and the line it printed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "flywheel", "serve", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    line = process.stdout.readline()
    match = re.search(r"serving at (http://\S+/v1) ", line)
    if not match:
        process.kill()
        raise AssertionError(f"no base URL in {line!r}; stderr: {process.stderr.read()[-2000:]}")
    return process, match.group(1), line


def ctrl_c(process: subprocess.Popen) -> tuple[str, str]:
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = process.communicate(timeout=120)
    return out, err


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serve_records_the_agent_names_the_policy_takes_feedback_and_stops_on_ctrl_c(tool_model, tmp_path):
    from agent.episodes import run_episode
    from agent.tasks import load_suite

    traces = tmp_path / "traces"
    process, base_url, line = start_serve(
        "--model",
        str(tool_model),
        "--listen",
        "127.0.0.1:0",
        "--traces",
        str(traces),
        "--policy",
        "tiny-tools",
    )
    try:
        assert f"punie serve --model local:{base_url}/default_model" in line
        assert f'OpenAIProvider(base_url="{base_url}")' in line
        task = load_suite("demo").held_out[0]
        episode = run_episode(task, base_url, "default_model", max_steps=4, session_id="served-1")
        root = base_url.removesuffix("/v1")
        answer = httpx.post(
            f"{root}/flywheel/feedback",
            json={"session": "served-1", "outcome": "failure", "note": "checked by hand"},
        )
        assert answer.status_code == 200, answer.text
        bad = httpx.post(f"{root}/flywheel/feedback", json={"session": "served-1", "outcome": "great"})
        assert bad.status_code == 400 and "outcome: must be one of success, failure" in bad.json()["error"]
        assert httpx.get(f"{root}/flywheel/feedback").status_code == 405
    finally:
        out, err = ctrl_c(process)
    assert process.returncode == 0, err[-2000:]
    deadline = time.monotonic() + 10
    while group_alive(process.pid) and time.monotonic() < deadline:  # the mlx_lm server child too
        time.sleep(0.2)
    assert not group_alive(process.pid), "a child of serve outlived Ctrl-C"

    records = list(read_records([traces]))
    assert len(records) == episode.steps > 0  # every request the agent made, none of the feedback posts
    stopped = re.search(r"stopped: (\d+) exchanges recorded", out)
    assert stopped and int(stopped.group(1)) == len(records), out
    for record in records:
        policy = record["policy"]
        assert policy["label"] == "tiny-tools" and policy["served_model"] == "default_model"
        assert (
            Path(policy["model_path"]) == Path(tool_model).resolve() and len(policy["weights_sha256"]) == 64
        )
        assert policy["adapter_path"] is None and record["session_id"] == "served-1"
    outcome = read_outcomes([traces])["served-1"]
    assert (outcome["outcome"], outcome["source"], outcome["note"]) == ("failure", "user", "checked by hand")


def test_serve_refuses_a_missing_adapter_in_one_line(tool_model, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "flywheel", "serve", "--model", str(tool_model), "--adapter", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"python -m flywheel serve: error: {tmp_path}: no adapters.safetensors"
    ]


def test_plain_proxy_records_its_label_and_the_upstream_model(tmp_path):
    from core.scripted import ScriptedServer  # noqa: F401  (the upstream below is built on it)
    from proxy import RecordingProxy
    from proxy.scripted_upstream import ScriptedUpstream

    with (
        ScriptedUpstream() as upstream,
        RecordingProxy(upstream.url, tmp_path, policy={"label": "v3"}) as proxy,
    ):
        httpx.post(
            f"{proxy.base_url}/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        ).raise_for_status()
    (record,) = read_records([tmp_path])
    assert record["policy"]["label"] == "v3"
    assert record["policy"]["served_model"] == record["response"]["model"] == "echo"


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", b'{"session": "s", "outcome": "success", "x": 1}', b'{"outcome": "success"}']
)
def test_feedback_refuses_bad_bodies_and_forwards_nothing(tmp_path, body):
    from proxy import RecordingProxy
    from proxy.scripted_upstream import ScriptedUpstream

    with ScriptedUpstream() as upstream, RecordingProxy(upstream.url, tmp_path) as proxy:
        answer = httpx.post(f"{proxy.url}/flywheel/feedback", content=body, timeout=30)
        received = list(upstream.received)
    assert answer.status_code == 400 and answer.json()["error"]
    assert received == [] and read_outcomes([tmp_path]) == {}
