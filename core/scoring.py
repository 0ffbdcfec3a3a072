"""Score one generated assistant turn against the reference turn, BFCL-style, with one error code per case.

    verdict = score_turn(reference_message, parse_completion(tokenizer, text, tools), tools)
    verdict.code  # "ok" or the first failure found, verdict.detail says what and where

Checks, in this order (the first failure is the verdict):

    reference makes no call (abstention case: the model must answer in text)
        unexpected_call   the model called a tool (or wrote a tool-call block the parser rejected)
        leaked_markup     no call, but tool-call markup in the text the agent would read
        empty_answer      no call, but no answer either: empty or whitespace only
    reference makes calls
        unparseable       a tool-call block the model's parser rejected (mlx_lm.server drops it silently)
        leaked_markup     tool-call markup left in `content` (a call written as text)
        no_call           no tool call at all
        wrong_count       a different number of calls (parallel calls are matched order-independently)
      per matched call:
        wrong_name        a different tool
        schema_invalid    arguments are not a JSON object, or fail jsonschema against the tool's `parameters`
                          (other than the two codes below)
        missing_required  an argument the tool requires (or the reference passes and the tool requires) is absent
        unexpected_arg    an argument the reference call does not pass (undeclared, or declared but not used)
        wrong_value       a value differs from the reference; numbers compare numerically (2 == 2.0), booleans
                          only equal booleans, strings exactly unless a normaliser is given; an optional
                          argument the reference passes but the model omits is a wrong value too
    ok

A reference call may accept more than its `arguments` (public benchmarks list several right answers): its
`alternatives` ({argument: [every acceptable value]}) and `may_omit` ([arguments that may be left out]) keys,
next to `function` in the OpenAI tool call. A value is right when it equals any alternative.

With several calls the pairing of reference and model calls is the one with the fewest and least severe
failures; the verdict is the most severe failure of that pairing.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from core.toolcalls import ParsedTurn, ToolCall, message_tool_calls

CODES = (
    "ok",
    "no_call",
    "unexpected_call",
    "empty_answer",
    "leaked_markup",
    "unparseable",
    "wrong_name",
    "schema_invalid",
    "missing_required",
    "unexpected_arg",
    "wrong_value",
    "wrong_count",
)

# How bad a per-call failure is, for choosing the pairing of parallel calls and the reported failure.
CALL_SEVERITY = {
    "ok": 0,
    "wrong_value": 1,
    "unexpected_arg": 2,
    "missing_required": 3,
    "schema_invalid": 4,
    "wrong_name": 5,
}

Normalizer = Callable[[str], str]


@dataclass(frozen=True)
class Verdict:
    code: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.code == "ok"


def normalize_text(text: str) -> str:
    """Opt-in string normaliser, BFCL's `standardize_string`: without spaces and ,./-_*^, lower case, ' as "."""
    return re.sub(r"[ ,./\-_*^]", "", text).lower().replace("'", '"')


@dataclass(frozen=True)
class Accepted:
    """What a reference call accepts besides its `arguments` (see the module docstring)."""

    alternatives: dict[str, list] = field(default_factory=dict)
    may_omit: frozenset[str] = frozenset()


def reference_accepts(reference_message: dict) -> list[Accepted]:
    """The `alternatives` and `may_omit` of each call of a reference message, in call order."""
    accepts = []
    for call in reference_message.get("tool_calls") or []:
        alternatives = call.get("alternatives") if isinstance(call, dict) else None
        may_omit = call.get("may_omit") if isinstance(call, dict) else None
        accepts.append(
            Accepted(
                {k: v for k, v in alternatives.items() if isinstance(v, list)}
                if isinstance(alternatives, dict)
                else {},
                frozenset(k for k in may_omit if isinstance(k, str))
                if isinstance(may_omit, list)
                else frozenset(),
            )
        )
    return accepts


def tool_schemas(tools: list[dict] | None) -> dict[str, dict]:
    """Tool name → its `parameters` JSON schema ({} when it declares none); OpenAI or bare function shape."""
    schemas = {}
    for tool in tools or []:
        function = tool.get("function", tool) if isinstance(tool, dict) else {}
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            parameters = function.get("parameters")
            schemas[function["name"]] = parameters if isinstance(parameters, dict) else {}
    return schemas


