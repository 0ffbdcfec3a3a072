"""Turn-level evaluation on held-out samples: generate the final assistant turn, parse it, score it.

Each sample is an mlx-lm chat sample {"messages", "tools"}: the prompt is every message before the last, the
reference is the last (assistant) message.

    results = evaluate_turns(model, tokenizer, samples)                 # in-process, batched, greedy
    results = evaluate_turns_server("http://127.0.0.1:8080/v1", samples)  # any OpenAI-compatible endpoint
    results.rates["exact_call_accuracy"], results.cases[0].verdict

In-process generation follows `mlx_lm server` step by step: the prompt from the model's chat template after the
server's message preprocessing (`core.toolcalls.prompt_tokens`), mlx-lm's `BatchGenerator` (the engine the
server batches with) stopping on the tokenizer's EOS ids, each sequence decoded with the tokenizer's streaming
detokenizer, and the text split and parsed by the server's state machine and the model's tool parser
(`core.toolcalls.parse_completion`). A call block the parser rejects counts as `unparseable` in both paths:
the server drops it and answers finish_reason "tool_calls" with no `tool_calls`. One difference remains: a
call cut off by max_tokens is `unparseable` in-process, while the server drops it and answers finish_reason
"length" with no sign of it, so the server path scores `no_call`; both details end "[answer cut at
max_tokens]" (raise --max-tokens).

Rates (None when no case applies). Call turns are the cases whose reference makes a call, answer turns the
cases whose reference answers without one; the two are reported apart, and the headline turn-level number
(the one `--fail-under`, checkpoint selection and the loop's summary use) is exact_call_accuracy:
    parsed_call_rate      call turns where the model returned ≥ 1 structured call, none rejected
    name_accuracy         … where the called tool names equal the reference's (as a multiset)
    schema_valid_rate     … where every call names a declared tool and its arguments pass the tool's JSON schema
    exact_call_accuracy   … where the verdict is ok (right calls, right arguments, no leaked markup): HEADLINE
    over_call_rate        answer turns where the model called anyway: a structured call or a call block the
                          parser (or the server) rejected; lower is better. Printed next to the headline, and
                          every promotion gate refuses a significant rise
    abstention_accuracy   answer turns where the model gave a real answer: no call, no tool-call markup, and
                          not empty or whitespace (silence is not an answer)
    turn_success_rate     all turns with verdict ok (mixes both kinds; the per-case success of paired statistics)
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.generation import Progress
from core.samples import BENCHMARK_KEY, BENCHMARK_SESSION, check_sample, read_samples
from core.scoring import CODES, Normalizer, TurnChecks, Verdict, score_turn, turn_checks
from core.toolcalls import ParsedTurn, ToolCall, decode_arguments, message_tool_calls, parse_completion

RATE_NAMES = (
    "parsed_call_rate",
    "name_accuracy",
    "schema_valid_rate",
    "exact_call_accuracy",
    "over_call_rate",
    "abstention_accuracy",
    "turn_success_rate",
)
LOWER_IS_BETTER = ("over_call_rate",)
NO_TOOL = "(no call)"
SERVER_DROPPED = "(dropped by the server: finish_reason tool_calls without tool_calls)"


def made_call(tool_calls: list | None, unparsed: list | None) -> bool:
    """THE over-calling test of a turn (over_call_rate counts it on answer turns): a structured call or a call
    block the parser (or the server) rejected; the agent is sent a call either way."""
    return bool(tool_calls or unparsed)


@dataclass
class TurnCase:
    index: int
    where: str  # "file:line" of the sample, or "sample N"
    messages: list[dict]  # the prompt
    tools: list[dict]
    reference: dict  # the reference assistant message
    raw: str  # generated text (in-process) or the returned message as JSON (server)
    turn: ParsedTurn
    verdict: Verdict
    checks: TurnChecks
    finish_reason: str | None = None
    completion_tokens: int | None = None

    @property
    def success(self) -> bool:
        return self.verdict.ok

    @property
    def called(self) -> bool:
        return made_call(self.turn.tool_calls, self.turn.unparsed)

    @property
    def reference_tools(self) -> list[str]:
        return [call.name for call in message_tool_calls(self.reference)] or [NO_TOOL]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "where": self.where,
            "messages": self.messages,
            "reference": self.reference,
            "expected_calls": [_call_dict(c) for c in message_tool_calls(self.reference)],
            "raw": self.raw,
            "content": self.turn.content,
            "tool_calls": [_call_dict(c) for c in self.turn.tool_calls],
            "unparsed": self.turn.unparsed,
            "code": self.verdict.code,
            "detail": self.verdict.detail,
            "parsed": self.checks.parsed,
            "names_match": self.checks.names_match,
            "schema_valid": self.checks.schema_valid,
            "called": self.called,
            "finish_reason": self.finish_reason,
            "completion_tokens": self.completion_tokens,
        }


@dataclass
class TurnResults:
    cases: list[TurnCase]
    rates: dict[str, float | None]
    wall_s: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def codes(self) -> dict[str, int]:
        counts = Counter(case.verdict.code for case in self.cases)
        return {code: counts.get(code, 0) for code in CODES}

    def per_tool(self) -> dict[str, dict[str, int]]:
        """Reference tool name → {"n", "ok"} (a case with several calls counts for each of its tools)."""
        table: dict[str, dict[str, int]] = {}
        for case in self.cases:
            for name in sorted(set(case.reference_tools)):
                row = table.setdefault(name, {"n": 0, "ok": 0})
                row["n"] += 1
                row["ok"] += case.success
        return dict(sorted(table.items()))

    def summary(self) -> dict[str, Any]:
        return {
            "n_cases": len(self.cases),
            "n_call_cases": sum(c.checks.expects_call for c in self.cases),
            "n_abstention_cases": sum(not c.checks.expects_call for c in self.cases),
            "rates": self.rates,
            "codes": self.codes,
            "per_tool": self.per_tool(),
            "wall_s": self.wall_s,
            "cases_per_s": len(self.cases) / self.wall_s if self.wall_s else None,
            "settings": self.settings,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "cases": [case.to_dict() for case in self.cases]}


def _call_dict(call: ToolCall) -> dict[str, Any]:
    return {"name": call.name, "arguments": call.arguments}


# ---------------------------------------------------------------------------------------------- samples


def load_samples(path: str | Path) -> list[dict]:
    """Samples of an mlx-lm chat JSONL file, each with an extra "where": "path:line"; clear error on bad lines.
    A session sample stands for its supervised turns: one case each ("path:line turn k"), never only its last."""
    samples = [
        {**turn.data, "where": turn.where} for sample in read_samples(path) for turn in sample.per_turn()
    ]
    if not samples:
        raise ValueError(f"{path}: no samples")
    return samples


def split_sample(sample: dict, where: str | None = None) -> tuple[list[dict], list[dict], dict]:
    """(prompt messages, tools, reference assistant message) of a sample; ValueError naming the sample."""
    checked = check_sample(sample, where or sample.get("where", "sample"))
    return checked.prompt, checked.tools, checked.reference


def compute_rates(cases: list[TurnCase]) -> dict[str, float | None]:
    calls = [c for c in cases if c.checks.expects_call]
    abstain = [c for c in cases if not c.checks.expects_call]

    def rate(selected: list[TurnCase], predicate) -> float | None:
        return sum(1 for c in selected if predicate(c)) / len(selected) if selected else None

    return {
        "parsed_call_rate": rate(calls, lambda c: c.checks.parsed),
        "name_accuracy": rate(calls, lambda c: c.checks.names_match),
        "schema_valid_rate": rate(calls, lambda c: c.checks.schema_valid),
        "exact_call_accuracy": rate(calls, lambda c: c.success),
        "over_call_rate": rate(abstain, lambda c: c.called),
        "abstention_accuracy": rate(abstain, lambda c: c.success),
        "turn_success_rate": rate(cases, lambda c: c.success),
    }


def score_case(
    index: int,
    sample: dict,
    raw: str,
    turn: ParsedTurn,
    normalize: Normalizer | None,
    finish_reason: str | None = None,
    completion_tokens: int | None = None,
) -> TurnCase:
    messages, tools, reference = split_sample(sample, sample.get("where", f"sample {index}"))
    verdict = score_turn(reference, turn, tools, normalize=normalize)
    if finish_reason == "length" and not verdict.ok:
        verdict = Verdict(verdict.code, f"{verdict.detail} [answer cut at max_tokens]".strip())
    return TurnCase(
        index=index,
        where=sample.get("where", f"sample {index}"),
        messages=messages,
        tools=tools,
        reference=reference,
        raw=raw,
        turn=turn,
        verdict=verdict,
        checks=turn_checks(reference, turn, tools),
        finish_reason=finish_reason,
        completion_tokens=completion_tokens,
    )


# ---------------------------------------------------------------------------------------------- in-process


def evaluate_turns(
    model,
    tokenizer,
    samples: list[dict],
    *,
    batch_size: int = 8,
    max_tokens: int = 256,
    temperature: float = 0.0,
    seed: int = 0,
    normalize: Normalizer | None = None,
    progress: Progress | None = None,
) -> TurnResults:
    """Generate each sample's final assistant turn in-process (batched; greedy at temperature 0) and score it."""
    from core.generation import generate_turns
    from core.toolcalls import prompt_tokens

    sampler = None
    if temperature > 0:
        import mlx.core as mx
        from mlx_lm.sample_utils import make_sampler

        mx.random.seed(seed)
        sampler = make_sampler(temperature)
    started = time.perf_counter()
    prompts = []
    for i, sample in enumerate(samples):
        messages, tools, _ = split_sample(sample, sample.get("where", f"sample {i}"))
        prompts.append(prompt_tokens(tokenizer, messages, tools))
    generated = generate_turns(
        model,
        tokenizer,
        prompts,
        batch_size=batch_size,
        max_tokens=max_tokens,
        sampler=sampler,
        progress=progress,
    )
    cases = []
    for i, (sample, (text, finish_reason, n_tokens)) in enumerate(zip(samples, generated, strict=True)):
        _, tools, _ = split_sample(sample, sample.get("where", f"sample {i}"))
        turn = parse_completion(tokenizer, text, tools)
        cases.append(score_case(i, sample, text, turn, normalize, finish_reason, n_tokens))
    settings = {
        "path": "in-process",
        "batch_size": batch_size,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "normalize_strings": normalize is not None,
    }
    return TurnResults(cases, compute_rates(cases), time.perf_counter() - started, settings)


