"""The rich progress display used inside mlx-lm's `train()`: bar, loss, val loss, tokens/s, elapsed and ETA.

mlx-lm's trainer builds its display as `TrainUI(iters, rank=rank)`; `train_ui(...)` swaps that class for this
one for the duration of a run, so the bar counts absolute iterations (a resumed run starts where it left off).
"""

from __future__ import annotations

import contextlib
import functools

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class TrainProgress:
    def __init__(
        self, total_iters: int, rank: int = 0, *, start: int = 0, total: int | None = None, console=None
    ):
        self.rank = rank
        self.start = start
        self.total = total if total is not None else start + total_iters
        self.console = console or Console()
        self.progress = Progress(
            TextColumn("[bold blue]{task.description:<5}"),
            BarColumn(bar_width=30),
            MofNCompleteColumn(),
            TextColumn("loss [bold]{task.fields[loss]}"),
            TextColumn("val [bold]{task.fields[val]}"),
            TextColumn("{task.fields[tps]} supervised tok/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=rank != 0,
        )
        self.task = self.progress.add_task(
            "train", total=self.total, completed=start, loss="-", val="-", tps="-"
        )
        # A terminal shows the live bar; a log file gets one line per report instead.
        self.lines = not self.console.is_terminal

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def print(self, text: str) -> None:
        if self.rank == 0:
            self.console.print(text)

    def advance(self):
        self.progress.advance(self.task)

    def report_train(self, it, train_loss, tokens_sec, trained_tokens):
        self.progress.update(self.task, loss=f"{train_loss:.3f}", tps=f"{tokens_sec:,.0f}")
        if self.lines:
            self.print(
                f"  iter {self.start + it:>6}  loss {train_loss:.3f}  {tokens_sec:,.1f} supervised tok/s"
            )

    @contextlib.contextmanager
    def val_task(self, total: int):
        task_id = (
            self.progress.add_task("val", total=total, loss="", val="", tps="") if self.rank == 0 else None
        )
        try:
            yield (lambda: self.progress.advance(task_id)) if task_id is not None else (lambda: None)
        finally:
            if task_id is not None:
                self.progress.remove_task(task_id)

    def report_val(self, it, val_loss, val_time):
        self.progress.update(self.task, val=f"{val_loss:.3f}")
        self.print(
            f"  iter {self.start + it - 1:>6}  [magenta]val loss {val_loss:.3f}[/magenta] ({val_time:.1f} s)"
        )

    def report_save(self, checkpoint):
        self.print(f"  saved {checkpoint}")


@contextlib.contextmanager
def train_ui(start: int, total: int, console):
    """Within the block, mlx-lm's `train()` shows TrainProgress (counting from `start` to `total`)."""
    import mlx_lm.tuner.trainer as trainer

    original = trainer.TrainUI
    trainer.TrainUI = functools.partial(TrainProgress, start=start, total=total, console=console)
    try:
        yield
    finally:
        trainer.TrainUI = original
