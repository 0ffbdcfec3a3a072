"""The accounting, checked against the files written: every line in must be a kept sample's head in
train/valid/test.jsonl or a line of rejects.jsonl, and every sample a turn supervised by a line of one of
them (a per-turn line supervises one, a session line the turns its "supervise" names).

Stage by stage, what came in must equal what the stage passed on plus what rejects.jsonl says it removed;
the first stage where that fails is named (AccountingError, one line). What a stage passed on is measured
on its own output (the rows it kept), and the last stage's output is read back from the split files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from curate import reasons as r
from curate.funnel import Exchanges, Samples
from curate.lines import SPLITS, head_of_line, turns_of_line

TURN_CHECKS = "3-6 per-turn checks"  # decided together (curate.turns): one identity for the four stages


class AccountingError(RuntimeError):
    """`in = kept + rejected + deduplicated` does not hold for the files written; names the stage."""


def read_splits(out_dir: Path) -> dict[str, Any]:
    """Lines and supervised turns (samples) per split file, and the distinct trajectory heads they come from."""
    frames = [
        pl.scan_csv(
            out_dir / f"{split}.jsonl",
            has_header=False,
            separator="\x01",  # one column: the whole line (JSON escapes every control character)
            quote_char=None,
            schema={"line": pl.String},
        ).select(split=pl.lit(split), head=head_of_line(pl.col("line")), turns=turns_of_line(pl.col("line")))
        for split in SPLITS
        if (out_dir / f"{split}.jsonl").exists()
    ]
    if not frames:
        return {"lines": dict.fromkeys(SPLITS, 0), "turns": dict.fromkeys(SPLITS, 0), "heads": 0}
    table = pl.concat(frames).collect()
    per_split = {
        split: (lines, turns)
        for split, lines, turns in table.group_by("split").agg(pl.len(), pl.col("turns").sum()).iter_rows()
    }
    return {
        "lines": {split: per_split.get(split, (0, 0))[0] for split in SPLITS},
        "turns": {split: per_split.get(split, (0, 0))[1] for split in SPLITS},
        "heads": table.get_column("head").drop_nulls().n_unique(),
    }


def read_rejects(path: Path) -> pl.DataFrame:
    """unit, stage, reason of every line of rejects.jsonl (other fields not read)."""
    if not path.stat().st_size:
        return pl.DataFrame(schema={"unit": pl.String, "stage": pl.String, "reason": pl.String})
    return pl.read_ndjson(path, schema={"unit": pl.String, "stage": pl.String, "reason": pl.String})


def counts_of(frame: pl.DataFrame, column: str) -> dict[str, int]:
    return dict(frame.group_by(column).len().iter_rows()) if frame.height else {}


def chain(unit: str, n_in: int, steps: list[tuple[str, int, int]]) -> str | None:
    """The first step (stage, kept, removed in rejects.jsonl) where in != kept + removed, as one line."""
    for stage, kept, removed in steps:
        if n_in != kept + removed:
            return (
                f"accounting broken at stage {stage}: {n_in} {unit}s in, {kept} passed on + {removed} in "
                f"rejects.jsonl = {kept + removed}"
            )
        n_in = kept
    return None


def split_mismatch(written: dict[str, Any], assigned: dict[str, int]) -> str | None:
    for split in SPLITS:
        if written["turns"][split] != assigned.get(split, 0):
            return (
                f"accounting broken at stage {r.SPLIT}: {assigned.get(split, 0)} samples assigned to {split}, "
                f"{split}.jsonl supervises {written['turns'][split]} in {written['lines'][split]} lines"
            )
    return None


def verify(out_dir: Path, ex: Exchanges, sm: Samples) -> dict[str, Any]:
    """The identities from the files: {holds, broken (one line or None), exchanges, samples, lines}."""
    written = read_splits(out_dir)
    rejects = read_rejects(out_dir / "rejects.jsonl").with_columns(fate=r.fate_of(pl.col("reason")))
    by_stage = counts_of(rejects, "stage")
    kept_turns = sum(written["turns"].values())  # the sample identity is per turn, whatever the lines hold
    # the samples before the heads: a head's fate follows from its samples, so a sample stage at fault is
    # named before the exchange-level stage it upsets
    turn_checks = sum(by_stage.get(stage, 0) for stage in (r.TURNS, r.MARKERS, r.TEXT_CALLS, r.VALIDITY))
    broken = (
        chain(
            "exchange",
            ex.where.height,
            [
                (r.VALIDATE, ex.validate.kept.height, by_stage.get(r.VALIDATE, 0)),
                (r.POLICY, ex.policy.kept.height, by_stage.get(r.POLICY, 0)),
                (r.STITCH, ex.stitch.kept.height, by_stage.get(r.STITCH, 0)),
            ],
        )
        or chain(
            "sample",
            sm.table.height,
            [
                (TURN_CHECKS, sm.turns.kept.height, turn_checks),
                (r.DEDUPE, sm.dedupe.kept.height, by_stage.get(r.DEDUPE, 0)),
                (r.MODEL, sm.model.kept.height, by_stage.get(r.MODEL, 0)),
                (r.SPLIT, kept_turns, 0),
            ],
        )
        or split_mismatch(written, counts_of(sm.split, "split"))
        or chain("exchange", ex.stitch.kept.height, [(r.HEAD, written["heads"], by_stage.get(r.HEAD, 0))])
    )

    def identity(unit: str, n_in: int, kept: int) -> dict[str, int | bool]:
        fates = counts_of(rejects.filter(pl.col("unit") == unit), "fate")
        rejected, deduplicated = fates.get(r.REJECTED, 0), fates.get(r.DEDUPLICATED, 0)
        holds = n_in == kept + rejected + deduplicated
        return {"in": n_in, "kept": kept, "rejected": rejected, "deduplicated": deduplicated, "holds": holds}

    return {
        "holds": broken is None,
        "broken": broken,
        "exchanges": identity("exchange", ex.where.height, written["heads"]),
        "samples": identity("sample", sm.table.height, kept_turns),
        "lines": written["lines"],
        "turns": written["turns"],
    }