# ---------------------------------------------------------------------------------------------- server


def request_messages(messages: list[dict]) -> list[dict]:
    """Prompt messages as an OpenAI request carries them: tool-call arguments as JSON strings."""
    out = []
    for message in messages:
        message = dict(message)
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                function = dict(call.get("function") or {})
                if not isinstance(function.get("arguments"), str):
                    function["arguments"] = json.dumps(function.get("arguments", {}), ensure_ascii=False)
                calls.append({**call, "function": function})
            message["tool_calls"] = calls
        out.append(message)
    return out


def turn_from_message(message: dict, finish_reason: str | None) -> ParsedTurn:
    """A returned OpenAI assistant message as a ParsedTurn, failing the same cases the in-process path fails.

    A call whose `arguments` string is not JSON is unparsed (the in-process parser rejects it); finish_reason
    "tool_calls" without any tool_calls is mlx_lm.server's signature of a call block it could not parse."""
    turn = ParsedTurn(content=message.get("content") or "")
    turn.reasoning = message.get("reasoning") or message.get("reasoning_content") or ""
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        arguments = function.get("arguments", {})
        if isinstance(arguments, str) and arguments.strip():
            try:
                json.loads(arguments)
            except json.JSONDecodeError:
                turn.unparsed.append(f"{function.get('name')}: {arguments}")
                continue
        name = function.get("name")
        if not isinstance(name, str):
            turn.unparsed.append(json.dumps(call))
            continue
        turn.tool_calls.append(ToolCall(name, decode_arguments(arguments if arguments != "" else {})))
    if finish_reason == "tool_calls" and not message.get("tool_calls"):
        turn.unparsed.append(SERVER_DROPPED)
    return turn


