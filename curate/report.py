"""The funnel report: report.json, rejects.jsonl and a short human summary (rich).

Two units, each with its own exact identity:
  exchanges  every non-blank input line: in = kept + rejected + deduplicated
  samples    every assistant turn of every trajectory head: in = kept + rejected + deduplicated
An exchange is one line; a trajectory head is the longest exchange of a conversation and stands for its
prefixes (deduplicated); each assistant turn of a head is one sample ending on that turn.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

UNITS = {
    "exchange": "one non-blank line of a trace file (one recorded request/response)",
    "sample": "one assistant turn of a trajectory head: the head's messages up to and including that turn",
    "mapping": (
        "exchanges that are prefixes of (or identical to) a longer exchange of the same session are "
        "deduplicated into it; each remaining exchange (a trajectory head) yields one sample per assistant "
        "turn, so an agent loop of N requests gives about N samples, taken from its last request. An "
        "exchange counts as kept when at least one of its head's samples was written."
    ),
}

SAMPLE_STAGE = {
    "source_exchange_rejected": "3 per-turn samples",
    "empty_assistant_turn": "3 per-turn samples",
    "final_answer_excluded": "3 per-turn samples",
    "empty_after_markers": "4 markers",
    "non_text_content": "3 per-turn samples",
    "unknown_tool": "6 tool-call validity",
    "arguments_not_json": "6 tool-call validity",
    "arguments_not_object": "6 tool-call validity",
    "arguments_schema_invalid": "6 tool-call validity",
    "failed_call": "6 tool-call validity",
    "failed_final_answer": "6 tool-call validity",
    "exact_duplicate": "7 dedupe",
    "near_duplicate": "7 dedupe",
    "round_trip_failed": "9 model check",
    "too_long": "9 model check",
}


def _sample_stage(reason: str) -> str:
    return "5 text tool calls" if reason.startswith("text_tool_call_") else SAMPLE_STAGE.get(reason, "?")


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    if frame.height == 0:
        return {}
    return {str(k): int(v) for k, v in frame.group_by(column).len().sort("len", descending=True).iter_rows()}


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
        ex, sm = d["exchanges"], d["samples"]
        console.print(
            f"exchanges: {ex['in']} in = {ex['kept']} kept + {ex['rejected']} rejected + {ex['deduplicated']} deduplicated"
            f" [{'green' if ex['identity_holds'] else 'red'}]({'holds' if ex['identity_holds'] else 'BROKEN'})[/]"
        )
        console.print(
            f"samples:   {sm['in']} in = {sm['kept']} kept + {sm['rejected']} rejected + {sm['deduplicated']} deduplicated"
            f" [{'green' if sm['identity_holds'] else 'red'}]({'holds' if sm['identity_holds'] else 'BROKEN'})[/]"
        )
        sp = d["split"]
        console.print(
            f"written: train {sp['train']}, valid {sp['valid']}, test {sp['test']} → {d['out_dir']}"
        )
        for note in sp["notes"]:
            console.print(f"[yellow]note:[/] {note}")


def build_report(
    *,
    files,
    out_dir,
    config,
    counters,
    validation,
    rejects_1,
    policy_rejects,
    stitched,
    samples,
    kept,
    where,
    marker_counts,
    marker_messages,
    tt_counts,
    model_check,
    split_notes,
    written,
    messages_seen,
    head_messages,
    timings,
) -> Report:
    lines_in = where.height
    valid = lines_in - rejects_1.height
    usable = valid - policy_rejects.height

    # ---- sample fates
    samples = samples.with_columns(
        fate=pl.when(pl.col("reason").is_not_null())
        .then(pl.lit("rejected"))
        .when(pl.col("dup").is_not_null())
        .then(pl.lit("deduplicated"))
        .when(pl.col("model_reason").is_not_null())
        .then(pl.lit("rejected"))
        .otherwise(pl.lit("kept")),
        why=pl.coalesce("reason", "dup", "model_reason"),
    )
    fates = _counts(samples, "fate")
    samples_rejected = samples.filter(pl.col("fate") == "rejected")
    samples_dedup = samples.filter(pl.col("fate") == "deduplicated")

    # ---- exchange fates: heads take their fate from their samples
    head_fate = (
        stitched.filter(pl.col("stitch") == "head")
        .select("x")
        .join(
            samples.group_by("x").agg(
                kept=(pl.col("fate") == "kept").sum(),
                dedup=(pl.col("fate") == "deduplicated").sum(),
                n=pl.len(),
            ),
            on="x",
            how="left",
        )
        .with_columns(pl.col("kept", "dedup", "n").fill_null(0))
        .with_columns(
            fate=pl.when(pl.col("kept") > 0)
            .then(pl.lit("kept"))
            .when(pl.col("dedup") > 0)
            .then(pl.lit("deduplicated"))
            .otherwise(pl.lit("rejected")),
            reason=pl.when(pl.col("kept") > 0)
            .then(pl.lit(None, dtype=pl.String))
            .when(pl.col("dedup") > 0)
            .then(pl.lit("all_samples_duplicate"))
            .when(pl.col("n") == 0)
            .then(pl.lit("no_assistant_turns"))
            .otherwise(pl.lit("no_usable_samples")),
        )
    )
    covered = stitched.filter(pl.col("stitch") != "head").with_columns(
        reason=pl.when(pl.col("stitch") == "prefix")
        .then(pl.lit("prefix_of_longer_exchange"))
        .otherwise(pl.lit("duplicate_exchange"))
    )
    ex_kept = head_fate.filter(pl.col("fate") == "kept").height
    head_rejected = head_fate.filter(pl.col("fate") == "rejected")
    head_dedup = head_fate.filter(pl.col("fate") == "deduplicated")
    ex_rejected = rejects_1.height + policy_rejects.height + head_rejected.height
    ex_dedup = covered.height + head_dedup.height
    rejected_by_reason = _counts(
        pl.concat(
            [rejects_1.select("reason"), policy_rejects.select("reason"), head_rejected.select("reason")]
        ),
        "reason",
    )

    # ---- rejects.jsonl
    loc = where.select("x", "where")
    line_rows = pl.concat(
        [
            rejects_1.select("x", "stage", "reason", "detail"),
            policy_rejects.select("x", "stage", "reason", "detail"),
            covered.join(loc.rename({"x": "head", "where": "head_where"}), on="head", how="left").select(
                "x",
                stage=pl.lit("2 stitch"),
                reason=pl.col("reason"),
                detail=pl.lit("contained in ") + pl.col("head_where"),
            ),
            head_rejected.vstack(head_dedup).select(
                "x",
                stage=pl.lit("3-9 samples"),
                reason=pl.col("reason"),
                detail=pl.format("{} samples, none kept (see the sample rejects with this head)", "n"),
            ),
        ]
    ).join(loc, on="x", how="left")
    line_json = line_rows.sort("x").select(
        pl.struct(
            unit=pl.lit("exchange"), stage="stage", reason="reason", detail="detail", source="where"
        ).struct.json_encode()
    )
    turn_where = (
        samples.select(dup_of="sid", x="x", _turn="pos")
        .join(loc, on="x")
        .select("dup_of", kept_where=pl.format("{} turn {}", "where", "_turn"))
    )
    sample_rows = (
        samples.filter(pl.col("fate") != "kept")
        .join(turn_where, on="dup_of", how="left")
        .join(loc.rename({"x": "src", "where": "source"}), on="src", how="left")
        .join(loc.rename({"where": "head"}), on="x", how="left")
        .with_columns(
            detail=pl.coalesce(
                "detail",
                pl.when(pl.col("dup").is_not_null()).then(
                    pl.lit("duplicate of the sample kept from ") + pl.col("kept_where")
                ),
                "model_detail",
            )
        )
        .sort("sid")
    )
    sample_json = sample_rows.select(
        pl.struct(
            unit=pl.lit("sample"),
            stage=pl.when(pl.col("why").str.starts_with("text_tool_call_"))
            .then(pl.lit("5 text tool calls"))
            .otherwise(pl.col("why").replace_strict(SAMPLE_STAGE, default="?")),
            reason="why",
            detail="detail",
            source="source",
            head="head",
            turn="pos",
            kind="kind",
        ).struct.json_encode()
    )
    rejects_path = Path(out_dir) / "rejects.jsonl"
    pl.concat([line_json.to_series(), sample_json.to_series()]).to_frame("line").write_csv(
        rejects_path, include_header=False, quote_style="never"
    )

    # ---- funnel, stage by stage
    heads = stitched.filter(pl.col("stitch") == "head").height
    by_reason_rejected = _counts(samples_rejected, "why")
    by_stage: dict[str, dict[str, int]] = {}
    for reason, count in {**by_reason_rejected, **_counts(samples_dedup, "why")}.items():
        by_stage.setdefault(_sample_stage(reason), {})[reason] = count
    n_samples = samples.height
    stage_rows = [
        {
            "name": "read",
            "unit": "line",
            "in": lines_in,
            "out": lines_in,
            "removed": {},
            "files": len(files),
            "bytes": counters["bytes"],
            "blank_lines_ignored": counters["blank_lines"],
        },
        {
            "name": "1 validate",
            "unit": "exchange",
            "in": lines_in,
            "out": valid,
            "removed": _counts(rejects_1, "reason"),
        },
        {
            "name": "1b exchange policy",
            "unit": "exchange",
            "in": valid,
            "out": usable,
            "removed": _counts(policy_rejects, "reason"),
        },
        {
            "name": "2 stitch",
            "unit": "exchange",
            "in": usable,
            "out": heads,
            "removed": _counts(covered, "reason"),
        },
    ]
    remaining = n_samples
    stage_rows.append(
        {
            "name": "3 per-turn samples",
            "unit": "sample",
            "in": n_samples,
            "out": None,
            "removed": by_stage.get("3 per-turn samples", {}),
            "by_kind": _counts(samples, "kind"),
        }
    )
    for name in (
        "3 per-turn samples",
        "4 markers",
        "5 text tool calls",
        "6 tool-call validity",
        "7 dedupe",
        "9 model check",
    ):
        removed = by_stage.get(name, {})
        if name != "3 per-turn samples":
            stage_rows.append(
                {"name": name, "unit": "sample", "in": remaining, "out": None, "removed": removed}
            )
        remaining -= sum(removed.values())
        stage_rows[-1]["out"] = remaining
    split_counts = _counts(kept, "split")
    stage_rows.append(
        {
            "name": "8 split",
            "unit": "sample",
            "in": remaining,
            "out": kept.height,
            "removed": {},
            **{k: split_counts.get(k, 0) for k in ("train", "valid", "test")},
        }
    )

    # ---- details per stage
    tt = {}
    if tt_counts is not None and tt_counts.height:
        for fmt, status, count in (
            tt_counts.group_by("tt_format", "tt_status").agg(pl.col("len").sum()).iter_rows()
        ):
            tt.setdefault(fmt, {})[status] = int(count)
    tt_samples = samples.filter(pl.col("tt_format").is_not_null())
    outcomes = _counts(samples.filter(pl.col("kind") == "tool_call"), "outcome")
    examples = _duplicate_examples(samples, loc, config.examples)
    data = {
        "inputs": [str(f) for f in files],
        "out_dir": str(out_dir),
        "config": {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()
        },
        "units": UNITS,
        "exchanges": {
            "in": lines_in,
            "kept": ex_kept,
            "rejected": ex_rejected,
            "deduplicated": ex_dedup,
            "identity_holds": lines_in == ex_kept + ex_rejected + ex_dedup,
            "rejected_by_reason": rejected_by_reason,
            "deduplicated_by_reason": {
                **_counts(covered, "reason"),
                **({"all_samples_duplicate": head_dedup.height} if head_dedup.height else {}),
            },
        },
        "samples": {
            "in": n_samples,
            "kept": fates.get("kept", 0),
            "rejected": fates.get("rejected", 0),
            "deduplicated": fates.get("deduplicated", 0),
            "identity_holds": n_samples == sum(fates.values()) and fates.get("kept", 0) == kept.height,
            "rejected_by_reason": by_reason_rejected,
            "deduplicated_by_reason": _counts(samples_dedup, "why"),
            "by_kind": _counts(samples, "kind"),
            "kept_by_kind": _counts(kept, "kind"),
        },
        "stages": stage_rows,
        "validation": {
            **validation,
            "note": "fast path = orjson + jsonschema-rs (the schema file) + a date-time check no looser than "
            "jsonschema's; every line it refuses is decided by core.trace.validation_errors",
        },
        "stitching": {
            "trajectories": heads,
            "prefix_exchanges": int((stitched.get_column("stitch") == "prefix").sum()),
            "duplicate_exchanges": int((stitched.get_column("stitch") == "duplicate").sum()),
            "messages_in_all_exchanges": messages_seen,
            "messages_in_trajectory_heads": head_messages,
            "prefix_messages_removed": messages_seen - head_messages,
            "sessions": int(stitched.get_column("session_id").drop_nulls().n_unique()),
        },
        "markers": {
            "patterns": config.all_markers(),
            "matches_per_pattern": marker_counts,
            "messages_changed": marker_messages,
            "samples_dropped": by_reason_rejected.get("empty_after_markers", 0),
        },
        "text_tool_calls": {
            "messages_by_format": tt,
            "samples_converted": tt_samples.filter(pl.col("tt_status") == "converted").height,
            "samples_converted_kept": kept.filter(pl.col("tt_status") == "converted").height,
            "samples_rejected": tt_samples.filter(
                ~pl.col("tt_status").is_in(["converted", "not_a_call"])
            ).height,
            "json_answers_left_alone": tt_samples.filter(pl.col("tt_status") == "not_a_call").height,
            "policy": config.text_tool_calls,
        },
        "tool_calls": {
            "outcomes": outcomes,
            "invalid": {
                k: v
                for k, v in by_reason_rejected.items()
                if k
                in ("unknown_tool", "arguments_not_json", "arguments_not_object", "arguments_schema_invalid")
            },
        },
        "dedupe": {
            "exact": _cluster_stats(samples, "exact_key", "exact_duplicate"),
            "near": _cluster_stats(samples, "near_key", "near_duplicate"),
            "examples": examples,
        },
        "model_check": model_check,
        "split": {
            **{k: split_counts.get(k, 0) for k in ("train", "valid", "test")},
            "components": int(kept.get_column("component").n_unique()) if kept.height else 0,
            "grouped_by": ["session (or trajectory head)", "near-duplicate cluster"]
            + (["intent"] if config.split_by_intent else []),
            "notes": split_notes,
            "files": written,
        },
        "rejects_file": str(rejects_path),
    }
    return Report(data)


def _cluster_stats(samples: pl.DataFrame, key: str, dup: str) -> dict[str, int]:
    dups = samples.filter(pl.col("dup") == dup)
    clusters = (
        samples.filter(pl.col("reason").is_null()).group_by(key).len().filter(pl.col("len") > 1)
        if samples.height
        else samples
    )
    return {"dropped": dups.height, "clusters_with_duplicates": clusters.height}


def _duplicate_examples(samples: pl.DataFrame, loc: pl.DataFrame, limit: int) -> list[dict[str, Any]]:
    if not limit or samples.height == 0:
        return []
    dups = samples.filter(pl.col("dup").is_not_null())
    if dups.height == 0:
        return []
    clusters = (
        dups.group_by("dup", "dup_of")
        .agg(n=pl.len(), members=pl.col("sid").head(3))
        .sort("n", "dup_of", descending=[True, False])
        .head(limit)
    )
    kept_rows = (
        samples.select("sid", "x", "pos", "intent", "target")
        .join(loc, on="x", how="left")
        .with_columns(where=pl.format("{} turn {}", "where", "pos"))
    )
    out = []
    for kind, dup_of, n, members in clusters.iter_rows():
        row = kept_rows.filter(pl.col("sid") == dup_of).row(0, named=True)
        member_where = kept_rows.filter(pl.col("sid").is_in(members)).get_column("where").to_list()
        out.append(
            {
                "kind": kind,
                "duplicates": int(n),
                "kept": row["where"],
                "intent": row["intent"],
                "target": row["target"],
                "duplicates_from": member_where,
            }
        )
    return out
