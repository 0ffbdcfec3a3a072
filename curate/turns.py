"""Stage 3: one sample per assistant turn of each trajectory head, and the first reason it cannot be used.

The checks of stages 3-6 are decided together, in the order of `sample_checks`, so each rejected sample
carries exactly one reason; the reasons table says which stage each reason belongs to.
"""

from __future__ import annotations

import polars as pl

from curate import keys as k
from curate.config import Config
from curate.reasons import Rule, first_reason, text_call_code

SAMPLE_FIELDS = {  # what a sample row carries to the accounting
    "x": pl.Int64,
    "pos": pl.Int32,
    "kind": pl.String,
    "reason": pl.String,
    "detail": pl.String,
    "outcome": pl.String,
    "src": pl.Int64,
    "tt_format": pl.String,
    "tt_status": pl.String,
    "n_calls": pl.Int32,
}
SAMPLE_COLUMNS = {
    **SAMPLE_FIELDS,
    "key": pl.UInt64,
    "intent_norm": pl.String,
    "task_text": pl.String,
    "near_target": pl.UInt64,
    "target": pl.String,
}


def turn_kind() -> pl.Expr:
    return (
        pl.when(pl.col("n_calls") > 0)
        .then(pl.lit("tool_call"))
        .when(pl.col("content").str.strip_chars() != "")
        .then(pl.lit("final_answer"))
        .otherwise(pl.lit("empty"))
    )


def answered_by_retry(config: Config) -> pl.Expr:
    """The next message is the agent's retry prompt (pydantic-ai asks again when an answer failed)."""
    return (pl.col("next_role") == "user") & pl.col("next_content").str.contains(
        config.retry_prompt_pattern
    ).fill_null(False)


def sample_checks(config: Config) -> list[Rule]:
    """Stages 3-6 as (reason, condition, detail) in the order they are decided."""
    final = pl.col("kind") == "final_answer"
    text_tool_failed = pl.col("tt_status").is_not_null() & ~pl.col("tt_status").is_in(
        ["converted", "not_a_call"]
    )
    return [
        (
            "source_exchange_rejected",
            pl.col("src_policy").is_not_null(),
            pl.lit("the exchange that produced this turn was rejected: ") + pl.col("src_policy"),
        ),
        ("empty_assistant_turn", pl.col("kind") == "empty", None),
        ("final_answer_excluded", final & ~pl.lit(config.include_final_answers) & ~text_tool_failed, None),
        ("empty_after_markers", pl.col("emptied_before"), None),
        (
            text_call_code(pl.col("tt_status")),
            text_tool_failed,
            pl.col("tt_format") + pl.lit(": ") + pl.col("tt_detail").fill_null(""),
        ),
        ("non_text_content", pl.col("non_text_before"), None),
        (pl.col("invalid"), pl.col("invalid").is_not_null(), pl.col("invalid_detail")),
        ("failed_call", (pl.col("failed_calls") > 0) & ~pl.lit(config.keep_failed), None),
        ("failed_final_answer", final & answered_by_retry(config) & ~pl.lit(config.keep_failed), None),
    ]


def turn_outcome(config: Config) -> pl.Expr:
    """failed | ok | unknown: what followed the turn (its calls' results, or a retry prompt after an answer)."""
    return (
        pl.when(pl.col("kind") == "tool_call")
        .then(
            pl.when(pl.col("failed_calls") > 0)
            .then(pl.lit("failed"))
            .when(pl.col("ok_calls") > 0)
            .then(pl.lit("ok"))
            .otherwise(pl.lit("unknown"))
        )
        .otherwise(pl.when(answered_by_retry(config)).then(pl.lit("failed")).otherwise(pl.lit("unknown")))
    )


def near_target() -> pl.Expr:
    """What a near duplicate must share besides the intent: the same calls in any order, or the same answer."""
    answer = k.normalise_intent(pl.col("content")).hash(seed=k.ANSWER)
    return pl.when(pl.col("n_calls") > 0).then(pl.col("sig_sorted")).otherwise(answer)


def readable_target() -> pl.Expr:
    return (
        pl.when(pl.col("n_calls") > 1)
        .then(pl.format("{} (+{} more)", "first_call", pl.col("n_calls") - 1))
        .when(pl.col("n_calls") == 1)
        .then(pl.col("first_call"))
        .otherwise(pl.lit("answer: ") + pl.col("content").str.slice(0, 150))
    )


def conversation_context() -> dict[str, pl.Expr]:
    """Per message, what its conversation holds up to it (messages sorted by x, pos)."""
    user = pl.col("role") == "user"
    return {
        "emptied_before": pl.col("emptied").cast(pl.Int32).cum_sum().over("x") > 0,
        "non_text_before": (pl.col("content_kind") == "non_text_parts").cast(pl.Int32).cum_sum().over("x")
        > 0,
        "intent": pl.when(user).then(pl.col("content")).forward_fill().over("x"),
        "first_user": pl.col("content").filter(user).first().over("x"),
        "next_role": pl.col("role").shift(-1).over("x"),
        "next_content": pl.col("content").shift(-1).over("x"),
    }


def build_samples(
    messages: pl.DataFrame, calls: pl.DataFrame, sources: pl.DataFrame, config: Config
) -> pl.DataFrame:
    """One row per assistant turn of each head: kind, the first reason it cannot be used (null if it can),
    and its dedupe keys. `messages` carry the marker and text-tool columns; `calls` validity and outcome."""
    per_message_calls = (
        calls.lazy()
        .group_by("x", "pos")
        .agg(
            invalid=pl.col("invalid").sort_by("k").drop_nulls().first(),
            invalid_detail=pl.col("invalid_detail").sort_by("k").drop_nulls().first(),
            failed_calls=(pl.col("outcome") == "failed").sum(),
            ok_calls=(pl.col("outcome") == "ok").sum(),
        )
    )
    reason, detail = first_reason(sample_checks(config))
    return (
        messages.lazy()
        .sort("x", "pos")
        .with_columns(**conversation_context())
        .filter(pl.col("role") == "assistant")
        .join(per_message_calls, on=["x", "pos"], how="left", maintain_order="left")
        .join(sources.lazy(), on=["x", "pos"], how="left", maintain_order="left")
        .with_columns(
            kind=turn_kind(),
            failed_calls=pl.col("failed_calls").fill_null(0),
            ok_calls=pl.col("ok_calls").fill_null(0),
        )
        .with_columns(reason=reason, detail=detail)
        .with_columns(
            outcome=turn_outcome(config),
            intent_norm=k.normalise_intent(pl.col("intent").fill_null("")),
            task_text=k.normalise_intent(pl.col("first_user").fill_null("")),
            near_target=near_target(),
            target=readable_target(),
        )
        .select(*SAMPLE_COLUMNS)
        .collect()
    )
