"""curate's reason table and settings: every reason written comes from the one table, with its stage; the
settings file refuses what it does not know and the resolved settings are saved beside the output.

Real runs of `curate.run` / `python -m curate` on crafted trace files (helpers from test_curate)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from test_curate import (
    ROOT,
    SYSTEM,
    agent_loop,
    assistant,
    call,
    exchange,
    in_order,
    per_turn_lines,
    read_jsonl,
    run_curate,
    simple_session,
    write_lines,
)

import curate
from core.trace import new_record
from curate import reasons
from curate.config import Config, load_config


def curate_cli(*args) -> subprocess.CompletedProcess:
    """`python -m curate ARGS...` as a user runs it."""
    command = [sys.executable, "-m", "curate", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT)


def varied_records() -> list:
    """Lines that reach most reasons: junk, an HTTP error, prefixes, duplicates, bad and failed calls,
    text-about-tools, a marker-only prompt."""
    failed = new_record(
        session_id="e",
        http_status=500,
        complete=True,
        request={"messages": [SYSTEM, {"role": "user", "content": "x"}]},
        error={"type": "upstream_error", "message": "HTTP 500"},
    )
    crash = call("run_command", {"command": "pytest", "args": []}, "r1")
    return [
        "not json\n",
        failed,
        *simple_session("s1"),
        *simple_session("s2"),  # exact duplicates of s1
        *simple_session("s3", user="(Example 7)"),
        *agent_loop("Go.", [assistant(call("nope", {}))], "s4"),
        *agent_loop("Write.", [assistant(call("write_file", {"path": 1}))], "s5"),
        *agent_loop("Test.", [assistant(crash), assistant(content="ok")], "s6", results={"r1": "Error: no"}),
        *agent_loop("Read it.", [assistant(content="<tool_call>\n{bad json\n</tool_call>")], "s7"),
        exchange([SYSTEM, {"role": "user", "content": "Say hi."}], assistant(content=""), "s8"),
    ]


def test_every_reason_written_comes_from_the_table_with_its_stage(tmp_path):
    report, _, rejects = run_curate(tmp_path, varied_records())
    written = {(r["unit"], r["stage"], r["reason"]) for r in rejects}
    assert {reason for _, _, reason in written} >= {
        "not_json",
        "http_error",
        "prefix_of_longer_exchange",
        "exact_duplicate",
        "empty_after_markers",
        "unknown_tool",
        "arguments_schema_invalid",
        "failed_call",
        "text_tool_call_unparseable",
        "empty_assistant_turn",
    }
    for unit, stage, reason in written:
        entry = reasons.TABLE[reason]
        assert (entry.unit, entry.stage) == (unit, stage), reason
    # the funnel counts each removal under the table's stage, and nothing under any other
    for row in report.data["stages"]:
        assert all(reasons.TABLE[reason].stage == row["name"] for reason in row["removed"]), row
        assert row["in"] - sum(row["removed"].values()) == row["out"] or row["name"] == reasons.SPLIT
    removed = sum(sum(row["removed"].values()) for row in report.data["stages"] if row["unit"] == "sample")
    sm = report.data["samples"]
    assert removed == sm["rejected"] + sm["deduplicated"]
    # a fixed detail is the table's meaning; report.json explains every code it counts
    empty = next(r for r in rejects if r["reason"] == "empty_assistant_turn")
    assert empty["detail"] == reasons.TABLE["empty_assistant_turn"].meaning
    assert set(report.data["reasons"]) == {
        *report.data["exchanges"]["rejected_by_reason"],
        *report.data["exchanges"]["deduplicated_by_reason"],
        *sm["rejected_by_reason"],
        *sm["deduplicated_by_reason"],
    }
    assert report.data["tool_calls"]["invalid"] == {"unknown_tool": 1, "arguments_schema_invalid": 1}


def test_an_unknown_reason_code_cannot_be_used():
    with pytest.raises(KeyError, match="not in curate.reasons.TABLE"):
        reasons.code("unknwon_tool")
    import polars as pl

    with pytest.raises(pl.exceptions.InvalidOperationError):
        pl.select(reasons.stage_of(pl.lit("made_up"))).item()


def test_the_resolved_settings_are_saved_and_repeat_the_run(tmp_path):
    records = [r for i in range(12) for r in simple_session(f"s{i}", path=f"p{i}.py")]
    write_lines(tmp_path / "traces" / "a.jsonl", records)
    config = Config(progress=False, seed=5, split=(0.5, 0.25, 0.25), extra_markers={"m.txt:2": r"\[x\]"})
    first = curate.run([tmp_path / "traces"], tmp_path / "a", config)
    saved = tmp_path / "a" / "curate.toml"
    assert load_config(saved) == config
    again = curate_cli(tmp_path / "traces", tmp_path / "b", "--config", saved)
    assert again.returncode == 0, again.stderr
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    assert first.data["config"] == json.loads((tmp_path / "b" / "report.json").read_text())["config"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('seed = "3"\n', ["seed", "valid integer"]),
        ("split = [0.5, 0.5]\n", ["split"]),
        ('text_tool_calls = "maybe"\n', ["text_tool_calls", "convert"]),
        ("near_duplicates_keep = true\n", ["near_duplicates_keep"]),
        ("[extra_markers]\nbad = '(unclosed'\n", ["bad", "not a valid regex"]),
        ("sede = 1\n", ["unknown setting 'sede'"]),
    ],
)
def test_a_wrong_setting_is_one_line_naming_the_file_and_key(tmp_path, text, words):
    settings = tmp_path / "curate.toml"
    settings.write_text(text)
    write_lines(tmp_path / "traces" / "a.jsonl", simple_session("s1"))
    result = curate_cli(tmp_path / "traces", tmp_path / "out", "--config", settings)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"curate: {settings}") and all(word in line for word in words), line
    assert not (tmp_path / "out").exists()


def test_flags_override_the_file_and_markers_file_adds_to_it(tmp_path):
    settings = tmp_path / "curate.toml"
    settings.write_text(
        "seed = 4\ninclude_final_answers = true\n[extra_markers]\nbatch = '\\[batch \\d+\\]'\n"
    )
    markers = tmp_path / "markers.txt"
    markers.write_text("(?i)\\bplease\\b\n")
    write_lines(tmp_path / "traces" / "a.jsonl", simple_session("s1"))
    result = curate_cli(
        tmp_path / "traces",
        tmp_path / "out",
        "--config",
        settings,
        "--seed",
        "9",
        "--no-final-answers",
        "--markers-file",
        markers,
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    saved = load_config(tmp_path / "out" / "curate.toml")
    assert saved.seed == 9 and saved.include_final_answers is False and saved.progress is False
    assert saved.extra_markers == {"batch": r"\[batch \d+\]", "markers.txt:1": r"(?i)\bplease\b"}
    assert [s["meta"]["kind"] for s in read_jsonl(tmp_path / "out" / "train.jsonl")] == ["tool_call"]


# ------------------------------------------------------------------------------------------------ the files


def test_the_identities_are_read_back_from_the_files(tmp_path):
    report, samples, rejects = run_curate(tmp_path, varied_records())
    verified = report.data["verified_from_files"]
    assert verified["holds"] and verified["broken"] is None
    ex, sm = verified["exchanges"], verified["samples"]
    assert sm["kept"] == len(samples) and sm["rejected"] + sm["deduplicated"] == sum(
        r["unit"] == "sample" for r in rejects
    )
    assert ex["kept"] == len({s["meta"]["head"] for s in samples})
    assert ex["rejected"] + ex["deduplicated"] == sum(r["unit"] == "exchange" for r in rejects)
    for unit in ("exchanges", "samples"):
        figures = {k: report.data[unit][k] for k in ("in", "kept", "rejected", "deduplicated")}
        assert {k: verified[unit][k] for k in figures} == figures


def _lose_a_reject(outcome):
    """A stage that forgets to record one of the rows it removed (the bug the check exists for)."""
    return type(outcome)(kept=outcome.kept, removed=outcome.removed.head(-1))


def _drop_first_validation_reject(original):
    def pass1(*args, **kwargs):
        first = original(*args, **kwargs)
        first.rejects = first.rejects.head(-1)
        return first

    return pass1


def _stitch_loses_a_prefix(original):
    def stitch(*args, **kwargs):
        outcome, frame = original(*args, **kwargs)
        return _lose_a_reject(outcome), frame

    return stitch


def _dedupe_loses_a_duplicate(original):
    return lambda *args, **kwargs: _lose_a_reject(original(*args, **kwargs))


def _a_train_line_is_lost(original):
    def write_splits(kept, spill_files, out_dir, *args):
        written = original(kept, spill_files, out_dir, *args)
        path = out_dir / "train.jsonl"
        path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))
        return written

    return write_splits


def _a_session_line_loses_a_turn(original):
    """A session line that supervises one turn fewer than curate kept of its trajectory."""

    def write_splits(kept, spill_files, out_dir, *args):
        written = original(kept, spill_files, out_dir, *args)
        path = out_dir / "train.jsonl"
        lines = path.read_text().splitlines(keepends=True)
        index = next(i for i, line in enumerate(lines) if '"supervise":[' in line)
        lines[index], changed = re.subn(r'"supervise":\[\d+,', '"supervise":[', lines[index])
        assert changed == 1
        path.write_text("".join(lines))
        return written

    return write_splits


@pytest.mark.parametrize(
    ("module", "name", "fault", "stage"),
    [
        ("curate.pipeline", "pass1", _drop_first_validation_reject, "1 validate"),
        ("curate.stitch", "stitch", _stitch_loses_a_prefix, "2 stitch"),
        ("curate.pipeline", "dedupe", _dedupe_loses_a_duplicate, "7 dedupe"),
        ("curate.pipeline", "write_splits", _a_train_line_is_lost, "8 split"),
        ("curate.pipeline", "write_splits", _a_session_line_loses_a_turn, "8 split"),
    ],
)
def test_a_broken_identity_fails_the_run_naming_the_stage(
    tmp_path, monkeypatch, capsys, module, name, fault, stage
):
    import importlib

    from curate.__main__ import main

    target = importlib.import_module(module)
    monkeypatch.setattr(target, name, fault(getattr(target, name)))
    traces = write_lines(tmp_path / "traces" / "a.jsonl", varied_records())
    code = main([str(traces), str(tmp_path / "out"), "--quiet"])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and line.startswith(f"curate: accounting broken at stage {stage}:"), line
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verified_from_files"]["holds"] is False
    with pytest.raises(curate.AccountingError, match=f"stage {stage}:"):
        curate.run([traces], tmp_path / "again", Config(progress=False))


def test_per_turn_flag_writes_what_plain_mlx_lm_trains_on(tmp_path):
    """--per-turn (sessions = false): one line per kept turn in every split, the same samples as the session
    lines stand for; the default writes one session line per trajectory (with two or more kept turns) in
    train and valid, and prints how many."""
    traces = write_lines(tmp_path / "traces" / "a.jsonl", varied_records())
    printed = {}
    for flags, out in (([], "sessions"), (["--per-turn"], "per-turn")):
        result = curate_cli(traces, tmp_path / out, "--split", "0.5,0.5,0", *flags)
        assert result.returncode == 0, result.stderr
        printed[out] = " ".join(result.stdout.split())
    assert load_config(tmp_path / "per-turn" / "curate.toml").sessions is False
    assert load_config(tmp_path / "sessions" / "curate.toml").sessions is True
    report = json.loads((tmp_path / "sessions" / "report.json").read_text())
    sessions = report["sessions"]
    assert sessions["whole"] >= 1 and sessions["turns_in_sessions"] > sessions["whole"]
    shown = f"sessions (train, valid): {sessions['whole']} trajectories written whole ({sessions['turns_in_sessions']} samples)"
    assert shown in printed["sessions"] and "sessions (train, valid)" not in printed["per-turn"]
    lines = {out: [] for out in printed}
    for split in ("train", "valid"):
        whole = read_jsonl(tmp_path / "sessions" / f"{split}.jsonl")
        per_turn = read_jsonl(tmp_path / "per-turn" / f"{split}.jsonl")
        assert in_order([t for line in whole for t in per_turn_lines(line)]) == in_order(per_turn)
        lines["sessions"] += whole
        lines["per-turn"] += per_turn
    assert sum("supervise" in line for line in lines["sessions"]) == sessions["whole"]
    assert not any("supervise" in line for line in lines["per-turn"])
    assert (
        len(lines["per-turn"]) - len(lines["sessions"]) == sessions["turns_in_sessions"] - sessions["whole"]
    )
