"""Why a line or a sample left the funnel: THE table of reason codes (code → stage → fate → meaning).

rejects.jsonl, report.json and the printed funnel all look codes up here; a code missing from the table
fails the run (`stage_of` is a strict lookup), so a new check cannot be counted under the wrong stage.

A reason's fate is "rejected" (the data was unusable) or "deduplicated" (it is kept elsewhere); the two
accounting identities, exchanges and samples, are `in = kept + rejected + deduplicated`.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

# Stages, as printed in the funnel and in rejects.jsonl. 9 (model check) runs before 8 (split) so that the
# split fractions apply to the samples actually written.
READ = "read"
VALIDATE = "1 validate"
POLICY = "1b exchange policy"
STITCH = "2 stitch"
HEAD = "3-9 samples"  # an exchange whose trajectory head kept no sample
TURNS = "3 per-turn samples"
MARKERS = "4 markers"
TEXT_CALLS = "5 text tool calls"
VALIDITY = "6 tool-call validity"
DEDUPE = "7 dedupe"
MODEL = "9 model check"
SPLIT = "8 split"

EXCHANGE_STAGES = (VALIDATE, POLICY, STITCH, HEAD)
SAMPLE_STAGES = (TURNS, MARKERS, TEXT_CALLS, VALIDITY, DEDUPE, MODEL)

REJECTED, DEDUPLICATED = "rejected", "deduplicated"


@dataclass(frozen=True)
class Reason:
    code: str
    stage: str
    fate: str  # REJECTED | DEDUPLICATED
    meaning: str
    group: str | None = None  # reasons reported together (GROUPS; report.json "tool_calls.invalid")

    @property
    def unit(self) -> str:
        return "exchange" if self.stage in EXCHANGE_STAGES else "sample"


# stage → code → meaning, in funnel order. The meaning is also the rejects.jsonl detail when the stage has
# nothing more specific to say.
MEANINGS: dict[str, dict[str, str]] = {
    VALIDATE: {
        "not_json": "the line is not JSON",
        "not_object": "the line is JSON but not an object",
        "schema_invalid": "the record does not match the trace schema",
        "unknown_schema_version": "the record's schema_version is not known",
        "torn_line": "torn line: no trailing newline (write interrupted)",
        "benchmark_data": "a public benchmark's evaluation exchange (session flywheel-benchmark:…): never "
        "trained on",
    },
    POLICY: {
        "no_request": "the record has no request",
        "not_chat_completions": "not a /chat/completions exchange",
        "http_error": "the exchange ended in an HTTP or transport error",
        "no_response": "the exchange has no response",
        "incomplete": "the response was not received completely",
        "tool_calls_missing": "the server dropped a malformed tool call",
        "truncated": "the answer stopped at the length limit",
        "no_messages": "the conversation has no messages",
        "other_policy": "answered by another policy than answered_by",
        "outcome_missing": "require_outcome: the session has no recorded outcome",
        "outcome_not_required": "require_outcome: the session's outcome is not the required one",
    },
    STITCH: {
        "prefix_of_longer_exchange": "contained in a longer exchange",
        "duplicate_exchange": "the same exchange was recorded again",
    },
    HEAD: {
        "all_samples_duplicate": "every sample of this head is a duplicate",
        "no_assistant_turns": "the head has no assistant turn",
        "no_usable_samples": "no sample of this head was kept",
    },
    TURNS: {
        "source_exchange_rejected": "the exchange that produced this turn was rejected",
        "empty_assistant_turn": "no content and no tool calls",
        "final_answer_excluded": "include_final_answers is off",
        "non_text_content": "a message up to this turn has non-text content parts (images, audio, files)",
    },
    MARKERS: {
        "empty_after_markers": "a user or system message up to this turn held nothing but synthetic markers",
    },
    TEXT_CALLS: {  # "text_tool_call_" + the status curate.textcalls gives
        "text_tool_call_unparseable": "the tool call written as text does not parse",
        "text_tool_call_unknown_tool": "the tool call written as text names a tool the request lacks",
        "text_tool_call_bad_arguments": "the arguments of the tool call written as text are not an object",
        "text_tool_call_mixed_markup": "tool-call markup left in the text, or next to structured tool_calls",
        "text_tool_call_rejected": "text_tool_calls = 'reject'",
    },
    VALIDITY: {
        "unknown_tool": "a call names a tool the request does not offer",
        "arguments_not_json": "a call's arguments are not JSON",
        "arguments_not_object": "a call's arguments are not a JSON object",
        "arguments_schema_invalid": "a call's arguments do not match the tool's parameters schema",
        "failed_call": "a retry prompt or tool error answered this call",
        "failed_final_answer": "the agent answered this with a retry prompt",
    },
    DEDUPE: {
        "exact_duplicate": "the same tools and messages are kept elsewhere",
        "near_duplicate": "the same tool set, user intent and call(s) are kept from another trajectory",
    },
    MODEL: {
        "round_trip_failed": "the model's chat template and tool parser do not give the call back",
        "mask_mismatch": "the turn's tokens do not continue its prompt's tokens (e.g. text starting with a "
        "newline the tokenizer merges), so training's loss mask would be wrong",
        "too_long": "longer than max_seq_length tokens",
    },
}
# the data is kept elsewhere (every other code: the data was unusable)
DEDUPLICATING = {"prefix_of_longer_exchange", "duplicate_exchange", "all_samples_duplicate"} | set(
    MEANINGS[DEDUPE]
)
GROUPS = {
    "invalid": ("unknown_tool", "arguments_not_json", "arguments_not_object", "arguments_schema_invalid")
}

TABLE: dict[str, Reason] = {
    code: Reason(
        code,
        stage,
        DEDUPLICATED if code in DEDUPLICATING else REJECTED,
        meaning,
        next((name for name, codes in GROUPS.items() if code in codes), None),
    )
    for stage, codes in MEANINGS.items()
    for code, meaning in codes.items()
}


@dataclass
class Outcome:
    """What one stage did: `kept` rows go on to the next stage; `removed` rows carry `reason` (a code of the
    table) and `detail` (what exactly, or null for the code's meaning), keyed by x (exchange) or sid (sample)."""

    kept: pl.DataFrame
    removed: pl.DataFrame


def partition(frame: pl.DataFrame, reason: str = "reason") -> Outcome:
    """Outcome of a stage that marked each row with a reason (null = kept)."""
    removed = pl.col(reason).is_not_null()
    return Outcome(kept=frame.filter(~removed), removed=frame.filter(removed))


def code(name: str) -> pl.Expr:
    """A literal reason code, checked against the table (a typo fails at import, not in a report)."""
    if name not in TABLE:
        raise KeyError(f"reason code {name!r} is not in curate.reasons.TABLE")
    return pl.lit(name)


Rule = tuple[str | pl.Expr, pl.Expr, pl.Expr | None]  # (code, condition, detail or None: the meaning)


def first_reason(rules: list[Rule]) -> tuple[pl.Expr, pl.Expr]:
    """(reason, detail) expressions of an ordered list of checks: the first whose condition holds names
    the reason (a code of the table, or an expression giving one) and its detail; null when none holds."""
    reason = detail = pl.when(False).then(pl.lit(None, dtype=pl.String))
    for name, condition, what in rules:
        reason = reason.when(condition).then(code(name) if isinstance(name, str) else name)
        detail = detail.when(condition).then(pl.lit(None, dtype=pl.String) if what is None else what)
    return reason, detail


def text_call_code(status: pl.Expr) -> pl.Expr:
    """The reason code of a text-about-tools status (see _TEXT_STATUS)."""
    return pl.lit("text_tool_call_") + status


def _lookup(reason: pl.Expr, field: str) -> pl.Expr:
    """A strict look-up: a code missing from the table raises instead of being counted nowhere."""
    return reason.replace_strict({r.code: getattr(r, field) for r in TABLE.values()}, return_dtype=pl.String)


def stage_of(reason: pl.Expr) -> pl.Expr:
    return _lookup(reason, "stage")


def fate_of(reason: pl.Expr) -> pl.Expr:
    return _lookup(reason, "fate")


def meaning_of(reason: pl.Expr) -> pl.Expr:
    return _lookup(reason, "meaning")


def group(name: str) -> list[str]:
    return [r.code for r in TABLE.values() if r.group == name]


def described(codes) -> dict[str, dict[str, str]]:
    """{code: {stage, fate, meaning}} of the given codes, for report.json."""
    return {c: {"stage": TABLE[c].stage, "fate": TABLE[c].fate, "meaning": TABLE[c].meaning} for c in codes}