def benchmark_headers(sample: dict) -> dict[str, str] | None:
    """The session header that marks a benchmark sample's request (and so its trace) as evaluation-only."""
    from core.trace import SESSION_HEADER

    source = sample.get(BENCHMARK_KEY)
    return {SESSION_HEADER: f"{BENCHMARK_SESSION}{source}"} if source else None


class ModelMismatch(RuntimeError):
    """A response named another model than the ones the caller verified the server serves."""


def request_turn(
    client,
    base_url: str,
    messages: list[dict],
    tools: list[dict],
    *,
    model_name: str = "default_model",
    max_tokens: int = 256,
    temperature: float = 0.0,
    headers: dict[str, str] | None = None,
    response_models: Collection[str] | None = None,
) -> tuple[dict, str | None, int | None]:
    """POST one chat completion; (assistant message, finish_reason, completion tokens). With
    `response_models`, a response whose `model` is not one of them raises ModelMismatch."""
    body: dict[str, Any] = {
        "model": model_name,
        "messages": request_messages(messages),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": False,
    }
    if tools:
        body["tools"] = tools
    response = client.post(f"{base_url.rstrip('/')}/chat/completions", json=body, headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"{base_url}: HTTP {response.status_code}: {response.text[:300]}")
    payload = response.json()
    if response_models is not None and payload.get("model") not in response_models:
        raise ModelMismatch(
            f"{base_url}: a response names model {payload.get('model')!r}, not "
            f"{' or '.join(sorted(response_models))} (what was verified); refusing to score it"
        )
    choice = (payload.get("choices") or [{}])[0]
    usage = payload.get("usage") or {}
    return choice.get("message") or {}, choice.get("finish_reason"), usage.get("completion_tokens")


