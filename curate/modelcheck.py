"""Stage 9 (with --model): render each sample with the model's chat template and parse the supervised turn
back with its tool parser (`core.toolcalls.round_trip`); check that its tokens continue its prompt's tokens,
so that training's loss mask is right (`core.samples.supervised_spans`, what train's preflight checks); count
tokens as mlx-lm's ChatDataset does. Then the same span check on each session sample (`check_sessions`)."""

from __future__ import annotations

import json
from collections import Counter

import polars as pl

from curate.config import Config


def check_samples(lines: pl.DataFrame, tokenizer, config: Config) -> tuple[pl.DataFrame, dict]:
    """lines (sid, line) → (sid, reason, detail) of the failures, and a summary for the report. One Python
    step per sample: the chat template and the tool parser are the model's own code."""
    from core.samples import SpanError, supervised_spans
    from core.toolcalls import round_trip

    sids, reasons, details = [], [], []
    failures: Counter[str] = Counter()
    lengths = []
    too_long = mismatches = 0
    for sid, line in lines.select("sid", "line").iter_rows():
        sample = json.loads(line)
        messages, tools = sample["messages"], sample.get("tools") or None
        result = round_trip(tokenizer, messages, tools)
        reason = detail = None
        try:
            tokens = len(supervised_spans(tokenizer, sample).tokens)
        except SpanError as error:
            reason, detail = "mask_mismatch", str(error)
            tokens = len(tokenizer.apply_chat_template(messages, tools=tools, return_dict=False))
        lengths.append(tokens)
        if not result.ok:
            reason, detail = "round_trip_failed", result.reason
            failures[result.reason.split(";")[0][:60]] += 1
        elif reason is not None:
            mismatches += 1
        elif tokens > config.max_seq_length:
            too_long += 1
            if config.drop_too_long:
                reason, detail = "too_long", f"{tokens} tokens > max_seq_length {config.max_seq_length}"
        if reason:
            sids.append(sid)
            reasons.append(reason)
            details.append(detail)
    verdicts = pl.DataFrame(
        {"sid": sids, "reason": reasons, "detail": details},
        schema={"sid": pl.Int64, "reason": pl.String, "detail": pl.String},
    )
    summary = {
        "model": str(config.model),
        "checked": lines.height,
        "round_trip_failures": sum(failures.values()),
        "round_trip_failure_reasons": dict(failures.most_common(10)),
        "mask_mismatches": mismatches,
        "longer_than_max_seq_length": too_long,
        "max_seq_length": config.max_seq_length,
        "dropped_too_long": config.drop_too_long,
        "tokens_max": max(lengths, default=0),
        "tokens_mean": round(sum(lengths) / len(lengths), 1) if lengths else 0,
    }
    return verdicts, summary


def check_sessions(lines: pl.DataFrame, tokenizer, config: Config) -> tuple[pl.DataFrame, dict]:
    """Session lines (x, line) → (x, reason) of those to write as per-turn samples: the template does not
    render each supervised turn as a token prefix of the whole (`supervised_spans`), or the session is longer
    than max_seq_length (train would split it); and a summary for the report."""
    from core.samples import SpanError, supervised_spans, too_long

    xs, reasons, lengths = [], [], []
    for x, line in lines.select("x", "line").iter_rows():
        try:
            tokens = len(supervised_spans(tokenizer, json.loads(line)).tokens)
        except SpanError as error:
            xs.append(x)
            reasons.append(error.reason)
            continue
        lengths.append(tokens)
        if tokens > config.max_seq_length:
            xs.append(x)
            reasons.append(too_long(config.max_seq_length))
    fallbacks = pl.DataFrame({"x": xs, "reason": reasons}, schema={"x": pl.Int64, "reason": pl.String})
    summary = {
        "checked": lines.height,
        "tokens_max": max(lengths, default=0),
        "tokens_mean": round(sum(lengths) / len(lengths), 1) if lengths else 0,
    }
    return fallbacks, summary
