"""The steps every round of the loop takes after its traces are collected: curate, train, evaluate.

Each takes the loop's settings and the round's paths (`RoundPaths`: where one round's artifacts go) and returns what its
stage's completion marker records."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from flywheel.config import LoopConfig


@dataclass(frozen=True)
class RoundPaths:
    number: int
    traces: Path
    data: Path
    adapter: Path
    report: Path  # the round's evaluation, JSON (the HTML beside it)


def round_paths(root: Path, name: str, number: int, several: bool) -> RoundPaths:
    if not several:
        return RoundPaths(
            1,
            root / "traces" / name,
            root / "data" / name,
            root / "adapters" / name,
            root / "reports" / f"{name}.json",
        )
    part = f"round-{number}"
    return RoundPaths(
        number,
        root / "traces" / name / part,
        root / "data" / name / part,
        root / "adapters" / name / part,
        root / "reports" / name / f"{part}.json",
    )


class LoopError(RuntimeError):
    """A stage could not produce its artifact; the message says which and why."""


def curate_round(
    traces: list[Path], data_dir: Path, config: LoopConfig, student: Path, console, **options
) -> dict:
    import curate

    settings = curate.load_config(seed=config.seed, model=str(student), sessions=config.sessions, **options)
    report = curate.run(traces, data_dir, settings)
    report.print_summary(console)
    if reason := report.failure_reason():
        raise LoopError(f"curate: {reason}")
    return {"split": report.split_counts}


def train_round(config: LoopConfig, student: Path, paths: RoundPaths, console) -> dict:
    import train

    train.run(train.TrainConfig(**config.train_settings(student, paths.data, paths.adapter)), console=console)
    return {}


TOP_UP = "top-up"  # beside a round's curated data: the lines its top-up trains on


def top_up_round(config: LoopConfig, student: Path, paths: RoundPaths, in_use: RoundPaths, console) -> dict:
    """Adapter k: the adapter in use continues (`top_up_iters`, or `top_up_passes` over the lines) on the
    round's train lines it was not trained on, its own new successes (those of templates it solved at most
    `top_up_max_solve_rate` of the time), and `top_up_replay` lines per new line that it was trained on;
    validated on the round's valid split."""
    import train

    new, replay, skipped = top_up_lines(config, paths, in_use)
    data = paths.data / TOP_UP
    data.mkdir(exist_ok=True)
    (data / "train.jsonl").write_text("\n".join(new + replay) + "\n")
    (data / "valid.jsonl").write_bytes((paths.data / "valid.jsonl").read_bytes())
    replayed = f", beside {len(replay)} it was trained on" if replay else ""
    left = f" ({skipped} of templates it solved more than {config.top_up_max_solve_rate:.0%} left out)"
    console.print(
        f"  top-up: adapter {in_use.number} continues on {len(new)} new train lines{replayed}"
        + (left if skipped else "")
    )
    settings = config.train_settings(
        student, data, paths.adapter, init_adapter=in_use.adapter, lines=len(new) + len(replay)
    )
    train.run(train.TrainConfig(**settings), console=console)
    return {
        "top_up_lines": len(new),
        "replay_lines": len(replay),
        "left_out_lines": skipped,
        "iters": settings["iters"],
        "from": str(in_use.adapter),
    }


def top_up_lines(
    config: LoopConfig, paths: RoundPaths, in_use: RoundPaths
) -> tuple[list[str], list[str], int]:
    """The round's train lines the adapter in use was not trained on, from sessions of templates it solved at
    most `top_up_max_solve_rate` of its attempts this round (a success where it nearly always succeeds teaches
    it little, and many of them pull it toward their own endings); the replayed ones it was trained on, drawn
    with the seed from this round's train split (so never a held-out line), as many as `top_up_replay` per new
    line; and how many new lines were left out."""
    seen = {trained_on(line) for line in (in_use.data / "train.jsonl").read_text().splitlines()}
    rates = session_solve_rates(paths.traces)
    new, old, skipped = [], [], 0
    for line in (paths.data / "train.jsonl").read_text().splitlines():
        if trained_on(line) in seen:
            old.append(line)
        elif (
            rates.get(json.loads(line).get("meta", {}).get("session_id"), 0.0) > config.top_up_max_solve_rate
        ):
            skipped += 1
        else:
            new.append(line)
    if not new:
        also = (
            f", {skipped} from templates it solved more than {config.top_up_max_solve_rate:.0%}"
            if skipped
            else ""
        )
        raise LoopError(
            f"round {paths.number}: {paths.data / 'train.jsonl'} holds no line adapter {in_use.number} was not "
            f"trained on{also}: nothing to top up with (more attempts, or attempt_focus, may find successes)"
        )
    count = min(len(old), round(config.top_up_replay * len(new)))
    return new, random.Random(config.seed).sample(old, count), skipped


def session_solve_rates(traces: Path) -> dict[str, float]:
    """Session id → the share of the round's attempts at its task's template that succeeded
    (`collection.json`); sessions of no attempted template (a user's own, say) are absent."""
    from core.outcomes import read_outcomes

    collection = traces / "collection.json"
    by_template = json.loads(collection.read_text()).get("by_template", {}) if collection.exists() else {}
    rates = {t: v["solved"] / v["episodes"] for t, v in by_template.items() if v.get("episodes")}
    found = {}
    for session, outcome in read_outcomes([traces]).items():
        task = outcome.get("task_id") or ""
        template = next((t for t in rates if task.startswith(f"{t}-")), None)
        if template is not None:
            found[session] = rates[template]
    return found


def trained_on(line: str) -> str:
    """What a sample line trains: all but its `meta` (where it came from, which names the traces' paths and
    so changes when a run's directory is moved or copied)."""
    sample = json.loads(line)
    sample.pop("meta", None)
    return json.dumps(sample, sort_keys=True)


def evaluate_round(
    config: LoopConfig,
    student: Path,
    paths: RoundPaths,
    test_split: Path,
    console,
    baseline_adapter: Path | None,
    baseline_report: Path | None = None,
) -> dict:
    import evaluate

    eval_config = evaluate.EvalConfig(
        adapter=paths.adapter,
        model=str(student),
        baseline_adapter=baseline_adapter,
        baseline_report=baseline_report,
        data=test_split,
        turns=test_split.exists() and test_split.stat().st_size > 0,
        tasks=config.suite,
        out_dir=paths.report.parent,
        name=paths.report.stem,
        limit=config.eval_limit,
        agent_max_steps=config.agent_max_steps,
        agent_concurrency=config.eval_concurrency,
        max_tokens=config.eval_max_tokens,
        seed=config.seed,
    )
    evaluate.run(eval_config, console=console)
    return {}
