"""Issue #17: does an adapter keep general function calling? Base vs adapters on public BFCL cases, judged by
BFCL's own AST checker and by our scorer on the same outputs.

    uv run python -m models fetch qwen2.5-coder-0.5b && uv run python -m models fetch bfcl-eval   # once
    uv run python bench/general_check.py --adapter before=/tmp/qwen/adapter-x --adapter after=/tmp/qwen/adapter-y \
        --own before=/tmp/qwen/summary.json --own after=/tmp/qwen-after/summary.json

Each side (the base model, then base + each adapter) answers the cases of --spec in-process (mlx-lm's batched
generation, greedy, the model's chat template and tool parser: `evaluate.turnlevel.side_results`, what
`python -m evaluate --general` runs). Per category: exact calls by BFCL's checker and by ours, the base's *text*
calls (bare JSON `{"name", "arguments"}` in its answer, which the server never returns as a call, judged by
BFCL's checker as if they were calls: what the base knows), the agreement of the two checkers, over-calling
(`core.turns`' over_call_rate) and where each adapter fails. --own adds each adapter's own held-out turns and
agent tasks from its bench/real_model.py run, paired case by case with the first. Offline: the cases and the
checker come from the cached, hash-checked wheel. Writes WORKDIR/general-check.json and the `general_check`
section of docs/BENCHMARKS.md (unless --no-report).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402,F401  (binds the fast BLAS before mlx loads)

MODEL_NAME = "qwen2.5-coder-0.5b"
ISSUE_SPEC = "simple_python:100,multiple:50,irrelevance:50"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/general_check.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, help=f"mlx-lm model directory (default: the cached {MODEL_NAME})"
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="an adapter to compare (repeatable)",
    )
    parser.add_argument("--spec", default=ISSUE_SPEC, help="BFCL categories (default: %(default)s)")
    parser.add_argument(
        "--max-tokens", type=int, default=256, help="as python -m evaluate (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/flywheel-general-check"))
    parser.add_argument("--reuse", action="store_true", help="reuse a side's answers from an earlier run")
    parser.add_argument("--no-report", action="store_true", help="don't write docs/BENCHMARKS.md")
    parser.add_argument("--title", default="", help="a note for the report (what the adapters are)")
    parser.add_argument(
        "--own",
        action="append",
        default=[],
        metavar="NAME=SUMMARY",
        help="a bench/real_model.py summary.json of the adapter NAME: its own turns and agent tasks, paired "
        "with the first --own's (repeatable)",
    )
    return parser


# ---------------------------------------------------------------------------------------------- own work


OWN_LABELS = {
    "test split": "test-split turns with the exact call",
    "held-out tasks": "held-out tasks' turns with the exact call",
    "agent tasks": "agent tasks solved",
}


def own_outcomes(summary_path: Path) -> dict[str, dict[str, bool]]:
    """Per turn set, and for the agent: case → success of the adapter in a bench/real_model.py run. A turn is
    keyed by its data folder, file and line (`data-KEY/test.jsonl:12`, KEY the fingerprint of the data's
    settings), so two runs on the same data pair case by case whatever their workdirs."""
    try:
        summary = json.loads(summary_path.read_text())
        reports = {name: json.loads(Path(paths[0]).read_text()) for name, paths in summary["reports"].items()}
    except (OSError, ValueError, KeyError, IndexError) as error:
        raise SystemExit(
            f"error: --own {summary_path}: not a bench/real_model.py summary.json ({error})"
        ) from None
    outcomes = {
        name: {_turn_key(c["where"]): c["code"] == "ok" for c in report["turns"]["candidate"]["cases"]}
        for name, report in reports.items()
    }
    agent = reports.get("test split", {}).get("agent")
    if agent:
        outcomes["agent tasks"] = {e["task_id"]: bool(e["success"]) for e in agent["candidate"]["episodes"]}
    return outcomes


def _turn_key(where: str) -> str:
    file, _, line = where.rpartition(":")
    return f"{Path(file).parent.name}/{Path(file).name}:{line}"


def own_comparison(own: dict[str, Path]) -> dict:
    """Each adapter's own held-out turns and agent tasks, paired case by case with the first one's."""
    from evaluate.stats import paired_comparison

    outcomes = {name: own_outcomes(path) for name, path in own.items()}
    first = next(iter(outcomes))
    table = {}
    for name, sets in outcomes.items():
        table[name] = {}
        for set_name, cases in sets.items():
            reference = outcomes[first].get(set_name, {})
            shared = [case for case in reference if case in cases]
            stat = paired_comparison([reference[c] for c in shared], [cases[c] for c in shared])
            table[name][set_name] = {"n": len(shared), "ok": sum(cases[c] for c in shared), "vs_first": stat}
    return table


# ---------------------------------------------------------------------------------------------- text calls


def text_calls(content: str) -> list[dict]:
    """Calls a model wrote as bare JSON in its answer (in code fences or not): each top-level JSON object with a
    "name" and an object of "arguments" (or "parameters"), or a list of them."""
    decoder, calls, at = json.JSONDecoder(), [], 0
    while (
        start := min((i for i in (content.find("{", at), content.find("[", at)) if i >= 0), default=-1)
    ) >= 0:
        try:
            value, end = decoder.raw_decode(content, start)
        except json.JSONDecodeError:
            at = start + 1
            continue
        for item in value if isinstance(value, list) else [value]:
            arguments = item.get("arguments", item.get("parameters")) if isinstance(item, dict) else None
            if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(arguments, dict):
                calls.append({"name": item["name"], "arguments": arguments})
        at = end
    return calls


# ---------------------------------------------------------------------------------------------- one side


def answers(model: Path, adapter: Path | None, samples: list[dict], args) -> dict:
    """TurnResults.to_dict() of one side, generated now (as `python -m evaluate --general` generates it) or
    reused from the workdir."""
    from rich.console import Console

    from core.digest import sha256_file
    from evaluate.config import EvalConfig, Side
    from evaluate.turnlevel import progress_bar, side_results

    key = {"model": str(model), "adapter": str(adapter), "spec": args.spec, "max_tokens": args.max_tokens}
    if adapter is not None:
        key["adapter_sha256"] = sha256_file(adapter / "adapters.safetensors")
    name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = args.workdir / f"answers-{name}.json"
    if args.reuse and path.is_file():
        return json.loads(path.read_text())
    # BFCL's answers list one spelling per meaning and compare strings normalised: so does the general check
    config = EvalConfig(batch_size=args.batch_size, max_tokens=args.max_tokens, normalize_strings=True)
    label = adapter.name if adapter else "base"
    with progress_bar(Console(stderr=True)) as bar:
        task = bar.add_task(f"general · {label}", total=len(samples))
        results = side_results(
            config,
            samples,
            Side("candidate", label, str(model), adapter, None),
            {},  # in-process: nothing served to verify
            lambda done, total: bar.update(task, completed=done),
        )
    data = {**results.to_dict(), "key": key}
    args.workdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) + "\n")
    return data


def failure_kind(sample: dict, case: dict, bfcl_error: str) -> str | None:
    """Why a call case failed, in the issue's terms (None when it passed BFCL's checker)."""
    if not bfcl_error:
        return None
    if case["unparsed"]:
        return "malformed call block" + (" (cut at max_tokens)" if case["finish_reason"] == "length" else "")
    if not case["tool_calls"]:
        return "no call (cut at max_tokens)" if case["finish_reason"] == "length" else "no call"
    declared = {t["function"]["name"] for t in sample["tools"]}
    if any(c["name"] not in declared for c in case["tool_calls"]):
        return "invented tool name"
    if bfcl_error.startswith("type_error"):
        quoted = (
            any(
                isinstance(v, str) and _is_number_or_bool(v)
                for c in case["tool_calls"]
                for v in c["arguments"].values()
            )
            if all(isinstance(c["arguments"], dict) for c in case["tool_calls"])
            else False
        )
        return "number or boolean written as a string" if quoted else "other type error"
    return bfcl_error.split(":")[-1].replace("_", " ")


def _is_number_or_bool(text: str) -> bool:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(value, int | float | bool)


def side_summary(samples: list[dict], data: dict, checker) -> dict:
    """Per category: ours, BFCL's, text calls by BFCL's checker, agreement, failure kinds."""
    from evaluate import bfcl

    table: dict[str, dict] = {}
    differ: Counter = Counter()
    for sample, case in zip(samples, data["cases"], strict=True):
        row = table.setdefault(
            sample["bfcl"]["category"],
            {"n": 0, "ours": 0, "bfcl": 0, "text_bfcl": 0, "agree": 0, "calls": 0, "malformed": 0,
             "answered": 0, "failures": Counter()},
        )  # fmt: skip
        ok_bfcl, error = bfcl.checker_verdict(checker, sample, case["tool_calls"])
        ours = case["code"] == "ok"
        structured = bool(case["tool_calls"])
        as_text = case["tool_calls"] or text_calls(case["content"])
        row["n"] += 1
        row["ours"] += ours
        row["bfcl"] += ok_bfcl
        row["text_bfcl"] += bfcl.checker_verdict(checker, sample, as_text)[0]
        row["agree"] += ours == ok_bfcl
        row["calls"] += structured
        row["malformed"] += bool(case["unparsed"])
        row["answered"] += not structured and not case["unparsed"]
        if ours != ok_bfcl:
            differ[(case["code"], error or "valid")] += 1
        if (kind := failure_kind(sample, case, error)) and sample["bfcl"][
            "category"
        ] not in bfcl.NO_CALL_CATEGORIES:
            row["failures"][kind] += 1
    for row in table.values():
        row["failures"] = dict(row["failures"].most_common())
    return {
        "categories": table,
        "rates": data["rates"],
        "codes": {k: v for k, v in data["codes"].items() if v},
        "differ": {f"{ours} / BFCL {theirs}": n for (ours, theirs), n in differ.most_common()},
        "wall_s": data["wall_s"],
    }


# ---------------------------------------------------------------------------------------------- report


def markdown(summary: dict) -> str:
    sides, categories = summary["sides"], list(summary["sides"]["base"]["categories"])
    names = [name for name in sides if name != "base"]
    head = "| category | base (BFCL checker) | base (ours) | base text calls (BFCL checker) |"
    head += "".join(f" {n} (BFCL checker) | {n} (ours) |" for n in names)
    lines = [
        f"Command: `{summary['command']}`. {summary['title']}".strip(),
        "",
        f"Model {summary['model']}; cases: the first N of each BFCL category ({summary['spec']}) from "
        f"`{summary['dataset']}`; greedy, max_tokens {summary['max_tokens']}, in-process (`python -m evaluate "
        "--general`'s path). *Text calls*: the base's bare-JSON answers judged as if they were calls (the server "
        "returns them as text).",
        "",
        head,
        "|---|" + "---:|" * (3 + 2 * len(names)),
    ]
    for category in categories:
        base = sides["base"]["categories"][category]
        cells = [
            f"{base['bfcl']}/{base['n']}",
            f"{base['ours']}/{base['n']}",
            f"{base['text_bfcl']}/{base['n']}",
        ]
        for name in names:
            row = sides[name]["categories"][category]
            cells += [f"{row['bfcl']}/{row['n']}", f"{row['ours']}/{row['n']}"]
        lines.append(f"| {category} | " + " | ".join(cells) + " |")
    lines.append("")
    for name in ["base", *names]:
        side = sides[name]
        agree = sum(r["agree"] for r in side["categories"].values())
        total = sum(r["n"] for r in side["categories"].values())
        rates = side["rates"]
        parts = [
            f"**{name}**: exact calls {fmt(rates['exact_call_accuracy'])}, over-calling {fmt(rates['over_call_rate'])}"
            f" (no-call cases with a call); checkers agree on {agree}/{total}"
        ]
        if side["differ"]:
            parts.append("differ: " + ", ".join(f"{k} {v}" for k, v in side["differ"].items()))
        for category, row in side["categories"].items():
            if category in summary["no_call_categories"]:
                parts.append(
                    f"{category}: {row['calls']} structured calls, {row['malformed']} malformed, "
                    f"{row['answered']} answers without a call"
                )
            elif row["failures"] and name != "base":
                parts.append(
                    f"{category} failures: " + ", ".join(f"{k} {v}" for k, v in row["failures"].items())
                )
        lines.append("- " + "; ".join(parts) + f"; {side['wall_s']:.0f} s.")
    if summary.get("own"):
        names = list(summary["own"])
        lines += [
            "",
            f"The user's own held-out work (`bench/real_model.py` runs: {', '.join(f'{n} `{p}`' for n, p in summary['own_files'].items())}), "
            f"paired case by case with {names[0]}:",
            "",
            "| held-out | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for set_name in summary["own"][names[0]]:
            cells = []
            for name in names:
                row = summary["own"][name].get(set_name)
                if row is None:
                    cells.append("–")
                    continue
                stat = row["vs_first"]
                pair = "" if name == names[0] else f" (McNemar p {stat['mcnemar_p']:.2g} vs {names[0]})"
                cells.append(f"{row['ok']}/{row['n']}{pair}")
            lines.append(f"| {OWN_LABELS[set_name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt(value) -> str:
    return "–" if value is None else f"{value:.0%}"


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from evaluate import bfcl
    from models.fetch import cached_model_dir

    model = args.model or cached_model_dir(MODEL_NAME)
    if model is None:
        raise SystemExit(f"error: run `uv run python -m models fetch {MODEL_NAME}` first")
    adapters = {}
    for item in args.adapter:
        name, _, directory = item.partition("=")
        if not directory or not (Path(directory) / "adapters.safetensors").is_file():
            raise SystemExit(f"error: --adapter {item}: expected NAME=DIR with DIR/adapters.safetensors")
        adapters[name] = Path(directory)
    own = dict(item.partition("=")[::2] for item in args.own)
    if any(not name or not path for name, path in own.items()):
        raise SystemExit("error: --own: expected NAME=SUMMARY (a bench/real_model.py summary.json)")
    own_table = (
        own_comparison({name: Path(path) for name, path in own.items()}) if own else None
    )  # fail early
    try:
        samples = bfcl.load_samples(args.spec)
    except bfcl.BFCLError as error:
        raise SystemExit(f"error: {error}") from None
    checker = bfcl.load_checker()
    started = time.monotonic()
    sides = {"base": side_summary(samples, answers(model, None, samples, args), checker)}
    for name, adapter in adapters.items():
        sides[name] = side_summary(samples, answers(model, adapter, samples, args), checker)
    summary = {
        "command": shlex.join(["uv", "run", "python", "bench/general_check.py", *argv]),
        "title": args.title,
        "model": str(model),
        "adapters": {k: str(v) for k, v in adapters.items()},
        "spec": args.spec,
        "dataset": bfcl.source_version(),
        "max_tokens": args.max_tokens,
        "no_call_categories": list(bfcl.NO_CALL_CATEGORIES),
        "sides": sides,
        "seconds": round(time.monotonic() - started, 1),
    }
    if own:
        summary["own_files"], summary["own"] = own, own_table
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "general-check.json").write_text(json.dumps(summary, indent=1) + "\n")
    from bench._report import publish

    publish(
        "general_check",
        "General function calling: base vs adapter on BFCL (issue #17)",
        markdown(summary),
        not args.no_report,
    )
    return summary


if __name__ == "__main__":
    main()
