"""Within-run keys: canonical tool-call arguments, per-message hashes and conversation-prefix keys.

Tables (built by curate.read):
  messages   x, pos, role, content, content_kind, tool_call_id — request.messages + the response message
  calls      x, pos, k, call_id, name, args_raw, args_kind — structured tool calls of assistant messages
Python runs only for the canonical JSON of distinct argument strings (no Polars expression re-serialises
JSON with sorted keys).

Every key here is `pl.Expr.hash`, which Polars documents as unstable across versions: these keys only
compare rows of one run. Nothing written or persistent (the split) is derived from them; curate.split uses
hashlib on content instead.
"""

from __future__ import annotations

import json

import polars as pl

from curate.read import dumps

# One hash seed per kind of key, so that keys of different kinds are independent hashes.
MESSAGE = 1  # one canonical message: role, content, calls without ids, the call a tool result answers
PREFIX = 2  # a conversation prefix: position-mixed message hashes summed
TOOLS = 3  # the request's tools (JSON with sorted keys)
GROUP = 4  # stitching group: session id + tools
EXACT = 5  # exact-duplicate key of a sample: tools + its conversation prefix
NEAR = 6  # near-duplicate key: tools + normalised last user intent + target call(s)
INTENT = 7  # tools + normalised last user intent (split_by_intent)
CALLS_ORDERED = 11  # a message's calls in order
CALLS_UNORDERED = 12  # a message's calls as a set
ANSWER = 13  # a final answer's normalised text


def json_string(expr: pl.Expr) -> pl.Expr:
    """JSON text of a string expression ("..." escaped, or null), via Polars' own JSON encoder."""
    return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")


def normalise_intent(expr: pl.Expr) -> pl.Expr:
    """Lower case, every run of non-letters/digits one space: near-twin prompts compare equal."""
    return expr.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


def _canonical(raw: str | None, kind: str) -> tuple[str | None, str | None, bool]:
    """(canonical JSON with sorted keys, compact JSON in the original key order, is an object) of one
    arguments value; (None, None, False) when a string is not JSON. Empty/null arguments mean {}.
    Parsed with json (exact for integers of any size), once per distinct value."""
    if raw is None or (kind == "string" and not raw.strip()):
        return "{}", "{}", True
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError):
        return None, None, False
    return dumps(value, sort_keys=True), dumps(value), isinstance(value, dict)


def canonical_arguments(calls: pl.DataFrame) -> pl.DataFrame:
    """Add args_canon, args_out (None when not JSON) and args_is_object; Python runs once per distinct value."""
    distinct = calls.select("args_raw", "args_kind").unique()
    mapped = [_canonical(raw, kind) for raw, kind in distinct.iter_rows()]
    table = distinct.with_columns(
        pl.Series("args_canon", [m[0] for m in mapped], dtype=pl.String),
        pl.Series("args_out", [m[1] for m in mapped], dtype=pl.String),
        pl.Series("args_is_object", [m[2] for m in mapped], dtype=pl.Boolean),
    )
    return calls.join(table, on=["args_raw", "args_kind"], how="left", nulls_equal=True)


def call_signatures(calls: pl.DataFrame) -> pl.LazyFrame:
    """Per assistant message (x, pos): `sig`, a hash of its calls in order (name + canonical arguments, ids
    ignored), `sig_sorted` the same ignoring order, n_calls, and `first_call` (readable, for the report).
    Position-mixed hashes summed with wrap-around: no per-group string building."""
    arguments = pl.coalesce("args_canon", pl.lit("\x00") + pl.col("args_raw").fill_null(""))
    return (
        calls.lazy()
        .with_columns(
            _ordered=pl.struct("k", "name", arguments.alias("a")).hash(seed=CALLS_ORDERED),
            _unordered=pl.struct("name", arguments.alias("a")).hash(seed=CALLS_UNORDERED),
            _readable=pl.concat_str(pl.col("name").fill_null("?"), pl.lit(" "), arguments.str.slice(0, 120)),
        )
        .group_by("x", "pos")
        .agg(
            sig=pl.col("_ordered").sum(),
            sig_sorted=pl.col("_unordered").sum(),
            n_calls=pl.len().cast(pl.Int32),
            first_call=pl.col("_readable").first(),
        )
    )


def call_ref(pos: str = "pos", k: str = "k") -> pl.Expr:
    """ "pos.k": where a call stands in its conversation (what a tool result answers, ids aside)."""
    return pl.concat_str(pl.col(pos).cast(pl.String), pl.lit("."), pl.col(k).cast(pl.String))


def tool_refs(messages: pl.DataFrame, calls: pl.DataFrame) -> pl.LazyFrame:
    """Per tool message (x, pos): `ref`, the position "pos.k" of the call it answers (the latest earlier call
    with its tool_call_id), so re-sent histories with different call ids still compare equal."""
    tool_msgs = (
        messages.lazy()
        .filter(pl.col("role") == "tool", pl.col("tool_call_id").is_not_null())
        .select("x", "pos", "tool_call_id")
    )
    matched = (
        tool_msgs.join(
            calls.lazy().select("x", pl.col("pos").alias("call_pos"), "k", "call_id"),
            left_on=["x", "tool_call_id"],
            right_on=["x", "call_id"],
        )
        .filter(pl.col("call_pos") < pl.col("pos"))
        .group_by("x", "pos")
        .agg(pl.col("call_pos", "k").sort_by("call_pos").last())
        .select("x", "pos", ref=call_ref("call_pos"))
    )
    return tool_msgs.join(matched, on=["x", "pos"], how="left").select(
        "x", "pos", ref=pl.coalesce("ref", pl.lit("id:") + pl.col("tool_call_id"))
    )


def message_keys(messages: pl.DataFrame, calls: pl.DataFrame) -> pl.DataFrame:
    """Messages plus `sig`, `ref`, `h` (hash of the canonical message: role, content with null == "",
    calls without ids, tool ref) and `key` (hash of the whole conversation prefix ending at this message)."""
    return (
        messages.lazy()
        .join(call_signatures(calls), on=["x", "pos"], how="left")
        .join(tool_refs(messages, calls), on=["x", "pos"], how="left")
        .with_columns(
            pl.col("n_calls").fill_null(0),
            pl.col("sig").fill_null(0),
            pl.col("sig_sorted").fill_null(0),
            pl.col("ref").fill_null(""),
        )
        .sort("x", "pos")
        .with_columns(h=pl.struct("role", "content", "sig", "ref").hash(seed=MESSAGE))
        # position-mixed hashes summed with wrap-around: the prefix key of every length in one pass
        .with_columns(key=pl.struct("pos", "h").hash(seed=PREFIX).cum_sum().over("x"))
        .collect()
    )
