"""The evaluation report: reports/NAME.json (machine), reports/NAME.html (standalone, plots inline), console table.

    write_reports(report, out_dir) -> (json_path, html_path)
    print_summary(report)

`report` is the dict `evaluate.run` builds; this module only renders it, so an old JSON report can be
re-rendered: `render_html(json.loads(Path("reports/x.json").read_text()))`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from core.scoring import CODES
from core.turns import LOWER_IS_BETTER
from evaluate.labels import AGENT_LABELS, GENERAL_HEADLINE, RATE_LABELS, RATE_TURNS

HEADLINE_NOTE = (
    "The headline turn-level number is exact-call accuracy on call turns (right tool, right arguments, no "
    "leaked markup); over-calling, next to it, is the share of the turns the reference answers without a tool "
    "where the model called one anyway (structured or malformed; lower is better); abstention accuracy counts "
    "real answers (no call, no markup, not empty) on those turns; turn success mixes both."
)
PERCENT_METRICS = set(RATE_LABELS) | {"success_rate"}
# +1: higher is better, -1: lower is better, 0: neither (how a delta is coloured)
DIRECTION = {
    **dict.fromkeys(LOWER_IS_BETTER, -1),
    "mean_invalid_calls": -1,
    "mean_retries": -1,
    "mean_wall_s": -1,
    "mean_tool_calls": 0,
    "mean_steps": 0,
}


def delta_quality(key: str, delta: float | None) -> str:
    """ "better", "worse" or "" for a metric's delta."""
    direction = DIRECTION.get(key, 1)
    if not delta or not direction:
        return ""
    return "better" if delta * direction > 0 else "worse"


def fmt(value: Any, percent: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.1%}" if percent else f"{value:.2f}"
    return str(value)


def fmt_delta(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value * 100:+.1f} pt" if percent else f"{value:+.2f}"


def fmt_p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def headline_rows(report: dict) -> list[dict]:
    """Rows of the headline table: metric, base, adapter, delta, paired statistics where they apply."""
    rows = []
    turns, agent = report.get("turns"), report.get("agent")
    if turns:
        candidate, baseline = turns["candidate"], turns.get("baseline")
        comparison = turns.get("comparison") or {}
        paired = comparison.get("paired", {})
        counts = {"call": candidate["n_call_cases"], "answer": candidate["n_abstention_cases"]}
        counts[""] = candidate["n_cases"]
        for key, label in RATE_LABELS.items():
            kind = RATE_TURNS[key]
            label = f"{label} ({counts[kind]} {kind + ' ' if kind else ''}turns)"
            label += ", headline" if key == "exact_call_accuracy" else ""
            a = candidate["rates"].get(key)
            b = baseline["rates"].get(key) if baseline else None
            stat = paired.get(key)
            rows.append(
                {
                    "metric": label,
                    "key": key,
                    "level": "turn",
                    "base": b,
                    "adapter": a,
                    "delta": a - b if a is not None and b is not None else None,
                    "percent": True,
                    "ci": (stat["ci_low"], stat["ci_high"])
                    if stat and stat.get("ci_low") is not None
                    else None,
                    "p": stat["mcnemar_p"] if stat else None,
                }
            )
    if agent:
        candidate, baseline = agent["candidate"]["summary"], (agent.get("baseline") or {}).get("summary")
        stat = (agent.get("comparison") or {}).get("success")
        for key, label in AGENT_LABELS.items():
            a = candidate.get(key)
            b = baseline.get(key) if baseline else None
            with_stat = key == "success_rate" and stat
            rows.append(
                {
                    "metric": label,
                    "key": key,
                    "level": "agent",
                    "base": b,
                    "adapter": a,
                    "delta": a - b if a is not None and b is not None else None,
                    "percent": key in PERCENT_METRICS,
                    "ci": (stat["ci_low"], stat["ci_high"])
                    if with_stat and stat.get("ci_low") is not None
                    else None,
                    "p": stat["mcnemar_p"] if with_stat else None,
                }
            )
    if report.get("general"):  # the public general check (evaluate.general), next to the user's own turns
        rows += general_rows(report["general"])
    return rows


# ---------------------------------------------------------------------------------------------- HTML

