"""The flywheel: collect traces through the proxy, curate, train, evaluate; then, with `rounds` > 1, turn again
on the student's own successes and promote a new adapter only when it is measurably better.

    from flywheel.loop import LoopConfig, run_loop
    result = run_loop(LoopConfig(quick=True))

Round 1: the teacher (the scripted demonstrator, or any OpenAI-compatible server) behind the recording proxy
solves the suite's train tasks (`flywheel.collect`); curate; train the student; evaluate base vs adapter on
the held-out tasks and the held-out test split. Rounds ≥ 2 are `flywheel.rounds`.

Each stage writes its artifacts under the run's name and a completion marker (`flywheel.stages`): a re-run with
the same settings reuses every completed stage, and a stage left incomplete is moved aside. One round:
traces/RUN/, data/RUN/, adapters/RUN/, reports/RUN.{json,html}. Several rounds: traces/RUN/round-K/ (and
data/, adapters/ alike), reports/RUN/round-K.{json,html} for each round's evaluation, and reports/RUN.{json,html}
for the run: the learning curve and every promotion decision. Runs of one round and of several with the same
settings share round 1 (`round_one`): `--rounds 3` after `--rounds 1` starts at round 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from core import config as config_lib
from flywheel.config import QUICK_EVAL_LIMIT, QUICK_ITERS, STUDENT_RECIPE, LoopConfig
from flywheel.stages import Stages, stage_done
from flywheel.steps import LoopError, RoundPaths, curate_round, evaluate_round, round_paths, train_round

__all__ = ["QUICK_EVAL_LIMIT", "QUICK_ITERS", "STUDENT_RECIPE", "LoopConfig", "LoopError", "run_loop"]


@dataclass
class LoopResult:
    run: str
    traces_dir: Path
    data_dir: Path
    adapter_dir: Path  # the adapter in use at the end (the best promoted one; round 1's with one round)
    report_json: Path
    report_html: Path
    collection: dict
    report: dict  # the last round's evaluation
    stage_seconds: dict[str, float]
    reused: list[str]
    rounds: list[dict] | None = None  # with several rounds: each round's summary and promotion decision


def first_round(config: LoopConfig, student: Path, suite, paths: RoundPaths, stages: Stages, console) -> dict:
    """Teacher → traces → data → adapter → evaluation against the base; returns the collection summary."""
    from flywheel.collect import collect

    def collect_stage() -> dict:
        paths.traces.mkdir(parents=True)
        collection = collect(config, suite, paths.traces, console)
        (paths.traces / "collection.json").write_text(json.dumps(collection, indent=2) + "\n")
        return {"recorded": collection["recorded"]}

    stages.run("collect", "2-3 collect traces (teacher → proxy → agent)", paths.traces, collect_stage)
    collection = json.loads((paths.traces / "collection.json").read_text())
    console.print(
        f"  {collection['episodes']} episodes ({collection['solved']} solved by the teacher), "
        f"{collection['agent_requests']} agent requests, {collection['recorded']} exchanges recorded"
    )
    stages.run(
        "curate",
        "4 curate",
        paths.data,
        lambda: curate_round([paths.traces], paths.data, config, student, console),
    )
    stages.run(
        "train", "5 train the student", paths.adapter, lambda: train_round(config, student, paths, console)
    )
    stages.run(
        "evaluate",
        "6 evaluate base vs adapter",
        paths.report,
        lambda: evaluate_round(config, student, paths, paths.data / "test.jsonl", console, None),
    )
    return collection


def round_one(config: LoopConfig, root: Path, student: Path, name: str, several: bool) -> RoundPaths:
    """Round 1's paths. A run of one round and a run of several with the same settings share round 1: where the
    other layout already collected it (`--rounds 1` then `--rounds 3`, or the reverse), it is reused there."""
    own = round_paths(root, name, 1, several)
    other_name = config.replace(rounds=1 if several else 2).run_name(student)
    if other_name == name:  # one `--run` name: the layouts nest, and round 1's traces would hold round 2's
        return own
    other = round_paths(root, other_name, 1, not several)
    return other if stage_done(other.traces) and not stage_done(own.traces) else own


def run_loop(config: LoopConfig, console: Console | None = None) -> LoopResult:
    from agent.tasks import load_suite
    from models.tinybase import cached_base

    console = console or Console(stderr=True)
    config = config.effective()
    root = Path(config.root)
    student = Path(config.student) if config.student else cached_base()
    name = config.run_name(student)
    several = config.rounds > 1
    suite = load_suite(config.suite)
    stages = Stages(console)
    config_lib.save(
        config, root / "reports" / f"{name}.flywheel.toml", header=f"python -m flywheel, run {name}"
    )
    console.rule(f"flywheel run [bold]{name}[/]")
    console.print(f"[bold]1 student[/] → {student}")

    first = round_one(config, root, student, name, several)
    if several:
        console.rule("round 1: the teacher")
    collection = first_round(config, student, suite, first, stages, console)
    rounds, best, last = None, first.adapter, first
    if several:
        from flywheel.rounds import run_rounds

        rounds, best, last = run_rounds(
            config,
            student,
            suite,
            [first] + [round_paths(root, name, k, True) for k in range(2, config.rounds + 1)],
            stages,
            console,
        )
    report_json = root / "reports" / f"{name}.json" if several else first.report
    return LoopResult(
        run=name,
        traces_dir=first.traces,
        data_dir=first.data,
        adapter_dir=best,
        report_json=report_json,
        report_html=report_json.with_suffix(".html"),
        collection=collection,
        report=json.loads(last.report.read_text()),
        stage_seconds=stages.seconds,
        reused=stages.reused,
        rounds=rounds,
    )
