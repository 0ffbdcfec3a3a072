"""Stage 8: split the kept samples into train/valid/test so that nothing linked straddles two splits."""

from __future__ import annotations

import polars as pl


def components(kept: pl.DataFrame, link_columns: list[str]) -> pl.DataFrame:
    """Add `component`: connected components of samples linked by equal values in any of `link_columns`
    (trajectory, near-duplicate cluster, ...), by min-label propagation until stable."""
    frame = kept.with_columns(component=pl.col(link_columns[0]).rank("dense").cast(pl.Int64))
    for _ in range(10_000):
        before = frame.get_column("component")
        for column in link_columns:
            frame = frame.with_columns(component=pl.col("component").min().over(column))
        if frame.get_column("component").equals(before):
            break
    return frame


def assign_splits(
    kept: pl.DataFrame, fractions: tuple[float, float, float], seed: int
) -> tuple[pl.DataFrame, list[str]]:
    """Add `split` per component: components in seeded-hash order fill train, then valid, then test by sample
    share. A component never straddles splits. Returns the frame and notes for tiny inputs."""
    notes: list[str] = []
    comps = (
        kept.group_by("component")
        .agg(size=pl.len(), name=pl.col("traj").min())
        .with_columns(order=pl.col("name").hash(seed=seed))
        .sort("order", "name")
        .with_columns(before=(pl.col("size").cum_sum() - pl.col("size")) / pl.col("size").sum())
    )
    train_f, valid_f, _ = fractions
    split = (
        pl.when(pl.col("before") < train_f - 1e-9)
        .then(pl.lit("train"))
        .when(pl.col("before") < train_f + valid_f - 1e-9)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )
    comps = comps.with_columns(split=split)
    n = comps.height
    counts = comps.group_by("split").len()
    have = dict(counts.iter_rows())
    if n >= 2 and valid_f > 0 and not have.get("valid"):
        # a big component took valid's share: give valid the first test component, else the last train one
        tests = comps.with_row_index("_i").filter(pl.col("split") == "test")
        index = tests.get_column("_i")[0] if tests.height else n - 1
        comps = (
            comps.with_row_index("_i")
            .with_columns(
                split=pl.when(pl.col("_i") == index).then(pl.lit("valid")).otherwise(pl.col("split"))
            )
            .drop("_i")
        )
        notes.append(
            "valid took one whole session/cluster because the others were too large to split by share"
        )
    if n == 1:
        notes.append(
            "all kept samples belong to one session/duplicate cluster, so valid and test are empty: record more sessions"
        )
    elif n == 2 and fractions[2] > 0:
        notes.append("only two sessions/clusters: one for train, one for valid, none for test")
    return kept.join(comps.select("component", "split"), on="component"), notes