def values_equal(expected: Any, got: Any, normalize: Normalizer | None = None) -> bool:
    if isinstance(expected, bool) or isinstance(got, bool):
        return isinstance(expected, bool) and isinstance(got, bool) and expected == got
    if isinstance(expected, int | float) and isinstance(got, int | float):
        return expected == got
    if isinstance(expected, str) and isinstance(got, str):
        return normalize(expected) == normalize(got) if normalize else expected == got
    if isinstance(expected, list) and isinstance(got, list):
        return len(expected) == len(got) and all(
            values_equal(e, g, normalize) for e, g in zip(expected, got, strict=True)
        )
    if isinstance(expected, dict) and isinstance(got, dict):
        return expected.keys() == got.keys() and all(
            values_equal(v, got[k], normalize) for k, v in expected.items()
        )
    return type(expected) is type(got) and expected == got


def schema_errors(arguments: Any, schema: dict) -> list[str]:
    """jsonschema errors of `arguments` against `schema` ("path: message"); none when the schema itself is invalid."""
    import jsonschema

    if not schema:
        return (
            []
            if isinstance(arguments, dict)
            else [f"arguments are {type(arguments).__name__}, not an object"]
        )
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError:
        return []
    errors = sorted(validator_class(schema).iter_errors(arguments), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(arguments)'}: {e.message}" for e in errors]


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _accepted_values(key: str, reference: dict, accepted: Accepted) -> list:
    return accepted.alternatives.get(key) or ([reference[key]] if key in reference else [])


JSON_TYPES = {"string": str, "array": list, "object": dict}


def _normalizer_for(properties: Any, key: str, value: Any, normalize: Normalizer | None) -> Normalizer | None:
    """The normaliser for one argument: none when its value's type is not the one the schema declares (a
    string naming a variable where a number or a list belongs is compared exactly, as BFCL does)."""
    declared = properties.get(key, {}).get("type") if isinstance(properties, dict) else None
    if normalize is None or not isinstance(declared, str):
        return normalize
    return normalize if declared in JSON_TYPES and isinstance(value, JSON_TYPES[declared]) else None


def _trusting(
    schema: dict, arguments: dict, expected: ToolCall, accepted: Accepted, normalize: Normalizer | None
) -> dict:
    """`schema` without the properties whose value the reference accepts: a reference may pass a variable's
    name or null where the schema says otherwise (BFCL's answers do), and then that value is right; so is a
    string the normaliser makes equal to an accepted one, even outside an `enum`."""
    reference = expected.arguments if isinstance(expected.arguments, dict) else {}
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return schema
    trusted = [
        key
        for key, value in arguments.items()
        if any(
            values_equal(v, value, _normalizer_for(properties, key, value, normalize))
            for v in _accepted_values(key, reference, accepted)
        )
    ]
    if not trusted:
        return schema
    return {**schema, "properties": {k: {} if k in trusted else v for k, v in properties.items()}}


def score_call(
    expected: ToolCall,
    got: ToolCall,
    schemas: dict[str, dict],
    normalize: Normalizer | None = None,
    accepted: Accepted | None = None,
) -> Verdict:
    """Verdict for one model call against one reference call (same tool list)."""
    if got.name != expected.name:
        declared = "" if got.name in schemas else " (not a declared tool)"
        return Verdict("wrong_name", f"called {got.name!r}{declared}, expected {expected.name!r}")
    arguments, reference = got.arguments, expected.arguments if isinstance(expected.arguments, dict) else {}
    if not isinstance(arguments, dict):
        return Verdict("schema_invalid", f"{got.name}: arguments are {_short(arguments)}, not a JSON object")
    schema = schemas.get(got.name, {})
    required = schema.get("required") if isinstance(schema.get("required"), list) else []
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    missing = [key for key in required if key not in arguments]
    if missing:
        return Verdict("missing_required", f"{got.name}: required argument {missing[0]!r} missing")
    accepted = accepted or Accepted()
    known = [*reference, *(k for k in [*accepted.alternatives, *accepted.may_omit] if k not in reference)]
    extra = [key for key in arguments if key not in known]
    if extra:
        why = (
            "not declared by the tool"
            if properties and extra[0] not in properties
            else "not in the reference call"
        )
        return Verdict("unexpected_arg", f"{got.name}: argument {extra[0]!r} ({why})")
    errors = schema_errors(arguments, _trusting(schema, arguments, expected, accepted, normalize))
    if errors:
        return Verdict("schema_invalid", f"{got.name}: {errors[0]}")
    for key in dict.fromkeys(known):
        accepted_values = _accepted_values(key, reference, accepted)
        want = (
            _short(accepted_values[0]) if len(accepted_values) == 1 else f"one of {_short(accepted_values)}"
        )
        if key not in arguments:
            if key in accepted.may_omit:
                continue
            return Verdict("wrong_value", f"{got.name}: optional argument {key!r} omitted (reference {want})")
        value_normalize = _normalizer_for(properties, key, arguments[key], normalize)
        if not any(values_equal(value, arguments[key], value_normalize) for value in accepted_values):
            return Verdict("wrong_value", f"{got.name}.{key}: {_short(arguments[key])}, expected {want}")
    return Verdict("ok")


def match_calls(
    expected: list[ToolCall],
    got: list[ToolCall],
    schemas: dict[str, dict],
    normalize: Normalizer | None = None,
    accepts: list[Accepted] | None = None,
) -> list[tuple[int, int, Verdict]]:
    """Pair reference and model calls (same count) order-independently: (expected index, got index, verdict)."""
    accepts = accepts or [Accepted()] * len(expected)
    table = [
        [score_call(e, g, schemas, normalize, a) for g in got] for e, a in zip(expected, accepts, strict=True)
    ]
    n = len(expected)

    def cost(pairing) -> int:
        return sum(CALL_SEVERITY[table[i][j].code] for i, j in enumerate(pairing))

    if n <= 7:
        best = min(itertools.permutations(range(n)), key=cost)
    else:  # greedy: each reference call takes the best model call still free
        free, best = set(range(n)), []
        for i in range(n):
            j = min(free, key=lambda j, i=i: (CALL_SEVERITY[table[i][j].code], j))
            free.remove(j)
            best.append(j)
    return [(i, j, table[i][j]) for i, j in enumerate(best)]


def score_turn(
    reference_message: dict,
    turn: ParsedTurn,
    tools: list[dict] | None,
    *,
    normalize: Normalizer | None = None,
) -> Verdict:
    """The verdict for a model's turn against the reference assistant message (see the module docstring)."""
    expected = message_tool_calls(reference_message)
    got = turn.tool_calls
    if not expected:
        if got or turn.unparsed:
            names = ", ".join(c.name for c in got) or "an unparseable call"
            return Verdict("unexpected_call", f"reference answers without a tool; model called {names}")
        if turn.leaked_markup:
            return Verdict("leaked_markup", f"tool-call markup in the answer: {_short(turn.content, 80)}")
        if not turn.content.strip():
            return Verdict("empty_answer", f"reference answers in text; the answer is {_short(turn.content)}")
        return Verdict("ok")
    if turn.unparsed:
        return Verdict("unparseable", f"parser rejected {_short(turn.unparsed[0], 80)}")
    if turn.leaked_markup:
        return Verdict("leaked_markup", f"call written as text: {_short(turn.content, 80)}")
    if not got:
        return Verdict(
            "no_call", f"expected {', '.join(c.name for c in expected)}; answered {_short(turn.content, 60)}"
        )
    if len(got) != len(expected):
        return Verdict("wrong_count", f"{len(got)} calls, expected {len(expected)}")
    pairs = match_calls(expected, got, tool_schemas(tools), normalize, reference_accepts(reference_message))
    worst = max(pairs, key=lambda pair: CALL_SEVERITY[pair[2].code])
    if worst[2].ok:
        return Verdict("ok")
    where = f"call {worst[1] + 1} of {len(got)}: " if len(got) > 1 else ""
    return Verdict(worst[2].code, where + worst[2].detail)


@dataclass(frozen=True)
class TurnChecks:
    """The per-case facts behind the headline rates (see `core.turns.compute_rates`)."""

    expects_call: bool
    parsed: bool  # at least one structured call, no rejected call block
    names_match: bool  # the multiset of called tool names equals the reference's
    schema_valid: bool  # parsed, every call names a declared tool and its arguments validate


def turn_checks(reference_message: dict, turn: ParsedTurn, tools: list[dict] | None) -> TurnChecks:
    expected = message_tool_calls(reference_message)
    parsed = bool(turn.tool_calls) and not turn.unparsed
    names_match = parsed and sorted(c.name for c in turn.tool_calls) == sorted(c.name for c in expected)
    schemas = tool_schemas(tools)
    schema_valid = parsed and all(
        call.name in schemas and not schema_errors(call.arguments, schemas[call.name])
        for call in turn.tool_calls
    )
    return TurnChecks(bool(expected), parsed, names_match, schema_valid)
