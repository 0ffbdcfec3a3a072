"""loss.png beside metrics.jsonl: train and validation loss, and tool-call success per checkpoint when scored."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, png_path: Path, title: str = "") -> Path | None:
    """Write the loss plot; None when there is nothing to plot yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    train = [(r["iteration"], r["train_loss"]) for r in records if r.get("kind") == "train"]
    val = [(r["iteration"], r["val_loss"]) for r in records if r.get("kind") == "val"]
    success = [(r["iteration"], r["tool_success"]) for r in records if r.get("tool_success") is not None]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation loss", color="tab:orange")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (supervised tokens)")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if success:
        ax2 = ax.twinx()
        ax2.plot(
            *zip(*success, strict=True), "s--", color="tab:green", label="exact tool-call accuracy (valid)"
        )
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_ylabel("exact tool-call accuracy")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title or "training")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return Path(png_path)