CSS = """
body { font: 14px/1.45 -apple-system, BlinkMacSystemFont, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #1d232a; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #dde3ea; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #dde3ea; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f6f9; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
pre { margin: 0; white-space: pre-wrap; word-break: break-word; max-height: 18em; overflow: auto; font-size: 12px; }
.ok { color: #137333; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.up { color: #137333; } .down { color: #b3261e; }
.flag { background: #fdecea; border-left: 4px solid #b3261e; padding: 4px 8px; margin: 4px 0; }
.pass { background: #e6f4ea; border-left: 4px solid #137333; padding: 4px 8px; }
.meta td { border: none; padding: 1px 12px 1px 0; }
img { max-width: 100%; }
"""


def general_rows(general: dict) -> list[dict]:
    """Rows for evaluate's headline table (console and HTML): the general rates next to the user's turns."""
    rows = []
    paired = (general.get("comparison") or {}).get("paired", {})
    base = (general.get("baseline") or {}).get("rates", {})
    for key, label in GENERAL_HEADLINE:
        rows.append(
            _general_row(
                "general", key, label, base.get(key), general["candidate"]["rates"].get(key), paired.get(key)
            )
        )
    for category, row in general["per_category"].items():
        key, label = GENERAL_HEADLINE[1] if row["no_call"] else GENERAL_HEADLINE[0]
        b = (row.get("baseline") or {}).get("rates", {}).get(key)
        stat = (row.get("paired") or {}).get(key)
        rows.append(
            _general_row(f"general · {category}", key, label, b, row["candidate"]["rates"].get(key), stat)
        )
    return rows


def _general_row(level: str, key: str, label: str, base, adapter, stat: dict | None) -> dict:
    return {
        "metric": label,
        "key": key,
        "level": level,
        "base": base,
        "adapter": adapter,
        "delta": adapter - base if adapter is not None and base is not None else None,
        "percent": True,
        "ci": (stat["ci_low"], stat["ci_high"]) if stat and stat.get("ci_low") is not None else None,
        "p": stat["mcnemar_p"] if stat else None,
    }


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, indent=1)


def _delta_cell(delta: float | None, percent: bool, key: str = "") -> str:
    if delta is None:
        return '<td class="num">—</td>'
    css = {"better": "up", "worse": "down", "": ""}[delta_quality(key, delta)]
    return f'<td class="num {css}">{_e(fmt_delta(delta, percent))}</td>'


def _message_text(message: dict) -> str:
    parts = [f"[{message.get('role')}]"]
    if message.get("content"):
        content = message["content"]
        parts.append(content if isinstance(content, str) else _json(content))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        parts.append(f"→ {function.get('name')}({_json(function.get('arguments'))})")
    return " ".join(parts)


def _call_text(call: dict) -> str:
    return f"{call['name']}({json.dumps(call['arguments'], ensure_ascii=False)})"


def _raw_text(raw: str, limit: int = 2000) -> str:
    if not raw.strip():
        return (
            f"(only whitespace: {raw!r})" if len(raw) <= 40 else f"(only whitespace, {len(raw)} characters)"
        )
    return raw if len(raw) <= limit else raw[:limit] + f"… ({len(raw) - limit} more characters)"


