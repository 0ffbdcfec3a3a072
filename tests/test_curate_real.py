"""curate on real traffic and real templates.

- Traces recorded by the real proxy (`python -m proxy` as a child process) from real pydantic-ai agent
  sessions (agent.episodes): against the scripted demonstrator (agent.teacher, a real HTTP server with
  solve / flaky / lost-call policies and streaming) and against a real `mlx_lm server` serving the tiny
  tool-calling model.
- Curated samples rendered through the tiny model's chat template and tokenized by mlx-lm's own
  ChatDataset (what training sees), and round-tripped through the model's tool parser.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_curate import in_order, read_samples

import curate
from agent.tools import AGENT_TOOLS
from core.trace import new_record, read_records
from curate import Config
from curate.report import sessions_line


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def written_samples(out: Path) -> list[dict]:
    """Every sample written, one per supervised turn (a session line stands for its turns' per-turn samples)."""
    return read_samples(out)


def accounted(report) -> None:
    ex, sm = report.data["exchanges"], report.data["samples"]
    assert ex["in"] == ex["kept"] + ex["rejected"] + ex["deduplicated"]
    assert sm["in"] == sm["kept"] + sm["rejected"] + sm["deduplicated"]


def crafted_traces(directory: Path) -> Path:
    """Two sessions: a tool call with parallel calls, a write with nested JSON content, final answers."""
    directory.mkdir(parents=True, exist_ok=True)
    system = {"role": "system", "content": "You are a coding agent."}
    records = []

    def exchange(session: str, messages: list[dict], reply: dict, finish_reason: str) -> dict:
        return new_record(
            session_id=session,
            http_status=200,
            complete=True,
            request={"messages": messages, "tools": AGENT_TOOLS},
            response={"choices": [{"message": reply}]},
            finish_reason=finish_reason,
        )

    for session, user, calls in [
        ("s1", "Read a.py and b.py.", [("read_file", {"path": "a.py"}), ("read_file", {"path": "b.py"})]),
        ("s2", 'Write {"k": 1} to c.json.', [("write_file", {"path": "c.json", "content": '{"k": 1}'})]),
    ]:
        tool_calls = [
            {"id": f"{session}-{i}", "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, (n, a) in enumerate(calls)
        ]
        reply = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        messages = [system, {"role": "user", "content": user}]
        records.append(exchange(session, messages, reply, "tool_calls"))
        messages = [
            *messages,
            reply,
            *({"role": "tool", "tool_call_id": c["id"], "content": "done"} for c in tool_calls),
        ]
        records.append(exchange(session, messages, {"role": "assistant", "content": "Finished."}, "stop"))
    path = directory / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_samples_render_through_the_tiny_template_and_mlx_chat_dataset(tiny_model, tmp_path):
    from mlx_lm.tuner.datasets import ChatDataset

    from core.toolcalls import load_tokenizer, round_trip

    # what plain `mlx_lm lora` reads: per-turn samples (--per-turn; session lines are train's own format)
    traces = crafted_traces(tmp_path / "traces")
    report = curate.run([traces], tmp_path / "out", Config(progress=False, sessions=False))
    accounted(report)
    samples = [
        s for split in ("train", "valid", "test") for s in read_jsonl(tmp_path / "out" / f"{split}.jsonl")
    ]
    assert len(samples) == 4
    tokenizer = load_tokenizer(tiny_model)
    dataset = ChatDataset(samples, tokenizer, mask_prompt=True)  # the extra "meta" key is ignored
    for index, sample in enumerate(samples):
        tokens, offset = dataset.process(dataset[index])
        supervised = tokenizer.decode(tokens[offset:])
        last = sample["messages"][-1]
        if last.get("tool_calls"):
            for tool_call in last["tool_calls"]:
                # an object renders once as JSON; a string would have been double-encoded ("{\"path\"...")
                assert f'"arguments": {json.dumps(tool_call["function"]["arguments"])}' in supervised
                assert '"arguments": "' not in supervised
            assert supervised.count("<tool_call>") == len(last["tool_calls"])
        else:
            assert last["content"] in supervised and "<tool_call>" not in supervised
        result = round_trip(tokenizer, sample["messages"], sample["tools"])
        assert result.ok, result.reason


def test_model_check_round_trip_and_length(tiny_model, tmp_path):
    traces = crafted_traces(tmp_path / "traces")
    # a write whose content contains the tool-call end tag: rendered, the parser cuts the call short
    system = {"role": "system", "content": "You are a coding agent."}
    reply = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "w",
                "type": "function",
                "function": {
                    "name": "write_file",
                    "arguments": json.dumps({"path": "t.md", "content": "use </tool_call> to end"}),
                },
            }
        ],
    }
    record = new_record(
        session_id="s3",
        http_status=200,
        complete=True,
        finish_reason="tool_calls",
        request={
            "messages": [system, {"role": "user", "content": "Document the tag."}],
            "tools": AGENT_TOOLS,
        },
        response={"choices": [{"message": reply}]},
    )
    with open(traces, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    report = curate.run([traces], tmp_path / "out", Config(progress=False, model=str(tiny_model)))
    accounted(report)
    check = report.data["model_check"]
    assert check["checked"] == 5 and check["round_trip_failures"] == 1
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [r["reason"] for r in rejects if r["unit"] == "sample"] == ["round_trip_failed"]
    assert check["tokens_max"] > 0
    short = curate.run(
        [traces],
        tmp_path / "short",
        Config(progress=False, model=str(tiny_model), max_seq_length=check["tokens_max"] - 1),
    )
    accounted(short)
    assert short.data["model_check"]["longer_than_max_seq_length"] >= 1
    assert "too_long" in short.data["samples"]["rejected_by_reason"]


# ------------------------------------------------------------------------------------------- real traffic


def test_pydantic_ai_sessions_through_the_real_proxy(tmp_path):
    """Real pydantic-ai agent episodes, recorded by the real proxy: the trajectories stitch despite the
    agent re-sending history (ids, null contents, argument strings), retry prompts mark bad calls, a lost
    call is rejected, a streamed session stitches too, and everything renders through the tiny template."""
    from agent.episodes import run_episode, run_episodes
    from agent.tasks import load_suite
    from agent.teacher import Teacher
    from proxy import RecordingProxy

    suite = load_suite("default")
    by_template = {}
    for task in suite.train:
        by_template.setdefault(task.template, []).append(task)
    solve = [by_template[t][0] for t in ("read_value", "replace_value", "find_definition", "copy_value")]
    with Teacher(suite) as teacher, RecordingProxy(teacher.url, tmp_path / "traces") as recording:
        episodes = run_episodes(solve, recording.base_url, teacher.model_name, show_progress=False)
        episodes.append(
            run_episode(by_template["run_script"][0], recording.base_url, teacher.model_name, stream=True)
        )
        flaky = run_episode(by_template["read_value"][1], recording.base_url, teacher.model_name + ":flaky")
        lost = run_episode(by_template["say_word"][0], recording.base_url, teacher.model_name + ":lost-call")
        recording.stop()
        trace_file = recording.trace_file
    assert all(e.success for e in episodes), [(e.task_id, e.error) for e in episodes]
    assert flaky.retries >= 1 and not lost.success
    records = list(read_records([trace_file]))
    steps = sum(e.steps for e in episodes) + flaky.steps + lost.steps
    assert len(records) == steps

    report = curate.run([trace_file], tmp_path / "out", Config(progress=False))
    accounted(report)
    data = report.data
    # one trajectory per episode: every request but the last of each session is a prefix of it
    # every request of the lost-call episode (the first and pydantic-ai's retries) lost its call
    assert data["exchanges"]["rejected_by_reason"] == {"tool_calls_missing": lost.steps}
    sessions = len(episodes) + 1  # with a usable exchange
    assert data["stitching"]["sessions"] == data["stitching"]["trajectories"] == sessions
    assert data["exchanges"]["deduplicated_by_reason"] == {
        "prefix_of_longer_exchange": steps - lost.steps - sessions
    }
    # each solved episode: one sample per model request, all kept or deduplicated
    samples = written_samples(tmp_path / "out")
    per_session = {}
    for sample in samples:
        per_session[sample["meta"]["session_id"]] = per_session.get(sample["meta"]["session_id"], 0) + 1
    for episode in episodes:
        assert per_session.get(episode.session_id, 0) == episode.steps, episode.task_id
    # the flaky episode: its bad call was answered by pydantic-ai's retry prompt and is not trained on
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    flaky_rejects = [r for r in rejects if r["unit"] == "sample" and r["kind"] == "tool_call"]
    assert len(flaky_rejects) == flaky.invalid_calls >= 1
    assert {r["reason"] for r in flaky_rejects} <= {
        "failed_call",
        "arguments_schema_invalid",
        "unknown_tool",
        "arguments_not_json",
    }
    assert per_session.get(flaky.session_id, 0) == flaky.steps - flaky.invalid_calls
    history = next(
        s for s in samples if s["meta"]["session_id"] == flaky.session_id and s["meta"]["turn"] > 3
    )
    assert any(
        "Fix the errors and try again." in (m["content"] or "")
        for m in history["messages"]
        if m["role"] == "tool"
    )
    assert all(
        isinstance(c["function"]["arguments"], dict)
        for s in samples
        for m in s["messages"]
        for c in m.get("tool_calls") or []
    )


def test_tiny_model_agent_session_through_the_real_proxy(tool_server, tool_model, tmp_path):
    """A real pydantic-ai agent driving the real mlx_lm server (tiny tool-calling model) through the real
    proxy: whatever the tiny model does, every line is accounted for and every kept sample round-trips
    through the model's own template and parser."""
    from agent.episodes import run_episodes
    from agent.tasks import load_suite
    from core.toolcalls import load_tokenizer, round_trip
    from proxy import RecordingProxy

    suite = load_suite("default")
    tasks = suite.train[:4]
    with RecordingProxy(tool_server.url, tmp_path / "traces") as recording:
        episodes = run_episodes(
            tasks, recording.base_url, "default_model", show_progress=False, max_steps=4, max_tokens=96
        )
        recording.stop()
        trace_file = recording.trace_file
    records = list(read_records([trace_file]))
    assert len(records) == sum(e.steps for e in episodes) > 0
    report = curate.run([trace_file], tmp_path / "out", Config(progress=False, model=str(tool_model)))
    accounted(report)
    data = report.data
    assert data["exchanges"]["in"] == len(records)
    assert data["stitching"]["sessions"] == len(episodes)
    tokenizer = load_tokenizer(tool_model)
    for sample in written_samples(tmp_path / "out"):
        assert round_trip(tokenizer, sample["messages"], sample["tools"]).ok
    print(json.dumps({k: data[k] for k in ("exchanges", "samples", "stitching", "tool_calls")}, indent=1))


# ------------------------------------------------------------------------------------------- sessions


@pytest.fixture(scope="module")
def content_dropping_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a template that, like templates hiding earlier turns' reasoning, shows the text
    before an assistant turn's tool calls only while that turn is the last message: every per-turn sample
    renders consistently, a whole session does not."""
    out = tmp_path_factory.mktemp("content-dropping") / "model"
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    shown = "{{- '<|im_start|>assistant' }}\n        {%- if message.content %}"
    assert config["chat_template"].count(shown) == 1
    config["chat_template"] = config["chat_template"].replace(
        shown, shown.replace("message.content", "message.content and loop.last")
    )
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def session_traces(directory: Path) -> Path:
    """Four two-call sessions, each a read then a final answer; in s0 the call comes with text."""
    from test_curate import agent_loop, assistant, call, write_lines

    records = []
    for i in range(4):
        first = assistant(
            call("read_file", {"path": f"m{i}.py"}, f"c{i}"), content="Let me look." if i == 0 else None
        )
        replies = [
            first,
            assistant(call("read_file", {"path": f"n{i}.py"}, f"d{i}")),
            assistant(content=f"Done {i}."),
        ]
        records += agent_loop(f"Read m{i}.py and n{i}.py.", replies, f"s{i}")
    return write_lines(directory / "t.jsonl", records)


def test_sessions_are_checked_with_the_model_and_fall_back_per_trajectory(
    tiny_model, content_dropping_model, tmp_path
):
    from core.samples import supervised_spans
    from core.toolcalls import load_tokenizer

    traces = session_traces(tmp_path / "traces")
    settings = dict(progress=False, split=(1.0, 0.0, 0.0))
    plain = curate.run([traces], tmp_path / "plain", Config(model=str(tiny_model), **settings))
    accounted(plain)
    sessions = plain.data["sessions"]
    assert (sessions["whole"], sessions["turns_in_sessions"], sessions["fallbacks"]) == (4, 12, {})
    assert sessions["model_check"]["checked"] == 4 and plain.data["split"]["lines"]["train"] == 4
    tokenizer = load_tokenizer(tiny_model)
    for line in read_jsonl(tmp_path / "plain" / "train.jsonl"):
        assert len(supervised_spans(tokenizer, line).spans) == len(line["supervise"]) == 3

    dropping = curate.run(
        [traces], tmp_path / "dropping", Config(model=str(content_dropping_model), **settings)
    )
    accounted(dropping)
    sessions = dropping.data["sessions"]
    assert sessions["whole"] == 3 and sessions["fallback_turns"] == 3
    assert list(sessions["fallbacks"].items()) == [
        (
            "its prompt's tokens are not a prefix of the whole conversation's tokens (the chat template rewrites "
            "earlier turns)",
            1,
        )
    ]
    lines = read_jsonl(tmp_path / "dropping" / "train.jsonl")
    assert len(lines) == dropping.data["split"]["lines"]["train"] == 3 + 3
    assert {line["meta"]["session_id"] for line in lines if "supervise" not in line} == {"s0"}
    # the same samples, as the per-turn run writes them; the funnel and every fate unchanged
    assert in_order(written_samples(tmp_path / "dropping")) == in_order(written_samples(tmp_path / "plain"))
    assert dropping.data["samples"] == plain.data["samples"]
    assert "1 fell back to per-turn samples (3 samples)" in sessions_line(sessions)

    # a session longer than max_seq_length (its samples kept: drop_too_long off) is written per-turn, as
    # train would split it: here s0, the longest
    longest = plain.data["sessions"]["model_check"]["tokens_max"]
    short = curate.run(
        [traces],
        tmp_path / "short",
        Config(model=str(tiny_model), max_seq_length=longest - 1, drop_too_long=False, **settings),
    )
    accounted(short)
    assert short.data["sessions"]["fallbacks"] == {f"longer than max_seq_length {longest - 1}": 1}
