"""curate, stage by stage, on crafted trace files (records built with core.trace.new_record).

Every test runs the real pipeline (`curate.run`) on real files and checks the written outputs, the report
and rejects.jsonl; `accounted` asserts the accounting identities on every run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import curate
from agent.tools import AGENT_TOOLS
from core.samples import per_turn_samples
from core.trace import new_record
from curate import Config
from curate.markers import DEFAULT_MARKERS
from curate.textcalls import detect_format, parse_text_calls

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = {"role": "system", "content": "You are a coding agent."}
TOOL_NAMES = {t["function"]["name"]: t["function"]["parameters"] for t in AGENT_TOOLS}


# ------------------------------------------------------------------------------------------------ helpers


def call(name: str, args, call_id: str | None = None) -> dict:
    arguments = args if isinstance(args, str) else json.dumps(args)
    return {
        "id": call_id or f"call_{name}_{abs(hash(arguments)) % 10**8}",
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def assistant(*calls: dict, content=None) -> dict:
    message = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = list(calls)
    return message


def tool_result(tool_call: dict, content: str = "ok") -> dict:
    return {"role": "tool", "tool_call_id": tool_call["id"], "content": content}


def exchange(
    messages: list[dict], reply: dict | None, session: str | None = None, tools=AGENT_TOOLS, **fields
) -> dict:
    """A complete, successful exchange: the agent sent `messages`, the server answered `reply`."""
    finish = "tool_calls" if reply and reply.get("tool_calls") else "stop"
    values = {
        "session_id": session,
        "http_status": 200,
        "complete": True,
        "upstream": "http://127.0.0.1:8080",
        "request": {"model": "m", "messages": messages, "tools": tools},
        "response": {"choices": [{"index": 0, "finish_reason": finish, "message": reply}]} if reply else None,
        "finish_reason": finish if reply else None,
    }
    values.update(fields)
    return new_record(**values)


def agent_loop(
    user: str,
    replies: list[dict],
    session: str | None = None,
    results: dict | None = None,
    system=SYSTEM,
    tools=AGENT_TOOLS,
) -> list[dict]:
    """The exchanges of one agent run: request N+1 = request N + reply N + a tool result per call."""
    messages = [system, {"role": "user", "content": user}] if system else [{"role": "user", "content": user}]
    records = []
    for reply in replies:
        records.append(exchange(messages, reply, session, tools=tools))
        messages = [*messages, reply] + [
            tool_result(c, (results or {}).get(c["id"], "file contents"))
            for c in reply.get("tool_calls") or []
        ]
    return records


def write_lines(path: Path, items) -> Path:
    """Write records (dicts → JSON) and raw strings (written as given) as lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for item in items:
            handle.write(item if isinstance(item, str) else json.dumps(item) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def per_turn_lines(sample: dict) -> list[dict]:
    """The per-turn lines a written line stands for: itself, or a session line's supervised turns, each with
    the meta a per-turn line has (what `sessions = false` writes)."""
    if "supervise" not in sample:
        return [sample]
    meta = sample["meta"]
    return [
        {**turn, "meta": {"session_id": meta["session_id"], "head": meta["head"], **turn_meta}}
        for turn, turn_meta in zip(per_turn_samples(sample), meta["turns"], strict=True)
    ]


def in_order(samples: list[dict]) -> list[dict]:
    """Samples by head and turn (a split file holds its per-turn lines, then its session lines)."""
    return sorted(samples, key=lambda s: (s["meta"]["head"], s["meta"]["turn"]))


def read_samples(out: Path, splits=("train", "valid", "test")) -> list[dict]:
    """Every sample written, one per supervised turn."""
    return [
        t for split in splits for line in read_jsonl(out / f"{split}.jsonl") for t in per_turn_lines(line)
    ]


def accounted(report) -> dict:
    ex, sm = report.data["exchanges"], report.data["samples"]
    assert ex["in"] == ex["kept"] + ex["rejected"] + ex["deduplicated"] and ex["identity_holds"]
    assert sm["in"] == sm["kept"] + sm["rejected"] + sm["deduplicated"] and sm["identity_holds"]
    assert sum(report.split_counts.values()) == sm["kept"]
    return report.data


# what differs between a run with session lines and one without: the lines, never a sample's fate
LAYOUT_KEYS = ("inputs", "out_dir", "config", "sessions", "split", "rejects_file", "config_file", "timings_s")


def run_curate(tmp_path: Path, items, name="traces/a.jsonl", **config):
    """curate.run on `items` (sessions, the default, unless `config` says): the report, the samples written
    (one per supervised turn) and rejects.jsonl. With the default, the same run with `sessions = false` must
    write the same samples, per-turn, and the same rejects and funnel."""
    write_lines(tmp_path / name, items)
    out = tmp_path / "out"
    report = curate.run([tmp_path / "traces"], out, Config(progress=False, **config))
    accounted(report)
    samples, rejects = read_samples(out), read_jsonl(out / "rejects.jsonl")
    if "sessions" not in config:
        per_turn = curate.run(
            [tmp_path / "traces"], tmp_path / "per-turn", Config(progress=False, sessions=False, **config)
        )
        for split in ("train", "valid", "test"):
            expected = read_jsonl(tmp_path / "per-turn" / f"{split}.jsonl")
            assert in_order(read_samples(out, [split])) == in_order(expected), split
            assert report.data["split"]["lines"][split] == sum(1 for _ in read_jsonl(out / f"{split}.jsonl"))
            assert per_turn.data["split"]["lines"][split] == len(expected)
        assert (out / "test.jsonl").exists() == (tmp_path / "per-turn" / "test.jsonl").exists()
        if (out / "test.jsonl").exists():
            assert (out / "test.jsonl").read_text() == (tmp_path / "per-turn" / "test.jsonl").read_text()
        assert (tmp_path / "per-turn" / "rejects.jsonl").read_text() == (out / "rejects.jsonl").read_text()
        for key in set(report.data) - set(LAYOUT_KEYS):
            if key == "verified_from_files":  # read back from the files: the same but for the lines
                assert report.data[key]["lines"] == report.data["split"]["lines"]
                assert {**report.data[key], "lines": None} == {**per_turn.data[key], "lines": None}
            else:
                assert report.data[key] == per_turn.data[key], key
        assert report.split_counts == per_turn.split_counts
    return report, samples, rejects


def simple_session(session: str, path: str = "a.py", user: str | None = None) -> list[dict]:
    first = call("read_file", {"path": path}, f"c1-{session}")
    return agent_loop(
        user or f"Read {path}.", [assistant(first), assistant(content=f"{path} holds code.")], session
    )


# ------------------------------------------------------------------------------------------------ stage 1


def test_bad_lines_are_rejected_with_reason_and_location(tmp_path):
    good = simple_session("s1")
    wrong_type = exchange([SYSTEM, {"role": "user", "content": "hi"}], assistant(content="hello"), "s2")
    wrong_type["http_status"] = "200"
    unknown_version = exchange([SYSTEM, {"role": "user", "content": "hi"}], assistant(content="hello"), "s3")
    unknown_version["schema_version"] = 2
    report, samples, rejects = run_curate(
        tmp_path,
        [
            *good,
            "this is not json\n",
            "[1, 2]\n",
            wrong_type,
            "\n",
            unknown_version,
            '{"schema_version": 1, "id": "torn',
        ],
    )
    by_reason = {r["reason"]: r for r in rejects if r["unit"] == "exchange" and r["stage"] == "1 validate"}
    assert set(by_reason) == {
        "not_json",
        "not_object",
        "schema_invalid",
        "unknown_schema_version",
        "torn_line",
    }
    assert by_reason["not_json"]["source"].endswith("a.jsonl:3")
    assert (
        by_reason["schema_invalid"]["detail"].startswith("http_status:")
        and "integer" in by_reason["schema_invalid"]["detail"]
    )
    assert by_reason["unknown_schema_version"]["detail"].startswith("schema_version: unknown version 2")
    assert by_reason["torn_line"]["source"].endswith("a.jsonl:8")
    data = report.data
    assert data["exchanges"]["in"] == 7 and data["stages"][0]["blank_lines_ignored"] == 1
    assert data["exchanges"]["rejected_by_reason"]["torn_line"] == 1
    assert len(samples) == 2  # the good session still made its samples


def test_http_errors_dropped_by_default_and_kept_on_request(tmp_path):
    messages = [SYSTEM, {"role": "user", "content": "Read a.py."}]
    failed = new_record(
        session_id="s",
        http_status=500,
        complete=True,
        request={"messages": messages, "tools": AGENT_TOOLS},
        error={"type": "upstream_error", "message": "HTTP 500"},
        flags=["http_error"],
    )
    records = [failed, *simple_session("s")]
    report, samples, rejects = run_curate(tmp_path, records)
    assert report.data["exchanges"]["rejected_by_reason"]["http_error"] == 1
    assert [r["source"].rsplit(":", 1)[1] for r in rejects if r["reason"] == "http_error"] == ["1"]
    assert len(samples) == 2
    report, samples, _ = run_curate(tmp_path / "keep", records, keep_http_errors=True)
    # kept, it is a prefix of the retried request's trajectory: deduplicated into it, not rejected
    assert "http_error" not in report.data["exchanges"]["rejected_by_reason"]
    assert report.data["exchanges"]["deduplicated"] == 2 and len(samples) == 2


def test_lost_and_truncated_responses_are_rejected_with_their_turns(tmp_path):
    messages = [SYSTEM, {"role": "user", "content": "Read a.py."}]
    lost_reply = assistant(content=None)
    lost = exchange(messages, lost_reply, "s", flags=["tool_calls_missing"], finish_reason="tool_calls")
    then = exchange(
        [*messages, lost_reply, {"role": "user", "content": "Please use the tool."}],
        assistant(call("read_file", {"path": "a.py"})),
        "s",
    )
    report, samples, rejects = run_curate(tmp_path, [lost, then])
    assert report.data["exchanges"]["rejected_by_reason"]["tool_calls_missing"] == 1
    sample_rejects = [r for r in rejects if r["unit"] == "sample"]
    assert [r["reason"] for r in sample_rejects] == ["source_exchange_rejected"]
    assert sample_rejects[0]["source"].endswith(":1") and sample_rejects[0]["head"].endswith(":2")
    assert (
        len(samples) == 1 and samples[0]["messages"][-1]["tool_calls"][0]["function"]["name"] == "read_file"
    )


# ------------------------------------------------------------------------------------------------ stage 2


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("with_session", [True, False])
def test_prefix_chains_stitch_into_one_trajectory(tmp_path, length, with_session):
    replies = [assistant(call("read_file", {"path": f"f{i}.py"}, f"c{i}")) for i in range(length - 1)] + [
        assistant(content="All read.")
    ]
    records = agent_loop("Read the files.", replies, "sess" if with_session else None)
    other = agent_loop(
        "List src.",
        [assistant(call("list_files", {"path": "src"}, "x1")), assistant(content="src has 2 files.")],
        "other" if with_session else None,
    )
    report, samples, rejects = run_curate(tmp_path, records + other)
    data = report.data
    assert data["stitching"]["trajectories"] == 2
    assert data["stitching"]["prefix_exchanges"] == length - 1 + 1
    assert data["exchanges"]["kept"] == 2 and data["exchanges"]["deduplicated"] == length
    assert len(samples) == length + 2
    prefix_rejects = [r for r in rejects if r["reason"] == "prefix_of_longer_exchange"]
    assert len(prefix_rejects) == length - 1 + 1 and all(
        "contained in" in r["detail"] for r in prefix_rejects
    )
    ends = sorted(len(s["messages"]) for s in samples if s["meta"]["head"].endswith(f":{length}"))
    assert ends == [3 + 2 * i for i in range(length)]  # one sample per turn, each ending on that turn


def test_canonicalisation_stitches_resent_history(tmp_path):
    """pydantic-ai re-sends history slightly differently: content "" vs null, other call ids, other
    argument formatting. The trajectory must still stitch."""
    user = {"role": "user", "content": "Read a.py."}
    first = assistant(call("read_file", '{"path": "a.py"}', "call_A"))
    resent = {
        "role": "assistant",
        "content": "",
        "tool_calls": [call("read_file", '{"path":"a.py"}', "pyd_ai_9f")],
    }
    records = [
        exchange([SYSTEM, user], first, None),
        exchange(
            [SYSTEM, user, resent, {"role": "tool", "tool_call_id": "pyd_ai_9f", "content": "x = 1"}],
            assistant(content="a.py sets x."),
            None,
        ),
    ]
    report, samples, _ = run_curate(tmp_path, records)
    assert report.data["stitching"] == {**report.data["stitching"], "trajectories": 1, "prefix_exchanges": 1}
    assert len(samples) == 2


def test_different_tool_sets_do_not_stitch(tmp_path):
    records = agent_loop(
        "Read a.py.", [assistant(call("read_file", {"path": "a.py"}, "c1")), assistant(content="done")], "s"
    )
    records[1]["request"]["tools"] = AGENT_TOOLS[:2]
    report, _, _ = run_curate(tmp_path, records)
    assert report.data["stitching"]["trajectories"] == 2


def test_identical_exchanges_recorded_twice_count_once(tmp_path):
    records = simple_session("s")
    report, samples, rejects = run_curate(tmp_path, records + [json.loads(json.dumps(records[-1]))])
    assert report.data["stitching"]["duplicate_exchanges"] == 1
    assert [r["reason"] for r in rejects if r["stage"] == "2 stitch"] == [
        "prefix_of_longer_exchange",
        "duplicate_exchange",
    ]
    assert len(samples) == 2


# ------------------------------------------------------------------------------------------------ stage 3


def test_every_turn_is_one_sample_and_final_answers_are_optional(tmp_path):
    records = agent_loop(
        "Read a.py then b.py.",
        [
            assistant(call("read_file", {"path": "a.py"}, "c1")),
            assistant(call("read_file", {"path": "b.py"}, "c2")),
            assistant(content="Both read."),
        ],
        "s",
    )
    report, samples, _ = run_curate(tmp_path, records)
    assert sorted(s["meta"]["turn"] for s in samples) == [2, 4, 6]
    assert all(s["messages"][-1]["role"] == "assistant" for s in samples)
    assert report.data["samples"]["by_kind"] == {"tool_call": 2, "final_answer": 1}
    report, samples, rejects = run_curate(tmp_path / "no-final", records, include_final_answers=False)
    assert len(samples) == 2 and [r["reason"] for r in rejects if r["unit"] == "sample"] == [
        "final_answer_excluded"
    ]


def test_parallel_tool_calls_are_one_sample(tmp_path):
    pair = assistant(call("read_file", {"path": "a.py"}, "p1"), call("read_file", {"path": "b.py"}, "p2"))
    report, samples, _ = run_curate(
        tmp_path, agent_loop("Read a.py and b.py.", [pair, assistant(content="Read both.")], "s")
    )
    first = next(s for s in samples if s["meta"]["turn"] == 2)
    assert [c["function"]["arguments"] for c in first["messages"][-1]["tool_calls"]] == [
        {"path": "a.py"},
        {"path": "b.py"},
    ]
    final = next(s for s in samples if s["meta"]["turn"] == 5)
    assert [m["tool_call_id"] for m in final["messages"] if m["role"] == "tool"] == ["p1", "p2"]
    assert report.data["tool_calls"]["outcomes"] == {"ok": 1}


def test_output_is_mlx_chat_format_with_object_arguments(tmp_path):
    _, samples, _ = run_curate(tmp_path, simple_session("s"))
    sample = next(s for s in samples if s["meta"]["kind"] == "tool_call")
    assert set(sample) == {"messages", "tools", "meta"} and sample["tools"] == AGENT_TOOLS
    tool_call = sample["messages"][-1]["tool_calls"][0]
    assert tool_call == {
        "id": "c1-s",
        "type": "function",
        "function": {"name": "read_file", "arguments": {"path": "a.py"}},
    }
    assert sample["meta"]["session_id"] == "s" and sample["meta"]["source"].endswith(":1")


# ------------------------------------------------------------------------------------------------ stage 4

MARKED = {
    "parenthesised": ("Read a.py (Example 12)", "Read a.py"),
    "this_is_example": ("Read a.py. This is example number 12.", "Read a.py."),
    "trailing_label": ("Read a.py, request 234", "Read a.py"),
    "leading_label": ("Sample #3: Read a.py", "Read a.py"),
    "inline_label": ("Read a.py variation 4 now", "Read a.py now"),
}


@pytest.mark.parametrize("pattern", list(MARKED))
def test_markers_are_stripped_and_counted(tmp_path, pattern):
    text, expected = MARKED[pattern]
    report, samples, _ = run_curate(tmp_path, simple_session("s", user=text))
    assert {s["messages"][1]["content"] for s in samples} == {expected}
    counts = report.data["markers"]["matches_per_pattern"]
    assert counts[pattern] >= 1 and sum(counts.values()) == counts[pattern]


def test_marker_only_prompt_is_dropped_and_custom_markers_apply(tmp_path):
    only_marker = simple_session("s1", user="(Example 7)")
    custom = simple_session("s2", user="Read b.py [batch 9]", path="b.py")
    redacted = simple_session("s3", user="Use key [REDACTED:api_key] to read c.py", path="c.py")
    report, samples, rejects = run_curate(
        tmp_path, only_marker + custom + redacted, extra_markers={"batch": r"\s*\[batch \d+\]"}
    )
    assert report.data["markers"]["samples_dropped"] == 2
    assert {r["reason"] for r in rejects if r["unit"] == "sample"} == {"empty_after_markers"}
    users = {s["messages"][1]["content"] for s in samples}
    assert users == {"Read b.py", "Use key [REDACTED:api_key] to read c.py"}  # redaction markers survive
    assert set(DEFAULT_MARKERS) <= set(report.data["markers"]["matches_per_pattern"])


# ------------------------------------------------------------------------------------------------ stage 5

TEXT_CALLS = {
    "tool_call_prefix": 'I\'ll read the file.\n\nTool call: {"function": {"name": "read_file", "arguments": "{\\"path\\": \\"a.py\\"}"}}',
    "fenced_json": 'Reading it now.\n```json\n{"name": "read_file", "arguments": {"path": "a.py"}}\n```',
    "tool_call_tag": '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>',
    "function_xml": "<tool_call>\n<function=read_file>\n<parameter=path>\na.py\n</parameter>\n</function>\n</tool_call>",
    "bare_json": '{"name": "read_file", "arguments": {"path": "a.py"}}',
}


@pytest.mark.parametrize("fmt", list(TEXT_CALLS))
def test_text_about_tools_is_converted_to_structured_calls(tmp_path, fmt):
    assert detect_format(TEXT_CALLS[fmt]) == fmt
    records = agent_loop("Read a.py.", [assistant(content=TEXT_CALLS[fmt])], "s")
    report, samples, _ = run_curate(tmp_path, records)
    (sample,) = samples
    last = sample["messages"][-1]
    assert last["tool_calls"][0]["function"] == {"name": "read_file", "arguments": {"path": "a.py"}}
    assert "<tool_call>" not in last["content"] and "Tool call" not in last["content"]
    tt = report.data["text_tool_calls"]
    assert tt["messages_by_format"] == {fmt: {"converted": 1}} and tt["samples_converted_kept"] == 1


def test_text_about_tools_that_cannot_be_converted_is_rejected(tmp_path):
    cases = {
        "unknown_tool": 'Tool call: {"name": "delete_everything", "arguments": {}}',
        "unparseable": "<tool_call>\n{not json at all\n</tool_call>",
        "bad_arguments": '<tool_call>\n{"name": "read_file", "arguments": "path=a.py"}\n</tool_call>',
    }
    records = [
        r
        for i, text in enumerate(cases.values())
        for r in agent_loop(f"Task {i}.", [assistant(content=text)], f"s{i}")
    ]
    report, samples, rejects = run_curate(tmp_path, records)
    assert samples == []
    assert sorted(r["reason"] for r in rejects if r["unit"] == "sample") == sorted(
        f"text_tool_call_{k}" for k in cases
    )
    assert report.data["text_tool_calls"]["samples_rejected"] == 3
    assert report.failure_reason().startswith("no usable samples")


def test_text_tool_policy_reject(tmp_path):
    records = agent_loop("Read a.py.", [assistant(content=TEXT_CALLS["tool_call_tag"])], "s")
    _, samples, rejects = run_curate(tmp_path, records, text_tool_calls="reject")
    assert samples == [] and rejects[-1]["reason"] == "text_tool_call_rejected"


def test_parse_text_calls_units():
    parsed = parse_text_calls(
        TEXT_CALLS["function_xml"].replace("a.py", "x.py"), {"read_file": TOOL_NAMES["read_file"]}
    )
    assert parsed.status == "converted" and parsed.calls == [("read_file", {"path": "x.py"})]
    run = '<function=run_command>\n<parameter=command>\npytest\n</parameter>\n<parameter=args>\n["-q"]\n</parameter>\n</function>'
    parsed = parse_text_calls(run, TOOL_NAMES)
    assert parsed.calls == [("run_command", {"command": "pytest", "args": ["-q"]})]
    two = TEXT_CALLS["tool_call_tag"] + "\n" + TEXT_CALLS["tool_call_tag"].replace("a.py", "b.py")
    assert [c[1]["path"] for c in parse_text_calls(two, TOOL_NAMES).calls] == ["a.py", "b.py"]
    assert parse_text_calls("I'd use <tool_call> here <function=x>", TOOL_NAMES).status != "converted"


# ------------------------------------------------------------------------------------------------ stage 6


def test_invalid_calls_are_rejected(tmp_path):
    cases = {
        "unknown_tool": call("delete_file", {"path": "a.py"}),
        "arguments_not_json": call("read_file", '{"path": "a.py"'),
        "arguments_not_object": call("read_file", '["a.py"]'),
        "arguments_schema_invalid": call("write_file", {"path": "a.py"}),  # content is required
    }
    records = [
        r for i, c in enumerate(cases.values()) for r in agent_loop(f"Task {i}.", [assistant(c)], f"s{i}")
    ]
    report, samples, rejects = run_curate(tmp_path, records)
    assert samples == []
    by_reason = {r["reason"]: r["detail"] for r in rejects if r["unit"] == "sample"}
    assert set(by_reason) == set(cases)
    assert (
        "content" in by_reason["arguments_schema_invalid"]
        and "required" in by_reason["arguments_schema_invalid"]
    )
    assert report.data["tool_calls"]["invalid"] == dict.fromkeys(cases, 1)


def test_no_tools_in_request_means_unknown_tool(tmp_path):
    records = agent_loop("Read a.py.", [assistant(call("read_file", {"path": "a.py"}))], "s", tools=None)
    _, samples, rejects = run_curate(tmp_path, records)
    assert samples == [] and rejects[-1]["reason"] == "unknown_tool"


PYDANTIC_RETRY = (
    '1 validation error:\n```json\n[\n  {\n    "type": "missing",\n    "loc": [\n      "path"\n    ],\n'
    '    "msg": "Field required",\n    "input": {}\n  }\n]\n```\n\nFix the errors and try again.'
)


def test_retry_prompt_after_a_call_marks_it_failed(tmp_path):
    bad = call("read_file", {"file": "a.py"}, "bad1")  # valid JSON, but pydantic-ai's schema needed "path"
    good = call("read_file", {"path": "a.py"}, "good1")
    records = agent_loop(
        "Read a.py.",
        [assistant(bad), assistant(good), assistant(content="a.py read.")],
        "s",
        results={"bad1": PYDANTIC_RETRY},
    )
    records[0]["request"]["tools"] = records[1]["request"]["tools"] = records[2]["request"]["tools"] = [
        {
            "type": "function",
            "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}},
        }
    ]  # a permissive schema, so only the outcome can tell the call failed
    report, samples, rejects = run_curate(tmp_path, records)
    assert [r["reason"] for r in rejects if r["unit"] == "sample"] == ["failed_call"]
    assert sorted(s["meta"]["turn"] for s in samples) == [4, 6]
    assert report.data["tool_calls"]["outcomes"] == {"failed": 1, "ok": 1}
    report, samples, _ = run_curate(tmp_path / "keep", records, keep_failed=True)
    assert len(samples) == 3


def test_tool_error_result_and_user_retry_mark_failures(tmp_path):
    crash = call("run_command", {"command": "pytest", "args": []}, "r1")
    records = agent_loop(
        "Run the tests.",
        [assistant(crash), assistant(content="Tests pass.")],
        "s",
        results={"r1": "Error: command not found"},
    )
    answer = assistant(content="plain text")
    retry_user = {
        "role": "user",
        "content": "Validation feedback:\nPlease return structured output\n\nFix the errors and try again.",
    }
    records += [
        exchange([SYSTEM, {"role": "user", "content": "Say hi."}], answer, "t"),
        exchange(
            [SYSTEM, {"role": "user", "content": "Say hi."}, answer, retry_user], assistant(content="hi"), "t"
        ),
    ]
    _, samples, rejects = run_curate(tmp_path, records)
    assert sorted(r["reason"] for r in rejects if r["unit"] == "sample") == [
        "failed_call",
        "failed_final_answer",
    ]
    assert {s["messages"][-1]["content"] for s in samples} == {"Tests pass.", "hi"}


# ------------------------------------------------------------------------------------------------ stage 7


def test_exact_and_near_duplicates(tmp_path):
    records = simple_session("s1") + simple_session("s2")  # identical conversations, two sessions
    near = agent_loop(
        "read a.py!",
        [assistant(call("read_file", {"path": "a.py"}, "n1"))],
        "s3",
        system={"role": "system", "content": "Another prompt."},
    )
    different = simple_session("s4", path="b.py", user="Read a.py.")  # same intent, another call: kept
    report, samples, rejects = run_curate(tmp_path, records + near + different)
    dedupe = report.data["dedupe"]
    assert dedupe["exact"] == {"dropped": 2, "clusters_with_duplicates": 2}
    assert dedupe["near"]["dropped"] == 1
    assert {r["reason"] for r in rejects if r["unit"] == "sample"} == {"exact_duplicate", "near_duplicate"}
    assert any(r["reason"] == "all_samples_duplicate" for r in rejects if r["unit"] == "exchange")
    assert dedupe["examples"] and dedupe["examples"][0]["kept"].endswith(".jsonl:2 turn 2")
    assert len(samples) == 2 + 2


def test_near_duplicates_kept_share_a_split(tmp_path):
    records = []
    for i in range(12):
        records += simple_session(
            f"s{i}", path=f"f{i % 3}.py", user=f"Read f{i % 3}.py." + " please" * (i // 3)
        )
    # same intent + call across sessions (user text differs only in "please"s? no: normalised intents differ)
    for i in range(4):  # the same intent and call in four sessions with different histories
        records += agent_loop(
            "Run the tests.",
            [assistant(call("run_command", {"command": "pytest", "args": []}, f"t{i}"))],
            f"t{i}",
            system={"role": "system", "content": f"Prompt {i}"},
        )
    report, samples, _ = run_curate(tmp_path, records, near_duplicates_keep=0, seed=3)
    tests_runs = [s for s in samples if s["meta"]["session_id"].startswith("t")]
    out = tmp_path / "out"
    where = {
        json.dumps(s, sort_keys=True): split
        for split in ("train", "valid", "test")
        for s in read_jsonl(out / f"{split}.jsonl")
    }
    assert len(tests_runs) == 4 and len({where[json.dumps(s, sort_keys=True)] for s in tests_runs}) == 1


# ------------------------------------------------------------------------------------------------ stage 8


def test_split_is_deterministic_and_sessions_never_straddle(tmp_path):
    records = [r for i in range(40) for r in simple_session(f"s{i}", path=f"p{i}.py")]
    write_lines(tmp_path / "traces" / "a.jsonl", records)

    def splits(seed, out):
        report = curate.run([tmp_path / "traces"], tmp_path / out, Config(progress=False, seed=seed))
        accounted(report)
        return {
            split: sorted(s["meta"]["session_id"] for s in read_samples(tmp_path / out, [split]))
            for split in ("train", "valid", "test")
        }

    first, again, other = splits(1, "a"), splits(1, "b"), splits(2, "c")
    assert first == again and first != other
    sessions = [set(v) for v in first.values()]
    assert not (sessions[0] & sessions[1] or sessions[0] & sessions[2] or sessions[1] & sessions[2])
    assert [len(first[k]) for k in ("train", "valid", "test")] == [64, 8, 8]


def test_tiny_inputs_still_get_train_and_valid(tmp_path):
    report, _, _ = run_curate(tmp_path, simple_session("s1"))
    assert report.split_counts == {"train": 2, "valid": 0, "test": 0}
    assert "one session" in report.data["split"]["notes"][0]
    assert not (tmp_path / "out" / "valid.jsonl").exists()  # mlx-lm's loader fails on an empty file
    report, _, _ = run_curate(tmp_path / "two", simple_session("s1") + simple_session("s2", path="b.py"))
    assert report.split_counts["train"] == 2 and report.split_counts["valid"] == 2


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_help_has_an_example():
    result = subprocess.run(
        [sys.executable, "-m", "curate", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert "python -m curate traces/ data/" in result.stdout and "--markers-file" in result.stdout


def test_cli_runs_and_fails_clearly_when_nothing_is_usable(tmp_path):
    traces = write_lines(
        tmp_path / "traces" / "a.jsonl",
        [r for i in range(3) for r in simple_session(f"s{i}", path=f"{i}.py")],
    )
    markers = tmp_path / "markers.txt"
    markers.write_text("# extra\n(?i)\\bplease\\b\n")
    config = tmp_path / "curate.toml"
    config.write_text("seed = 4\nsplit = [0.5, 0.5, 0.0]\n")
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "curate",
            str(traces),
            str(tmp_path / "out"),
            "--config",
            str(config),
            "--markers-file",
            str(markers),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["config"]["seed"] == 4 and "markers.txt:2" in report["markers"]["patterns"]
    junk = write_lines(tmp_path / "junk" / "j.jsonl", ["nope\n", "[]\n"])
    bad = subprocess.run(
        [sys.executable, "-m", "curate", str(junk), str(tmp_path / "out2")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("curate: no usable samples: 2 lines in, 2 rejected")
    missing = subprocess.run(
        [sys.executable, "-m", "curate", str(tmp_path / "nope"), str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert missing.returncode == 2 and "no such trace file" in missing.stderr
    bad_config = tmp_path / "bad.toml"
    bad_config.write_text("sede = 1\n")
    wrong = subprocess.run(
        [sys.executable, "-m", "curate", str(traces), str(tmp_path / "o"), "--config", str(bad_config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert wrong.returncode == 2 and "unknown setting 'sede'" in wrong.stderr


def test_rejects_file_lists_every_non_kept_line_and_sample(tmp_path):
    records = simple_session("s1") + ["garbage\n"] + agent_loop("Go.", [assistant(call("nope", {}))], "s2")
    report, samples, rejects = run_curate(tmp_path, records)
    ex, sm = report.data["exchanges"], report.data["samples"]
    assert len([r for r in rejects if r["unit"] == "exchange"]) == ex["rejected"] + ex["deduplicated"]
    assert len([r for r in rejects if r["unit"] == "sample"]) == sm["rejected"] + sm["deduplicated"]
    assert all(r["source"] or r["head"] for r in rejects)


def test_parallel_pass_one_gives_the_same_result(tmp_path):
    """Pass 1 in two worker processes (what large inputs get) writes exactly what one process writes."""
    records = [r for i in range(30) for r in simple_session(f"s{i}", path=f"p{i}.py")] + ["junk\n"]
    write_lines(tmp_path / "traces" / "a.jsonl", records[:40])
    write_lines(tmp_path / "traces" / "b.jsonl", records[40:])
    outputs = []
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        report = curate.run(
            [tmp_path / "traces"], out, Config(progress=False, workers=workers, batch_bytes=4096)
        )
        accounted(report)
        outputs.append(
            {
                name: (out / name).read_text()
                for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "rejects.jsonl")
            }
        )
    assert outputs[0] == outputs[1]


def test_values_orjson_refuses_do_not_crash(tmp_path):
    """Schema-valid records with integers beyond 64 bits and NaN (accepted by the reference path)."""
    big = call("write_file", {"path": "a.py", "content": "x"}, "b1")
    big["function"]["arguments"] = '{"path": "a.py", "content": "x", "n": 123456789012345678901234567890}'
    nan = call("write_file", '{"path": "b.py", "content": NaN}', "n1")
    tools = [{**AGENT_TOOLS[1], "function": {**AGENT_TOOLS[1]["function"], "x-max": 2**70}}]
    lines = [json.dumps(r) + "\n" for r in agent_loop("Write a.py.", [assistant(big)], "s1", tools=tools)]
    lines += [json.dumps(r) + "\n" for r in agent_loop("Write b.py.", [assistant(nan)], "s2")]
    report, samples, rejects = run_curate(tmp_path, lines)
    assert report.data["exchanges"]["in"] == 2
    assert [s["messages"][-1]["tool_calls"][0]["function"]["arguments"]["n"] for s in samples] == [
        123456789012345678901234567890
    ]
    assert [r["reason"] for r in rejects if r["unit"] == "sample"] == [
        "arguments_schema_invalid"
    ]  # NaN → null content


def test_a_trajectory_repeating_a_call_keeps_its_repeats(tmp_path):
    """Running the tests again after an edit is not a near duplicate; the same run in another session is."""
    run_tests = lambda i: call("run_command", {"command": "pytest", "args": ["-q"]}, f"t{i}")  # noqa: E731
    edit = call("write_file", {"path": "a.py", "content": "x = 2"}, "w1")
    replies = [assistant(run_tests(1)), assistant(edit), assistant(run_tests(2)), assistant(content="Fixed.")]
    first = agent_loop("Fix the failing test.", replies, "s1")
    again = agent_loop(
        "Fix the failing test!",
        [assistant(run_tests(3))],
        "s2",
        system={"role": "system", "content": "Other."},
    )
    report, samples, rejects = run_curate(tmp_path, first + again)
    assert sorted(s["meta"]["turn"] for s in samples if s["meta"]["session_id"] == "s1") == [2, 4, 6, 8]
    assert [(r["reason"], r["head"].rsplit(":", 1)[1]) for r in rejects if r["unit"] == "sample"] == [
        ("near_duplicate", "5")
    ]
    example = report.data["dedupe"]["examples"][0]
    assert example["kept"].endswith(":4 turn 2") and example["target"].startswith("run_command")


def test_content_parts_developer_role_and_images(tmp_path):
    parts = [{"type": "text", "text": "Read"}, {"type": "text", "text": "a.py."}]
    developer = {"role": "developer", "content": "You are a coding agent."}
    text_only = agent_loop(
        "x", [assistant(call("read_file", {"path": "a.py"}, "p1"))], "s1", system=developer
    )
    text_only[0]["request"]["messages"][1]["content"] = parts
    image = agent_loop("x", [assistant(call("read_file", {"path": "b.py"}, "p2"))], "s2")
    image[0]["request"]["messages"][1]["content"] = [
        *parts,
        {"type": "image_url", "image_url": {"url": "data:"}},
    ]
    _, samples, rejects = run_curate(tmp_path, text_only + image)
    (sample,) = samples
    assert sample["messages"][0]["role"] == "system" and sample["messages"][1]["content"] == "Read\na.py."
    assert [r["reason"] for r in rejects if r["unit"] == "sample"] == ["non_text_content"]


def test_json_answers_are_not_mistaken_for_tool_calls(tmp_path):
    answer = '{"name": "Alice", "age": 3}'
    fenced = 'Config:\n```json\n{"name": "app", "debug": true}\n```\nand the call:\n```json\n{"name": "read_file", "arguments": {"path": "a.py"}}\n```'
    records = agent_loop("Give me JSON.", [assistant(content=answer)], "s1")
    records += agent_loop("Show config, then read a.py.", [assistant(content=fenced)], "s2")
    report, samples, rejects = run_curate(tmp_path, records)
    by_session = {s["meta"]["session_id"]: s["messages"][-1] for s in samples}
    assert by_session["s1"] == {"role": "assistant", "content": answer}
    assert by_session["s2"]["tool_calls"][0]["function"]["arguments"] == {"path": "a.py"}
    assert '"debug": true' in by_session["s2"]["content"] and '"read_file"' not in by_session["s2"]["content"]
    assert report.data["text_tool_calls"]["json_answers_left_alone"] == 1 and not rejects


def test_output_dir_inside_the_traces_dir_is_not_read_back(tmp_path):
    write_lines(tmp_path / "traces" / "a.jsonl", simple_session("s1") + simple_session("s2", path="b.py"))
    for _ in range(2):
        report = curate.run([tmp_path / "traces"], tmp_path / "traces" / "data", Config(progress=False))
        assert accounted(report)["exchanges"]["in"] == 4 and report.kept == 4
