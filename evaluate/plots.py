"""The report's plots: matplotlib bar charts rendered to inline base64 PNGs (no file, no network)."""

from __future__ import annotations

import base64
import io

from core.scoring import CODES
from evaluate.labels import AGENT_LABELS, RATE_LABELS


def _png(figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _bars(title: str, labels: list[str], series: dict[str, list[float]], ylabel: str, percent: bool) -> str:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 0.9 * len(labels) + 2), 3.6))
    axes = figure.subplots()
    width = 0.8 / max(1, len(series))
    colors = {"base": "#9aa5b1", "adapter": "#2f6fdf", "model": "#2f6fdf"}
    for k, (name, values) in enumerate(series.items()):
        positions = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        scaled = [(v or 0) * (100 if percent else 1) for v in values]
        bars = axes.bar(positions, scaled, width, label=name, color=colors.get(name))
        for bar, value in zip(bars, values, strict=True):
            text = "—" if value is None else (f"{value * 100:.0f}" if percent else f"{value:g}")
            axes.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    axes.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    if percent:
        axes.set_ylim(0, 105)
    axes.set_title(title)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def plots(report: dict) -> list[tuple[str, str]]:
    """(caption, base64 PNG) for each plot of the report."""
    images = []
    names = report.get("labels", {})
    cand, base = names.get("candidate", "adapter"), names.get("baseline", "base")
    turns = report.get("turns")
    if turns:
        keys = list(RATE_LABELS)
        series = {}
        if turns.get("baseline"):
            series[base] = [turns["baseline"]["rates"].get(k) for k in keys]
        series[cand] = [turns["candidate"]["rates"].get(k) for k in keys]
        images.append(
            ("Turn-level rates", _bars("Turn-level rates", [RATE_LABELS[k] for k in keys], series, "%", True))
        )
        codes = [c for c in CODES if c != "ok"]
        series = {}
        if turns.get("baseline"):
            series[base] = [turns["baseline"]["codes"].get(c, 0) for c in codes]
        series[cand] = [turns["candidate"]["codes"].get(c, 0) for c in codes]
        images.append(("Error codes", _bars("Error codes (cases)", codes, series, "cases", False)))
    agent = report.get("agent")
    if agent:
        keys = ["success_rate"]
        series = {}
        if agent.get("baseline"):
            series[base] = [agent["baseline"]["summary"].get(k) for k in keys]
        series[cand] = [agent["candidate"]["summary"].get(k) for k in keys]
        images.append(
            ("Agent task success", _bars("Agent task success", ["task success"], series, "%", True))
        )
        keys = ["mean_tool_calls", "mean_invalid_calls", "mean_retries", "mean_steps"]
        series = {}
        if agent.get("baseline"):
            series[base] = [agent["baseline"]["summary"].get(k) for k in keys]
        series[cand] = [agent["candidate"]["summary"].get(k) for k in keys]
        images.append(
            (
                "Agent behaviour",
                _bars("Agent behaviour per episode", [AGENT_LABELS[k] for k in keys], series, "mean", False),
            )
        )
    return images
