"""The funnel's stages as Polars steps over flat tables.

Tables (built by curate.read):
  exchanges  one row per valid record (x = the line's index over all inputs)
  messages   x, pos, role, content, content_kind, tool_call_id, from_response — the conversation
             request.messages + the response message
  calls      x, pos, k, call_id, name, args_raw, args_kind — structured tool calls of assistant messages
  tools      x, name, parameters — the request's tools (pass 2 only)
Python runs only where no expression can: canonical JSON of distinct argument strings, parsing the few
messages flagged as text-about-tools, and jsonschema on distinct (tool schema, arguments) pairs.
"""

from __future__ import annotations

import functools
import json

import jsonschema_rs
import orjson
import polars as pl

from curate.config import Config
from curate.read import dumps
from curate.textcalls import DETECT, parse_text_calls


def json_string(expr: pl.Expr) -> pl.Expr:
    """JSON text of a string expression ("..." escaped, or null), via Polars' own JSON encoder."""
    return pl.struct(expr.alias("v")).struct.json_encode().str.slice(5).str.strip_suffix("}")


# ------------------------------------------------------------------------------------ canonical messages


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


def call_signatures(calls: pl.DataFrame) -> pl.DataFrame:
    """Per assistant message (x, pos): `sig`, a hash of its calls in order (name + canonical arguments, ids
    ignored), `sig_sorted` the same ignoring order, n_calls, and `first_call` (readable, for the report).
    Position-mixed hashes summed with wrap-around: no per-group string building."""
    arguments = pl.coalesce("args_canon", pl.lit("\x00") + pl.col("args_raw").fill_null(""))
    return (
        calls.with_columns(
            _ordered=pl.struct("k", "name", arguments.alias("a")).hash(seed=11),
            _unordered=pl.struct("name", arguments.alias("a")).hash(seed=12),
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


def tool_refs(messages: pl.DataFrame, calls: pl.DataFrame) -> pl.DataFrame:
    """Per tool message (x, pos): `ref`, the position "pos.k" of the call it answers (the latest earlier call
    with its tool_call_id), so re-sent histories with different call ids still compare equal."""
    tool_msgs = messages.filter(pl.col("role") == "tool", pl.col("tool_call_id").is_not_null()).select(
        "x", "pos", "tool_call_id"
    )
    matched = (
        tool_msgs.join(
            calls.select("x", pl.col("pos").alias("call_pos"), "k", "call_id"),
            left_on=["x", "tool_call_id"],
            right_on=["x", "call_id"],
        )
        .filter(pl.col("call_pos") < pl.col("pos"))
        .group_by("x", "pos")
        .agg(pl.col("call_pos", "k").sort_by("call_pos").last())
        .select(
            "x",
            "pos",
            ref=pl.concat_str(pl.col("call_pos").cast(pl.String), pl.lit("."), pl.col("k").cast(pl.String)),
        )
    )
    return tool_msgs.join(matched, on=["x", "pos"], how="left").select(
        "x", "pos", ref=pl.coalesce("ref", pl.lit("id:") + pl.col("tool_call_id"))
    )


def message_keys(messages: pl.DataFrame, calls: pl.DataFrame) -> pl.DataFrame:
    """Messages plus `sig`, `ref`, `h` (hash of the canonical message: role, content with null == "",
    calls without ids, tool ref) and `key` (hash of the whole conversation prefix ending at this message)."""
    sigs = call_signatures(calls)
    refs = tool_refs(messages, calls)
    return (
        messages.join(sigs, on=["x", "pos"], how="left")
        .join(refs, on=["x", "pos"], how="left")
        .with_columns(
            pl.col("n_calls").fill_null(0),
            pl.col("sig").fill_null(0),
            pl.col("sig_sorted").fill_null(0),
            pl.col("ref").fill_null(""),
        )
        .sort("x", "pos")
        .with_columns(h=pl.struct("role", "content", "sig", "ref").hash(seed=1))
        # position-mixed hashes summed with wrap-around: the prefix key of every length in one pass
        .with_columns(key=pl.struct("pos", "h").hash(seed=2).cum_sum().over("x"))
    )


# ------------------------------------------------------------------------------------ exchange policy


def exchange_policy(exchanges: pl.DataFrame, config: Config) -> pl.DataFrame:
    """Add `policy`: why a schema-valid exchange cannot be used (null when it can)."""
    http_error = (pl.col("http_status").is_null() | (pl.col("http_status") >= 400)) | pl.col(
        "error_type"
    ).is_not_null()
    keep_errors = pl.lit(config.keep_http_errors)
    policy = (
        pl.when(~pl.col("has_request"))
        .then(pl.lit("no_request"))
        .when(~pl.col("endpoint").str.ends_with("chat/completions"))
        .then(pl.lit("not_chat_completions"))
        .when(http_error & ~keep_errors)
        .then(pl.lit("http_error"))
        .when(~pl.col("has_response") & ~keep_errors)
        .then(pl.lit("no_response"))
        .when(~pl.col("complete") & pl.col("has_response"))
        .then(pl.lit("incomplete"))
        .when(pl.col("calls_lost"))
        .then(pl.lit("tool_calls_missing"))
        .when(pl.col("finish_reason") == "length")
        .then(pl.lit("truncated"))
        .when(pl.col("n_messages") == 0)
        .then(pl.lit("no_messages"))
    )
    return exchanges.with_columns(policy=policy)


def exchange_summary(exchanges: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """Compact per-exchange row: stitching group (session id + tool set), length n and full conversation key."""
    last = keys.group_by("x").agg(full_key=pl.col("key").sort_by("pos").last())
    return (
        exchanges.join(last, on="x", how="left")
        .with_columns(
            tools_hash=pl.col("tools_json").hash(seed=3),
            n=pl.col("n_messages"),
        )
        .with_columns(group=pl.struct(pl.col("session_id").fill_null("\x00"), "tools_hash").hash(seed=4))
        .select("x", "session_id", "group", "tools_hash", "n", "full_key", "has_response", "policy")
    )


# ------------------------------------------------------------------------------------ stage 2: stitching


def stitch(summary: pl.DataFrame, keys: pl.DataFrame) -> pl.DataFrame:
    """Group exchanges into trajectories: an exchange whose whole conversation (request + response) is a
    prefix of a longer exchange in the same group (session id, else all session-less exchanges; same tool
    set) is covered by it. Returns x, rep (first identical exchange), head (longest exchange containing it)
    and `stitch` = head | prefix | duplicate, for every usable exchange."""
    usable = summary.filter(pl.col("policy").is_null(), pl.col("n") > 0)
    reps = usable.group_by("group", "n", "full_key").agg(rep=pl.col("x").min())
    prefix_keys = keys.join(
        reps.select(pl.col("rep").alias("x"), "group", pl.col("n").alias("n_b")), on="x"
    ).select(
        "group",
        (pl.col("pos") + 1).cast(pl.Int64).alias("n"),
        pl.col("key").alias("full_key"),
        pl.col("x").alias("b"),
        "n_b",
    )
    heads = (
        reps.join(prefix_keys, on=["group", "n", "full_key"])
        .group_by("rep")
        .agg(head=pl.col("b").sort_by(["n_b", "b"], descending=[True, False]).first())
    )
    return (
        usable.join(reps, on=["group", "n", "full_key"])
        .join(heads, on="rep")
        .with_columns(
            stitch=pl.when(pl.col("x") == pl.col("head"))
            .then(pl.lit("head"))
            .when(pl.col("x") != pl.col("rep"))
            .then(pl.lit("duplicate"))
            .otherwise(pl.lit("prefix"))
        )
        .select("x", "session_id", "group", "n", "rep", "head", "stitch")
    )


def turn_sources(summary: pl.DataFrame, keys: pl.DataFrame, heads: pl.DataFrame) -> pl.DataFrame:
    """For each position of each head, the exchange that recorded that message as its response (if any):
    x (head), pos, src (its x), src_policy (why that exchange was rejected, or null)."""
    recorded = (
        summary.filter(pl.col("has_response"))
        .sort(pl.col("policy").is_not_null(), "x")
        .group_by("group", "n", "full_key", maintain_order=True)
        .agg(src=pl.col("x").first(), src_policy=pl.col("policy").first())
    )
    return (
        keys.join(heads.select(pl.col("head").alias("x"), "group").unique(), on="x")
        .with_columns(n=(pl.col("pos") + 1).cast(pl.Int64))
        .join(recorded, left_on=["group", "n", "key"], right_on=["group", "n", "full_key"], how="left")
        .select("x", "pos", "src", "src_policy")
    )


# ------------------------------------------------------------------------------------ stage 4: markers


def strip_markers(messages: pl.DataFrame, patterns: dict[str, str]) -> tuple[pl.DataFrame, dict[str, int]]:
    """Remove marker patterns from user/system content (each pattern in turn, counting its matches).
    Adds `emptied`: the text was non-empty and nothing but markers."""
    target = pl.col("role").is_in(["user", "system"])
    text = pl.when(target).then(pl.col("content")).otherwise(pl.lit(""))
    frame = messages.with_columns(_text=text)
    counts_exprs = []
    for index, pattern in enumerate(patterns.values()):
        frame = frame.with_columns(
            pl.col("_text").str.count_matches(pattern).alias(f"_m{index}")
        ).with_columns(pl.col("_text").str.replace_all(pattern, ""))
        counts_exprs.append(pl.col(f"_m{index}").sum().alias(str(index)))
    counts = frame.select(counts_exprs).row(0) if counts_exprs else ()
    changed = (
        pl.sum_horizontal([pl.col(f"_m{i}") for i in range(len(patterns))]) > 0 if patterns else pl.lit(False)
    )
    cleaned = pl.col("_text").str.replace_all(r"[ \t]{2,}", " ").str.strip_chars()
    frame = frame.with_columns(_changed=target & changed).with_columns(
        emptied=pl.col("_changed") & (cleaned == "") & (pl.col("content").str.strip_chars() != ""),
        content=pl.when(pl.col("_changed")).then(cleaned).otherwise(pl.col("content")),
        marker_changed=pl.col("_changed"),
    )
    frame = frame.drop([c for c in frame.columns if c.startswith("_")])
    return frame, {name: int(count or 0) for name, count in zip(patterns, counts, strict=True)}


# ------------------------------------------------------------------------------------ stage 5: text tools


def detect_text_calls(messages: pl.DataFrame) -> pl.Expr:
    """Expression: the text-about-tools format of an assistant message's content, or null."""
    expr = None
    for name, pattern in DETECT.items():
        hit = pl.col("content").str.contains(pattern)
        expr = pl.when(hit).then(pl.lit(name)) if expr is None else expr.when(hit).then(pl.lit(name))
    return pl.when(pl.col("role") == "assistant").then(expr.otherwise(pl.lit(None, dtype=pl.String)))


def convert_text_calls(
    messages: pl.DataFrame, calls: pl.DataFrame, tools: pl.DataFrame, config: Config
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Flag assistant messages carrying tool calls as text; convert the unambiguous ones into structured
    calls (content keeps the surrounding prose). Adds tt_format, tt_status, tt_detail to messages."""
    has_calls = calls.select("x", "pos").unique().with_columns(_structured=pl.lit(True))
    messages = (
        messages.with_columns(tt_format=detect_text_calls(messages))
        .join(has_calls, on=["x", "pos"], how="left")
        .with_columns(pl.col("_structured").fill_null(False))
    )
    candidates = messages.filter(pl.col("tt_format").is_not_null())
    statuses: dict[tuple[int, int], tuple[str, str, str | None]] = {}
    new_calls = {"x": [], "pos": [], "k": [], "call_id": [], "name": [], "args_raw": [], "args_kind": []}
    if candidates.height:
        schemas = _tool_schemas(tools, candidates.get_column("x").unique())
        for x, pos, content, fmt, structured in candidates.select(
            "x", "pos", "content", "tt_format", "_structured"
        ).iter_rows():
            if structured:
                statuses[(x, pos)] = (
                    "mixed_markup",
                    "tool-call markup in content next to structured tool_calls",
                    None,
                )
                continue
            if config.text_tool_calls == "reject":
                statuses[(x, pos)] = ("rejected", "text_tool_calls = 'reject'", None)
                continue
            parsed = parse_text_calls(content, schemas.get(x, {}), fmt)
            statuses[(x, pos)] = (
                parsed.status,
                parsed.detail,
                parsed.content if parsed.status == "converted" else None,
            )
            if parsed.status == "converted":
                for k, (name, arguments) in enumerate(parsed.calls):
                    new_calls["x"].append(x)
                    new_calls["pos"].append(pos)
                    new_calls["k"].append(k)
                    new_calls["call_id"].append(f"call_t{x}_{pos}_{k}")
                    new_calls["name"].append(name)
                    new_calls["args_raw"].append(dumps(arguments))
                    new_calls["args_kind"].append("object")
    status_table = pl.DataFrame(
        {
            "x": [key[0] for key in statuses],
            "pos": [key[1] for key in statuses],
            "tt_status": [v[0] for v in statuses.values()],
            "tt_detail": [v[1] for v in statuses.values()],
            "_new_content": [v[2] for v in statuses.values()],
        },
        schema={
            "x": pl.Int64,
            "pos": pl.Int32,
            "tt_status": pl.String,
            "tt_detail": pl.String,
            "_new_content": pl.String,
        },
    )
    messages = (
        messages.join(status_table, on=["x", "pos"], how="left")
        .with_columns(content=pl.coalesce("_new_content", "content"))
        .drop("_new_content", "_structured")
    )
    if new_calls["x"]:
        calls = pl.concat([calls, pl.DataFrame(new_calls, schema=calls.schema)], how="vertical")
    return messages, calls


def _tool_schemas(tools: pl.DataFrame, xs: pl.Series) -> dict[int, dict[str, dict]]:
    out: dict[int, dict[str, dict]] = {}
    for x, name, parameters in tools.filter(pl.col("x").is_in(xs.implode())).iter_rows():
        out.setdefault(x, {})[name] = json.loads(parameters)
    return out


# ------------------------------------------------------------------------------------ stage 6: validity


@functools.lru_cache(maxsize=4096)
def _validator(parameters: str):
    try:
        return jsonschema_rs.validator_for(json.loads(parameters))
    except Exception as error:  # an invalid parameters schema: every call to it is reported
        return str(error)


def _schema_error(parameters: str, arguments: str) -> str | None:
    validator = _validator(parameters)
    if isinstance(validator, str):
        return f"tool parameters are not a valid JSON Schema: {validator}"
    instance = orjson.loads(arguments)
    if validator.is_valid(instance):
        return None
    error = next(iter(validator.iter_errors(instance)))
    where = "/".join(str(p) for p in error.instance_path) or "(arguments)"
    return f"{where}: {error.message}"


def call_validity(calls: pl.DataFrame, tools: pl.DataFrame) -> pl.DataFrame:
    """Per call: `invalid` reason (unknown_tool, arguments_not_json, arguments_not_object,
    arguments_schema_invalid) and detail, or nulls when the call is valid for the request's tools."""
    known = tools.unique(["x", "name"], keep="first")
    joined = calls.join(known.select("x", "name", "parameters"), on=["x", "name"], how="left")
    need_schema = (
        joined.filter(pl.col("parameters").is_not_null(), pl.col("args_is_object"))
        .select("parameters", "args_canon")
        .unique()
    )
    errors = [_schema_error(p, a) for p, a in need_schema.iter_rows()]
    schema_table = need_schema.with_columns(pl.Series("_schema_error", errors, dtype=pl.String))
    joined = joined.join(schema_table, on=["parameters", "args_canon"], how="left")
    invalid = (
        pl.when(pl.col("parameters").is_null())
        .then(pl.lit("unknown_tool"))
        .when(pl.col("args_canon").is_null())
        .then(pl.lit("arguments_not_json"))
        .when(~pl.col("args_is_object"))
        .then(pl.lit("arguments_not_object"))
        .when(pl.col("_schema_error").is_not_null())
        .then(pl.lit("arguments_schema_invalid"))
    )
    detail = (
        pl.when(pl.col("parameters").is_null())
        .then(
            pl.format("'{}' is not one of the request's tools", pl.col("name")).fill_null(
                "call without a name"
            )
        )
        .when(pl.col("args_canon").is_null())
        .then(pl.lit("arguments are not JSON: ") + pl.col("args_raw").str.slice(0, 80))
        .when(~pl.col("args_is_object"))
        .then(pl.lit("arguments are not a JSON object: ") + pl.col("args_canon").str.slice(0, 80))
        .otherwise(pl.col("name") + pl.lit(": ") + pl.col("_schema_error"))
    )
    return (
        joined.with_columns(invalid=invalid)
        .with_columns(invalid_detail=pl.when(pl.col("invalid").is_not_null()).then(detail))
        .drop("_schema_error")
    )


def call_outcomes(calls: pl.DataFrame, messages: pl.DataFrame, config: Config) -> pl.DataFrame:
    """Per call: `outcome` from what followed it — failed (the tool message answering it is a retry prompt
    or a tool error), ok (a normal tool result), or unknown (nothing answered it in this trajectory)."""
    answers = messages.filter(pl.col("role") == "tool", pl.col("ref") != "").select(
        "x",
        "ref",
        failed=pl.col("content").str.contains(config.retry_prompt_pattern)
        | pl.col("content").str.contains(config.tool_error_pattern),
    )
    answers = answers.group_by("x", "ref").agg(pl.col("failed").any())
    return (
        calls.with_columns(
            ref=pl.concat_str(pl.col("pos").cast(pl.String), pl.lit("."), pl.col("k").cast(pl.String))
        )
        .join(answers, on=["x", "ref"], how="left")
        .with_columns(
            outcome=pl.when(pl.col("failed").is_null())
            .then(pl.lit("unknown"))
            .when(pl.col("failed"))
            .then(pl.lit("failed"))
            .otherwise(pl.lit("ok"))
        )
        .drop("ref", "failed")
    )


# ------------------------------------------------------------------------------------ samples (stages 3-7)


def normalise_intent(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


def build_samples(
    messages: pl.DataFrame, calls: pl.DataFrame, sources: pl.DataFrame, config: Config
) -> pl.DataFrame:
    """One row per assistant turn of each head: kind, the first reason it cannot be used (null if it can),
    and its dedupe keys. `messages` carry the marker and text-tool columns; `calls` validity and outcome."""
    per_message_calls = calls.group_by("x", "pos").agg(
        invalid=pl.col("invalid").sort_by("k").drop_nulls().first(),
        invalid_detail=pl.col("invalid_detail").sort_by("k").drop_nulls().first(),
        failed_calls=(pl.col("outcome") == "failed").sum(),
        ok_calls=(pl.col("outcome") == "ok").sum(),
    )
    frame = (
        messages.sort("x", "pos")
        .with_columns(
            emptied_before=pl.col("emptied").cast(pl.Int32).cum_sum().over("x") > 0,
            non_text_before=(pl.col("content_kind") == "non_text_parts").cast(pl.Int32).cum_sum().over("x")
            > 0,
            intent=pl.when(pl.col("role") == "user").then(pl.col("content")).forward_fill().over("x"),
            next_role=pl.col("role").shift(-1).over("x"),
            next_content=pl.col("content").shift(-1).over("x"),
        )
        .filter(pl.col("role") == "assistant")
        .join(per_message_calls, on=["x", "pos"], how="left")
        .join(sources, on=["x", "pos"], how="left")
    )
    kind = (
        pl.when(pl.col("n_calls") > 0)
        .then(pl.lit("tool_call"))
        .when(pl.col("content").str.strip_chars() != "")
        .then(pl.lit("final_answer"))
        .otherwise(pl.lit("empty"))
    )
    final_failed = (pl.col("next_role") == "user") & pl.col("next_content").str.contains(
        config.retry_prompt_pattern
    ).fill_null(False)
    text_tool_failed = pl.col("tt_status").is_not_null() & ~pl.col("tt_status").is_in(
        ["converted", "not_a_call"]
    )
    reason = (
        pl.when(pl.col("src_policy").is_not_null())
        .then(pl.lit("source_exchange_rejected"))
        .when(pl.col("kind") == "empty")
        .then(pl.lit("empty_assistant_turn"))
        .when((pl.col("kind") == "final_answer") & ~pl.lit(config.include_final_answers) & ~text_tool_failed)
        .then(pl.lit("final_answer_excluded"))
        .when(pl.col("emptied_before"))
        .then(pl.lit("empty_after_markers"))
        .when(text_tool_failed)
        .then(pl.lit("text_tool_call_") + pl.col("tt_status"))
        .when(pl.col("non_text_before"))
        .then(pl.lit("non_text_content"))
        .when(pl.col("invalid").is_not_null())
        .then(pl.col("invalid"))
        .when((pl.col("failed_calls") > 0) & ~pl.lit(config.keep_failed))
        .then(pl.lit("failed_call"))
        .when((pl.col("kind") == "final_answer") & final_failed & ~pl.lit(config.keep_failed))
        .then(pl.lit("failed_final_answer"))
    )
    detail = (
        pl.when(pl.col("reason") == "source_exchange_rejected")
        .then(pl.lit("the exchange that produced this turn was rejected: ") + pl.col("src_policy"))
        .when(pl.col("reason").str.starts_with("text_tool_call_"))
        .then(pl.col("tt_format") + pl.lit(": ") + pl.col("tt_detail").fill_null(""))
        .when(
            pl.col("reason").is_in(
                ["unknown_tool", "arguments_not_json", "arguments_not_object", "arguments_schema_invalid"]
            )
        )
        .then(pl.col("invalid_detail"))
        .when(pl.col("reason") == "failed_call")
        .then(pl.lit("a retry prompt or tool error answered this call"))
        .when(pl.col("reason") == "failed_final_answer")
        .then(pl.lit("the agent answered this with a retry prompt"))
        .when(pl.col("reason") == "empty_after_markers")
        .then(pl.lit("a user or system message up to this turn held nothing but synthetic markers"))
        .when(pl.col("reason") == "empty_assistant_turn")
        .then(pl.lit("no content and no tool calls"))
        .when(pl.col("reason") == "final_answer_excluded")
        .then(pl.lit("include_final_answers is off"))
        .when(pl.col("reason") == "non_text_content")
        .then(pl.lit("a message up to this turn has non-text content parts (images, audio, files)"))
    )
    target = (
        pl.when(pl.col("n_calls") > 0)
        .then(pl.col("sig_sorted"))
        .otherwise(normalise_intent(pl.col("content")).hash(seed=13))
    )
    readable = (
        pl.when(pl.col("n_calls") > 1)
        .then(pl.format("{} (+{} more)", "first_call", pl.col("n_calls") - 1))
        .when(pl.col("n_calls") == 1)
        .then(pl.col("first_call"))
        .otherwise(pl.lit("answer: ") + pl.col("content").str.slice(0, 150))
    )
    return (
        frame.with_columns(
            kind=kind,
            failed_calls=pl.col("failed_calls").fill_null(0),
            ok_calls=pl.col("ok_calls").fill_null(0),
        )
        .with_columns(reason=reason)
        .with_columns(
            detail=detail,
            outcome=pl.when(pl.col("kind") == "tool_call")
            .then(
                pl.when(pl.col("failed_calls") > 0)
                .then(pl.lit("failed"))
                .when(pl.col("ok_calls") > 0)
                .then(pl.lit("ok"))
                .otherwise(pl.lit("unknown"))
            )
            .otherwise(pl.when(final_failed).then(pl.lit("failed")).otherwise(pl.lit("unknown"))),
            intent_norm=normalise_intent(pl.col("intent").fill_null("")),
        )
        .with_columns(near_target=target, target=readable)
        .select(
            "x",
            "pos",
            "kind",
            "reason",
            "detail",
            "outcome",
            "src",
            "tt_format",
            "tt_status",
            "n_calls",
            "key",
            "intent_norm",
            "near_target",
            "target",
        )
    )


# ------------------------------------------------------------------------------------ output lines


def message_json(messages: pl.DataFrame, calls: pl.DataFrame) -> pl.DataFrame:
    """x, pos, json: each message in mlx-lm chat format (tool_calls OpenAI-shaped, arguments as objects)."""
    call_json = pl.concat_str(
        pl.lit('{"id":'),
        json_string(pl.coalesce("call_id", pl.format("call_{}_{}_{}", "x", "pos", "k"))),
        pl.lit(',"type":"function","function":{"name":'),
        json_string(pl.col("name").fill_null("")),
        pl.lit(',"arguments":'),
        pl.coalesce("args_out", json_string(pl.col("args_raw").fill_null(""))),
        pl.lit("}}"),
    )
    calls_json = (
        calls.with_columns(_j=call_json)
        .group_by("x", "pos")
        .agg(_calls=pl.col("_j").sort_by("k").str.join(","))
    )
    return (
        messages.join(calls_json, on=["x", "pos"], how="left")
        .with_columns(
            json=pl.concat_str(
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
        )
        .select("x", "pos", "json")
    )


def sample_lines(
    samples: pl.DataFrame, msg_json: pl.DataFrame, tools_text: pl.DataFrame, meta: pl.DataFrame
) -> pl.DataFrame:
    """sid + the JSONL line of each sample: its head's messages up to and including the turn, the tools, meta."""
    conversations = msg_json.sort("x", "pos").group_by("x").agg(_msgs=pl.col("json"))
    return (
        samples.join(conversations, on="x")
        .join(tools_text, on="x")
        .join(meta, on=["x", "pos"])
        .select(
            "sid",
            line=pl.concat_str(
                pl.lit('{"messages":['),
                pl.col("_msgs").list.head(pl.col("pos") + 1).list.join(","),
                pl.lit('],"tools":'),
                pl.col("tools_text"),
                pl.lit(',"meta":'),
                pl.col("meta"),
                pl.lit("}"),
            ),
        )
    )


# ------------------------------------------------------------------------------------ stage 7: dedupe


def dedupe(candidates: pl.DataFrame, near_keep: int) -> pl.DataFrame:
    """Mark exact duplicates and near duplicates among `candidates` (sid, order, traj, exact_key, near_key).

    Exact: same tools and canonical messages (call ids ignored); the first in input order stays.
    Near: same tool set, normalised last user intent and target call(s), from *another* trajectory: the
    samples of the first `near_keep` trajectories of each cluster stay (0 keeps all). A trajectory that
    repeats a call (running the tests again after an edit) keeps its repeats: their histories differ.
    Adds dup (exact_duplicate | near_duplicate | null) and dup_of (the sid kept instead)."""
    frame = candidates.sort("order").with_columns(_exact_first=pl.col("sid").first().over("exact_key"))
    frame = frame.with_columns(_exact_dup=pl.col("sid") != pl.col("_exact_first"))
    survivors = (
        frame.filter(~pl.col("_exact_dup"))
        .with_columns(
            _traj_first=pl.col("order").min().over("near_key", "traj"),
            _near_first=pl.col("sid").first().over("near_key"),
        )
        .with_columns(_traj_rank=pl.col("_traj_first").rank("dense").over("near_key"))
    )
    near_dup = survivors.filter((pl.lit(near_keep) > 0) & (pl.col("_traj_rank") > near_keep)).select(
        "sid", "_near_first"
    )
    return (
        frame.join(near_dup, on="sid", how="left")
        .with_columns(
            dup=pl.when(pl.col("_exact_dup"))
            .then(pl.lit("exact_duplicate"))
            .when(pl.col("_near_first").is_not_null())
            .then(pl.lit("near_duplicate")),
            dup_of=pl.when(pl.col("_exact_dup"))
            .then(pl.col("_exact_first"))
            .otherwise(pl.col("_near_first")),
        )
        .drop("_exact_first", "_exact_dup", "_near_first")
    )


# ------------------------------------------------------------------------------------ stage 8: split


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
