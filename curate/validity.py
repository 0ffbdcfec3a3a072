"""Stage 6: is each structured tool call valid for the request's tools, and did it work?

jsonschema-rs runs once per distinct (tool schema, canonical arguments) pair: no expression validates JSON
Schema."""

from __future__ import annotations

import functools
import json

import jsonschema_rs
import orjson
import polars as pl

from curate.keys import call_ref
from curate.reasons import first_reason


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


def schema_errors(calls: pl.LazyFrame) -> pl.DataFrame:
    """parameters, args_canon → _schema_error (null when valid), for the distinct pairs that need a check."""
    pairs = (
        calls.filter(pl.col("parameters").is_not_null(), pl.col("args_is_object"))
        .select("parameters", "args_canon")
        .unique()
        .collect()
    )
    errors = [_schema_error(p, a) for p, a in pairs.iter_rows()]
    return pairs.with_columns(pl.Series("_schema_error", errors, dtype=pl.String))


def call_validity(calls: pl.DataFrame, tools: pl.DataFrame) -> pl.DataFrame:
    """Per call: `invalid` (a reason code of the "invalid" group) and `invalid_detail`, or nulls when the call
    is valid for the request's tools."""
    known = tools.lazy().unique(["x", "name"], keep="first").select("x", "name", "parameters")
    joined = calls.lazy().join(known, on=["x", "name"], how="left", maintain_order="left")
    invalid, detail = first_reason(
        [
            (
                "unknown_tool",
                pl.col("parameters").is_null(),
                pl.format("'{}' is not one of the request's tools", "name").fill_null("call without a name"),
            ),
            (
                "arguments_not_json",
                pl.col("args_canon").is_null(),
                pl.lit("arguments are not JSON: ") + pl.col("args_raw").str.slice(0, 80),
            ),
            (
                "arguments_not_object",
                ~pl.col("args_is_object"),
                pl.lit("arguments are not a JSON object: ") + pl.col("args_canon").str.slice(0, 80),
            ),
            (
                "arguments_schema_invalid",
                pl.col("_schema_error").is_not_null(),
                pl.col("name") + pl.lit(": ") + pl.col("_schema_error"),
            ),
        ]
    )
    return (
        joined.join(
            schema_errors(joined).lazy(), on=["parameters", "args_canon"], how="left", maintain_order="left"
        )
        .with_columns(invalid=invalid, invalid_detail=detail)
        .drop("_schema_error")
        .collect()
    )


def call_outcomes(calls: pl.DataFrame, messages: pl.DataFrame, retry_pattern: str, error_pattern: str):
    """Per call: `outcome` from what followed it — failed (the tool message answering it is a retry prompt
    or a tool error), ok (a normal tool result), or unknown (nothing answered it in this trajectory)."""
    answers = (
        messages.lazy()
        .filter(pl.col("role") == "tool", pl.col("ref") != "")
        .group_by("x", "ref")
        .agg(
            failed=(
                pl.col("content").str.contains(retry_pattern) | pl.col("content").str.contains(error_pattern)
            ).any()
        )
    )
    return (
        calls.lazy()
        .with_columns(ref=call_ref())
        .join(answers, on=["x", "ref"], how="left", maintain_order="left")
        .with_columns(
            outcome=pl.when(pl.col("failed").is_null())
            .then(pl.lit("unknown"))
            .when(pl.col("failed"))
            .then(pl.lit("failed"))
            .otherwise(pl.lit("ok"))
        )
        .drop("ref", "failed")
        .collect()
    )
