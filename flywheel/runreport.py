"""The run report of a several-round flywheel: reports/RUN.json (machine) and reports/RUN.html (people): the
learning curve across rounds (held-out agent success, exact-call accuracy on held-out call turns and, next to
it, over-calling on held-out no-call turns, each with its Wilson 95% interval) and every promotion decision with
its statistics."""

from __future__ import annotations

import datetime as dt
import html
import json
from pathlib import Path
from typing import Any

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
.num{text-align:right}.yes{color:#0a7b2b;font-weight:600}.no{color:#a33}small{color:#666}"""


def curve_points(rounds: list[dict]) -> list[dict[str, Any]]:
    """The base (round 0, from round 1's baseline side), then each round's adapter."""
    points = [{"round": 0, "label": "base", **rounds[0]["baseline"], "promoted": None}]
    for r in rounds:
        points.append(
            {
                "round": r["round"],
                "label": f"adapter {r['round']}",
                **r["candidate"],
                "promoted": r["decision"]["promoted"],
            }
        )
    return points


def learning_curve_png(points: list[dict]) -> str:
    import base64
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 3.8))
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    xs = [p["round"] for p in points]
    for key, ci, label, color in (
        ("agent_rate", "agent_ci", "held-out agent tasks solved", "#2f6fdf"),
        ("exact_call_rate", "exact_call_ci", "held-out call turns, exact call", "#d9822b"),
        ("over_call_rate", "over_call_ci", "held-out no-call turns, over-calling (lower is better)", "#a33"),
    ):
        shown = [(x, p) for x, p in zip(xs, points, strict=True) if p.get(key) is not None]
        if not shown:
            continue
        values = [100 * p[key] for _, p in shown]
        below = [100 * (p[key] - p[ci][0]) for _, p in shown]
        above = [100 * (p[ci][1] - p[key]) for _, p in shown]
        axes.errorbar(
            [x for x, _ in shown],
            values,
            yerr=[below, above],
            marker="o",
            capsize=4,
            label=label,
            color=color,
        )
    for p in points:
        if p["promoted"]:
            axes.annotate("promoted", (p["round"], 2), ha="center", fontsize=7, color="#0a7b2b")
    axes.set_xticks(xs, [p["label"] for p in points], fontsize=8)
    axes.set_ylim(0, 105)
    axes.set_ylabel("% (95% Wilson interval)")
    axes.set_title("Learning curve across rounds (the same held-out cases every round)")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _ci(ci) -> str:
    return "" if not ci or ci[0] is None else f" <small>[{100 * ci[0]:.0f}, {100 * ci[1]:.0f}]</small>"


def made_by(summary: dict, names: dict[str, str]) -> str:
    """What made a round's adapter: 'from the base, 150 iterations on 137 train lines', or from the adapter
    a top-up continued."""
    training = summary.get("training")
    if not training:  # a run summary written before rounds recorded it
        return "—"
    start = training["init_adapter"]
    start = "the base" if start is None else names.get(start, start)
    replayed = f" ({training['replay_lines']} replayed)" if training.get("replay_lines") else ""
    return f"from {start}, {training['iters']} iterations on {training['train_lines']} train lines{replayed}"


