"""Whole-session vs per-turn training: tokens processed per supervised token and train time per epoch.

    uv run python bench/session_training.py                  # Punie-like sessions + the demo's data
    uv run python bench/session_training.py --sessions 6 --no-demo --no-write

Two data sets, each trained both ways in this run with `train.run` on the same session samples
(`core.samples`, `"supervise": "all_assistant_turns"`): `sessions = "per-turn"` trains each assistant turn as
its own sample (what curate's `--per-turn` writes and `mlx_lm lora` trains: the history before a turn is
repeated in every later turn's sample), `sessions = "whole"` trains each trajectory once with every turn
supervised.

- Punie-like sessions, generated here: an agent whose every request carries a ~20,000-character system prompt
  (Python stubs of the functions its `execute_code` tool may call) and 8 tools (`strict`, `anyOf` parameters),
  3–10 tool calls per session, then a final answer. Rendered with the tiny test model's chat template and
  tokenizer (`models.tiny`): its tool listing is one short line per tool, so the system prompt dominates.
- The demo's data: `python -m flywheel --quick`'s collect and curate stages (the scripted teacher on the demo
  suite's train tasks, through the real proxy, curated with the tiny base student), rendered with that
  student (`models.tinybase`). Curate writes per-turn samples here (`sessions = false`); a session is each
  sample that no other extends (its last turn), with every assistant turn in it supervised.

Tokens processed = batch rows × padded width summed over one epoch's batches (what the model computes);
sequence tokens = the same without padding. Train time per epoch = the step times mlx-lm's trainer reports
(`metrics.jsonl`, one report per step) over the second epoch (the first includes compiling each shape).
Both modes use the same LoRA setup, batch size and loss selection (`train.loss.choose`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import core  # noqa: E402, F401  (binds the fast BLAS before anything imports mlx)
from bench._report import publish  # noqa: E402
from bench.punie_sessions import PUNIE_LIKE_TOOLS, punie_like_sessions, punie_like_system_prompt  # noqa: E402

# ------------------------------------------------------------------------------------------ demo sessions


def demo_data(work: Path, console) -> tuple[list[dict], Path, dict]:
    """The quick demo's collect and curate stages (flywheel.config's quick settings) → train.jsonl's samples."""
    import curate
    from agent.tasks import load_suite
    from core.samples import read_samples
    from flywheel.collect import collect
    from flywheel.config import LoopConfig
    from models.tinybase import cached_base

    config = LoopConfig(quick=True).effective()
    student = cached_base()
    traces = work / "traces"
    traces.mkdir(parents=True)
    collection = collect(config, load_suite(config.suite), traces, console)
    # per-turn lines (sessions = false), grouped back into sessions here the same way for both modes
    settings = curate.load_config(seed=config.seed, model=str(student), sessions=False)
    report = curate.run([traces], work / "data", settings)
    if reason := report.failure_reason():
        raise SystemExit(f"curate: {reason}")
    samples = [s.data for s in read_samples(work / "data" / "train.jsonl")]
    return samples, student, collection


def sessions_from_turns(samples: list[dict]) -> list[dict]:
    """Curate's per-turn samples grouped back into trajectories: every sample that no other sample extends
    (same tools, its messages a prefix of the other's) becomes a session sample of all its assistant turns."""
    from core.samples import session_sample

    def key(messages: list[dict], tools) -> str:
        return json.dumps([messages, tools], sort_keys=True)

    extended = set()
    for sample in samples:
        messages = sample["messages"]
        for i, message in enumerate(messages[:-1]):
            if message["role"] == "assistant":
                extended.add(key(messages[: i + 1], sample.get("tools")))
    return [
        session_sample(s["messages"], s.get("tools"))
        for s in samples
        if key(s["messages"], s.get("tools")) not in extended
    ]


# ------------------------------------------------------------------------------------------- measurement


def token_counts(tokenizer, sessions: list[dict], whole: bool, batch_size: int, max_seq_length: int) -> dict:
    """What one epoch computes, from the tokenized items and the batches `python -m train` forms."""
    from core.samples import Sample
    from train import preflight as pf
    from train.batches import TokenizedDataset, collate, epoch_batches

    samples = [Sample(f"session:{i + 1}", data) for i, data in enumerate(sessions)]
    items, report = pf.tokenize_split(
        tokenizer, samples, mask_prompt=True, max_seq_length=max_seq_length, whole_sessions=whole
    )
    dataset = TokenizedDataset(items)
    batches = epoch_batches(dataset, batch_size)
    processed = supervised = sequence = 0
    for indices in batches:
        processed += int(collate(dataset, indices, max_seq_length)[0].size)
        supervised += sum(items[i].supervised for i in indices)
        sequence += sum(min(len(items[i].tokens), max_seq_length) for i in indices)
    return {
        "sequences": len(items),
        "batches": len(batches),
        "supervised": supervised,
        "sequence_tokens": sequence,
        "processed": processed,
        "sequence_per_supervised": sequence / supervised,
        "processed_per_supervised": processed / supervised,
        "whole": report.whole,
        "fallbacks": dict(report.fallbacks),
    }


