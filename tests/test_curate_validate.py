"""Stage 1's fast path against the reference validator, and junk input against the whole pipeline (hypothesis).

The fast path (orjson + jsonschema-rs + a vectorised date-time check) may only ever accept a record that
`core.trace.validation_errors` accepts; everything it refuses is decided by the reference validator. So
curate's verdict on every line must equal the reference verdict exactly.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import curate
from agent.tools import AGENT_TOOLS
from core.trace import new_record, validation_errors
from curate import Config
from curate.read import RawBatch, date_time_ok, fast_valid, formats_in_schema, parse_batch

MESSAGES = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "Read a.py."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "a.py"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "x = 1"},
]
TEMPLATES = [
    new_record(
        session_id="s",
        http_status=200,
        complete=True,
        latency_ms=12.5,
        ttfb_ms=3,
        upstream="http://h",
        stream=False,
        request={
            "model": "m",
            "messages": MESSAGES,
            "tools": AGENT_TOOLS,
            "tool_choice": "auto",
            "stream": False,
        },
        response={
            "id": "r",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "x is 1", "tool_calls": None},
                }
            ],
            "usage": {"prompt_tokens": 3},
        },
        usage={"prompt_tokens": 3},
        finish_reason="stop",
        flags=["truncated"],
        redactions={"api_key": 1},
    ),
    new_record(
        request=None, error={"type": "bad_request", "message": "not JSON"}, raw_response="x", run_id="r1"
    ),
]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)
date_like = st.one_of(
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?([Zz]|[+-][0-9]{2}:[0-9]{2})?\n?\Z"
    ),
    st.sampled_from(
        [
            "2026-02-29T00:00:00Z",
            "2024-02-29T23:59:59.5+01:00",
            "0000-01-01T00:00:00Z",
            "2026-11-21T24:00:00Z",
            "2026-11-21t10:00:00z",
            "２０２６-11-21T10:00:00Z",
            "2026-11-31T10:00:00Z",
            "2026-11-21T10:00:60Z",
        ]
    ),
    st.text(max_size=30),
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


@st.composite
def mutated_records(draw):
    record = copy.deepcopy(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(0, 3))):
        paths = [p for p in _paths(record) if p]
        path = draw(st.sampled_from(paths))
        parent = record
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "date"]))
        if action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
        elif action == "date":
            record["started_at"] = draw(date_like)
    return record


def verdicts(records: list) -> list[bool]:
    """curate's stage-1 verdict for each record, through the real batch code path."""
    lines = [json.dumps(r).encode() + b"\n" for r in records]
    batch = RawBatch(
        xs=list(range(len(lines))),
        file_ids=[0] * len(lines),
        line_nos=list(range(1, len(lines) + 1)),
        offsets=[0] * len(lines),
        sizes=[len(line) for line in lines],
        lines=lines,
    )
    parsed = parse_batch(batch)
    rejected = set(parsed.rejects.get_column("x").to_list())
    assert parsed.frames["exchanges"].height + len(rejected) == len(records)
    return [i not in rejected for i in range(len(records))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_records(), min_size=1, max_size=8))
def test_curate_accepts_exactly_what_the_reference_validator_accepts(records):
    reference = [not validation_errors(r) for r in records]
    assert verdicts(records) == reference
    for record, ok in zip(records, reference, strict=True):
        if fast_valid(record):
            assert ok, validation_errors(record)


@settings(max_examples=150, deadline=None)
@given(st.lists(date_like, min_size=1, max_size=10))
def test_date_time_check_is_never_looser_than_the_format_checker(values):
    import jsonschema

    checker = jsonschema.FormatChecker()
    for value in values:
        if date_time_ok(value):
            assert checker.conforms(value, "date-time"), value


def test_the_fast_path_checks_every_format_the_schema_names():
    assert formats_in_schema() == [("/properties/started_at", "date-time")]


def test_templates_are_valid_and_accepted_fast():
    assert all(not validation_errors(t) for t in TEMPLATES)
    assert all(fast_valid(t) for t in TEMPLATES)


junk_lines = st.one_of(
    st.binary(max_size=40).map(lambda b: b.replace(b"\n", b" ")),
    st.text(max_size=40).map(lambda t: t.replace("\n", " ").replace("\r", " ").encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    mutated_records().map(lambda r: json.dumps(r).encode()),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(junk=st.lists(junk_lines, max_size=12), torn=st.booleans(), blank=st.integers(0, 2))
def test_junk_never_crashes_and_every_line_is_accounted_for(tmp_path_factory, junk, torn, blank):
    tmp = tmp_path_factory.mktemp("junk")
    good = [
        new_record(
            session_id="g",
            http_status=200,
            complete=True,
            request={"messages": MESSAGES[:2], "tools": AGENT_TOOLS},
            response={"choices": [{"message": MESSAGES[2]}]},
            finish_reason="tool_calls",
        )
    ]
    lines = [json.dumps(r).encode() for r in good] + list(junk)
    body = b"".join(line + b"\n" for line in lines) + b"\n" * blank
    if torn:
        body += b'{"schema_version": 1'
    (tmp / "t.jsonl").write_bytes(body)
    report = curate.run([tmp / "t.jsonl"], tmp / "out", Config(progress=False))
    ex, sm = report.data["exchanges"], report.data["samples"]
    nonblank = sum(1 for line in lines if line.strip()) + torn
    assert ex["in"] == nonblank == ex["kept"] + ex["rejected"] + ex["deduplicated"]
    assert sm["in"] == sm["kept"] + sm["rejected"] + sm["deduplicated"]
    rejects = [json.loads(line) for line in (tmp / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len([r for r in rejects if r["unit"] == "exchange"]) == ex["rejected"] + ex["deduplicated"]
    split = report.data["split"]
    written = sum(len(Path(p).read_text().splitlines()) for p in split["files"].values())
    assert written == sum(split["lines"][name] for name in ("train", "valid", "test"))
    assert split["train"] + split["valid"] + split["test"] == sm["kept"]


@pytest.mark.parametrize("value", ["2026-11-21T16:04:05.123456Z", "2026-11-21T16:04:05+02:00"])
def test_proxy_style_timestamps_take_the_fast_path(value):
    assert date_time_ok(value)
