"""Turn-level evaluation on the tiny models: batched in-process generation, the server path, and their agreement."""

from __future__ import annotations

import json

import pytest

from core.scoring import CODES
from core.toolcalls import render
from core.turns import (
    RATE_NAMES,
    SERVER_DROPPED,
    evaluate_turns,
    evaluate_turns_server,
    load_samples,
    request_messages,
    split_sample,
)
from models.tiny import tool_call_samples

HELD_OUT_SEED = 4242  # the tiny tool model is trained on seed 0


@pytest.fixture(scope="module")
def tool_lm(tool_model):
    from mlx_lm import load

    return load(str(tool_model))


@pytest.fixture(scope="module")
def held_out():
    return tool_call_samples(16, HELD_OUT_SEED)


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_load_samples_names_the_bad_line(tmp_path):
    good = tool_call_samples(1, 1)[0]
    data = tmp_path / "test.jsonl"
    data.write_text(json.dumps(good) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:3: invalid JSON"):
        load_samples(data)
    bad = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}
    write_jsonl(data, [good, bad])
    with pytest.raises(ValueError, match=r"test\.jsonl:2: the last message has role 'user'"):
        load_samples(data)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_samples(tmp_path / "missing.jsonl")
    write_jsonl(data, [good, {**good, "meta": {"session": "s"}}])
    samples = load_samples(data)
    assert [s["where"] for s in samples] == [f"{data}:1", f"{data}:2"]


def test_a_session_line_is_one_case_per_supervised_turn(tmp_path):
    """Evaluating a file of session samples (curate's train/valid) scores every supervised turn, not only the
    last one of each line."""
    from core.samples import per_turn_samples, session_sample

    parts = tool_call_samples(3, 4)
    messages = parts[0]["messages"] + [m for part in parts[1:] for m in part["messages"][1:]]
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    session = session_sample(messages, parts[0]["tools"], turns[1:])  # the first turn is context only
    data = tmp_path / "train.jsonl"
    write_jsonl(data, [parts[0], session])
    samples = load_samples(data)
    assert len(turns) >= 3
    assert [s["where"] for s in samples] == [f"{data}:1"] + [
        f"{data}:2 turn {k}" for k in range(1, len(turns))
    ]
    assert [{k: v for k, v in s.items() if k != "where"} for s in samples[1:]] == per_turn_samples(session)
    assert [split_sample(s)[2] for s in samples[1:]] == [messages[i] for i in turns[1:]]


def test_split_sample_prompt_and_reference():
    sample = tool_call_samples(1, 3)[0]
    prompt, tools, reference = split_sample(sample)
    assert prompt == sample["messages"][:-1] and reference is sample["messages"][-1]
    assert tools == sample["tools"]


def test_request_messages_render_like_the_sample(tiny_model):
    # what the server path sends (string arguments, as OpenAI clients do) templates exactly like the dict form
    from core.toolcalls import load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    sample = next(
        s
        for s in tool_call_samples(40, 5)
        if s["messages"][-1]["role"] == "assistant" and len(s["messages"]) > 4
    )
    prompt, tools, _ = split_sample(sample)
    sent = request_messages(prompt)
    assert any(isinstance(c["function"]["arguments"], str) for m in sent for c in m.get("tool_calls") or [])
    assert render(tokenizer, sent, tools, add_generation_prompt=True) == render(
        tokenizer, prompt, tools, add_generation_prompt=True
    )


def test_random_model_gets_scored(tiny_model, held_out):
    from mlx_lm import load

    model, tokenizer = load(str(tiny_model))
    results = evaluate_turns(model, tokenizer, held_out, batch_size=4, max_tokens=24)
    assert len(results.cases) == len(held_out)
    assert set(results.rates) == set(RATE_NAMES)
    assert set(results.codes) == set(CODES) and sum(results.codes.values()) == len(held_out)
    # a random model writes no tool calls: every call case fails, and each failure is explained
    assert results.rates["exact_call_accuracy"] == 0.0
    assert all(c.verdict.detail for c in results.cases if not c.success)
    assert all(c.completion_tokens <= 24 for c in results.cases)


def test_tool_model_in_process(tool_lm, held_out):
    model, tokenizer = tool_lm
    seen = []
    results = evaluate_turns(
        model, tokenizer, held_out, batch_size=8, progress=lambda done, total: seen.append(done)
    )
    assert seen == list(range(1, len(held_out) + 1))
    rates = results.rates
    assert rates["parsed_call_rate"] >= 0.6  # it learned the <tool_call> format
    assert rates["name_accuracy"] >= 0.5
    assert rates["abstention_accuracy"] >= 0.5
    first = results.cases[0]
    assert first.raw and first.where == "sample 0" and first.finish_reason == "stop"
    case = results.to_dict()["cases"][0]
    assert case["code"] == first.verdict.code and case["messages"] == held_out[0]["messages"][:-1]


def test_batching_does_not_change_answers(tool_lm, held_out):
    model, tokenizer = tool_lm
    one = evaluate_turns(model, tokenizer, held_out[:6], batch_size=1)
    many = evaluate_turns(model, tokenizer, held_out[:6], batch_size=6)
    assert [c.raw for c in one.cases] == [c.raw for c in many.cases]


