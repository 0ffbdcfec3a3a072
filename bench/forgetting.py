"""Issue #17: which training choices make the Qwen adapter forget general function calling? A sweep.

    uv run python bench/real_model.py --workdir /tmp/qwen --no-report        # once: traces and curated data
    uv run python bench/forgetting.py --workdir /tmp/qwen --variant default --variant lr=3e-5 --variant lm_head=0

Each variant trains a LoRA adapter on the data `bench/real_model.py` curated in --workdir (its settings, with the
variant's changes: iters, lr, layers, rank, lm_head, keys, no_call), saving a checkpoint every --save-every
iterations. Every checkpoint, and the base, answer through one `mlx_lm server` each (the prompt cache serves
the prefix the user's turns share): the user's own validation turns (valid.jsonl, what checkpoint selection
may look at) and a BFCL slice disjoint from the cases bench/general_check.py reports (--slice; judged by
BFCL's checker and ours). Writes WORKDIR/forgetting.json and the `forgetting` section of docs/BENCHMARKS.md.

Variant keys: iters=N, lr=X, layers=N (LoRA on the last N blocks), rank=N, lm_head=0|1, keys=a+b (LoRA keys),
no_call=keep|drop|double (the training samples whose answer is no call: as curated, removed, or twice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402,F401  (binds the fast BLAS before mlx loads)

SLICE = "simple_python:100-140,multiple:50-60,irrelevance:50-70"
KEYS = {"iters", "lr", "layers", "rank", "lm_head", "keys", "no_call", "seed"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/forgetting.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True, help="a bench/real_model.py workdir")
    parser.add_argument(
        "--variant", action="append", default=[], help="KEY=VALUE,... or 'default' (repeatable)"
    )
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument(
        "--slice", default=SLICE, help="BFCL cases scored per checkpoint (default: %(default)s)"
    )
    parser.add_argument("--max-tokens", type=int, default=160)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--no-report", action="store_true", help="don't write docs/BENCHMARKS.md")
    return parser


def parse_variant(text: str) -> dict[str, str]:
    if text == "default":
        return {}
    pairs = dict(item.split("=", 1) for item in text.split(",") if "=" in item)
    unknown = set(pairs) - KEYS
    if unknown or not pairs:
        raise SystemExit(f"error: --variant {text}: use KEY=VALUE,... with keys {', '.join(sorted(KEYS))}")
    return pairs


def turn_samples(path: Path) -> list[dict]:
    """One sample per supervised turn of a curated file, each with its "where" (curate writes train and valid
    as whole-session samples: `core.samples.per_turn_samples` expands them)."""
    from core.samples import per_turn_samples, read_samples

    return [
        {**turn, "where": f"{sample.where}#{i}"}
        for sample in read_samples(path)
        for i, turn in enumerate(per_turn_samples(sample.data))
    ]


def no_call(sample: dict) -> bool:
    return not sample["messages"][-1].get("tool_calls")


def variant_data(data_dir: Path, no_calls: str, workdir: Path) -> Path:
    """The curated data with the no-call training turns kept, removed or doubled (valid/test unchanged); a
    variant that changes them trains per-turn samples."""
    if no_calls == "keep":
        return data_dir
    if no_calls not in ("drop", "double"):
        raise SystemExit(f"error: no_call={no_calls}: expected keep, drop or double")
    out = workdir / f"{data_dir.name}-no-call-{no_calls}"
    out.mkdir(exist_ok=True)
    turns = [{k: v for k, v in t.items() if k != "where"} for t in turn_samples(data_dir / "train.jsonl")]
    calls, answers = [t for t in turns if not no_call(t)], [t for t in turns if no_call(t)]
    kept = calls + (answers * 2 if no_calls == "double" else [])
    (out / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in kept))
    for split in ("valid", "test"):
        (out / f"{split}.jsonl").write_text((data_dir / f"{split}.jsonl").read_text())
    return out


def train_variant(name: str, changes: dict[str, str], model: Path, data_dir: Path, args) -> Path:
    """Train (or reuse) the variant's adapter with checkpoints every --save-every iterations."""
    from bench import real_model

    flags = ["--iters", changes.get("iters", "250"), "--lr", changes.get("lr", "1e-4")]
    flags += ["--num-layers", changes.get("layers", "8"), "--lora-rank", changes.get("rank", "8")]
    flags += ["--seed", changes.get("seed", "0")]
    flags += ["--no-lora-lm-head"] if changes.get("lm_head", "1") == "0" else []
    data = variant_data(data_dir, changes.get("no_call", "keep"), args.workdir)
    settings = real_model.train_settings(model, data, None, real_model.build_parser().parse_args(flags))
    if "keys" in changes:
        settings["lora_keys"] = changes["keys"].split("+")
    settings["save_every"] = settings["steps_per_report"] = args.save_every
    adapter = args.workdir / f"sweep-{real_model.fingerprint({**settings, 'adapter': None})}"
    settings["adapter"] = str(adapter)
    if (adapter / "adapters.safetensors").is_file():
        return adapter
    from rich.console import Console

    import train

    started = time.monotonic()
    train.run(train.TrainConfig(**settings), console=Console(stderr=True))
    (adapter / "sweep.json").write_text(
        json.dumps({"variant": name, "train_s": time.monotonic() - started}) + "\n"
    )
    return adapter