def evaluate_turns_server(
    base_url: str,
    samples: list[dict],
    *,
    model_name: str = "default_model",
    max_tokens: int = 256,
    temperature: float = 0.0,
    concurrency: int = 1,
    api_key: str | None = None,
    timeout: float = 600.0,
    normalize: Normalizer | None = None,
    progress: Progress | None = None,
    response_models: Collection[str] | None = None,
) -> TurnResults:
    """Send each sample's prompt to an OpenAI-compatible endpoint (`base_url` ends in /v1) and score the reply.

    `response_models`: the `model` names a response may carry (what the caller verified the server serves);
    any other stops the run with ModelMismatch."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    started = time.perf_counter()
    done = 0

    with httpx.Client(timeout=timeout, headers=headers) as client:

        def one(i: int) -> TurnCase:
            nonlocal done
            sample = samples[i]
            messages, tools, _ = split_sample(sample, sample.get("where", f"sample {i}"))
            message, finish_reason, n_tokens = request_turn(
                client,
                base_url,
                messages,
                tools,
                model_name=model_name,
                max_tokens=max_tokens,
                temperature=temperature,
                headers=benchmark_headers(sample),
                response_models=response_models,
            )
            raw = json.dumps({"finish_reason": finish_reason, "message": message}, ensure_ascii=False)
            case = score_case(
                i, sample, raw, turn_from_message(message, finish_reason), normalize, finish_reason, n_tokens
            )
            done += 1
            if progress:
                progress(done, len(samples))
            return case

        if concurrency <= 1:
            cases = [one(i) for i in range(len(samples))]
        else:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                cases = list(pool.map(one, range(len(samples))))
    settings = {
        "path": "server",
        "base_url": base_url,
        "model_name": model_name,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "concurrency": concurrency,
        "normalize_strings": normalize is not None,
        "response_models": sorted(response_models) if response_models is not None else None,
    }
    return TurnResults(cases, compute_rates(cases), time.perf_counter() - started, settings)