def test_the_shared_prefix_is_read_once_and_changes_no_answer(tool_lm, held_out):
    """Held-out turns share the system prompt and tool listing: its KV cache is computed once and copied into
    each prompt's, as the server's prompt cache does. Same answers as reading every prompt whole."""
    from core.generation import MIN_SHARED_PREFIX, generate_turns, shared_prefix_length
    from core.toolcalls import prompt_tokens

    model, tokenizer = tool_lm
    prompts = [prompt_tokens(tokenizer, *split_sample(sample)[:2]) for sample in held_out]
    shared = shared_prefix_length(prompts)
    assert shared >= MIN_SHARED_PREFIX and all(p[:shared] == prompts[0][:shared] for p in prompts)

    class Counting:  # the model, counting the prompt tokens it reads (forward passes over more than one token)
        def __init__(self, inner):
            self.inner, self.read = inner, 0

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, inputs, *args, **kwargs):
            if inputs.shape[1] > 1:
                self.read += inputs.shape[0] * inputs.shape[1]
            return self.inner(inputs, *args, **kwargs)

    answers, reads = {}, {}
    for share in (True, False):
        counting = Counting(model)
        answers[share] = generate_turns(counting, tokenizer, prompts, batch_size=8, share_prefix=share)
        reads[share] = counting.read
    assert answers[True] == answers[False]
    # padding aside (a prefill batch is padded to its longest prompt), the shared tokens are read once
    assert reads[True] <= reads[False] - (len(prompts) - 1) * shared + 8 * len(prompts)


def test_truncated_call_is_unparseable(tool_lm, held_out):
    model, tokenizer = tool_lm
    calls = [s for s in held_out if s["messages"][-1].get("tool_calls")][:4]
    results = evaluate_turns(model, tokenizer, calls, max_tokens=6)
    assert {c.finish_reason for c in results.cases} == {"length"}
    assert {c.verdict.code for c in results.cases} == {"unparseable"}


def test_server_path_agrees_with_in_process(tool_server, tool_lm, held_out):
    """The same prompts through a real mlx_lm server: same outputs, same verdicts (temperature 0)."""
    model, tokenizer = tool_lm
    local = evaluate_turns(model, tokenizer, held_out, batch_size=8, max_tokens=128)
    remote = evaluate_turns_server(tool_server.base_url, held_out, max_tokens=128, concurrency=2)
    for a, b in zip(local.cases, remote.cases, strict=True):
        assert b.turn.content == a.turn.content, a.where
        assert [c.canonical() for c in b.turn.tool_calls] == [c.canonical() for c in a.turn.tool_calls], (
            a.where
        )
        assert b.verdict.code == a.verdict.code, a.where  # details differ for a dropped call: see below
    assert remote.rates == local.rates
    for a, b in zip(local.cases, remote.cases, strict=True):
        if (
            a.turn.unparsed
        ):  # malformed call JSON: in-process the rejected text, from the server only its absence
            assert b.turn.unparsed == [SERVER_DROPPED] and json.loads(b.raw)["finish_reason"] == "tool_calls"
    raw = json.loads(remote.cases[0].raw)
    assert raw["finish_reason"] in ("stop", "tool_calls") and raw["message"]["role"] == "assistant"


def test_server_error_is_reported(tool_server, held_out):
    with pytest.raises(RuntimeError, match="HTTP 404"):
        evaluate_turns_server(tool_server.url + "/nope", held_out[:1])


def test_over_calling_counts_every_call_where_none_is_right(held_out):
    """over_call_rate: of the cases whose right answer is no call, those where the model called anyway, with a
    structured call, a call block the parser rejected, or one the server dropped; a plain answer, even one with
    stray markup in it, is not a call."""
    from core.toolcalls import ParsedTurn, ToolCall
    from core.turns import compute_rates, score_case, turn_from_message

    answer = next(s for s in held_out if not s["messages"][-1].get("tool_calls"))
    needs_call = next(s for s in held_out if s["messages"][-1].get("tool_calls"))
    turns = [
        ParsedTurn(content="Done."),
        ParsedTurn(content="", tool_calls=[ToolCall("read_file", {"path": "a.txt"})]),
        ParsedTurn(content="", unparsed=['{"name": "read_file", "arguments": {']),
        turn_from_message({"content": None}, "tool_calls"),  # what mlx_lm server answers for a bad call block
        ParsedTurn(content="I would write <tool_call> here"),
    ]
    cases = [score_case(i, answer, "", turn, None) for i, turn in enumerate(turns)]
    assert [c.called for c in cases] == [False, True, True, True, False]
    assert [c.verdict.code for c in cases] == [
        "ok",
        "unexpected_call",
        "unexpected_call",
        "unexpected_call",
        "leaked_markup",
    ]
    called = score_case(
        5, needs_call, "", ParsedTurn(content="", tool_calls=[ToolCall("read_file", {})]), None
    )
    rates = compute_rates([*cases, called])
    assert rates["over_call_rate"] == 3 / 5  # the case that needed a call does not count
    assert rates["abstention_accuracy"] == 1 / 5
    assert compute_rates([called])["over_call_rate"] is None
    assert "over_call_rate" in RATE_NAMES and cases[1].to_dict()["called"] is True