def score(model: Path, adapter: Path | None, own: list[dict], general: list[dict], checker, args) -> dict:
    """The user's validation turns and the BFCL slice through one server with this adapter (or none)."""
    from bench.general_check import side_summary
    from core.process import MlxServer
    from core.scoring import normalize_text
    from core.turns import evaluate_turns_server

    where = adapter.relative_to(args.workdir).as_posix().replace("/", "-") if adapter else "base"
    settings = f"{args.slice} {args.max_tokens} {len(own)}"
    key = args.workdir / f"score-{where}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}.json"
    if key.is_file():
        return json.loads(key.read_text())
    started = time.monotonic()
    with MlxServer(model, adapter_path=adapter, max_tokens=args.max_tokens, startup_timeout=900) as server:
        options = {"max_tokens": args.max_tokens, "concurrency": args.concurrency}
        mine = evaluate_turns_server(server.base_url, own, **options)
        bfcl = evaluate_turns_server(server.base_url, general, normalize=normalize_text, **options)
    summary = side_summary(general, bfcl.to_dict(), checker)
    result = {
        "own": {k: mine.rates[k] for k in ("exact_call_accuracy", "over_call_rate", "turn_success_rate")},
        "general": {
            k: {m: v[m] for m in ("n", "ours", "bfcl", "calls", "malformed", "failures")}
            for k, v in summary["categories"].items()
        },  # fmt: skip
        "general_over_call_rate": bfcl.rates["over_call_rate"],
        "seconds": round(time.monotonic() - started, 1),
    }
    key.write_text(json.dumps(result) + "\n")
    return result


def markdown(summary: dict) -> str:
    from bench.general_check import fmt

    categories = list(summary["base"]["general"])
    lines = [
        f"Command: `{summary['command']}`",
        "",
        f"Training data: `bench/real_model.py`'s curated split ({summary['train_samples']} supervised turns, of which "
        f"{summary['no_call_samples']} answer without a call). Per checkpoint, through `mlx_lm server` "
        f"(max_tokens {summary['max_tokens']}): the user's validation turns ({summary['own_n']}; exact calls, "
        f"over-calling on its no-call turns) and BFCL `{summary['slice']}` (disjoint from the reported cases; "
        "BFCL's checker; irrelevance: no structured call).",
        "",
        "| variant | iteration | own exact | own over-calling | "
        + " | ".join(f"{c} (BFCL)" for c in categories)
        + " | BFCL over-calling (ours) |",
        "|---|---:|---:|---:|" + "---:|" * (len(categories) + 1),
    ]

    def row(name: str, iteration, result: dict) -> str:
        cells = [fmt(result["own"]["exact_call_accuracy"]), fmt(result["own"]["over_call_rate"])]
        cells += [f"{g['bfcl']}/{g['n']}" for g in result["general"].values()]
        cells.append(fmt(result["general_over_call_rate"]))
        return f"| {name} | {iteration} | " + " | ".join(cells) + " |"

    lines.append(row("base", 0, summary["base"]))
    for name, variant in summary["variants"].items():
        for iteration, result in variant["checkpoints"].items():
            lines.append(row(name, iteration, result))
    lines.append("")
    for name, variant in summary["variants"].items():
        last = list(variant["checkpoints"].values())[-1]
        failures = {k: v for g in last["general"].values() for k, v in g["failures"].items()}
        lines.append(
            f"- {name}: train {variant['train_s'] / 60:.0f} min; last checkpoint's BFCL failures: "
            + (", ".join(f"{k} {v}" for k, v in sorted(failures.items(), key=lambda kv: -kv[1])) or "none")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    from bench.real_model import resolve_model
    from evaluate import bfcl
    from train.checkpoint import list_checkpoints

    model = resolve_model(None)
    found = [p.parent for p in sorted(args.workdir.glob("data-*/splits.json"))]
    if not found:
        raise SystemExit(
            f"error: {args.workdir}: no curated data; run bench/real_model.py --workdir {args.workdir}"
        )
    data_dir = found[0]
    own = turn_samples(data_dir / "valid.jsonl")
    general = bfcl.load_samples(args.slice)
    checker = bfcl.load_checker()
    train_turns = turn_samples(data_dir / "train.jsonl")
    summary = {
        "command": shlex.join(["uv", "run", "python", "bench/forgetting.py", *argv]),
        "slice": args.slice,
        "max_tokens": args.max_tokens,
        "train_samples": len(train_turns),
        "no_call_samples": sum(map(no_call, train_turns)),
        "own_n": len(own),
        "base": score(model, None, own, general, checker, args),
        "variants": {},
    }
    for name in args.variant or ["default"]:
        adapter = train_variant(name, parse_variant(name), model, data_dir, args)
        checkpoints = {c["iteration"]: c["path"] for c in list_checkpoints(adapter)}
        variant = {"adapter": str(adapter), "checkpoints": {}}
        variant["train_s"] = json.loads((adapter / "sweep.json").read_text())["train_s"]
        for iteration, path in checkpoints.items():
            variant["checkpoints"][iteration] = score(model, path, own, general, checker, args)
            print(f"{name} @ {iteration}: {json.dumps(variant['checkpoints'][iteration])}", flush=True)
        summary["variants"][name] = variant
        (args.workdir / "forgetting.json").write_text(json.dumps(summary, indent=1) + "\n")
    from bench._report import publish

    publish(
        "forgetting",
        "What makes the adapter forget: a training sweep (issue #17)",
        markdown(summary),
        not args.no_report,
    )
    return summary


if __name__ == "__main__":
    main()
