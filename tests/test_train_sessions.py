"""Whole-session samples: every assistant turn of a trajectory supervised once in one sequence, per-turn
samples where the chat template does not allow it, and training on files that mix both kinds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from core.samples import (
    SUPERVISE,
    Sample,
    SampleError,
    SpanError,
    assistant_turns,
    check_sample,
    per_turn_samples,
    session_sample,
    supervised_spans,
)
from core.toolcalls import completion_text

# A few LoRA steps on the tiny model's last block (the first stays frozen: the frozen-prefix loss applies).
SMALL_RUN = dict(
    num_layers=1,
    iters=4,
    batch_size=2,
    learning_rate=1e-3,
    steps_per_report=2,
    steps_per_eval=4,
    save_every=4,
    timing_steps=1,
)


def chained_session(parts: list[dict]) -> dict:
    """One session from several tool_call_samples (one system prompt, then each part's user turn onwards)."""
    messages = parts[0]["messages"] + [m for part in parts[1:] for m in part["messages"][1:]]
    return session_sample(messages, parts[0]["tools"])


def sessions(n: int, seed: int, parts: int = 3) -> list[dict]:
    from models.tiny import tool_call_samples

    pool = tool_call_samples(n * parts, seed)
    return [chained_session(pool[i : i + parts]) for i in range(0, n * parts, parts)]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from core.toolcalls import load_tokenizer

    return load_tokenizer(tiny_model)


def test_spans_are_the_per_turn_completions(tokenizer):
    session = sessions(1, 4, parts=4)[0]
    found = supervised_spans(tokenizer, session)
    turns = per_turn_samples(session)
    assert len(found.spans) == len(turns) >= 5
    assert all("supervise" not in turn for turn in turns)  # plain mlx-lm samples
    for turn, (start, end) in zip(turns, found.spans, strict=True):
        alone = supervised_spans(
            tokenizer, turn
        )  # the per-turn sample: its tokens are a prefix of the session's
        assert found.tokens[: len(alone.tokens)] == alone.tokens and alone.spans == ((start, end),)
        assert tokenizer.decode(found.tokens[start:end]) == completion_text(
            tokenizer, turn["messages"], turn["tools"]
        )
    covered = sum(end - start for start, end in found.spans)
    assert covered == found.supervised < len(found.tokens)  # system, user and tool messages stay masked


def test_session_format_is_checked():
    session = sessions(1, 5)[0]
    assert check_sample(session, "s.jsonl:1").is_session
    with pytest.raises(SampleError, match=r"s\.jsonl:2: 'supervise' must be 'all_assistant_turns' or a list"):
        check_sample({**session, SUPERVISE: "all"}, "s.jsonl:2")
    broken = json.loads(json.dumps(session))
    broken["messages"][2]["tool_calls"][0]["function"].pop("name")
    with pytest.raises(SampleError, match=r"messages\[2\]\.tool_calls\[0\]\.function\.name missing"):
        check_sample(broken, "s.jsonl:3")
    turns = Sample("s.jsonl:1", session).per_turn()
    assert [t.where for t in turns][:2] == ["s.jsonl:1 turn 1", "s.jsonl:1 turn 2"]
    assert all(t.reference["role"] == "assistant" for t in turns)


def supervising(session: dict, turns: list[int]) -> dict:
    """The session cut after its last supervised turn, supervising only the assistant messages at `turns`
    (as curate writes a trajectory some of whose turns it did not keep)."""
    return session_sample(session["messages"][: turns[-1] + 1], session["tools"], turns)


def test_a_session_can_name_the_turns_it_supervises(tokenizer):
    session = sessions(1, 13, parts=4)[0]
    every = assistant_turns(session)
    chosen = supervising(session, [every[1], every[2]])  # not the first, and cut after the third
    assert check_sample(chosen, "s.jsonl:1").is_session and assistant_turns(chosen) == every[1:3]
    turns = per_turn_samples(chosen)
    assert turns == [t for t in per_turn_samples(session) if len(t["messages"]) - 1 in every[1:3]]
    found = supervised_spans(tokenizer, chosen)
    whole = supervised_spans(tokenizer, session)
    assert found.spans == whole.spans[1:3]  # the same tokens as in the whole session, the others masked
    assert found.tokens == whole.tokens[: len(found.tokens)] and found.spans[-1][1] == len(found.tokens)
    for turn, (start, end) in zip(turns, found.spans, strict=True):
        assert tokenizer.decode(found.tokens[start:end]) == completion_text(
            tokenizer, turn["messages"], turn["tools"]
        )
    # a turn left out is context, never a target: one supervised turn in the middle of a longer session
    middle = session_sample(session["messages"], session["tools"], [every[1]])
    ((start, end),) = supervised_spans(tokenizer, middle).spans
    assert (start, end) == whole.spans[1] and end < len(whole.tokens)
    assert [t.where for t in Sample("s.jsonl:4", middle).per_turn()] == ["s.jsonl:4 turn 1"]


@pytest.mark.parametrize(
    ("supervise", "message"),
    [
        ([], r"'supervise' must be 'all_assistant_turns' or a list of assistant message indices, got \[\]"),
        ("2", r"'supervise' must be 'all_assistant_turns' or a list of assistant message indices"),
        ([2, 99], r"supervise\[1\] = 99 is not an index of 'messages'"),
        ([2, True], r"supervise\[1\] = True is not an index"),
        ([1], r"supervise\[0\] = 1: messages\[1\] has role 'user', not 'assistant'"),
        ([4, 2], r"'supervise' must be increasing, got \[4, 2\]"),
        ([2, 2], r"'supervise' must be increasing"),
    ],
)
def test_named_turns_are_checked(supervise, message):
    session = sessions(1, 14)[0]
    with pytest.raises(SampleError, match=r"^s\.jsonl:7: " + message):
        check_sample({**session, SUPERVISE: supervise}, "s.jsonl:7")


@pytest.fixture(scope="module")
def rewriting_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with a template that, like reasoning models' templates, shows an assistant turn's
    reasoning only while it is the last message: earlier turns are rewritten once a later one exists."""
    out = tmp_path_factory.mktemp("rewriting") / "model"
    shutil.copytree(tiny_model, out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    marker = "{{- '<|im_start|>assistant' }}"
    assert marker in config["chat_template"]
    config["chat_template"] = config["chat_template"].replace(
        marker,
        marker + "{%- if message.reasoning_content and loop.last %}"
        "{{- '\\n' + message.reasoning_content }}{%- endif %}",
    )
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def thinking(session: dict) -> dict:
    session = json.loads(json.dumps(session))
    for message in session["messages"]:
        if message["role"] == "assistant" and message.get("tool_calls"):
            message["reasoning_content"] = "I should look at it first."
    return session


def test_template_that_rewrites_earlier_turns_falls_back_to_per_turn(rewriting_model, tokenizer):
    from core.toolcalls import load_tokenizer
    from train import preflight as pf

    rewriting = load_tokenizer(rewriting_model)
    plain, reasoned = sessions(2, 6)
    reasoned = thinking(reasoned)
    assert supervised_spans(rewriting, plain).spans  # nothing to rewrite: spans exist
    with pytest.raises(SpanError, match=r"assistant turn 1 \(messages\[2\]\): .*rewrites earlier turns"):
        supervised_spans(rewriting, reasoned)
    assert supervised_spans(tokenizer, reasoned).spans  # the plain template ignores the field

    samples = [Sample("d/train.jsonl:1", plain), Sample("d/train.jsonl:2", reasoned)]
    items, report = pf.tokenize_split(
        rewriting, samples, mask_prompt=True, max_seq_length=4096, whole_sessions=True
    )
    turns = len(per_turn_samples(reasoned))
    assert len(items) == 1 + turns and [t.spans is not None for t in items].count(True) == 1
    assert (report.samples, report.whole, report.per_turn) == (2, 1, 1)
    assert list(report.fallbacks.values()) == [1] and "rewrites earlier turns" in report.first_fallback
    assert report.first_fallback.startswith("d/train.jsonl:2: ")
    # Each fallback sample is the per-turn sample mlx-lm would build: its own prompt, its own turn.
    for item, turn in zip(items[1:], per_turn_samples(reasoned), strict=True):
        assert item.tokens == supervised_spans(rewriting, turn).tokens and item.spans is None

    items, report = pf.tokenize_split(
        tokenizer, samples, mask_prompt=True, max_seq_length=120, whole_sessions=True
    )
    assert report.per_turn == 2 and list(report.fallbacks) == ["longer than max_seq_length 120"]
    items, report = pf.tokenize_split(
        tokenizer, samples, mask_prompt=True, max_seq_length=4096, whole_sessions=False
    )
    assert report.per_turn == 2 and not report.fallbacks and all(t.spans is None for t in items)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_train_accepts_sessions_and_per_turn_samples_in_one_file(tmp_path, tiny_model):
    import train
    from models.tiny import tool_call_samples

    data = tmp_path / "data"
    data.mkdir()
    mixed = sessions(6, 7) + tool_call_samples(6, 8)
    write_jsonl(data / "train.jsonl", mixed)
    write_jsonl(data / "valid.jsonl", sessions(2, 9) + tool_call_samples(2, 10))
    common = dict(model=str(tiny_model), data=str(data), **SMALL_RUN)
    whole = train.run(train.TrainConfig(adapter=str(tmp_path / "whole"), **common))
    manifest = json.loads((whole / "manifest.json").read_text())
    lengths = manifest["preflight"]["lengths"]["train"]
    turns = sum(len(per_turn_samples(s)) for s in mixed[:6])
    assert lengths["samples"] == 12 and lengths["sessions"] == {
        "samples": 6,
        "whole": 6,
        "turns_whole": turns,
        "per_turn": 0,
        "fallbacks": {},
        "first_fallback": "",
    }
    assert "counted on every assistant turn" in manifest["loss"] and "checked equal" in manifest["loss"]
    assert "run once on the" in manifest["loss"]  # the frozen-prefix saving still applies
    assert manifest["config"]["sessions"] == "whole"

    per_turn = train.run(train.TrainConfig(adapter=str(tmp_path / "per-turn"), sessions="per-turn", **common))
    manifest = json.loads((per_turn / "manifest.json").read_text())
    assert manifest["preflight"]["lengths"]["train"]["samples"] == turns + 6
    assert manifest["preflight"]["lengths"]["train"]["sessions"]["per_turn"] == 6
    assert manifest["loss"].startswith("loss: output head on supervised positions only; blocks 1-1")
    assert "mlx-lm's default" in manifest["loss"]  # no session rows left: checked against mlx-lm itself


def test_preflight_checks_every_turn_of_a_session(tmp_path, tiny_model):
    import train
    from train.preflight import PreflightError

    data = tmp_path / "data"
    data.mkdir()
    rows = sessions(4, 11)
    messages = rows[2]["messages"]
    calls = [i for i, m in enumerate(messages) if m.get("tool_calls")]
    broken = calls[1]  # a middle turn: the last turn alone would be what a per-turn check sees
    assert broken < len(messages) - 1
    messages[broken] = {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "read_file", "arguments": {"path": \n</tool_call>',
    }
    turn = [i for i, m in enumerate(messages) if m["role"] == "assistant"].index(broken) + 1
    write_jsonl(data / "train.jsonl", rows)
    config = train.TrainConfig(
        model=str(tiny_model), data=str(data), adapter=str(tmp_path / "a"), iters=2, timing_steps=0
    )
    with pytest.raises(PreflightError) as error:
        train.run(config)
    assert str(error.value).startswith(f"{data / 'train.jsonl'}:3 turn {turn}: tool call does not round-trip")
    assert not (tmp_path / "a").exists()


def test_train_on_curated_sessions_supervises_exactly_the_kept_turns(tmp_path, tiny_model):
    """curate's default output (a session line per trajectory, supervising the turns it kept: here not a
    failed call) trains whole: the manifest counts the sessions and turns curate's report counts."""
    from test_curate import agent_loop, assistant, call, write_lines

    import curate
    import train

    records = []
    for i in range(8):
        crash = call("run_command", {"command": "pytest", "args": [f"t{i}"]}, f"r{i}")
        replies = [
            assistant(call("read_file", {"path": f"m{i}.py"}, f"c{i}")),
            assistant(crash),  # answered by an error: not kept, stays as context
            assistant(call("read_file", {"path": f"n{i}.py"}, f"d{i}")),
            assistant(content=f"Done {i}."),
        ]
        records += agent_loop(f"Check m{i}.py.", replies, f"s{i}", results={f"r{i}": "Error: failed"})
    write_lines(tmp_path / "traces" / "a.jsonl", records)
    report = curate.run(
        [tmp_path / "traces"],
        tmp_path / "data",
        curate.Config(progress=False, model=str(tiny_model), split=(0.75, 0.25, 0.0)),
    )
    sessions = report.data["sessions"]
    assert sessions["whole"] == 8 and sessions["turns_in_sessions"] == 8 * 3 and not sessions["fallbacks"]
    line = json.loads((tmp_path / "data" / "train.jsonl").read_text().splitlines()[0])
    failed = next(
        i for i, m in enumerate(line["messages"]) if "run_command" in json.dumps(m.get("tool_calls"))
    )
    assert failed not in line["supervise"] and len(line["supervise"]) == 3

    adapter = train.run(
        train.TrainConfig(
            model=str(tiny_model), data=str(tmp_path / "data"), adapter=str(tmp_path / "a"), **SMALL_RUN
        )
    )
    lengths = json.loads((adapter / "manifest.json").read_text())["preflight"]["lengths"]
    for split in ("train", "valid"):
        counted = sessions["by_split"][split]
        assert lengths[split]["sessions"]["whole"] == counted["sessions"] == lengths[split]["samples"]
        assert lengths[split]["sessions"]["turns_whole"] == counted["turns"] == report.split_counts[split]
