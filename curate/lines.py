"""The JSONL lines curate writes, built with Polars string expressions (no per-row Python):
samples in mlx-lm chat format ({"messages", "tools", "meta"}; tool_calls OpenAI-shaped, arguments as JSON
objects), spilled to Parquet in pass 2 and streamed into the split files at the end."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from curate.keys import json_string

SPLITS = ("train", "valid", "test")


def call_json() -> pl.Expr:
    return pl.concat_str(
        pl.lit('{"id":'),
        json_string(pl.coalesce("call_id", pl.format("call_{}_{}_{}", "x", "pos", "k"))),
        pl.lit(',"type":"function","function":{"name":'),
        json_string(pl.col("name").fill_null("")),
        pl.lit(',"arguments":'),
        pl.coalesce("args_out", json_string(pl.col("args_raw").fill_null(""))),
        pl.lit("}}"),
    )


def message_json() -> pl.Expr:
    """One message as JSON; `_calls` holds its tool calls' JSON joined by commas (null: none)."""
    return pl.concat_str(
        pl.lit('{"role":'),
        json_string(pl.col("role")),
        pl.lit(',"content":'),
        json_string(pl.col("content")),
        pl.when(pl.col("_calls").is_not_null())
        .then(pl.lit(',"tool_calls":[') + pl.col("_calls") + pl.lit("]"))
        .otherwise(pl.lit("")),
        pl.when(pl.col("role") == "tool")
        .then(pl.lit(',"tool_call_id":') + json_string(pl.col("tool_call_id")))
        .otherwise(pl.lit("")),
        pl.lit("}"),
    )


def sample_meta() -> pl.Expr:
    """meta of a sample line: session id, head and source exchange as "file:line", turn, kind."""
    return pl.struct(
        "session_id", "head", "source", turn=pl.col("pos"), kind=pl.col("kind")
    ).struct.json_encode()


# The head of a written line read back from its meta (the key order of sample_meta). Anchored at the end,
# it can only match the meta object: inside messages every quote of a string is escaped.
_META_HEAD = (
    r'"head":("(?:[^"\\]|\\.)*"),"source":(?:null|"(?:[^"\\]|\\.)*"),"turn":\d+,"kind":"[a-z_]+"\}\}$'
)


def head_of_line(line: pl.Expr) -> pl.Expr:
    """The head ("file:line", JSON-quoted) a written sample line says it comes from; null if unreadable."""
    return line.str.extract(_META_HEAD, 1)


def sample_lines(
    candidates: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    tools_text: pl.DataFrame,
    where: pl.DataFrame,
) -> pl.DataFrame:
    """sid + the JSONL line of each candidate sample (sid, x, pos, kind, session_id, src), in the order of
    `candidates`: its head's messages up to and including the turn, the request's tools and meta."""
    heads = candidates.lazy().select("x").unique()
    calls_json = (
        calls.lazy()
        .join(heads, on="x")
        .with_columns(_j=call_json())
        .group_by("x", "pos")
        .agg(_calls=pl.col("_j").sort_by("k").str.join(","))
    )
    conversations = (
        messages.lazy()
        .join(heads, on="x")
        .join(calls_json, on=["x", "pos"], how="left")
        .sort("x", "pos")
        .group_by("x")
        .agg(_msgs=message_json())
    )
    locations = where.lazy().select("x", "where")
    return (
        candidates.lazy()
        .join(locations.rename({"where": "head"}), on="x", how="left", maintain_order="left")
        .join(locations.rename({"x": "src", "where": "source"}), on="src", how="left", maintain_order="left")
        .join(conversations, on="x", maintain_order="left")
        .join(tools_text.lazy(), on="x", maintain_order="left")
        .select(
            "sid",
            line=pl.concat_str(
                pl.lit('{"messages":['),
                pl.col("_msgs").list.head(pl.col("pos") + 1).list.join(","),
                pl.lit('],"tools":'),
                pl.col("tools_text"),
                pl.lit(',"meta":'),
                sample_meta(),
                pl.lit("}"),
            ),
        )
        .collect()
    )


def write_lines(lines: pl.LazyFrame, path: Path) -> None:
    """One string column as lines, streamed (no quoting: every line is already JSON)."""
    lines.sink_csv(path, include_header=False, quote_style="never")


def write_splits(kept: pl.DataFrame, spill_files: list[Path], out_dir: Path) -> dict[str, str]:
    """Stream the spilled lines of the kept samples (sid, split) into OUT/{train,valid,test}.jsonl, in the
    order of `kept`. A split without samples has no file (mlx-lm's loader fails on an empty one), and a
    stale file from an earlier run goes too."""
    written = {}
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        chosen = kept.filter(pl.col("split") == split).select("sid")
        if chosen.height:
            lines = pl.scan_parquet(spill_files).join(chosen.lazy(), on="sid", maintain_order="left")
            write_lines(lines.select("line"), path)
            written[split] = str(path)
        elif path.exists():
            path.unlink()
    return written
