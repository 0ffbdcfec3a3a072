"""`curate.run`: trace files in, mlx-lm chat JSONL out, every input line and every sample accounted for.

The steps, in order (each a function below; stage numbers as in the report):
  pass 1       validate every line, exchange policy, prefix keys (stages 1, 1b)      curate.passes
  trajectories stitch exchanges into trajectories (2)                                curate.stitch
  pass 2       per-turn samples of the heads, markers, text-about-tools, validity (3-6)  curate.passes
  dedupe       exact and near duplicates (7)                                          curate.dedupe
  model check  optional: round trip through the model's template and parser (9)       curate.modelcheck
  split        connected sessions / duplicate clusters to train/valid/test (8)        curate.split
  sessions     train/valid: one session sample per trajectory, checked with the model  curate.sessions
  write        split files, rejects.jsonl, the resolved settings                      curate.lines
  account      the identities, checked against the files written; the report     curate.funnel, .verify, .report
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl

from core.outcomes import read_outcomes
from core.trace import trace_files
from curate import sessions, stitch
from curate import split as splitting
from curate.config import Config, save_config
from curate.dedupe import dedupe
from curate.funnel import Accounting, Exchanges, Samples, account
from curate.lines import turn_line, write_lines, write_splits
from curate.passes import Pass1, Pass2, pass1, pass2
from curate.reasons import Outcome, partition
from curate.report import Report, Statistics, build_report
from curate.verify import AccountingError, verify


class Clock:
    """Seconds per named step, for report.json's timings_s."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def step(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - started

    def rounded(self) -> dict[str, float]:
        return {
            k: round(v, 3) for k, v in {**self.seconds, "total": time.perf_counter() - self.started}.items()
        }


def run(inputs, out_dir, config: Config | None = None) -> Report:
    """Curate trace files/directories `inputs` into `out_dir` (train/valid/test.jsonl, rejects.jsonl,
    report.json, curate.toml). Never raises on bad trace content; raises FileNotFoundError for missing
    inputs and AccountingError (after writing report.json) when the files break `in = kept + rejected +
    deduplicated`."""
    config = (config or Config()).check()
    inputs = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    out_dir = Path(out_dir)
    # never read our own outputs back (train.jsonl, rejects.jsonl, ... when out_dir is under an input dir)
    files = [f for f in trace_files(inputs) if not f.resolve().is_relative_to(out_dir.resolve())]
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".curate-", dir=out_dir))
    try:
        return _run(files, out_dir, tmp, config, outcome_frame(inputs))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def outcome_frame(inputs: list) -> pl.DataFrame:
    """session_id → the outcome that stands (core.outcomes), from the outcomes files among the inputs."""
    standing = read_outcomes(inputs)
    return pl.DataFrame(
        {"session_id": list(standing), "outcome": [o["outcome"] for o in standing.values()]},
        schema={"session_id": pl.String, "outcome": pl.String},
    )


def policies_and_outcomes(summary: pl.DataFrame, outcomes: pl.DataFrame) -> dict:
    """Exchanges (and sessions) by the policy that answered them and by their session's outcome, with how many
    of them passed stage 1b: the funnel's view of whose traffic is learned from."""
    frame = summary.join(outcomes, on="session_id", how="left").with_columns(
        usable=pl.col("policy").is_null(),
        answered_by=pl.col("answered_by").fill_null("(unknown)"),
        outcome=pl.col("outcome").fill_null("(none)"),
    )

    def by(column: str) -> dict:
        rows = frame.group_by(column).agg(
            exchanges=pl.len(), usable=pl.col("usable").sum(), sessions=pl.col("session_id").n_unique()
        )
        return {
            row[column]: {k: row[k] for k in ("exchanges", "usable", "sessions")}
            for row in rows.sort(column).iter_rows(named=True)
        }

    return {"by_policy": by("answered_by"), "by_outcome": by("outcome")}


def trajectories(first: Pass1, summary: pl.DataFrame) -> tuple[Exchanges, pl.DataFrame]:
    """Stages 1b and 2 over the compact rows of pass 1 (`summary`: with whose traffic is wanted applied);
    also the source exchange of each head's turns."""
    usable = stitch.usable_exchanges(summary)
    stitched, frame = stitch.stitch(usable.kept, first.keys, first.where)
    heads = stitched.kept
    sources = stitch.turn_sources(summary, first.keys, heads)
    exchanges = Exchanges(
        where=first.where,
        validate=Outcome(kept=first.summary, removed=first.rejects),
        policy=usable,
        stitch=stitched,
        stitched=frame,
        read=first.read,
        validation=first.validation,
        messages_seen=first.messages_seen,
        head_messages=first.keys.join(heads.select("x"), on="x").height,
    )
    return exchanges, sources