def train_epochs(
    model: Path, sessions: list[dict], mode: str, work: Path, settings: dict, epochs: int
) -> dict:
    """`train.run` for `epochs` epochs on these sessions (one report per step); the last epoch's step times."""
    from rich.console import Console

    import train

    data = work / f"data-{mode}"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))
    batches = settings["batches"][mode]
    iters = epochs * batches
    config = train.TrainConfig(
        model=str(model),
        data=str(data),
        adapter=str(work / f"adapter-{mode}"),
        sessions=mode,
        iters=iters,
        steps_per_report=1,
        steps_per_eval=iters,
        save_every=iters,
        timing_steps=0,
        **{k: v for k, v in settings.items() if k != "batches"},
    )
    started = time.perf_counter()
    adapter = train.run(config, console=Console(quiet=True))
    wall = time.perf_counter() - started
    metrics = [json.loads(line) for line in (adapter / "metrics.jsonl").read_text().splitlines()]
    steps = [1 / m["iterations_per_second"] for m in metrics if m["kind"] == "train"]
    manifest = json.loads((adapter / "manifest.json").read_text())
    return {
        "epoch_s": sum(steps[-batches:]),
        "steps": len(steps),
        "run_wall_s": wall,
        "final_loss": manifest["final"]["train_loss"],
        "loss": manifest["loss"],
        "sessions": manifest["preflight"]["lengths"]["train"]["sessions"],
    }


def measure(
    name: str, model: Path, sessions: list[dict], timed: list[dict], settings: dict, epochs: int, work
):
    """Tokens for `sessions`; tokens and train time per epoch, both modes, for `timed` (a subset or the same)."""
    from core.toolcalls import load_tokenizer

    tokenizer = load_tokenizer(model)
    size, max_len = settings["batch_size"], settings["max_seq_length"]
    result = {"sessions": len(sessions), "timed_sessions": len(timed), "modes": {}}
    for mode, whole in (("per-turn", False), ("whole", True)):
        counts = token_counts(tokenizer, sessions, whole, size, max_len)
        timed_counts = counts if timed is sessions else token_counts(tokenizer, timed, whole, size, max_len)
        result["modes"][mode] = {"all": counts, "timed": timed_counts}
    settings = {**settings, "batches": {m: r["timed"]["batches"] for m, r in result["modes"].items()}}
    for mode in ("per-turn", "whole"):
        print(f"{name}: training {mode} ({settings['batches'][mode]} batches/epoch × {epochs})", flush=True)
        result["modes"][mode]["train"] = train_epochs(model, timed, mode, work / name, settings, epochs)
        print(f"  {result['modes'][mode]['train']['epoch_s']:.1f} s per epoch", flush=True)
    return result


