"""Which lines the split files get (config.sessions, the default): in train and valid one session sample per
trajectory head, supervising exactly the turns kept of it (core.samples: `"supervise": [message indices]`,
the conversation cut after the last of them); in test, and wherever a session cannot be trained whole, one
line per kept turn.

A head with one kept turn is written as that turn's per-turn sample, which its session sample would equal.
With a model, each session is rendered through its chat template (curate.modelcheck.check_sessions): where
the template does not render every supervised turn as a token prefix of the whole, or the session is longer
than max_seq_length, the head's turns are written as per-turn samples instead, counted with the reason.
The sample identity stays per turn: a line counts the turns it supervises (curate.verify).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.config import Config
from curate.lines import SPLITS, located, session_lines

SESSION_SPLITS = ("train", "valid")  # test stays per-turn: evaluation scores the last turn of each line
NO_FALLBACKS = pl.DataFrame(schema={"x": pl.Int64, "reason": pl.String})


@dataclass
class Layout:
    """The session lines to write (`whole`: one row per head, None with sessions off) and what became of the
    other heads, for the report."""

    whole: pl.DataFrame | None  # x, split, sid (its last turn), supervise, session_id, head, turns, n
    summary: dict[str, Any] = field(default_factory=dict)


def session_heads(kept: pl.DataFrame, where: pl.DataFrame) -> pl.DataFrame:
    """Per train/valid head: its split, the sid of its last kept turn, `supervise` (the kept turns' message
    indices) and the meta of each turn; with `n` turns."""
    chosen = kept.lazy().filter(pl.col("split").is_in(SESSION_SPLITS))
    return (
        located(chosen, where)
        .sort("x", "pos")
        .group_by("x", maintain_order=True)
        .agg(
            pl.col("split", "session_id", "head").first(),
            sid=pl.col("sid").last(),
            supervise=pl.col("pos"),
            turns=pl.struct(turn="pos", source="source", kind="kind"),
        )
        .with_columns(n=pl.col("supervise").list.len())
        .collect()
    )


def layout(
    kept: pl.DataFrame, spill_files: list[Path], where: pl.DataFrame, config: Config, tokenizer=None
) -> Layout:
    """The session lines of the kept samples (split assigned), checked with the model's tokenizer when given."""
    heads = session_heads(kept, where) if config.sessions and kept.height else None
    if heads is None:
        return Layout(whole=None, summary={"enabled": False, "lines": lines_per_split(kept, None)})
    several = heads.filter(pl.col("n") > 1)
    fallbacks, check = NO_FALLBACKS, None
    if tokenizer is not None and several.height:
        from curate.modelcheck import check_sessions

        fallbacks, check = check_sessions(session_lines(several, spill_files).collect(), tokenizer, config)
    whole = several.join(fallbacks, on="x", how="anti", maintain_order="left")
    fell_back = several.join(fallbacks, on="x", maintain_order="left")
    summary = {
        "enabled": True,
        "splits": list(SESSION_SPLITS),
        "trajectories": heads.height,
        "whole": whole.height,
        "turns_in_sessions": int(whole.get_column("n").sum()),
        "by_split": {
            split: {"sessions": part.height, "turns": int(part.get_column("n").sum())}
            for split in SESSION_SPLITS
            for part in [whole.filter(pl.col("split") == split)]
        },
        "single_turn": heads.height - several.height,
        "fallbacks": reason_counts(fell_back),
        "fallback_turns": int(fell_back.get_column("n").sum()),
        "model_check": check,
        "lines": lines_per_split(kept, whole),
    }
    return Layout(whole=whole, summary=summary)


def reason_counts(frame: pl.DataFrame) -> dict[str, int]:
    table = frame.group_by("reason").len().sort(["len", "reason"], descending=[True, False])
    return dict(table.iter_rows())


def lines_per_split(kept: pl.DataFrame, whole: pl.DataFrame | None) -> dict[str, int]:
    """Lines each split file gets: one per kept turn, less the turns of a whole session plus its one line."""
    turns = dict(kept.group_by("split").len().iter_rows()) if kept.height else {}
    merged = (
        dict(whole.group_by("split").agg(pl.col("n").sum() - pl.len()).iter_rows())
        if whole is not None and whole.height
        else {}
    )
    return {split: turns.get(split, 0) - merged.get(split, 0) for split in SPLITS}
