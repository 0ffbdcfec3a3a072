"""The two reading passes; memory stays bounded by the batch size, not the input size.

pass 1  every line: parse + validate (stage 1), exchange policy, canonical message hashes, prefix keys;
        only compact columns (hashes, positions) are kept.
pass 2  only the trajectory heads are re-read (by byte offset), in batches: per-turn samples (3), markers
        (4), text-about-tools (5), tool-call validity and outcomes (6), dedupe keys; the lines of the
        samples that may be kept are spilled to Parquet.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curate import keys as k
from curate import stitch
from curate.config import Config
from curate.lines import sample_lines
from curate.markers import strip_markers
from curate.read import (
    LOCATION_SCHEMA,
    REJECT_SCHEMA,
    RawBatch,
    parse_batch,
    parse_records,
    read_batches,
    read_lines_at,
)
from curate.split import task_key
from curate.textcalls import convert_text_calls
from curate.turns import SAMPLE_FIELDS, build_samples
from curate.validity import call_outcomes, call_validity

SID_SHIFT = 1 << 20  # sample id = head x * SID_SHIFT + position (conversations are far shorter than 2**20)
PARALLEL_MIN_BYTES = 64 * 1024 * 1024


@contextlib.contextmanager
def progress_bar(enabled: bool, description: str, total: int):
    """An advance(n) callable behind a rich progress bar (a no-op when progress is off)."""
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.update(task, advance=n)


# ------------------------------------------------------------------------------------ pass 1


@dataclass
class Pass1Batch:
    """What pass 1 keeps of a batch: compact columns only (no message content)."""

    nbytes: int
    summary: pl.DataFrame  # per exchange: group, n, full_key, policy, ...
    keys: pl.DataFrame  # x, pos, key (conversation prefix hashes)
    rejects: pl.DataFrame  # x, reason, detail
    locations: pl.DataFrame  # x, file_id, line_no, offset, size
    fast: int
    slow: int
    seconds: float


@dataclass
class Pass1:
    """Pass 1 over every input line."""

    where: pl.DataFrame  # x, file_id, offset, size, where ("path:line")
    summary: pl.DataFrame
    keys: pl.DataFrame
    rejects: pl.DataFrame  # stage 1: x, reason, detail
    read: dict[str, int]  # files, bytes, blank_lines_ignored
    validation: dict[str, int] = field(default_factory=dict)
    messages_seen: int = 0
    worker_seconds: float = 0.0


def pass1_batch(batch: RawBatch, config: Config) -> Pass1Batch:
    """Stage 1 (validate), the exchange policy and the prefix keys of one batch."""
    started = time.perf_counter()
    parsed = parse_batch(batch)
    exchanges = stitch.exchange_policy(parsed.frames["exchanges"], config)
    calls = k.canonical_arguments(parsed.frames["calls"])
    keys = k.message_keys(parsed.frames["messages"], calls).select("x", "pos", "key")
    return Pass1Batch(
        nbytes=batch.nbytes,
        summary=stitch.exchange_summary(exchanges, keys),
        keys=keys,
        rejects=parsed.rejects,
        locations=parsed.locations,
        fast=parsed.fast,
        slow=parsed.slow,
        seconds=time.perf_counter() - started,
    )


def pass1_workers(config: Config, total_bytes: int) -> int:
    if config.workers:
        return config.workers
    if total_bytes < PARALLEL_MIN_BYTES:
        return 1  # starting worker processes (each imports Polars) costs more than it saves
    return max(1, min(os.cpu_count() or 1, 4))


def pass1_batches(
    files: list[Path], config: Config, counters: dict, total_bytes: int
) -> Iterator[Pass1Batch]:
    """Pass 1 over all lines, in order; batches are independent, so with several workers each batch is
    parsed and validated in its own process (spawned: Polars' threads and fork do not mix)."""
    batches = read_batches(files, config.batch_bytes, counters)
    workers = pass1_workers(config, total_bytes)
    if workers <= 1:
        for batch in batches:
            yield pass1_batch(batch, config)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: collections.deque = collections.deque()
        for batch in batches:  # at most workers + 1 batches in flight: memory stays bounded
            pending.append(pool.submit(pass1_batch, batch, config))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def locate(locations: pl.DataFrame, files: list[Path]) -> pl.DataFrame:
    """x → "path:line" (and file, offset, size) for every input line."""
    names = pl.DataFrame(
        {"file_id": list(range(len(files))), "path": [str(f) for f in files]},
        schema={"file_id": pl.Int32, "path": pl.String},
    )
    return locations.join(names, on="file_id", maintain_order="left").select(
        "x", "file_id", "offset", "size", where=pl.format("{}:{}", "path", "line_no")
    )


def pass1(files: list[Path], config: Config) -> Pass1:
    counters = {"bytes": 0, "blank_lines": 0}
    total_bytes = sum(f.stat().st_size for f in files)
    results: list[Pass1Batch] = []
    with progress_bar(config.progress, "pass 1: validate + hash", total_bytes) as advance:
        for result in pass1_batches(files, config, counters, total_bytes):
            results.append(result)
            advance(result.nbytes)

    def gathered(name: str, schema: dict) -> pl.DataFrame:
        frames = [getattr(result, name) for result in results]
        return pl.concat(frames) if frames else pl.DataFrame(schema=schema)

    return Pass1(
        where=locate(gathered("locations", LOCATION_SCHEMA), files),
        summary=gathered("summary", stitch.SUMMARY_SCHEMA),
        keys=gathered("keys", {"x": pl.Int64, "pos": pl.Int32, "key": pl.UInt64}),
        rejects=gathered("rejects", REJECT_SCHEMA),
        read={
            "files": len(files),
            "bytes": counters["bytes"],
            "blank_lines_ignored": counters["blank_lines"],
        },
        validation={
            "fast_path": sum(result.fast for result in results),
            "reference_validator": sum(result.slow for result in results),
        },
        messages_seen=sum(result.keys.height for result in results),
        worker_seconds=sum(result.seconds for result in results),
    )


# ------------------------------------------------------------------------------------ pass 2


@dataclass
class Pass2:
    """Pass 2 over the trajectory heads: every sample, the spilled lines, and what the stages counted."""

    samples: pl.DataFrame
    spill_files: list[Path]
    marker_matches: dict[str, int]
    marker_messages: int
    text_calls: pl.DataFrame  # tt_format, tt_status, len


SAMPLE_SCHEMA = {
    "sid": pl.Int64,
    **SAMPLE_FIELDS,
    "session_id": pl.String,
    "traj": pl.String,
    "exact_key": pl.UInt64,
    "near_key": pl.UInt64,
    "intent_key": pl.UInt64,
    "task_key": pl.UInt64,
    "intent": pl.String,
    "target": pl.String,
}
TEXT_CALL_COUNTS = {"tt_format": pl.String, "tt_status": pl.String, "len": pl.UInt32}


def sample_keys() -> dict[str, pl.Expr]:
    """Sample id, trajectory and the dedupe/split keys of each sample (after build_samples; task_key, the
    one key kept across runs, is a stable hash: curate.split)."""
    return {
        "sid": pl.col("x") * SID_SHIFT + pl.col("pos"),
        "traj": pl.when(pl.col("session_id").is_not_null())
        .then(pl.lit("s:") + pl.col("session_id"))
        .otherwise(pl.format("h:{}", "x")),
        "exact_key": pl.struct("tools_hash", "key").hash(seed=k.EXACT),
        "near_key": pl.struct("tools_hash", "intent_norm", "near_target").hash(seed=k.NEAR),
        "intent_key": pl.struct("tools_hash", "intent_norm").hash(seed=k.INTENT),
        "intent": pl.col("intent_norm").str.slice(0, 160),
        "target": pl.col("target").str.slice(0, 160),
    }


def batch_samples(frames: dict[str, pl.DataFrame], heads: pl.DataFrame, sources: pl.DataFrame, where, config):
    """Stages 3-6 for one batch of heads (x, session_id): (samples, spilled lines, marker matches, messages
    changed by markers, text-tool counts)."""
    messages, calls, tools = frames["messages"], frames["calls"], frames["tools"]
    messages, matches = strip_markers(messages, config.all_markers())
    changed = int(messages.get_column("marker_changed").sum())
    messages, calls = convert_text_calls(messages, calls, tools, config.text_tool_calls)
    calls = k.canonical_arguments(calls)
    messages = k.message_keys(messages, calls)
    calls = call_validity(calls, tools)
    calls = call_outcomes(calls, messages, config.retry_prompt_pattern, config.tool_error_pattern)
    tools_hash = frames["exchanges"].lazy().select("x", tools_hash=pl.col("tools_json").hash(seed=k.TOOLS))
    samples = (
        task_key(build_samples(messages, calls, sources.join(heads.select("x"), on="x"), config), tools)
        .lazy()
        .join(tools_hash, on="x", maintain_order="left")
        .join(heads.lazy().select("x", "session_id"), on="x", maintain_order="left")
        .with_columns(**sample_keys())
        .select(*SAMPLE_SCHEMA)
        .sort("sid")
        .collect()
    )
    text_calls = messages.filter(pl.col("tt_format").is_not_null()).group_by("tt_format", "tt_status").len()
    candidates = samples.filter(pl.col("reason").is_null())  # lines only for samples that may be kept
    spill = sample_lines(candidates, messages, calls, frames["tools_text"], where)
    return samples, spill, matches, changed, text_calls


def head_batches(heads: pl.DataFrame, where: pl.DataFrame, batch_bytes: int) -> pl.DataFrame:
    """heads with their location and `_batch`: consecutive heads of about batch_bytes of lines."""
    return (
        heads.select("x", "session_id")
        .join(where, on="x")
        .sort("x")
        .with_columns(_batch=(pl.col("size").cum_sum() - pl.col("size")) // max(1, batch_bytes))
    )


def read_heads(files: list[Path], batch: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """Re-read one batch of head lines by byte offset, file by file, and flatten them with their tools."""
    xs, lines = [], []
    for (file_id,), part in batch.group_by(["file_id"], maintain_order=True):
        part = part.sort("offset")
        xs.extend(part.get_column("x").to_list())
        lines.extend(read_lines_at(files[file_id], part.get_column("offset").to_list()))
    return parse_records(xs, lines)


def pass2(
    files: list[Path],
    heads: pl.DataFrame,
    sources: pl.DataFrame,
    where: pl.DataFrame,
    config: Config,
    tmp: Path,
) -> Pass2:
    located = head_batches(heads, where, config.batch_bytes)
    result = Pass2(
        samples=pl.DataFrame(schema=SAMPLE_SCHEMA),
        spill_files=[],
        marker_matches=dict.fromkeys(config.all_markers(), 0),
        marker_messages=0,
        text_calls=pl.DataFrame(schema=TEXT_CALL_COUNTS),
    )
    tables, text_calls = [result.samples], [result.text_calls]
    with progress_bar(config.progress, "pass 2: samples", located.get_column("size").sum()) as advance:
        for (_,), batch in located.group_by(["_batch"], maintain_order=True):
            frames = read_heads(files, batch)
            samples, spill, matches, changed, counted = batch_samples(frames, batch, sources, where, config)
            for name, count in matches.items():
                result.marker_matches[name] += count
            result.marker_messages += changed
            tables.append(samples)
            text_calls.append(counted.cast(TEXT_CALL_COUNTS))
            path = tmp / f"lines-{len(result.spill_files):05d}.parquet"
            spill.write_parquet(path)
            result.spill_files.append(path)
            advance(batch.get_column("size").sum())
    result.samples = pl.concat(tables)
    result.text_calls = pl.concat(text_calls)
    return result