def table(name: str, result: dict) -> str:
    per, whole = result["modes"]["per-turn"], result["modes"]["whole"]
    rows = [
        "| mode | sequences | supervised tokens | sequence tokens / supervised | processed (padded) / supervised "
        "| timed: sequences | timed: processed / supervised | train s / epoch | train ms / supervised token |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, r in (("per-turn", per), ("whole session", whole)):
        a, t, tr = r["all"], r["timed"], r["train"]
        rows.append(
            f"| {mode} | {a['sequences']:,} | {a['supervised']:,} | {a['sequence_per_supervised']:.1f} "
            f"| {a['processed_per_supervised']:.1f} | {t['sequences']} | {t['processed_per_supervised']:.1f} "
            f"| {tr['epoch_s']:.1f} | {1000 * tr['epoch_s'] / t['supervised']:.2f} |"
        )
    ratio = per["all"]["processed_per_supervised"] / whole["all"]["processed_per_supervised"]

    def per_token(r: dict) -> float:
        return r["train"]["epoch_s"] / r["timed"]["supervised"]

    fallbacks = whole["all"]["fallbacks"] or "none"
    return (
        "\n".join(rows)
        + f"\n\n**{name}: {ratio:.1f}× fewer tokens processed per supervised token** whole-session vs per-turn "
        f"({per['all']['processed_per_supervised']:.1f} → {whole['all']['processed_per_supervised']:.1f}, "
        f"{result['sessions']} sessions); **{per_token(per) / per_token(whole):.1f}× less train time per "
        f"supervised token** ({per['train']['epoch_s']:.1f} s → {whole['train']['epoch_s']:.1f} s per epoch on "
        f"{result['timed_sessions']} sessions). Sessions that fell back to per-turn samples: {fallbacks}. Loss "
        f"(whole): {whole['train']['loss'].removeprefix('loss: ')}."
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sessions", type=int, default=40, help="Punie-like sessions whose tokens are counted"
    )
    parser.add_argument("--timed-sessions", type=int, default=2, help="of those, trained both ways and timed")
    parser.add_argument("--punie-epochs", type=int, default=1, help="timed epochs (the last is reported)")
    parser.add_argument("--demo-epochs", type=int, default=2, help="the first compiles every batch shape")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo's data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = parser.parse_args(argv)

    from rich.console import Console

    from models.tiny import cached_model

    console = Console(stderr=True)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix="session-bench-") as scratch:
        work = Path(scratch)
        punie = punie_like_sessions(args.sessions, args.seed)
        # LoRA on the last of the tiny model's two blocks: the frozen one runs once on the shared system
        # prompt (train.loss's frozen prefix), in both modes.
        punie_settings = dict(
            num_layers=1, lora_rank=8, batch_size=1, learning_rate=1e-4, max_seq_length=16384, seed=args.seed
        )
        results["punie"] = measure(
            "punie",
            cached_model("random"),
            punie,
            punie[: args.timed_sessions],
            punie_settings,
            args.punie_epochs,
            work,
        )
        if not args.no_demo:
            from flywheel.config import STUDENT_RECIPE

            samples, student, collection = demo_data(work / "demo-data", console)
            demo = sessions_from_turns(samples)
            demo_settings = {k: v for k, v in STUDENT_RECIPE.items() if k != "iters"} | {"seed": args.seed}
            results["demo"] = measure("demo", student, demo, demo, demo_settings, args.demo_epochs, work)
            results["demo"]["curated_samples"] = len(samples)
            results["demo"]["episodes"] = collection["episodes"]
    prompt = punie_like_system_prompt()
    punie_turns = [sum(1 for m in s["messages"] if m["role"] == "assistant") for s in punie]
    parts = [
        f"Punie-like sessions (generated, seed {args.seed}): a {len(prompt):,}-character system prompt, "
        f"{len(PUNIE_LIKE_TOOLS)} tools (`strict`, `anyOf` parameters), {min(punie_turns) - 1}–"
        f"{max(punie_turns) - 1} tool calls and a final answer per session (mean "
        f"{statistics.mean(punie_turns):.1f} assistant turns); tiny random model (`models.tiny`, its tokenizer "
        f"and chat template), LoRA rank 8 on the last block (the first frozen: the shared system prompt runs "
        f"through it once), batch 1, {args.punie_epochs} timed epoch(s) on the first {args.timed_sessions} sessions.",
        "",
        table("Punie-like", results["punie"]),
    ]
    if "demo" in results:
        demo_result = results["demo"]
        parts += [
            "",
            f"The demo's data (`python -m flywheel --quick`'s collect and curate: {demo_result['episodes']} episodes, "
            f"{demo_result['curated_samples']} curated train samples → {demo_result['sessions']} sessions); the "
            f"demo's student (`models.tinybase`) and training settings (LoRA rank 32 on every block, batch 8), "
            f"{args.demo_epochs} epochs, the last timed.",
            "",
            table("Demo", demo_result),
        ]
    parts += [
        "",
        "Tokens processed = rows × padded width of every batch in an epoch; supervised = the assistant turns' "
        "tokens in those batches (the same turns both ways, except that an epoch leaves out the last "
        "`len % batch_size` samples, the longest, as mlx-lm's batching does; hence time per supervised token). "
        "Both modes train the same session file; per-turn is `--sessions "
        "per-turn`. The loss is the same function of the weights either way when a batch holds the same turns "
        "(sum of token losses / supervised tokens; tests/test_train_loss.py); per step, a whole-session batch "
        "holds more turns, so the two runs take different steps per epoch.",
        f"Load average {load_start:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
        f"{time.perf_counter() - started:.0f} s in all.",
    ]
    title = "Whole-session vs per-turn training (tokens and time per epoch)"
    publish("session_training", title, "\n".join(parts), not args.no_write)
    return results


if __name__ == "__main__":
    main()