def _case_rows(report: dict) -> str:
    turns = report["turns"]
    candidate = turns["candidate"]["cases"]
    baseline = (turns.get("baseline") or {}).get("cases")
    rows = []
    for i, case in enumerate(candidate):
        prompt = case["messages"]
        last = _message_text(prompt[-1]) if prompt else ""
        full = "\n".join(_message_text(m) for m in prompt)
        expected = "\n".join(_call_text(c) for c in case["expected_calls"]) or "(no call: answer in text)"
        cells = [
            f'<td class="num">{i}</td>',
            f"<td><pre>{_e(last)}</pre><details><summary>{len(prompt)} messages · {_e(case['where'])}</summary>"
            f"<pre>{_e(full)}</pre></details></td>",
            f"<td><pre>{_e(expected)}</pre></td>",
        ]
        for side in ([baseline[i]] if baseline else []) + [case]:
            css = "ok" if side["code"] == "ok" else "bad"
            cells.append(
                f"<td><pre>{_e(_raw_text(side['raw']))}</pre></td>"
                f'<td><span class="{css}">{_e(side["code"])}</span><br><small>{_e(side["detail"])}</small></td>'
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    names = report.get("labels", {})
    heads = ["#", "Prompt (last message)", "Expected call"]
    if baseline:
        heads += [f"{names.get('baseline', 'base')} output", "verdict"]
    heads += [f"{names.get('candidate', 'adapter')} output", "verdict"]
    widths = (
        ["3%", "18%", "17%"]
        + (["20%", "11%"] if baseline else [])
        + (["20%", "11%"] if baseline else ["40%", "22%"])
    )
    cols = "".join(f'<col style="width:{w}">' for w in widths)
    head = "".join(f"<th>{_e(h)}</th>" for h in heads)
    return (
        f'<table id="cases" style="table-layout:fixed;width:100%"><colgroup>{cols}</colgroup>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def identity_lines(report: dict) -> list[tuple[str, str]]:
    """(side, what it was: model path, weight and adapter hashes, the model the server was verified to serve)."""
    names = report.get("labels", {})
    lines = []
    for role, ident in (report.get("identity") or {}).items():
        keys = ("model_path", "weights_sha256", "adapter_sha256", "served_model", "scores_from")
        facts = "; ".join(f"{k} {ident[k]}" for k in keys if ident.get(k))
        lines.append((f"{names.get(role, role)} identity", facts or "unknown"))
    return lines


def render_html(report: dict) -> str:
    names = report.get("labels", {})
    cand, base = names.get("candidate", "adapter"), names.get("baseline", "base")
    has_base = any((report.get(level) or {}).get("baseline") for level in ("turns", "agent", "general"))
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Flywheel evaluation: {_e(report.get('name'))}</title><style>{CSS}</style></head><body>",
        f"<h1>Flywheel evaluation: {_e(report.get('name'))}</h1>",
        "<table class='meta'>",
    ]
    for key in ("created", "model", "adapter", "baseline_model", "server", "data", "tasks"):
        if report.get(key) is not None:
            out.append(f"<tr><td>{_e(key)}</td><td><code>{_e(report[key])}</code></td></tr>")
    for role, facts in identity_lines(report):
        out.append(f"<tr><td>{_e(role)}</td><td><code>{_e(facts)}</code></td></tr>")
    out.append("</table>")

    gate = report.get("gate")
    if gate:
        css = "pass" if gate["passed"] else "flag"
        verdict = "passed" if gate["passed"] else "FAILED"
        out.append(f"<div class='{css}' id='gate'>Gate {verdict}: {_e(gate['summary'])}</div>")
    for flag in report.get("regressions", []):
        out.append(f"<div class='flag'>Regression: {_e(flag['message'])}</div>")

    out.append("<h2>Headline</h2>")
    head = (
        ["Level", "Metric"]
        + ([base] if has_base else [])
        + [cand]
        + (["Δ", "95% CI of Δ", "McNemar p"] if has_base else [])
    )
    out.append(
        '<table id="headline"><thead><tr>'
        + "".join(f"<th>{_e(h)}</th>" for h in head)
        + "</tr></thead><tbody>"
    )
    for row in headline_rows(report):
        cells = [f"<td>{_e(row['level'])}</td>", f"<td>{_e(row['metric'])}</td>"]
        if has_base:
            cells.append(f'<td class="num">{_e(fmt(row["base"], row["percent"]))}</td>')
        cells.append(f'<td class="num">{_e(fmt(row["adapter"], row["percent"]))}</td>')
        if has_base:
            cells.append(_delta_cell(row["delta"], row["percent"], row["key"]))
            ci = row["ci"]
            cells.append(
                f'<td class="num">{_e(fmt_delta(ci[0], True) + " … " + fmt_delta(ci[1], True)) if ci else "—"}</td>'
            )
            cells.append(f'<td class="num">{_e(fmt_p(row["p"]))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    turns = report.get("turns")
    if turns:
        summary = turns["candidate"]
        out.append(
            f"<p>{summary['n_cases']} held-out turns ({summary['n_call_cases']} with a reference call, "
            f"{summary['n_abstention_cases']} answered without a tool); "
            f"generation: <code>{_e(_json(summary.get('settings', {})))}</code>.</p><p>{_e(HEADLINE_NOTE)}</p>"
        )

    from evaluate.plots import plots

    images = plots(report)
    if images:
        out.append("<h2>Plots</h2>")
        for caption, data in images:
            out.append(
                f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{data}'><figcaption>{_e(caption)}</figcaption></figure>"
            )

    if turns:
        out.append(
            "<h2>Error codes</h2><table><tr><th>Code</th>"
            + (f"<th>{_e(base)}</th>" if turns.get("baseline") else "")
        )
        out.append(f"<th>{_e(cand)}</th></tr>")
        for code in CODES:
            row = f"<tr><td>{_e(code)}</td>"
            if turns.get("baseline"):
                row += f'<td class="num">{turns["baseline"]["codes"].get(code, 0)}</td>'
            out.append(row + f'<td class="num">{turns["candidate"]["codes"].get(code, 0)}</td></tr>')
        out.append("</table>")
        out.append("<h2>Per tool (reference call)</h2><table id='per-tool'><tr><th>Tool</th><th>Cases</th>")
        if turns.get("baseline"):
            out.append(f"<th>{_e(base)} ok</th>")
        out.append(f"<th>{_e(cand)} ok</th>" + ("<th>Δ</th>" if turns.get("comparison") else "") + "</tr>")
        compared = (turns.get("comparison") or {}).get("per_tool", {})
        for tool, row in turns["candidate"]["per_tool"].items():
            cells = f"<tr><td>{_e(tool)}</td><td class='num'>{row['n']}</td>"
            if turns.get("baseline"):
                b = turns["baseline"]["per_tool"].get(tool, {"ok": 0, "n": 0})
                cells += f"<td class='num'>{b['ok']} ({fmt(b['ok'] / b['n'] if b['n'] else None, True)})</td>"
            cells += (
                f"<td class='num'>{row['ok']} ({fmt(row['ok'] / row['n'] if row['n'] else None, True)})</td>"
            )
            if turns.get("comparison"):
                cells += _delta_cell(compared.get(tool, {}).get("delta"), True)
            out.append(cells + "</tr>")
        out.append("</table>")

    agent = report.get("agent")
    if agent:
        out.append(f"<h2>Agent episodes ({_e(agent.get('suite'))}, held-out tasks)</h2>")
        fields = ["task_id", "success", "tool_calls", "invalid_calls", "retries", "steps", "wall_s", "error"]
        out.append("<table><tr><th>side</th>" + "".join(f"<th>{_e(f)}</th>" for f in fields) + "</tr>")
        sides = ([(base, agent["baseline"])] if agent.get("baseline") else []) + [(cand, agent["candidate"])]
        for label, side in sides:
            for episode in side["episodes"]:
                cells = "".join(
                    f"<td>{_e(fmt(episode.get(f)) if f != 'success' else ('✔' if episode.get(f) else '✘'))}</td>"
                    for f in fields
                )
                out.append(f"<tr><td>{_e(label)}</td>{cells}</tr>")
        out.append("</table>")

    if turns:
        out.append("<h2>Cases</h2>")
        out.append(_case_rows(report))
    out.append("</body></html>")
    return "\n".join(out)


def write_reports(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{report['name']}.json"
    html_path = out_dir / f"{report['name']}.html"
    json_path.write_text(
        json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
    )
    html_path.write_text(render_html(report), encoding="utf-8")
    return json_path, html_path


# ---------------------------------------------------------------------------------------------- console


def print_summary(report: dict, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    names = report.get("labels", {})
    cand, base = names.get("candidate", "adapter"), names.get("baseline", "base")
    rows = headline_rows(report)
    has_base = any(row["base"] is not None for row in rows)
    table = Table(title=f"Flywheel evaluation: {report.get('name')}")
    table.add_column("level")
    table.add_column("metric")
    if has_base:
        table.add_column(base, justify="right")
    table.add_column(cand, justify="right")
    if has_base:
        table.add_column("Δ", justify="right")
        table.add_column("95% CI of Δ", justify="right")
        table.add_column("McNemar p", justify="right")
    for row in rows:
        cells = [row["level"], row["metric"]]
        if has_base:
            cells.append(fmt(row["base"], row["percent"]))
        cells.append(fmt(row["adapter"], row["percent"]))
        if has_base:
            delta = fmt_delta(row["delta"], row["percent"])
            style = {"better": "green", "worse": "red", "": ""}[delta_quality(row["key"], row["delta"])]
            cells.append(f"[{style}]{delta}[/]" if style else delta)
            ci = row["ci"]
            cells.append(f"[{ci[0] * 100:+.1f}, {ci[1] * 100:+.1f}]" if ci else "—")
            cells.append(fmt_p(row["p"]))
        table.add_row(*cells)
    console.print(table)
    turns = report.get("turns")
    if turns:
        console.print(HEADLINE_NOTE)
    for role, facts in identity_lines(report):
        console.print(f"{role}: {facts}")
    if turns:
        codes = turns["candidate"]["codes"]
        console.print(
            f"{cand} error codes: " + ", ".join(f"{code} {n}" for code, n in codes.items() if n) or "none"
        )
    for flag in report.get("regressions", []):
        console.print(f"[red]regression:[/] {flag['message']}")
    gate = report.get("gate")
    if gate:
        console.print(
            ("[green]gate passed:[/] " if gate["passed"] else "[red]gate failed:[/] ") + gate["summary"]
        )