def render(run: dict) -> str:
    e = html.escape
    points = curve_points(run["rounds"])
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Flywheel run {e(run['run'])}</title>",
        f"<style>{CSS}</style></head><body><h1>Flywheel run {e(run['run'])}</h1>",
        f"<p>{len(run['rounds'])} rounds · student {e(run['student'])} · best at the end: "
        f"<b>{e(run['best'])}</b> · {e(run['created'])}</p>",
        f"<img alt='learning curve' src='data:image/png;base64,{learning_curve_png(points)}'>",
        "<h2>Each policy on the held-out cases</h2><table><tr><th>policy</th><th>agent tasks solved</th>"
        "<th>exact calls on call turns</th><th>over-calling on no-call turns</th></tr>",
    ]
    for p in points:
        out.append(
            f"<tr><td>{e(p['label'])}</td><td class='num'>{p['agent_solved']}/{p['agent_tasks']} "
            f"({_pct(p['agent_rate'])}){_ci(p['agent_ci'])}</td><td class='num'>{p['exact_calls']}/"
            f"{p['call_turns']} ({_pct(p['exact_call_rate'])}){_ci(p['exact_call_ci'])}</td><td class='num'>"
            f"{p.get('over_calls', '—')}/{p.get('answer_turns', '—')} ({_pct(p.get('over_call_rate'))})"
            f"{_ci(p.get('over_call_ci'))}</td></tr>"
        )
    out.append(
        "</table><h2>Promotion decisions</h2><table><tr><th>round</th><th>training data from</th>"
        "<th>adapter made</th><th>compared with</th><th>check</th><th>baseline</th><th>candidate</th><th>n</th><th>p</th>"
        "<th>passed</th><th>promoted</th></tr>"
    )
    names = {r["adapter"]: f"adapter {r['round']}" for r in run["rounds"]}
    for r in run["rounds"]:
        checks = r["decision"]["checks"]
        source = r["collection"].get("teacher") or attempts_summary(r["collection"])
        for i, check in enumerate(checks):
            p = check.get("p_one_sided", check.get("p_two_sided"))
            head = (
                (
                    f"<td rowspan={len(checks)}>{r['round']}</td><td rowspan={len(checks)}>{e(str(source))}</td>"
                    f"<td rowspan={len(checks)}>{e(made_by(r, names))}</td>"
                    f"<td rowspan={len(checks)}>{e(r['compared_with'])}</td>"
                )
                if i == 0
                else ""
            )
            tail = (
                (
                    f"<td rowspan={len(checks)} class='{'yes' if r['decision']['promoted'] else 'no'}'>"
                    f"{'yes' if r['decision']['promoted'] else 'no'}</td>"
                )
                if i == 0
                else ""
            )
            out.append(
                f"<tr>{head}<td>{e(check['check'])}</td><td class='num'>{_pct(check.get('baseline'))}</td>"
                f"<td class='num'>{_pct(check.get('candidate'))}</td><td class='num'>{check.get('n', 0)}</td>"
                f"<td class='num'>{'—' if p is None else f'{p:.3g}'}</td>"
                f"<td class='{'yes' if check['passed'] else 'no'}'>{'yes' if check['passed'] else 'no'}</td>"
                f"{tail}</tr>"
            )
    out.append(
        "</table><p><small>Rule (flywheel/promote.py): promoted only when the candidate solves more held-out "
        "agent tasks with a one-sided exact McNemar p &lt; 0.05, without a significant fall (two-sided "
        "p &lt; 0.05) in exact calls on held-out call turns or rise in over-calling on no-call turns. "
        "Each round's full evaluation: "
        + ", ".join(
            f"<a href='{e(Path(r['report']).relative_to(Path(run['reports_dir'])).with_suffix('.html').as_posix())}'>"
            f"round {r['round']}</a>"
            for r in run["rounds"]
        )
        + ".</small></p></body></html>"
    )
    return "\n".join(out)


def write_run_report(config, reports_dir: Path, name: str, rounds: list[dict]) -> tuple[Path, Path]:
    best = next((r["best_after"] for r in reversed(rounds)), "base")
    run = {
        "run": name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "student": str(config.student or "the shipped tiny base"),
        "settings": config.to_dict(),
        "reports_dir": str(reports_dir),
        "best": best,
        "curve": curve_points(rounds),
        "rounds": rounds,
    }
    json_path = reports_dir / f"{name}.json"
    json_path.write_text(json.dumps(run, indent=2) + "\n")
    html_path = json_path.with_suffix(".html")
    html_path.write_text(render(run))
    return json_path, html_path


def attempts_summary(collection: dict) -> str:
    """What a round ≥ 2 learned from: its attempts' successes, by template, and the templates it gave up on."""
    by_template = solved_by_template(collection)
    given_up = collection.get("given_up") or []
    return (
        f"the student's successes ({collection.get('solved')}/{collection.get('episodes')} attempts"
        + (f": {by_template}" if by_template else "")
        + (
            f"; given up after {collection.get('focus_give_up_after')} misses: {', '.join(given_up)}"
            if given_up
            else ""
        )
        + ")"
    )


def solved_by_template(collection: dict) -> str:
    """A round's attempts solved, by template: "count_lines 8/28, create_file 16/19"."""
    return ", ".join(
        f"{t} {v['solved']}/{v['episodes']}" for t, v in (collection.get("by_template") or {}).items()
    )
