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


def session_meta() -> pl.Expr:
    """meta of a session line (per head, `turns` a list of the turns' structs): session id, head, and each
    supervised turn with its source exchange and kind."""
    return pl.struct("session_id", "head", "turns").struct.json_encode()


def turn_line() -> pl.Expr:
    """A per-turn sample line from its spilled parts: {"messages": up to the turn, "tools", "meta"}."""
    return pl.concat_str("body", pl.lit(',"meta":'), "meta", pl.lit("}"))


def session_line() -> pl.Expr:
    """A session sample line: the body of its last supervised turn's sample (the conversation cut after that
    turn), "supervise" (the turns' message indices, core.samples) and the session meta."""
    return pl.concat_str(
        "body",
        pl.lit(',"supervise":['),
        pl.col("supervise").cast(pl.List(pl.String)).list.join(","),
        pl.lit('],"meta":'),
        session_meta(),
        pl.lit("}"),
    )


# The head of a written line read back from its meta (the key orders of sample_meta and session_meta), and a
# session line's supervised turns. Anchored at the end, they can only match the meta object (and the
# "supervise" key before it): inside messages every quote of a string is escaped.
_STRING = r'"(?:[^"\\]|\\.)*"'
_TURN_TAIL = rf'"head":({_STRING}),"source":(?:null|{_STRING}),"turn":\d+,"kind":"[a-z_]+"\}}\}}$'
_SESSION_TAIL = (
    rf',"supervise":\[(\d+(?:,\d+)*)\],"meta":\{{"session_id":(?:null|{_STRING}),"head":({_STRING}),'
    rf'"turns":\[(?:[^"\\]|{_STRING})*\]\}}\}}$'
)


def head_of_line(line: pl.Expr) -> pl.Expr:
    """The head ("file:line", JSON-quoted) a written sample line says it comes from; null if unreadable."""
    return pl.coalesce(line.str.extract(_TURN_TAIL, 1), line.str.extract(_SESSION_TAIL, 2))


def turns_of_line(line: pl.Expr) -> pl.Expr:
    """The turns a written line supervises: a session line's "supervise" entries, 1 for a per-turn line,
    0 for a line that is neither (the accounting then breaks, naming the split stage)."""
    supervise = line.str.extract(_SESSION_TAIL, 1)
    return (
        pl.when(supervise.is_not_null())
        .then(supervise.str.count_matches(",") + 1)
        .when(line.str.contains(_TURN_TAIL))
        .then(pl.lit(1))
        .otherwise(pl.lit(0))
        .cast(pl.Int64)
    )


def located(frame: pl.LazyFrame, where: pl.DataFrame) -> pl.LazyFrame:
    """`frame` (x, src) with `head` and `source`, the "file:line" of its head and of its turn's exchange."""
    locations = where.lazy().select("x", "where")
    return frame.join(locations.rename({"where": "head"}), on="x", how="left", maintain_order="left").join(
        locations.rename({"x": "src", "where": "source"}), on="src", how="left", maintain_order="left"
    )


def sample_lines(
    candidates: pl.DataFrame,
    messages: pl.DataFrame,
    calls: pl.DataFrame,
    tools_text: pl.DataFrame,
    where: pl.DataFrame,
) -> pl.DataFrame:
    """sid + the parts of the JSONL line of each candidate sample (sid, x, pos, kind, session_id, src), in the
    order of `candidates`: `body`, its head's messages up to and including the turn and the request's tools,
    and `meta` (`turn_line` joins them; a session line reuses the body of its last turn)."""
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
    return (
        located(candidates.lazy(), where)
        .join(conversations, on="x", maintain_order="left")
        .join(tools_text.lazy(), on="x", maintain_order="left")
        .select(
            "sid",
            body=pl.concat_str(
                pl.lit('{"messages":['),
                pl.col("_msgs").list.head(pl.col("pos") + 1).list.join(","),
                pl.lit('],"tools":'),
                pl.col("tools_text"),
            ),
            meta=sample_meta(),
        )
        .collect()
    )


def write_lines(lines: pl.LazyFrame, path: Path) -> None:
    """One string column as lines, streamed (no quoting: every line is already JSON)."""
    lines.sink_csv(path, include_header=False, quote_style="never")


def session_lines(heads: pl.DataFrame, spill_files: list[Path]) -> pl.LazyFrame:
    """x, split, line of each head's session sample, streamed in the spill's order (the body of its last
    turn's spilled parts)."""
    return (
        pl.scan_parquet(spill_files)
        .select("sid", "body")
        .join(heads.lazy(), on="sid", maintain_order="left")
        .select("x", "split", line=session_line())
    )


def write_splits(
    kept: pl.DataFrame, spill_files: list[Path], out_dir: Path, whole: pl.DataFrame | None = None
) -> dict[str, str]:
    """Stream the lines of the kept samples (sid, x, split) into OUT/{train,valid,test}.jsonl: a per-turn line
    per kept sample, then a session line per head of `whole` (curate.sessions) instead of its samples' lines;
    each part in sample order, never sorted in memory. A split without samples has no file (mlx-lm's loader
    fails on an empty one), and a stale file from an earlier run goes too."""
    written = {}
    for split in SPLITS:
        path = out_dir / f"{split}.jsonl"
        chosen = kept.filter(pl.col("split") == split).select("sid", "x")
        sessions = whole.filter(pl.col("split") == split) if whole is not None else whole
        if sessions is not None:
            chosen = chosen.join(sessions.select("x"), on="x", how="anti")
        parts = []
        if chosen.height:
            turns = pl.scan_parquet(spill_files).join(
                chosen.lazy().select("sid"), on="sid", maintain_order="left"
            )
            parts.append(turns.select(line=turn_line()))
        if sessions is not None and sessions.height:
            parts.append(session_lines(sessions, spill_files).select("line"))
        if parts:
            write_lines(pl.concat(parts), path)
            written[split] = str(path)
        elif path.exists():
            path.unlink()
    return written
