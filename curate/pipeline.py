"""`curate.run`: trace files in, mlx-lm chat JSONL out, every input line and every sample accounted for.

Two passes keep memory bounded by the batch size, not the input size:
  pass 1  every line: parse + validate (stage 1), exchange policy, canonical message hashes, prefix keys;
          only compact columns (hashes, positions) are kept.
  stitch  trajectories from the keys (stage 2); the longest exchange of each is its head.
  pass 2  only the heads are re-read (by byte offset), in batches: per-turn samples (3), markers (4),
          text-about-tools (5), tool-call validity and outcomes (6), dedupe keys; sample lines are spilled
          to Parquet in a temporary directory.
  global  dedupe (7), optional model check (9), split by connected sessions/clusters (8), then the split
          files are written by streaming the spilled lines through a join.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from core.trace import trace_files
from curate import stages
from curate.config import Config
from curate.read import LOCATION_SCHEMA, RawBatch, parse_batch, parse_records, read_batches, read_lines_at
from curate.report import Report, build_report

SID_SHIFT = 1 << 20  # sample id = head x * SID_SHIFT + position (conversations are far shorter than 2**20)


@contextlib.contextmanager
def _progress(enabled: bool):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        transient=True,
    ) as progress:
        yield progress


def run(inputs, out_dir, config: Config | None = None) -> Report:
    """Curate trace files/directories `inputs` into `out_dir` (train/valid/test.jsonl, rejects.jsonl,
    report.json). Never raises on bad trace content; raises FileNotFoundError for missing inputs."""
    config = (config or Config()).check()
    inputs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    out_dir = Path(out_dir)
    # never read our own outputs back (train.jsonl, rejects.jsonl, ... when out_dir is under an input dir)
    files = [f for f in trace_files(inputs) if not f.resolve().is_relative_to(out_dir.resolve())]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".curate-", dir=out_dir))
    try:
        return _run(files, out_dir, tmp, config)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Pass1Result:
    """What pass 1 keeps of a batch: compact columns only (no message content)."""

    nbytes: int
    summary: pl.DataFrame  # per exchange: group, n, full_key, policy, ...
    keys: pl.DataFrame  # x, pos, key (conversation prefix hashes)
    rejects: pl.DataFrame  # x, reason, detail, stage
    locations: pl.DataFrame  # x, file_id, line_no, offset, size
    fast: int
    slow: int
    seconds: float


def pass1_batch(batch: RawBatch, config: Config) -> Pass1Result:
    """Stage 1 (validate), the exchange policy and the prefix keys of one batch."""
    started = time.perf_counter()
    parsed = parse_batch(batch)
    exchanges = stages.exchange_policy(parsed.frames["exchanges"], config)
    calls = stages.canonical_arguments(parsed.frames["calls"])
    keys = stages.message_keys(parsed.frames["messages"], calls).select("x", "pos", "key")
    return Pass1Result(
        nbytes=batch.nbytes,
        summary=stages.exchange_summary(exchanges, keys),
        keys=keys,
        rejects=parsed.rejects.with_columns(stage=pl.lit("1 validate")),
        locations=parsed.locations,
        fast=parsed.fast,
        slow=parsed.slow,
        seconds=time.perf_counter() - started,
    )


PARALLEL_MIN_BYTES = 64 * 1024 * 1024


def pass1_workers(config: Config, total_bytes: int) -> int:
    if config.workers:
        return config.workers
    if total_bytes < PARALLEL_MIN_BYTES:
        return 1  # starting worker processes (each imports Polars) costs more than it saves
    return max(1, min(os.cpu_count() or 1, 4))


def pass1_results(
    files: list[Path], config: Config, counters: dict, total_bytes: int
) -> Iterator[Pass1Result]:
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


def _where(locations: pl.DataFrame, files: list[Path]) -> pl.DataFrame:
    """x → "path:line" for every input line."""
    names = pl.DataFrame(
        {"file_id": list(range(len(files))), "path": [str(f) for f in files]},
        schema={"file_id": pl.Int32, "path": pl.String},
    )
    return locations.join(names, on="file_id").select(
        "x", "file_id", "offset", "size", where=pl.format("{}:{}", "path", "line_no")
    )


def _run(files: list[Path], out_dir: Path, tmp: Path, config: Config) -> Report:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    counters = {"bytes": 0, "blank_lines": 0}
    total_bytes = sum(f.stat().st_size for f in files)
    locations, line_rejects, summaries, key_tables = [], [], [], []
    validation = {"fast_path": 0, "reference_validator": 0}
    messages_seen = 0

    # ---- pass 1: stage 1 + exchange policy + prefix keys, batch by batch
    worker_s = 0.0
    with _progress(config.progress) as progress:
        task = progress.add_task("pass 1: validate + hash", total=total_bytes) if progress else None
        for result in pass1_results(files, config, counters, total_bytes):
            worker_s += result.seconds
            validation["fast_path"] += result.fast
            validation["reference_validator"] += result.slow
            locations.append(result.locations)
            line_rejects.append(result.rejects)
            messages_seen += result.keys.height
            summaries.append(result.summary)
            key_tables.append(result.keys)
            if progress:
                progress.update(task, advance=result.nbytes)
    timings["pass1_parse_validate_hash_cpu"] = worker_s
    timings["pass1_total"] = time.perf_counter() - started

    t0 = time.perf_counter()
    where = _where(
        pl.concat(locations) if locations else pl.DataFrame(schema=LOCATION_SCHEMA),
        files,
    )
    summary = pl.concat(summaries) if summaries else None
    keys = pl.concat(key_tables) if key_tables else None
    rejects_1 = (
        pl.concat(line_rejects)
        if line_rejects
        else pl.DataFrame(
            schema={"x": pl.Int64, "reason": pl.String, "detail": pl.String, "stage": pl.String}
        )
    )
    del locations, summaries, key_tables, line_rejects

    if summary is None or summary.height == 0:
        stitched = pl.DataFrame(
            schema={
                "x": pl.Int64,
                "session_id": pl.String,
                "group": pl.UInt64,
                "n": pl.Int64,
                "rep": pl.Int64,
                "head": pl.Int64,
                "stitch": pl.String,
            }
        )
        policy_rejects = rejects_1.clear()
    else:
        policy_rejects = summary.filter(pl.col("policy").is_not_null()).select(
            "x",
            reason=pl.col("policy"),
            detail=pl.lit("exchange not usable: ") + pl.col("policy"),
            stage=pl.lit("1b policy"),
        )
        stitched = stages.stitch(summary, keys)
    heads = stitched.filter(pl.col("stitch") == "head")
    sources = stages.turn_sources(summary, keys, heads) if heads.height else None
    timings["stitch"] = time.perf_counter() - t0
    head_messages = keys.join(heads.select("x"), on="x").height if heads.height else 0
    del keys

    # ---- pass 2: samples from trajectory heads, in batches
    t0 = time.perf_counter()
    patterns = config.all_markers()
    marker_counts = dict.fromkeys(patterns, 0)
    marker_messages = 0
    tt_counts: list[pl.DataFrame] = []
    sample_tables: list[pl.DataFrame] = []
    spill_files: list[Path] = []
    # batches of about batch_bytes of head lines
    head_rows = (
        heads.select("x", "session_id")
        .join(where, on="x")
        .sort("x")
        .with_columns(_batch=(pl.col("size").cum_sum() - pl.col("size")) // max(1, config.batch_bytes))
    )
    with _progress(config.progress) as progress:
        task = (
            progress.add_task("pass 2: samples", total=head_rows.get_column("size").sum())
            if progress
            else None
        )
        for (_,), batch in head_rows.group_by(["_batch"], maintain_order=True):
            xs, lines = [], []
            for (file_id,), part in batch.group_by(["file_id"], maintain_order=True):
                part = part.sort("offset")
                xs.extend(part.get_column("x").to_list())
                lines.extend(read_lines_at(files[file_id], part.get_column("offset").to_list()))
            frames = parse_records(xs, lines)
            samples, spill, counts, changed, tt = _samples_for_heads(
                frames, batch, sources, where, patterns, config
            )
            for name, count in counts.items():
                marker_counts[name] += count
            marker_messages += changed
            tt_counts.append(tt)
            sample_tables.append(samples)
            path = tmp / f"lines-{len(spill_files):05d}.parquet"
            spill.write_parquet(path)
            spill_files.append(path)
            if progress:
                progress.update(task, advance=batch.get_column("size").sum())
    samples = pl.concat(sample_tables) if sample_tables else _empty_samples()
    timings["pass2_samples"] = time.perf_counter() - t0

    # ---- stage 7: dedupe among samples that passed stages 3-6
    t0 = time.perf_counter()
    candidates = samples.filter(pl.col("reason").is_null()).with_columns(order=pl.col("sid"))
    deduped = stages.dedupe(
        candidates.select("sid", "order", "traj", "exact_key", "near_key"), config.near_duplicates_keep
    )
    samples = samples.join(deduped.select("sid", "dup", "dup_of"), on="sid", how="left")
    timings["dedupe"] = time.perf_counter() - t0

    # ---- stage 9: optional model check (round trip, sequence length)
    model_check = None
    if config.model:
        t0 = time.perf_counter()
        from curate.modelcheck import check_samples

        survivors = samples.filter(pl.col("reason").is_null(), pl.col("dup").is_null()).select("sid")
        lines_df = (
            pl.scan_parquet(spill_files).join(survivors.lazy(), on="sid", maintain_order="left").collect()
            if spill_files
            else survivors.with_columns(line=pl.lit(""))
        )
        verdicts, model_check = check_samples(lines_df, config)
        samples = samples.join(verdicts, on="sid", how="left")
        timings["model_check"] = time.perf_counter() - t0
    else:
        samples = samples.with_columns(
            model_reason=pl.lit(None, dtype=pl.String), model_detail=pl.lit(None, dtype=pl.String)
        )

    # ---- stage 8: split the kept samples by connected sessions / duplicate clusters
    t0 = time.perf_counter()
    kept = samples.filter(
        pl.col("reason").is_null(), pl.col("dup").is_null(), pl.col("model_reason").is_null()
    )
    link = ["traj", "near_key"] + (["intent_key"] if config.split_by_intent else [])
    notes: list[str] = []
    if kept.height:
        kept = stages.components(kept, link)
        kept, notes = stages.assign_splits(kept, config.split, config.seed)
    else:
        kept = kept.with_columns(component=pl.lit(0, dtype=pl.Int64), split=pl.lit("", dtype=pl.String))
    written = {}
    for split in ("train", "valid", "test"):
        path = out_dir / f"{split}.jsonl"
        chosen = kept.filter(pl.col("split") == split).select("sid")
        if chosen.height:
            pl.scan_parquet(spill_files).join(chosen.lazy(), on="sid", maintain_order="left").select(
                "line"
            ).sink_csv(path, include_header=False, quote_style="never")
            written[split] = str(path)
        elif path.exists():
            path.unlink()  # an empty split file makes mlx-lm's loader fail (it reads data[0]); stale ones go too
    timings["split_write"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    report = build_report(
        files=files,
        out_dir=out_dir,
        config=config,
        counters=counters,
        validation=validation,
        rejects_1=rejects_1,
        policy_rejects=policy_rejects,
        stitched=stitched,
        samples=samples,
        kept=kept,
        where=where,
        marker_counts=marker_counts,
        marker_messages=marker_messages,
        tt_counts=pl.concat(tt_counts) if tt_counts else None,
        model_check=model_check,
        split_notes=notes,
        written=written,
        messages_seen=messages_seen,
        head_messages=head_messages,
        timings=timings,
    )
    timings["report"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - started
    report.data["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    report.write(out_dir)
    return report


def _empty_samples() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "sid": pl.Int64,
            "x": pl.Int64,
            "pos": pl.Int32,
            "kind": pl.String,
            "reason": pl.String,
            "detail": pl.String,
            "outcome": pl.String,
            "src": pl.Int64,
            "tt_format": pl.String,
            "tt_status": pl.String,
            "n_calls": pl.Int32,
            "traj": pl.String,
            "exact_key": pl.UInt64,
            "near_key": pl.UInt64,
            "intent_key": pl.UInt64,
            "intent": pl.String,
            "target": pl.String,
        }
    )


def _samples_for_heads(
    frames, batch: pl.DataFrame, sources, where: pl.DataFrame, patterns: dict[str, str], config: Config
):
    """Stages 3-6 for one batch of heads; returns (sample table, spilled lines, marker counts, messages
    changed by markers, text-tool counts)."""
    messages, calls, tools = frames["messages"], frames["calls"], frames["tools"]
    messages, counts = stages.strip_markers(messages, patterns)
    changed = int(messages.get_column("marker_changed").sum())
    messages, calls = stages.convert_text_calls(messages, calls, tools, config)
    calls = stages.canonical_arguments(calls)
    messages = stages.message_keys(messages, calls)
    calls = stages.call_outcomes(stages.call_validity(calls, tools), messages, config)
    batch_sources = sources.join(batch.select("x"), on="x") if sources is not None else None
    samples = stages.build_samples(messages, calls, batch_sources, config)
    tools_hash = frames["exchanges"].select("x", tools_hash=pl.col("tools_json").hash(seed=3))
    samples = (
        samples.join(tools_hash, on="x")
        .join(batch.select("x", "session_id"), on="x")
        .with_columns(
            sid=pl.col("x") * SID_SHIFT + pl.col("pos"),
            traj=pl.when(pl.col("session_id").is_not_null())
            .then(pl.lit("s:") + pl.col("session_id"))
            .otherwise(pl.format("h:{}", "x")),
            exact_key=pl.struct("tools_hash", "key").hash(seed=5),
            near_key=pl.struct("tools_hash", "intent_norm", "near_target").hash(seed=6),
            intent_key=pl.struct("tools_hash", "intent_norm").hash(seed=7),
            intent=pl.col("intent_norm").str.slice(0, 160),
            target=pl.col("target").str.slice(0, 160),
        )
    )
    tt = messages.filter(pl.col("tt_format").is_not_null()).group_by("tt_format", "tt_status").len()
    # lines only for samples that may be kept
    candidates = samples.filter(pl.col("reason").is_null())
    meta = (
        candidates.join(where.select("x", head=pl.col("where")), on="x", how="left")
        .join(where.select(pl.col("x").alias("src"), source=pl.col("where")), on="src", how="left")
        .select(
            "x",
            "pos",
            meta=pl.struct(
                "session_id", "head", "source", turn=pl.col("pos"), kind=pl.col("kind")
            ).struct.json_encode(),
        )
    )
    heads_needed = candidates.select("x").unique()
    msg_json = stages.message_json(messages.join(heads_needed, on="x"), calls.join(heads_needed, on="x"))
    spill = stages.sample_lines(candidates.select("sid", "x", "pos"), msg_json, frames["tools_text"], meta)
    keep_columns = [
        "sid",
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
        "traj",
        "exact_key",
        "near_key",
        "intent_key",
        "intent",
        "target",
    ]
    return samples.select(keep_columns), spill, counts, changed, tt
