"""Stage 8: train/valid/test by task, so that nothing linked straddles two splits.

Samples are linked when they share a trajectory (session), a task (normalised first user message + tool
set) or an exact-duplicate key, over every sample that passed stages 3-6, duplicates included: a sample
merged by dedupe still links every trajectory it came from. Written samples are also linked by their
near-duplicate key and (split_by_intent) their last user intent. Whole components then fill train, valid
and test in an order given by a stable hash (hashlib) of their content, never by Polars' hash (documented
unstable across versions) or by session ids: the same traces, or a re-collection of the same sessions,
split the same everywhere.
"""

from __future__ import annotations

import hashlib

import polars as pl

# over every sample that passed stages 3-6, duplicates included: an exact duplicate has its original's
# conversation, so these never join two tasks
LINKS = ["traj", "task_key", "exact_key"]
# among the samples written only: a near duplicate of another task (the same generic follow-up, "please use
# the tool", and the same call) is not written, and linking it would chain unrelated tasks into one component
WRITTEN_LINKS = ["near_key"]


def stable_hash(text: str) -> int:
    """64 bits of blake2b of the UTF-8 text: the same number on every platform and dependency version."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def with_stable_hash(frame: pl.DataFrame, column: str, out: str, salt: str = "") -> pl.DataFrame:
    """Add `out` = stable_hash(salt + value) of a string column. Python runs once per distinct value: no
    Polars expression computes a hash that is stable across versions."""
    distinct = frame.select(pl.col(column).unique())
    hashes = [stable_hash(salt + value) for value in distinct.get_column(column).fill_null("").to_list()]
    table = distinct.with_columns(pl.Series(out, hashes, dtype=pl.UInt64))
    return frame.join(table, on=column, how="left", nulls_equal=True, maintain_order="left")


def task_key(samples: pl.DataFrame, tools: pl.DataFrame) -> pl.DataFrame:
    """Add `task_key`: the stable hash of a trajectory's task, its normalised first user message (task_text)
    and the names of the tools its request offered (in any order)."""
    tool_set = (
        tools.lazy().group_by("x").agg(_tools=pl.col("name").drop_nulls().unique().sort().str.join(","))
    )
    with_tools = (
        samples.lazy()
        .join(tool_set, on="x", how="left", maintain_order="left")
        .with_columns(_task=pl.concat_str(pl.col("_tools").fill_null(""), pl.lit("\x1f"), "task_text"))
        .collect()
    )
    return with_stable_hash(with_tools, "_task", "task_key", salt="task\x1f").drop("_tools", "_task")


def components(linked: pl.DataFrame, link_columns: list[str]) -> pl.DataFrame:
    """Add `component`: connected components of samples linked by equal values in any of `link_columns`
    (a null links nothing), by min-label propagation until stable."""
    frame = linked.with_columns(component=pl.col(link_columns[0]).rank("dense").cast(pl.Int64))
    for _ in range(10_000):
        before = frame.get_column("component")
        for column in link_columns:
            linked_min = pl.col("component").min().over(column)
            frame = frame.with_columns(
                component=pl.when(pl.col(column).is_null()).then(pl.col("component")).otherwise(linked_min)
            )
        if frame.get_column("component").equals(before):
            break
    return frame


def component_order(linked: pl.DataFrame, kept: pl.DataFrame, seed: int) -> pl.DataFrame:
    """component, size (kept samples), key (smallest task key: content, never ids) and `order`, the seeded
    stable hash of the key; components without a kept sample are left out."""
    sizes = kept.group_by("component").agg(size=pl.len())
    keyed = linked.group_by("component").agg(key=pl.col("task_key").min()).join(sizes, on="component")
    keyed = keyed.with_columns(_key=pl.format("{}", "key"))
    return (
        with_stable_hash(keyed, "_key", "order", salt=f"split seed {seed}\x1f")
        .drop("_key")
        .sort("order", "key")
    )


def fill(comps: pl.DataFrame, fractions: tuple[float, float, float]) -> pl.Expr:
    """train, valid, test by each component's share of the samples before it (in `order`)."""
    train_f, valid_f, _ = fractions
    before = (pl.col("size").cum_sum() - pl.col("size")) / pl.col("size").sum()
    return (
        pl.when(before < train_f - 1e-9)
        .then(pl.lit("train"))
        .when(before < train_f + valid_f - 1e-9)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("test"))
    )


def linked_samples(candidates: pl.DataFrame, kept: pl.DataFrame, written_links: list[str]) -> pl.DataFrame:
    """sid, component of every candidate: LINKS over all of them, `written_links` among the kept ones."""
    is_kept = pl.col("sid").is_in(kept.get_column("sid").implode())
    frame = candidates.select(
        "sid", *LINKS, *(pl.when(is_kept).then(pl.col(column)).alias(column) for column in written_links)
    )
    return components(frame, LINKS + written_links)


def assign_splits(
    linked: pl.DataFrame, kept: pl.DataFrame, fractions: tuple[float, float, float], seed: int
) -> tuple[pl.DataFrame, list[str]]:
    """`kept` with `component` and `split`: whole components of `linked` (kept samples and the duplicates
    linked to them) fill train, then valid, then test by sample share. Returns notes for tiny inputs."""
    kept = kept.join(linked.select("sid", "component"), on="sid", maintain_order="left")
    comps = component_order(linked, kept, seed)
    comps = comps.with_columns(split=fill(comps, fractions))
    notes: list[str] = []
    n, valid_f = comps.height, fractions[1]
    if n >= 2 and valid_f > 0 and not comps.filter(pl.col("split") == "valid").height:
        # a big component took valid's share: give valid the first test component, else the last train one
        tests = comps.with_row_index("_i").filter(pl.col("split") == "test")
        index = tests.get_column("_i")[0] if tests.height else n - 1
        comps = comps.with_columns(
            split=pl.when(pl.int_range(pl.len()) == index).then(pl.lit("valid")).otherwise(pl.col("split"))
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
    return kept.join(comps.select("component", "split"), on="component", maintain_order="left"), notes
