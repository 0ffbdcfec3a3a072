"""The general check, `python -m evaluate --general [CATEGORIES]`: does the adapter keep general function calling?

    report = run_general(EvalConfig(adapter=Path("adapters/x"), turns=False, agent=False), "simple_python:100")
    report["general"]["comparison"]["paired"]["exact_call_accuracy"]    # base vs adapter, McNemar + CI

Public cases (BFCL, `evaluate.bfcl`; evaluation only, never trained on) are generated and scored exactly like
the user's own held-out turns (`evaluate.turnlevel.side_results`) for the candidate and, with a baseline, the base,
then compared case by case (`evaluate.stats`), overall and per category. Strings compare as BFCL compares them
(`core.scoring.normalize_text`): its answers list one spelling per meaning. Over-calling (`over_call_rate`) is
measured where the right answer is no call (`irrelevance`). BFCL's own AST checker judges the same outputs
too, and the report says on how many cases the two verdicts agree (where and why they differ: README).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from evaluate import bfcl
from evaluate.labels import GENERAL_HEADLINE as HEADLINE


def load(spec: str | None) -> list[dict]:
    """The cases of `spec` as samples; EvalError when the data is missing or the spec is bad."""
    from evaluate.config import EvalError

    try:
        return bfcl.load_samples(spec)
    except bfcl.BFCLError as error:
        raise EvalError(str(error)) from None


def run_general(config, spec: str | None, *, console=None) -> dict:
    """`evaluate.run(config)` plus the general check on `spec` (default `bfcl.DEFAULT_SPEC`), in one report;
    with `turns` and `agent` both off, the general check alone."""
    from rich.console import Console

    from core.config import save
    from evaluate import report as reporting
    from evaluate.config import plan_sides
    from evaluate.gate import gate
    from evaluate.run import identify, report_header, run

    samples = load(spec)  # before the long run: a missing fetch fails at once
    console = console or Console(stderr=True)
    if config.turns or config.agent:
        plan, report = plan_sides(config), run(config, console=console)
    else:  # the sides the turn level would score
        plan = plan_sides(config.model_copy(update={"turns": True}))
        report = {**report_header(config, plan), "regressions": []}
        report["identity"] = identify(config, plan)
    spec = spec or bfcl.DEFAULT_SPEC
    report["general"] = general_check(config, plan, report["identity"], samples, spec, console=console)
    report["regressions"] += general_regressions(report["general"])
    report["gate"] = gate(config, report.get("turns"), report.get("agent"), report["general"])
    json_path, html_path = reporting.write_reports(report, config.out_dir)
    toml_path = save(config, config.out_dir / f"{plan.name}.toml", header=f"python -m evaluate: {plan.name}")
    report["paths"] = {"json": str(json_path), "html": str(html_path), "config": str(toml_path)}
    return report


def general_check(config, plan, identities: dict, samples: list[dict], spec: str, *, console) -> dict:
    """Generate and score `samples` for every side of `plan` (each side's verified `identities`, as
    `evaluate.run.identify` gives them); per-category rates, BFCL's own verdicts."""
    from evaluate import stats
    from evaluate.turnlevel import progress_bar, side_results

    bfcl_config = config.model_copy(update={"normalize_strings": True})  # BFCL's answers assume it
    results = {}
    for side in plan.sides:
        with progress_bar(console) as bar:
            task = bar.add_task(f"general · {side.label}", total=len(samples))
            results[side.role] = side_results(
                bfcl_config,
                samples,
                side,
                identities[side.role],
                lambda done, total, b=bar, t=task: b.update(t, completed=done),
            )
    checker = bfcl.load_checker()
    general: dict[str, Any] = {
        "source": {"dataset": bfcl.source_version(), "license": "Apache-2.0", "spec": spec},
        "categories": dict(Counter(s["bfcl"]["category"] for s in samples)),
        "baseline": results["baseline"].to_dict() if "baseline" in results else None,
        "candidate": results["candidate"].to_dict(),
        "comparison": None,
        "per_category": per_category(samples, results, seed=config.seed),
        "bfcl_checker": {side: checker_counts(checker, samples, r) for side, r in results.items()},
    }
    if "baseline" in results:
        general["comparison"] = stats.compare_turns(
            general["baseline"], general["candidate"], seed=config.seed
        )
    return general


def per_category(samples: list[dict], results: dict, *, seed: int = 0) -> dict[str, dict]:
    """Per category: each side's rates and codes, and the paired comparison of each rate."""
    from core.turns import TurnResults, compute_rates
    from evaluate import stats

    table = {}
    for category in dict.fromkeys(s["bfcl"]["category"] for s in samples):
        picked = [i for i, s in enumerate(samples) if s["bfcl"]["category"] == category]
        subsets = {}
        for side, side_results in results.items():
            cases = [side_results.cases[i] for i in picked]
            subsets[side] = TurnResults(cases, compute_rates(cases)).to_dict()
        row: dict[str, Any] = {
            "n": len(picked),
            "no_call": category in bfcl.NO_CALL_CATEGORIES,
            **{
                side: {"rates": s["rates"], "codes": {k: v for k, v in s["codes"].items() if v}}
                for side, s in subsets.items()
            },
            "paired": None,
        }
        if "baseline" in subsets:
            row["paired"] = stats.compare_turns(subsets["baseline"], subsets["candidate"], seed=seed)[
                "paired"
            ]
        table[category] = row
    return table


def checker_counts(checker, samples: list[dict], results) -> dict[str, Any]:
    """BFCL's own verdicts on the same outputs: passes per category, and agreement with ours."""
    passed: Counter = Counter()
    agree, differ = 0, []
    for sample, case in zip(samples, results.cases, strict=True):
        calls = [{"name": c.name, "arguments": c.arguments} for c in case.turn.tool_calls]
        ok, error_type = bfcl.checker_verdict(checker, sample, calls)
        passed[sample["bfcl"]["category"]] += ok
        if ok == case.success:
            agree += 1
        else:
            differ.append({"where": case.where, "ours": case.verdict.code, "bfcl": error_type or "valid"})
    return {"passed": dict(passed), "agree": agree, "n": len(samples), "differ": differ}


def general_regressions(general: dict) -> list[dict]:
    """Headline rates of the general check that got worse, overall and per category."""
    from evaluate import stats

    if not general.get("comparison"):
        return []
    paired = {k: v for k, v in general["comparison"]["paired"].items() if k in dict(HEADLINE)}
    flags = stats.rate_regressions(paired, where="general: ")
    for category, row in general["per_category"].items():
        key = "over_call_rate" if row["no_call"] else "exact_call_accuracy"
        if row["paired"] and key in row["paired"]:
            flags += stats.rate_regressions({key: row["paired"][key]}, where=f"general {category}: ")
    return flags
