"""Checks that run before any training step: data files, chat template, tool-call round trip, lengths, timing.

A failing check raises PreflightError whose message is one line naming the file and line. Lengths and
truncation are reported (printed and stored in the manifest), never silent.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.samples import (
    BENCHMARK_KEY,
    Sample,
    SampleError,
    SpanError,
    read_samples,
    sample_tokens,
    supervised_spans,
    too_long,
)

SPLITS = ("train", "valid")


class PreflightError(ValueError):
    """Training cannot start; the message names the file (and line) at fault."""


@dataclass
class Tokenized:
    """A sample as training sees it: tokens and the index of the first supervised token; a session sample
    also has the [start, end) token span of each assistant turn (everything outside them is masked)."""

    sample: Sample
    tokens: list[int]
    offset: int
    spans: tuple[tuple[int, int], ...] | None = None

    @property
    def supervised(self) -> int:
        if self.spans is not None:
            return sum(end - start for start, end in self.spans)
        return len(self.tokens) - self.offset


@dataclass
class SessionReport:
    """What became of a split's session samples: trained whole, or as their per-turn samples, and why."""

    samples: int = 0
    whole: int = 0
    turns_whole: int = 0  # assistant turns supervised inside whole sessions
    per_turn: int = 0  # sessions trained as per-turn samples (setting or fallback)
    fallbacks: dict[str, int] = field(default_factory=dict)  # reason → sessions
    first_fallback: str = ""  # file:line and the reason of the first


@dataclass
class SplitReport:
    file: str
    samples: int
    tokens: dict[str, int] = field(default_factory=dict)
    supervised_tokens: dict[str, int] = field(default_factory=dict)
    histogram: list[tuple[int, int, int]] = field(default_factory=list)  # (from, to, samples)
    over_max_seq_length: int = 0
    truncated_supervision: int = 0  # samples losing part of the assistant turn to truncation
    dropped: list[str] = field(default_factory=list)  # file:line of samples with nothing left to learn
    sessions: SessionReport = field(default_factory=SessionReport)


def read_jsonl(path: Path) -> list[Sample]:
    """Every sample of a chat JSONL file; a bad line raises PreflightError naming path:line."""
    try:
        samples = read_samples(path)
    except SampleError as error:
        raise PreflightError(str(error)) from None
    for sample in samples:  # public benchmark cases are for evaluation only
        if BENCHMARK_KEY in sample.data:
            raise PreflightError(
                f"{sample.where}: benchmark data ({sample.data[BENCHMARK_KEY]}) is never trained on"
            )
    return samples


