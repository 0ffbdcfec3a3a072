"""The funnel report, formatted: report.json (machine output) and a short human summary (rich).

The numbers come from curate.funnel (the accounting) and the stages' own statistics; nothing here decides
a fate or writes a data file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate import reasons as r
from curate.config import SAVED_AS, Config
from curate.funnel import Accounting, Exchanges, Samples, counts

UNITS = {
    "exchange": "one non-blank line of a trace file (one recorded request/response)",
    "sample": "one assistant turn of a trajectory head: the head's messages up to and including that turn",
    "mapping": (
        "exchanges that are prefixes of (or identical to) a longer exchange of the same session are "
        "deduplicated into it; each remaining exchange (a trajectory head) yields one sample per assistant "
        "turn, so an agent loop of N requests gives about N samples, taken from its last request. An "
        "exchange counts as kept when at least one of its head's samples was written."
    ),
    "line": (
        "one line of a split file: in train and valid (sessions = true) a trajectory head's session sample, "
        "supervising every sample kept of it, or a per-turn sample (test, --per-turn, a head with one kept "
        "sample, or a session the model's template cannot train whole); the files count samples by the turns "
        "their lines supervise"
    ),
}
VALIDATION_NOTE = (
    "fast path = orjson + jsonschema-rs (the schema file) + a date-time check no looser than "
    "jsonschema's; every line it refuses is decided by core.trace.validation_errors"
)


@dataclass
class Report:
    data: dict[str, Any]

    @property
    def kept(self) -> int:
        return self.data["samples"]["kept"]

    @property
    def split_counts(self) -> dict[str, int]:
        return {k: self.data["split"][k] for k in ("train", "valid", "test")}

    def failure_reason(self) -> str | None:
        """One line saying why nothing usable remains, or None when samples were written."""
        if self.kept:
            return None
        ex, sm = self.data["exchanges"], self.data["samples"]
        if ex["in"] == 0:
            return "no trace records found in the inputs"
        top = next(iter({**ex["rejected_by_reason"]}.items()), None)
        top_sample = next(iter(sm["rejected_by_reason"].items()), None)
        detail = f"most common exchange reject: {top[0]} ({top[1]})" if top else ""
        if top_sample:
            detail += f"; most common sample reject: {top_sample[0]} ({top_sample[1]})"
        return f"no usable samples: {ex['in']} lines in, {ex['rejected']} rejected, {ex['deduplicated']} deduplicated; {detail}"

    def write(self, out_dir: Path) -> Path:
        path = Path(out_dir) / "report.json"
        path.write_text(json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")
        return path

    def print_summary(self, console=None) -> None:
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        d = self.data
        table = Table(title="curate funnel", show_lines=False)
        table.add_column("stage")
        table.add_column("in", justify="right")
        table.add_column("out", justify="right")
        table.add_column("removed (reason: count)")
        for stage in d["stages"]:
            removed = ", ".join(f"{k}: {v}" for k, v in stage.get("removed", {}).items()) or "-"
            table.add_row(stage["name"], str(stage["in"]), str(stage["out"]), removed)
        console.print(table)
        files = d.get("verified_from_files", {})
        for label, unit in (("exchanges", "exchanges"), ("samples:  ", "samples")):
            n = d[unit]
            holds = n["identity_holds"] and files.get(unit, {}).get("holds", False)
            verdict = "[green](holds in the files written)[/]" if holds else "[red](BROKEN)[/]"
            console.print(
                f"{label} {n['in']} in = {n['kept']} kept + {n['rejected']} rejected + "
                f"{n['deduplicated']} deduplicated {verdict}"
            )
        for key, title in (("by_policy", "answered by"), ("by_outcome", "session outcome")):
            groups = d.get(key) or {}
            if len(groups) > 1 or (key == "by_outcome" and set(groups) != {"(none)"}):
                shown = "; ".join(
                    f"{name}: {g['usable']}/{g['exchanges']} exchanges usable, {g['sessions']} sessions"
                    for name, g in groups.items()
                )
                console.print(f"{title}: {shown}", markup=False)
        sp = d["split"]
        shown = ", ".join(f"{k} {sp[k]} in {sp['lines'][k]} lines" for k in ("train", "valid", "test"))
        console.print(f"written (samples in lines): {shown} → {d['out_dir']}")
        if line := sessions_line(d["sessions"]):
            console.print(line, markup=False)
        for note in sp["notes"]:
            console.print(f"[yellow]note:[/] {note}")


def sessions_line(sessions: dict[str, Any]) -> str:
    """The sessions summary in one line (empty with sessions off)."""
    if not sessions.get("enabled"):
        return ""
    fell_back = sum(sessions["fallbacks"].values())
    reasons = "; ".join(f"{reason}: {n}" for reason, n in sessions["fallbacks"].items())
    return (
        f"sessions (train, valid): {sessions['whole']} trajectories written whole "
        f"({sessions['turns_in_sessions']} samples), {sessions['single_turn']} with one kept sample written "
        f"per-turn, {fell_back} fell back to per-turn samples ({sessions['fallback_turns']} samples)"
        + (f" [{reasons}]" if reasons else "")
    )


@dataclass
class Statistics:
    """What the stages counted besides fates: marker matches, text-about-tools formats, the model check."""

    marker_matches: dict[str, int]
    marker_messages: int
    text_calls: pl.DataFrame  # tt_format, tt_status, len (per batch, summed here)
    model_check: dict[str, Any] | None = None
    sessions: dict[str, Any] = field(default_factory=dict)  # curate.sessions.Layout.summary


def build_report(
    config: Config,
    files: list[Path],
    out_dir: Path,
    ex: Exchanges,
    sm: Samples,
    acc: Accounting,
    stats: Statistics,
    written: dict[str, str],
) -> Report:
    rejected = acc.samples["rejected_by_reason"]
    data = {
        "inputs": [str(f) for f in files],
        "out_dir": str(out_dir),
        "config": config.to_dict(),
        "units": UNITS,
        "exchanges": acc.exchanges,
        "samples": acc.samples,
        "stages": acc.stages,
        "validation": {**ex.validation, "note": VALIDATION_NOTE},
        "stitching": stitching(ex),
        "markers": {
            "patterns": config.all_markers(),
            "matches_per_pattern": stats.marker_matches,
            "messages_changed": stats.marker_messages,
            "samples_dropped": rejected.get("empty_after_markers", 0),
        },
        "text_tool_calls": {**text_calls(sm, stats.text_calls), "policy": config.text_tool_calls},
        "tool_calls": {
            "outcomes": counts(sm.table.filter(pl.col("kind") == "tool_call"), "outcome"),
            "invalid": {k: v for k, v in rejected.items() if k in r.group("invalid")},
        },
        "dedupe": {
            "exact": cluster_stats(sm, "exact_key", "exact_duplicate"),
            "near": cluster_stats(sm, "near_key", "near_duplicate"),
            "examples": duplicate_examples(sm, ex.where, config.examples),
        },
        "model_check": stats.model_check,
        "sessions": stats.sessions,
        "split": split_section(sm, config, written) | {"lines": stats.sessions["lines"]},
        "rejects_file": str(Path(out_dir) / "rejects.jsonl"),
        "config_file": str(Path(out_dir) / SAVED_AS),
        "verified_from_files": acc.verified,
        "reasons": r.described(
            [
                *acc.exchanges["rejected_by_reason"],
                *acc.exchanges["deduplicated_by_reason"],
                *rejected,
                *acc.samples["deduplicated_by_reason"],
            ]
        ),
    }
    return Report(data)


def stitching(ex: Exchanges) -> dict[str, int]:
    stitched = ex.stitched.get_column("reason")
    return {
        "trajectories": ex.stitch.kept.height,
        "prefix_exchanges": int((stitched == "prefix_of_longer_exchange").sum()),
        "duplicate_exchanges": int((stitched == "duplicate_exchange").sum()),
        "messages_in_all_exchanges": ex.messages_seen,
        "messages_in_trajectory_heads": ex.head_messages,
        "prefix_messages_removed": ex.messages_seen - ex.head_messages,
        "sessions": int(ex.stitched.get_column("session_id").drop_nulls().n_unique()),
    }


def text_calls(sm: Samples, per_batch: pl.DataFrame) -> dict[str, Any]:
    by_format: dict[str, dict[str, int]] = {}
    totals = (
        per_batch.group_by("tt_format", "tt_status").agg(pl.col("len").sum()).sort("tt_format", "tt_status")
    )
    for fmt, status, count in totals.iter_rows():
        by_format.setdefault(fmt, {})[status] = int(count)
    status = pl.col("tt_status")
    return {
        "messages_by_format": by_format,
        "samples_converted": sm.table.filter(status == "converted").height,
        "samples_converted_kept": sm.split.filter(status == "converted").height,
        "samples_rejected": sm.table.filter(~status.is_in(["converted", "not_a_call"])).height,
        "json_answers_left_alone": sm.table.filter(status == "not_a_call").height,
    }


def cluster_stats(sm: Samples, key: str, reason: str) -> dict[str, int]:
    clusters = sm.turns.kept.group_by(key).len().filter(pl.col("len") > 1)
    return {
        "dropped": sm.dedupe.removed.filter(pl.col("reason") == reason).height,
        "clusters_with_duplicates": clusters.height,
    }


def duplicate_examples(sm: Samples, where: pl.DataFrame, limit: int) -> list[dict[str, Any]]:
    """The largest duplicate clusters: which sample was kept, its intent and target, where the others were."""
    located = (
        sm.table.lazy()
        .join(where.lazy().select("x", "where"), on="x", how="left")
        .select("sid", "intent", "target", where=pl.format("{} turn {}", "where", "pos"))
    )
    clusters = (
        sm.dedupe.removed.lazy()
        .sort("sid")
        .group_by("reason", "dup_of")
        .agg(duplicates=pl.len(), members=pl.col("sid").head(3))
        .sort(["duplicates", "dup_of", "reason"], descending=[True, False, False])
        .head(limit)
    )
    members = (
        clusters.select("dup_of", sid="members")
        .explode("sid")
        .join(located.select("sid", "where"), on="sid")
        .sort("sid")
        .group_by("dup_of")
        .agg(duplicates_from=pl.col("where"))
    )
    return (
        clusters.join(located.rename({"sid": "dup_of", "where": "kept"}), on="dup_of", how="left")
        .join(members, on="dup_of", how="left")
        .sort(["duplicates", "dup_of", "reason"], descending=[True, False, False])
        .select(pl.col("reason").alias("kind"), "duplicates", "kept", "intent", "target", "duplicates_from")
        .collect()
        .to_dicts()
    )


def split_section(sm: Samples, config: Config, written: dict[str, str]) -> dict[str, Any]:
    split_counts = counts(sm.split, "split")
    return {
        **{k: split_counts.get(k, 0) for k in ("train", "valid", "test")},
        "components": int(sm.split.get_column("component").n_unique()) if sm.split.height else 0,
        "grouped_by": ["task (first user message + tool set)", "session (or trajectory head)"]
        + ["exact or near-duplicate cluster (duplicates included)"]
        + (["intent"] if config.split_by_intent else []),
        "order": "stable hash (blake2b) of each group's task and the seed",
        "notes": sm.notes,
        "files": written,
    }
