"""The trace record: schema, writer and reader."""

from __future__ import annotations

import json
import threading

import pytest

from core.trace import (
    SCHEMA_VERSION,
    TraceWriter,
    new_record,
    read_records,
    read_trace_lines,
    schema,
    validation_errors,
)


def sample_record(**overrides):
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "read notes.txt"}],
        "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}],
    }
    response = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "t1",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": '{"path": "notes.txt"}'},
                        }
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    fields = dict(
        upstream="http://127.0.0.1:8080",
        http_status=200,
        complete=True,
        latency_ms=12.5,
        ttfb_ms=3.0,
        request=request,
        response=response,
        usage=response["usage"],
        finish_reason="tool_calls",
    )
    fields.update(overrides)
    return new_record(**fields)


def test_schema_documents_every_field():
    properties = schema()["properties"]
    assert set(schema()["required"]) <= set(properties)
    undocumented = [name for name, spec in properties.items() if not spec.get("description")]
    assert undocumented == []


def test_new_record_is_valid_and_rejects_unknown_fields():
    assert validation_errors(sample_record()) == []
    with pytest.raises(KeyError, match="not trace-record fields"):
        new_record(bogus=1)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda r: r.update(schema_version=SCHEMA_VERSION + 1), "schema_version: unknown version"),
        (lambda r: r.update(latency_ms="fast"), "latency_ms: 'fast' is not of type"),
        (lambda r: r["request"]["messages"][0].update(role="robot"), "request.messages.0.role:"),
        (
            lambda r: r["response"]["choices"][0]["message"]["tool_calls"][0]["function"].update(name=7),
            "response.choices.0.message.tool_calls.0.function.name: 7 is not of type 'string'",
        ),
        (lambda r: r.pop("session_id"), "'session_id' is a required property"),
        (lambda r: r.update(started_at="yesterday"), "started_at: 'yesterday' is not a 'date-time'"),
    ],
)
def test_validation_names_the_offending_field(mutate, expected):
    record = sample_record()
    mutate(record)
    errors = validation_errors(record)
    assert errors, "a broken record must not validate"
    assert any(expected in error for error in errors), errors


def test_writer_appends_complete_flushed_lines_across_threads(tmp_path):
    writer = TraceWriter(tmp_path)
    records = [sample_record() for _ in range(200)]

    def write(chunk):
        for record in chunk:
            writer.write(record)

    threads = [threading.Thread(target=write, args=(records[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Flushed as written: readable before close.
    assert sorted(r["id"] for r in read_records([tmp_path])) == sorted(r["id"] for r in records)
    writer.close()
    assert writer.path.name.endswith(".jsonl") and writer.records_written == 200


def test_reader_reports_torn_and_bad_lines_with_location(tmp_path):
    path = tmp_path / "run.jsonl"
    good = json.dumps(sample_record())
    path.write_text(f"{good}\n{{not json\n[1, 2]\n\n{good[:40]}")
    lines = list(read_trace_lines([tmp_path]))
    assert [line.line_no for line in lines] == [1, 2, 3, 5]
    assert lines[0].error is None and lines[0].record["schema_version"] == SCHEMA_VERSION
    assert lines[1].error.startswith("not JSON")
    assert lines[2].error == "not a JSON object: list"
    assert lines[3].error.startswith("torn line")
    with pytest.raises(ValueError, match=r"run\.jsonl:2: not JSON"):
        list(read_records([path]))


def test_reader_names_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such trace file"):
        list(read_trace_lines([tmp_path / "missing"]))


def test_a_write_that_fails_mid_line_never_corrupts_the_next_record(tmp_path):
    """A small tmpfs fills while a record is written (a partial line lands); once there is space again
    the next record must start on a line of its own: the fragment is cut back, never appended to."""
    import subprocess

    mount = tmp_path / "small"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {mounted.stderr.decode().strip()}")
    try:
        filler = mount / "filler"
        filler.write_bytes(b"\0" * 40_000)
        writer = TraceWriter(mount, "run.jsonl")
        big = sample_record(id="big", request={"messages": [{"role": "user", "content": "x" * 30_000}]})
        writer.write(sample_record(id="first"))
        with pytest.raises(OSError):
            writer.write(big)  # ENOSPC after a partial write
        filler.unlink()
        writer.write(sample_record(id="after"))
        writer.close()
        lines = list(read_trace_lines([mount / "run.jsonl"]))
        assert [line.error for line in lines] == [None, None]
        assert [line.record["id"] for line in lines] == ["first", "after"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_torn_last_line_is_reported_then_cut_back_before_appending(tmp_path):
    """A recorder killed mid-write leaves a torn last line: readers (curate) report it; a writer that opens
    the file again cuts it back to the last complete line before it appends (the exchange it belonged to
    was never acknowledged, so it is written again whole)."""
    path = tmp_path / "run.jsonl"
    good = json.dumps(sample_record(id="kept"))
    path.write_text(f"{good}\n{good[:50]}")
    assert [line.error is None for line in read_trace_lines([path])] == [True, False]
    assert list(read_trace_lines([path]))[1].error.startswith("torn line")
    writer = TraceWriter(tmp_path, "run.jsonl")
    writer.write(sample_record(id="next"))
    writer.close()
    assert [r["id"] for r in read_records([path])] == ["kept", "next"]
