"""Accounting: what each stage kept and removed, summed into the two identities and the rejects lines.

Two units, each with its own exact identity:
  exchanges  every non-blank input line: in = kept + rejected + deduplicated
  samples    every assistant turn of every trajectory head: in = kept + rejected + deduplicated
An exchange is one line; a trajectory head is the longest exchange of a conversation and stands for its
prefixes (deduplicated); each assistant turn of a head is one sample ending on that turn. A head is kept
when at least one of its samples is, deduplicated when its samples all are duplicates, else rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from curate import reasons as r
from curate.reasons import Outcome

REMOVED_SCHEMA = {"x": pl.Int64, "reason": pl.String, "detail": pl.String}


@dataclass
class Exchanges:
    """Stages 1-2: every non-blank input line (`where`: x → file:line) and what each stage removed."""

    where: pl.DataFrame
    validate: Outcome  # removed: x, reason, detail
    policy: Outcome
    stitch: Outcome  # kept: the trajectory heads (x, session_id, group)
    stitched: pl.DataFrame  # every usable exchange: x, session_id, rep, head, reason
    read: dict[str, int] = field(default_factory=dict)  # files, bytes, blank_lines
    validation: dict[str, int] = field(default_factory=dict)  # fast_path, reference_validator
    messages_seen: int = 0
    head_messages: int = 0


@dataclass
class Samples:
    """Stages 3-9: every sample (`table`) and what each stage removed; `split` holds the kept ones."""

    table: pl.DataFrame
    turns: Outcome  # stages 3-6 (each removed sample has one reason; the table names its stage)
    dedupe: Outcome  # stage 7
    model: Outcome  # stage 9
    split: pl.DataFrame  # kept samples with component and split
    notes: list[str] = field(default_factory=list)


@dataclass
class Accounting:
    exchanges: dict[str, Any]
    samples: dict[str, Any]
    stages: list[dict[str, Any]]
    removed_samples: pl.DataFrame  # sid, reason, detail, stage, fate + the sample's columns
    rejects: pl.DataFrame  # `line`: the rejects.jsonl lines, exchanges by x then samples by sid
    verified: dict[str, Any] = field(default_factory=dict)  # the identities read back from the files


def counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    """{value: rows}, most frequent first (ties by value, so the report is the same on every run)."""
    if frame.height == 0:
        return {}
    table = frame.group_by(column).len().sort(["len", column], descending=[True, False])
    return {str(k): int(v) for k, v in table.iter_rows()}


def with_fate(removed: pl.LazyFrame) -> pl.LazyFrame:
    return removed.with_columns(stage=r.stage_of(pl.col("reason")), fate=r.fate_of(pl.col("reason")))


def head_fates(heads: pl.DataFrame, samples: pl.DataFrame, removed: pl.DataFrame) -> pl.DataFrame:
    """Stage "3-9 samples" at exchange level: each head with its sample counts, and the reason (null when
    kept) when none of its samples was kept."""
    per_head = (
        samples.lazy()
        .join(removed.lazy().select("sid", "fate"), on="sid", how="left")
        .group_by("x")
        .agg(kept=pl.col("fate").is_null().sum(), dedup=(pl.col("fate") == r.DEDUPLICATED).sum(), n=pl.len())
    )
    return (
        heads.lazy()
        .select("x")
        .join(per_head, on="x", how="left", maintain_order="left")
        .with_columns(pl.col("kept", "dedup", "n").fill_null(0))
        .with_columns(
            reason=pl.when(pl.col("kept") > 0)
            .then(pl.lit(None, dtype=pl.String))
            .when(pl.col("dedup") > 0)
            .then(r.code("all_samples_duplicate"))
            .when(pl.col("n") == 0)
            .then(r.code("no_assistant_turns"))
            .otherwise(r.code("no_usable_samples")),
            detail=pl.format("{} samples, none kept (see the sample rejects with this head)", "n"),
        )
        .collect()
    )


def removed_exchanges(ex: Exchanges, heads: pl.DataFrame) -> pl.DataFrame:
    parts = [
        ex.validate.removed,
        ex.policy.removed,
        ex.stitch.removed,
        heads.filter(pl.col("reason").is_not_null()),
    ]
    return with_fate(pl.concat([p.lazy().select(*REMOVED_SCHEMA) for p in parts])).collect()


def removed_samples(sm: Samples) -> pl.DataFrame:
    parts = [sm.turns.removed, sm.dedupe.removed, sm.model.removed]
    removed = pl.concat([p.lazy().select("sid", "reason", "detail") for p in parts])
    return (
        with_fate(removed)
        .join(sm.table.lazy().drop("reason", "detail"), on="sid", how="left")
        .with_columns(detail=pl.coalesce("detail", r.meaning_of(pl.col("reason"))))
        .sort("sid")
        .collect()
    )


def identity(n_in: int, kept: int, removed: pl.DataFrame) -> dict[str, Any]:
    fates = counts(removed, "fate")
    rejected, deduplicated = fates.get(r.REJECTED, 0), fates.get(r.DEDUPLICATED, 0)
    return {
        "in": n_in,
        "kept": kept,
        "rejected": rejected,
        "deduplicated": deduplicated,
        "identity_holds": n_in == kept + rejected + deduplicated,
        "rejected_by_reason": counts(removed.filter(pl.col("fate") == r.REJECTED), "reason"),
        "deduplicated_by_reason": counts(removed.filter(pl.col("fate") == r.DEDUPLICATED), "reason"),
    }


def stage_rows(unit: str, stages: tuple[str, ...], n_in: int, removed: pl.DataFrame) -> list[dict[str, Any]]:
    """One funnel row per stage, in order: what came in, what it removed (by reason), what went on."""
    rows, remaining = [], n_in
    for stage in stages:
        gone = counts(removed.filter(pl.col("stage") == stage), "reason")
        out = remaining - sum(gone.values())
        rows.append({"name": stage, "unit": unit, "in": remaining, "out": out, "removed": gone})
        remaining = out
    return rows


def rejects_lines(ex_removed: pl.DataFrame, sm_removed: pl.DataFrame, where: pl.DataFrame) -> pl.DataFrame:
    """The rejects.jsonl lines: every exchange not kept (by input order), then every sample not kept."""
    loc = where.lazy().select("x", "where")
    exchanges = (
        ex_removed.lazy()
        .join(loc, on="x", how="left")
        .sort("x")
        .select(
            line=pl.struct(
                unit=pl.lit("exchange"), stage="stage", reason="reason", detail="detail", source="where"
            ).struct.json_encode()
        )
    )
    samples = (
        sm_removed.lazy()
        .join(loc.rename({"x": "src", "where": "source"}), on="src", how="left", maintain_order="left")
        .join(loc.rename({"where": "head"}), on="x", how="left", maintain_order="left")
        .select(
            line=pl.struct(
                unit=pl.lit("sample"),
                stage="stage",
                reason="reason",
                detail="detail",
                source="source",
                head="head",
                turn="pos",
                kind="kind",
            ).struct.json_encode()
        )
    )
    return pl.concat([exchanges, samples]).collect()


def account(ex: Exchanges, sm: Samples) -> Accounting:
    lines_in = ex.where.height
    sample_removed = removed_samples(sm)
    heads = head_fates(ex.stitch.kept, sm.table, sample_removed)
    exchange_removed = removed_exchanges(ex, heads)
    exchanges = identity(lines_in, heads.filter(pl.col("reason").is_null()).height, exchange_removed)
    samples = identity(sm.table.height, sm.split.height, sample_removed)
    samples |= {"by_kind": counts(sm.table, "kind"), "kept_by_kind": counts(sm.split, "kind")}
    split_counts = counts(sm.split, "split")
    rows = [
        {"name": r.READ, "unit": "line", "in": lines_in, "out": lines_in, "removed": {}, **ex.read},
        *stage_rows("exchange", (r.VALIDATE, r.POLICY, r.STITCH), lines_in, exchange_removed),
        *stage_rows("sample", r.SAMPLE_STAGES, sm.table.height, sample_removed),
    ]
    rows[4]["by_kind"] = samples["by_kind"]
    rows.append(
        {
            "name": r.SPLIT,
            "unit": "sample",
            "in": rows[-1]["out"],
            "out": sm.split.height,
            "removed": {},
            **{k: split_counts.get(k, 0) for k in ("train", "valid", "test")},
        }
    )
    return Accounting(
        exchanges=exchanges,
        samples=samples,
        stages=rows,
        removed_samples=sample_removed,
        rejects=rejects_lines(exchange_removed, sample_removed, ex.where),
    )
