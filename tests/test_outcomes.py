"""Outcomes beside the traces (core.outcomes) and `python -m flywheel label`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.outcomes import OUTCOMES_FILE, OutcomeError, read_outcomes, record_outcome
from core.trace import TraceWriter, new_record, trace_files

ROOT = Path(__file__).resolve().parent.parent


def write_traces(directory: Path, sessions: dict[str, str]) -> Path:
    """One trace record per session (id → first user message), in time order."""
    with TraceWriter(directory) as writer:
        for i, (session, prompt) in enumerate(sessions.items()):
            writer.write(
                new_record(
                    session_id=session,
                    started_at=f"2026-11-28T10:00:0{i}.000000Z",
                    request={"model": "m", "messages": [{"role": "user", "content": prompt}]},
                )
            )
    return writer.path


def label(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flywheel", "label", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_most_trusted_then_latest_outcome_stands(tmp_path):
    record_outcome(tmp_path, "s1", "success", "check", task_id="t1")
    record_outcome(tmp_path, "s1", "failure", "user", note="wrong file")
    record_outcome(tmp_path, "s1", "success", "check")  # a later check does not overrule the user
    record_outcome(tmp_path, "s2", "failure", "user")
    record_outcome(tmp_path, "s2", "success", "user")  # the user corrects themself
    standing = read_outcomes([tmp_path])
    assert (standing["s1"]["outcome"], standing["s1"]["source"], standing["s1"]["note"]) == (
        "failure",
        "user",
        "wrong file",
    )
    assert standing["s2"]["outcome"] == "success"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", "success", "user"), "session:"),
        (("s", "ok", "user"), "outcome:"),
        (("s", "success", "me"), "source:"),
    ],
)
def test_bad_outcomes_are_refused_naming_the_field(tmp_path, args, message):
    with pytest.raises(OutcomeError, match=message):
        record_outcome(tmp_path, *args)
    assert not (tmp_path / OUTCOMES_FILE).exists()


def test_a_broken_outcomes_line_is_named(tmp_path):
    (tmp_path / OUTCOMES_FILE).write_text(
        '{"session_id": "s", "outcome": "success", "source": "user"}\n{oops\n'
    )
    with pytest.raises(OutcomeError, match=rf"{OUTCOMES_FILE}:2: not an outcome line"):
        read_outcomes([tmp_path])


def test_outcomes_are_not_read_as_traces(tmp_path):
    trace = write_traces(tmp_path, {"s1": "hello"})
    record_outcome(tmp_path, "s1", "success", "user")
    assert trace_files([tmp_path]) == [trace]


def test_label_last_and_by_id_then_list(tmp_path):
    write_traces(tmp_path, {"older": "first task", "newer": "second task"})
    result = label("last", "success", "--traces", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("newer: success")
    assert label("older", "failure", "--note", "nope", "--traces", str(tmp_path)).returncode == 0
    standing = read_outcomes([tmp_path])
    assert {s: o["outcome"] for s, o in standing.items()} == {"newer": "success", "older": "failure"}
    assert all(o["source"] == "user" for o in standing.values())
    listing = label("--list", "--traces", str(tmp_path)).stdout.splitlines()
    assert listing[0].startswith("newer") and "success (user)" in listing[0] and "second task" in listing[0]


def test_label_refuses_an_unknown_session_in_one_line(tmp_path):
    write_traces(tmp_path, {"s1": "x"})
    result = label("nope", "success", "--traces", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"python -m flywheel label: error: {tmp_path}: no session 'nope' (most recent: s1)"
    ]
    assert not (tmp_path / OUTCOMES_FILE).exists()
    lines = [json.loads(line) for line in (tmp_path / next(iter(p.name for p in tmp_path.iterdir()))).open()]
    assert lines[0]["session_id"] == "s1"


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """Real traces: the scripted teacher solves one train task per template through the real proxy and agent;
    collect writes each episode's check as its outcome."""
    import dataclasses

    from rich.console import Console

    from agent.tasks import load_suite
    from flywheel.collect import collect
    from flywheel.loop import LoopConfig

    suite = load_suite("demo")
    tasks = list({task.template: task for task in suite.train}.values())
    traces = tmp_path_factory.mktemp("outcomes") / "traces"
    collect(LoopConfig(), dataclasses.replace(suite, train=tasks), traces, Console(stderr=True))
    return traces


def curate_cli(*args) -> tuple[int, dict]:
    out = Path(args[1])
    result = subprocess.run(
        [sys.executable, "-m", "curate", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else {}
    return result.returncode, report


def test_curate_keeps_only_the_sessions_with_the_required_outcome(collected, tmp_path):
    checks = read_outcomes([collected])
    assert checks and all(o["source"] == "check" and o["outcome"] == "success" for o in checks.values())
    sessions = sorted(checks)
    # the user disagrees with one task's check, and one session's outcome is lost
    assert (
        label(sessions[0], "failure", "--note", "not what I asked", "--traces", str(collected)).returncode
        == 0
    )
    code, everything = curate_cli(collected, tmp_path / "all")
    assert code == 0
    code, report = curate_cli(collected, tmp_path / "ok", "--require-outcome", "success")
    assert code == 0
    removed = next(s for s in report["stages"] if s["name"] == "1b exchange policy")["removed"]
    failed_session_exchanges = report["by_outcome"]["failure"]["exchanges"]
    assert removed == {"outcome_not_required": failed_session_exchanges} and failed_session_exchanges > 0
    assert report["by_outcome"]["success"]["sessions"] == len(sessions) - 1
    assert report["samples"]["kept"] < everything["samples"]["kept"]
    kept_sessions = {
        json.loads(line)["meta"]["session_id"]
        for split in (tmp_path / "ok").glob("*.jsonl")
        if split.name != "rejects.jsonl"
        for line in split.open()
    }
    assert sessions[0] not in kept_sessions and kept_sessions <= set(sessions)
    rejects = [json.loads(line) for line in (tmp_path / "ok" / "rejects.jsonl").open()]
    assert {r["reason"] for r in rejects if r["stage"] == "1b exchange policy"} == {"outcome_not_required"}


def test_curate_by_policy(collected, tmp_path):
    code, report = curate_cli(collected, tmp_path / "p", "--answered-by", "nobody")
    assert code == 1  # nothing usable: every exchange was answered by the teacher
    (name,) = report["by_policy"]
    assert name.startswith("flywheel-scripted-demonstrator")
    code, report = curate_cli(collected, tmp_path / "q", "--answered-by", name)
    assert code == 0 and report["by_policy"][name]["usable"] == report["by_policy"][name]["exchanges"]
