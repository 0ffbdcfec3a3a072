"""Stage 7: exact and near duplicates among the samples that passed stages 3-6."""

from __future__ import annotations

import polars as pl

from curate.reasons import Outcome, code


def duplicates(candidates: pl.DataFrame, near_keep: int) -> pl.DataFrame:
    """sid, reason (exact_duplicate | near_duplicate) and dup_of (the sid kept instead) of every duplicate
    among `candidates` (sid, traj, exact_key, near_key; in input order).

    Exact: same tools and canonical messages (call ids ignored); the first in input order stays.
    Near: same tool set, normalised last user intent and target call(s), from *another* trajectory: the
    samples of the first `near_keep` trajectories of each cluster stay (0 keeps all). A trajectory that
    repeats a call (running the tests again after an edit) keeps its repeats: their histories differ."""
    frame = (
        candidates.lazy()
        .select("sid", "traj", "exact_key", "near_key", order=pl.col("sid"))
        .sort("order")
        .with_columns(_exact_first=pl.col("sid").first().over("exact_key"))
    )
    exact = frame.filter(pl.col("sid") != pl.col("_exact_first")).select(
        "sid", reason=code("exact_duplicate"), dup_of="_exact_first"
    )
    near = (
        frame.filter(pl.col("sid") == pl.col("_exact_first"))
        .with_columns(
            _traj_first=pl.col("order").min().over("near_key", "traj"),
            _near_first=pl.col("sid").first().over("near_key"),
        )
        .with_columns(_traj_rank=pl.col("_traj_first").rank("dense").over("near_key"))
        .filter(pl.lit(near_keep) > 0, pl.col("_traj_rank") > near_keep)
        .select("sid", reason=code("near_duplicate"), dup_of="_near_first")
    )
    return pl.concat([exact, near]).sort("sid").collect()


def dedupe(candidates: pl.DataFrame, near_keep: int, where: pl.DataFrame) -> Outcome:
    """Kept: the candidates that are no duplicate. Removed: sid, reason, dup_of and detail (where the sample
    kept instead comes from: "file:line turn N")."""
    dups = duplicates(candidates, near_keep)
    kept_from = (
        candidates.lazy()
        .join(where.lazy().select("x", "where"), on="x", how="left")
        .select(dup_of="sid", _kept_where=pl.format("{} turn {}", "where", "pos"))
    )
    removed = (
        dups.lazy()
        .join(kept_from, on="dup_of", how="left", maintain_order="left")
        .select(
            "sid",
            "reason",
            "dup_of",
            detail=pl.lit("duplicate of the sample kept from ") + pl.col("_kept_where"),
        )
        .collect()
    )
    return Outcome(
        kept=candidates.join(dups.select("sid"), on="sid", how="anti", maintain_order="left"), removed=removed
    )
