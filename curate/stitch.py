"""Stages 1b and 2 over compact per-exchange rows: which exchanges are usable, and which trajectory each
belongs to (an exchange contained in a longer one of its session is deduplicated into that head)."""

from __future__ import annotations

import polars as pl

from curate import keys as k
from curate.config import Config
from curate.reasons import Outcome, code

SUMMARY_SCHEMA = {
    "x": pl.Int64,
    "session_id": pl.String,
    "group": pl.UInt64,
    "tools_hash": pl.UInt64,
    "n": pl.Int64,
    "full_key": pl.UInt64,
    "has_response": pl.Boolean,
    "answered_by": pl.String,
    "policy": pl.String,
}


def exchange_policy(exchanges: pl.DataFrame, config: Config) -> pl.DataFrame:
    """Add `policy`: the reason code why a schema-valid exchange cannot be used (null when it can)."""
    http_error = (pl.col("http_status").is_null() | (pl.col("http_status") >= 400)) | pl.col(
        "error_type"
    ).is_not_null()
    keep_errors = pl.lit(config.keep_http_errors)
    policy = (
        pl.when(~pl.col("has_request"))
        .then(code("no_request"))
        .when(~pl.col("endpoint").str.ends_with("chat/completions"))
        .then(code("not_chat_completions"))
        .when(http_error & ~keep_errors)
        .then(code("http_error"))
        .when(~pl.col("has_response") & ~keep_errors)
        .then(code("no_response"))
        .when(~pl.col("complete") & pl.col("has_response"))
        .then(code("incomplete"))
        .when(pl.col("calls_lost"))
        .then(code("tool_calls_missing"))
        .when(pl.col("finish_reason") == "length")
        .then(code("truncated"))
        .when(pl.col("n_messages") == 0)
        .then(code("no_messages"))
    )
    return exchanges.with_columns(policy=policy)


def exchange_summary(exchanges: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """Compact per-exchange row: stitching group (session id + tool set), length n and full conversation key."""
    last = keys.lazy().group_by("x").agg(full_key=pl.col("key").sort_by("pos").last())
    return (
        exchanges.lazy()
        .join(last, on="x", how="left", maintain_order="left")
        .with_columns(tools_hash=pl.col("tools_json").hash(seed=k.TOOLS), n=pl.col("n_messages"))
        .with_columns(
            group=pl.struct(pl.col("session_id").fill_null("\x00"), "tools_hash").hash(seed=k.GROUP)
        )
        .select(*SUMMARY_SCHEMA)
        .collect()
    )


def outcome_policy(summary: pl.DataFrame, outcomes: pl.DataFrame, config: Config) -> pl.DataFrame:
    """Stage 1b, the settings that choose whose traffic to learn from: `answered_by` keeps exchanges answered
    by that policy; `require_outcome` keeps sessions whose outcome (core.outcomes) is that one."""
    rules: list[tuple[str, pl.Expr]] = []
    if config.answered_by is not None:
        rules.append(("other_policy", pl.col("answered_by").fill_null("") != config.answered_by))
    if config.require_outcome is not None:
        rules.append(("outcome_missing", pl.col("outcome").is_null()))
        rules.append(("outcome_not_required", pl.col("outcome") != config.require_outcome))
    if not rules:
        return summary
    reason = pl.col("policy")
    for name, condition in reversed(rules):
        reason = pl.when(pl.col("policy").is_null() & condition).then(code(name)).otherwise(reason)
    return (
        summary.join(outcomes, on="session_id", how="left", maintain_order="left")
        .with_columns(policy=reason)
        .drop("outcome")
    )


def usable_exchanges(summary: pl.DataFrame) -> Outcome:
    """Stage 1b: exchanges whose policy allows them; the others with their reason."""
    rejected = pl.col("policy").is_not_null()
    return Outcome(
        kept=summary.filter(~rejected),
        removed=summary.filter(rejected).select(
            "x", reason=pl.col("policy"), detail=pl.lit("exchange not usable: ") + pl.col("policy")
        ),
    )


def stitch(usable: pl.DataFrame, keys: pl.DataFrame, where: pl.DataFrame) -> tuple[Outcome, pl.DataFrame]:
    """Stage 2: group exchanges into trajectories. An exchange whose whole conversation (request + response)
    is a prefix of a longer exchange in the same group (session id, else all session-less exchanges; same
    tool set) is covered by it. Kept: the heads (x, session_id, group); removed: every covered exchange
    with its head. Also returns every usable exchange with x, session_id, rep (first identical exchange),
    head (longest exchange containing it)."""
    usable = usable.filter(pl.col("n") > 0).lazy()
    reps = usable.group_by("group", "n", "full_key").agg(rep=pl.col("x").min())
    prefix_keys = (
        keys.lazy()
        .join(reps.select(pl.col("rep").alias("x"), "group", pl.col("n").alias("n_b")), on="x")
        .select(
            "group",
            (pl.col("pos") + 1).cast(pl.Int64).alias("n"),
            pl.col("key").alias("full_key"),
            pl.col("x").alias("b"),
            "n_b",
        )
    )
    heads = (
        reps.join(prefix_keys, on=["group", "n", "full_key"])
        .group_by("rep")
        .agg(head=pl.col("b").sort_by(["n_b", "b"], descending=[True, False]).first())
    )
    stitched = (
        usable.join(reps, on=["group", "n", "full_key"])
        .join(heads, on="rep")
        .with_columns(
            reason=pl.when(pl.col("x") == pl.col("head"))
            .then(pl.lit(None, dtype=pl.String))
            .when(pl.col("x") != pl.col("rep"))
            .then(code("duplicate_exchange"))
            .otherwise(code("prefix_of_longer_exchange"))
        )
        .select("x", "session_id", "group", "rep", "head", "reason")
        .collect()
    )
    covered = pl.col("reason").is_not_null()
    head_where = where.select(head="x", _head_where="where")
    outcome = Outcome(
        kept=stitched.filter(~covered).select("x", "session_id", "group"),
        removed=stitched.filter(covered)
        .join(head_where, on="head", how="left")
        .select("x", "reason", "head", detail=pl.lit("contained in ") + pl.col("_head_where")),
    )
    return outcome, stitched


def turn_sources(summary: pl.DataFrame, keys: pl.DataFrame, heads: pl.DataFrame) -> pl.DataFrame:
    """For each position of each head, the exchange that recorded that message as its response (if any):
    x (head), pos, src (its x), src_policy (why that exchange was rejected, or null)."""
    recorded = (
        summary.lazy()
        .filter(pl.col("has_response"))
        .sort(pl.col("policy").is_not_null(), "x")
        .group_by("group", "n", "full_key", maintain_order=True)
        .agg(src=pl.col("x").first(), src_policy=pl.col("policy").first())
    )
    return (
        keys.lazy()
        .join(heads.lazy().select("x", "group").unique(), on="x")
        .with_columns(n=(pl.col("pos") + 1).cast(pl.Int64))
        .join(recorded, left_on=["group", "n", "key"], right_on=["group", "n", "full_key"], how="left")
        .select("x", "pos", "src", "src_policy")
        .collect()
    )