NOTHING_REMOVED = pl.DataFrame(schema={"sid": pl.Int64, "reason": pl.String, "detail": pl.String})


def model_tokenizer(config: Config):
    """The model's tokenizer for stage 9 and the session check (None without config.model)."""
    if not config.model:
        return None
    from core.toolcalls import load_tokenizer

    return load_tokenizer(config.model)


def check_with_model(
    kept: pl.DataFrame, spill: list[Path], config: Config, tokenizer
) -> tuple[Outcome, dict | None]:
    """Stage 9, with config.model: render every sample still kept through the model's own template."""
    if tokenizer is None:
        return Outcome(kept, NOTHING_REMOVED), None
    from curate.modelcheck import check_samples

    chosen = kept.lazy().select("sid")
    no_lines = chosen.with_columns(line=pl.lit(""))
    lines = (
        pl.scan_parquet(spill).join(chosen, on="sid", maintain_order="left").select("sid", line=turn_line())
        if spill
        else no_lines
    )
    removed, summary = check_samples(lines.collect(), tokenizer, config)
    return Outcome(kept.join(removed, on="sid", how="anti", maintain_order="left"), removed), summary


def split_samples(
    candidates: pl.DataFrame, kept: pl.DataFrame, config: Config
) -> tuple[pl.DataFrame, list[str]]:
    """Stage 8: components of linked samples (every candidate, duplicates included), then whole components
    to train/valid/test."""
    if not kept.height:
        return kept.with_columns(component=pl.lit(0, dtype=pl.Int64), split=pl.lit("", dtype=pl.String)), []
    written_links = splitting.WRITTEN_LINKS + (["intent_key"] if config.split_by_intent else [])
    linked = splitting.linked_samples(candidates, kept, written_links)
    return splitting.assign_splits(linked, kept, config.split, config.seed)


def write_and_verify(out_dir: Path, config: Config, exchanges: Exchanges, samples: Samples) -> Accounting:
    """rejects.jsonl and the resolved settings beside the split files, then the identities from the files."""
    accounting = account(exchanges, samples)
    write_lines(accounting.rejects.lazy(), out_dir / "rejects.jsonl")
    save_config(config, out_dir)
    accounting.verified = verify(out_dir, exchanges, samples)
    return accounting


def _run(files: list[Path], out_dir: Path, tmp: Path, config: Config, outcomes: pl.DataFrame) -> Report:
    clock = Clock()
    with clock.step("pass1_total"):
        first = pass1(files, config)
    clock.seconds["pass1_parse_validate_hash_cpu"] = first.worker_seconds
    with clock.step("stitch"):
        summary = stitch.outcome_policy(first.summary, outcomes, config)
        exchanges, sources = trajectories(first, summary)
    whose = policies_and_outcomes(summary, outcomes)
    del first
    with clock.step("pass2_samples"):
        second: Pass2 = pass2(files, exchanges.stitch.kept, sources, exchanges.where, config, tmp)
    turns = partition(second.samples)
    with clock.step("dedupe"):
        deduped = dedupe(turns.kept, config.near_duplicates_keep, exchanges.where)
    with clock.step("model_check"):
        tokenizer = model_tokenizer(config)
        checked, model_summary = check_with_model(deduped.kept, second.spill_files, config, tokenizer)
    with clock.step("split"):
        kept, notes = split_samples(turns.kept, checked.kept, config)
    with clock.step("sessions"):
        lines = sessions.layout(kept, second.spill_files, exchanges.where, config, tokenizer)
    with clock.step("write"):
        written = write_splits(kept, second.spill_files, out_dir, lines.whole)
    samples = Samples(second.samples, turns, deduped, checked, kept, notes)
    with clock.step("account_verify"):
        accounting = write_and_verify(out_dir, config, exchanges, samples)
    with clock.step("report"):
        stats = Statistics(
            second.marker_matches, second.marker_messages, second.text_calls, model_summary, lines.summary
        )
        report = build_report(config, files, out_dir, exchanges, samples, accounting, stats, written)
    report.data.update(whose)
    report.data["timings_s"] = clock.rounded()
    report.write(out_dir)
    if broken := accounting.verified["broken"]:
        raise AccountingError(broken)
    return report