def load_splits(data_dir: Path, *, need_valid: bool = False) -> tuple[dict[str, list[Sample]], list[str]]:
    """train.jsonl (required) and valid.jsonl (recommended) as samples, plus warnings."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PreflightError(
            f"{data_dir}: data directory not found (expected train.jsonl and valid.jsonl in it)"
        )
    splits, warnings = {}, []
    for split in SPLITS:
        path = data_dir / f"{split}.jsonl"
        if not path.is_file():
            if split == "train" or need_valid:
                why = "required" if split == "train" else "required by select_by = tool-success"
                raise PreflightError(f"{path}: file not found ({why})")
            warnings.append(f"{path}: not found; training runs without validation loss")
            splits[split] = []
            continue
        samples = read_jsonl(path)
        if not samples and (split == "train" or need_valid):
            raise PreflightError(f"{path}: file is empty")
        if not samples:
            warnings.append(f"{path}: empty; training runs without validation loss")
        splits[split] = samples
    return splits, warnings


def check_round_trip(tokenizer, samples: list[Sample]) -> None:
    """Every supervised assistant turn (the final one, or each of a session's) renders with the model's
    template and parses back to the same tool calls."""
    from core.toolcalls import round_trip

    for sample in samples:
        for turn in sample.per_turn():
            result = round_trip(tokenizer, turn.messages, turn.tools or None)
            if not result.ok:
                raise PreflightError(
                    f"{turn.where}: tool call does not round-trip through the chat template: {result.reason}"
                )


def tokenize(tokenizer, sample: Sample, mask_prompt: bool = True) -> Tokenized:
    """Tokens as the server would build the conversation (mlx_lm.server's message preprocessing, then the
    chat template), and the offset of the final assistant turn, as mlx-lm's ChatDataset computes it; for a
    session sample, the span of every assistant turn (`core.samples.supervised_spans`; SpanError when the
    template does not allow them)."""
    try:
        if not mask_prompt:
            return Tokenized(sample, sample_tokens(tokenizer, sample.data), 0)
        found = supervised_spans(tokenizer, sample.data)
    except SpanError as error:
        if sample.is_session:
            raise
        raise PreflightError(f"{sample.where}: {error}, so the loss mask would be wrong") from None
    except Exception as error:
        raise PreflightError(f"{sample.where}: chat template failed: {error}") from None
    spans = found.spans if sample.is_session else None
    return Tokenized(sample, found.tokens, found.spans[0][0], spans)


def tokenize_split(
    tokenizer, samples: list[Sample], *, mask_prompt: bool, max_seq_length: int, whole_sessions: bool
) -> tuple[list[Tokenized], SessionReport]:
    """Every sample tokenized; a session sample stays whole when `whole_sessions`, its spans exist and it
    fits in max_seq_length, and otherwise becomes its per-turn samples (counted, with the reason)."""
    items: list[Tokenized] = []
    report = SessionReport()
    for sample in samples:
        if not sample.is_session:
            items.append(tokenize(tokenizer, sample, mask_prompt))
            continue
        report.samples += 1
        reason = None if whole_sessions else "sessions = per-turn"
        if reason is None:
            try:
                item = tokenize(tokenizer, sample, mask_prompt)
            except SpanError as error:
                reason = error.reason
            else:
                if len(item.tokens) > max_seq_length:
                    reason = too_long(max_seq_length)
        if reason is None:
            items.append(item)
            report.whole += 1
            report.turns_whole += len(item.spans or ())
            continue
        items += [tokenize(tokenizer, turn, mask_prompt) for turn in sample.per_turn()]
        report.per_turn += 1
        if whole_sessions:
            report.fallbacks[reason] = report.fallbacks.get(reason, 0) + 1
            report.first_fallback = report.first_fallback or f"{sample.where}: {reason}"
    return items, report


def length_report(items: list[Tokenized], max_seq_length: int, file: str) -> SplitReport:
    report = SplitReport(file=file, samples=len(items))
    if not items:
        return report
    lengths = [len(t.tokens) for t in items]
    supervised = [t.supervised for t in items]
    for name, values in (("tokens", lengths), ("supervised_tokens", supervised)):
        setattr(
            report,
            name,
            {
                "min": min(values),
                "median": int(statistics.median(values)),
                "max": max(values),
                "total": sum(values),
            },
        )
    top = min(max(lengths), max_seq_length)
    edges = [0, 32]
    while edges[-1] < top:
        edges.append(edges[-1] * 2)
    edges[-1] = min(edges[-1], max_seq_length)
    if max(lengths) > max_seq_length:
        edges.append(max(lengths))
    for low, high in zip(edges, edges[1:], strict=False):
        report.histogram.append((low, high, sum(1 for n in lengths if low < n <= high)))
    report.over_max_seq_length = sum(1 for n in lengths if n > max_seq_length)
    for t in items:
        if len(t.tokens) > max_seq_length:
            if t.offset >= max_seq_length:
                report.dropped.append(t.sample.where)
            else:
                report.truncated_supervision += 1
    return report


def print_length_report(console, split: str, report: SplitReport, max_seq_length: int) -> None:
    if not report.samples:
        return
    tokens, supervised = report.tokens, report.supervised_tokens
    console.print(
        f"[bold]{split}[/bold] {report.samples} samples · tokens min {tokens['min']} / median {tokens['median']}"
        f" / max {tokens['max']} · supervised (assistant turns) median {supervised['median']}"
        f", total {supervised['total']:,}"
    )
    sessions = report.sessions
    if sessions.samples:
        fallback = (
            f"; {sum(sessions.fallbacks.values())} fell back to per-turn samples "
            f"({', '.join(f'{n} {reason}' for reason, n in sessions.fallbacks.items())}; first: "
            f"{sessions.first_fallback})"
            if sessions.fallbacks
            else ""
        )
        console.print(
            f"  {sessions.samples} session samples: {sessions.whole} trained whole ({sessions.turns_whole} "
            f"assistant turns), {sessions.per_turn} as per-turn samples{fallback}"
        )
    peak = max(count for _, _, count in report.histogram) or 1
    for low, high, count in report.histogram:
        bar = "█" * max(1 if count else 0, round(24 * count / peak))
        over = high > max_seq_length
        style = "yellow" if over and count else "default"
        label = f"{low + 1:>6}–{high:<6}" + (" > max_seq_length" if over else "")
        console.print(f"  [{style}]{label:<34} {bar} {count}[/{style}]")
    if report.over_max_seq_length:
        console.print(
            f"  [yellow]{report.over_max_seq_length} samples are longer than max_seq_length {max_seq_length} and are "
            f"truncated: {report.truncated_supervision} lose part of their assistant turn, {len(report.dropped)} lose "
            f"all of it and are left out{' (first: ' + report.dropped[0] + ')' if report.dropped else ''}[/yellow]"
        )


def time_steps(model, longest, typical, make_optimizer, steps: int, loss=None) -> dict[str, float]:
    """Seconds per training step, measured on real steps compiled as mlx-lm's trainer compiles them (forward,
    backward, optimizer update) with a throw-away optimizer; the trainable weights are restored afterwards.

    The longest batch runs once (untimed) for peak memory, and the typical one once to compile its shape;
    then `steps` typical steps are timed."""
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn

    from train.loss import full_loss

    saved = model.trainable_parameters()
    optimizer = make_optimizer()
    loss_and_grad = nn.value_and_grad(model, loss or full_loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(*batch):
        (value, ntoks), grad = loss_and_grad(model, *batch)
        optimizer.update(model, grad)
        return value, ntoks

    def one(batch):
        tic = time.perf_counter()
        value, ntoks = step(*batch)
        mx.eval(state, value, ntoks)
        return time.perf_counter() - tic, ntoks.item()

    mx.reset_peak_memory()
    try:
        first, _ = one(longest)
        one(typical)
        timed = [one(typical) for _ in range(steps)]
    finally:
        model.update(saved)
    seconds = sum(t for t, _ in timed)
    return {
        "seconds_per_iteration": seconds / len(timed),
        "longest_batch_seconds": first,
        "steps_timed": len(timed),
        "supervised_tokens_per_second": sum(n for _, n in timed) / seconds if seconds else 0.0,
        "peak_memory_gb": mx.get_peak_memory() / 1e9,
    }
