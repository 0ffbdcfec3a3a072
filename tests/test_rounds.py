"""`python -m flywheel --rounds N`: the student, served behind the recorder, attempts the train tasks; its
successful episodes (judged by the tasks' own checks) join the data; a new adapter replaces the one in use only
when it is measurably better (flywheel.promote). End to end on the tiny student, real components throughout."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.episodes import SERVER_ERRORS
from core.outcomes import read_outcomes
from core.trace import read_records
from flywheel.steps import RoundPaths, round_paths

ROOT = Path(__file__).resolve().parent.parent
# `--quick --rounds 2`'s evaluation settings, for evaluations that must score as the loop did
QUICK_LOOP_EVALUATION = ["--tasks", "demo", "--limit", "6", "--agent-max-steps", "6"]


def flywheel(*args: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="400")
    result = subprocess.run(
        [sys.executable, "-m", "flywheel", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@dataclass(frozen=True)
class TwoRounds:
    root: Path
    run: str  # the two-round run's name
    result: subprocess.CompletedProcess
    first: RoundPaths  # round 1: the `--quick` run's, which the two-round run shares
    second: RoundPaths


@pytest.fixture(scope="module")
def two_rounds(quick_demo) -> TwoRounds:
    """`--quick --rounds 2` where `--quick` ran already (conftest's quick_demo): round 1 is shared, round 2 runs."""
    root, quick, _, _ = quick_demo
    result = flywheel("--quick", "--rounds", "2", "--root", str(root))
    (run,) = [p.name for p in (root / "traces").iterdir() if p.name.startswith("quick-rounds-")]
    assert run == quick.replace("quick-", "quick-rounds-", 1)
    first, second = round_paths(root, quick, 1, several=False), round_paths(root, run, 2, several=True)
    return TwoRounds(root, run, result, first, second)


@pytest.mark.timeout(1500)
def test_two_quick_rounds_collect_on_policy_filter_train_gate_and_report(two_rounds):
    root, run, result = two_rounds.root, two_rounds.run, two_rounds.result
    first, second = two_rounds.first.traces, two_rounds.second.traces
    # round 1 is the `--quick` run's, shared: its four stages reused, nothing collected again under this run
    assert result.stderr.count("(reused: complete from an earlier run)") == 4
    assert not (root / "traces" / run / "round-1").exists()

    # round 2's traces are the student's own attempts, served behind the recorder: every record names the
    # policy that answered (round 1's adapter on the tiny base), every session has its task check's outcome
    records = list(read_records([second]))
    assert records
    adapter_1 = two_rounds.first.adapter.resolve()
    for record in records:
        assert Path(record["policy"]["adapter_path"]).resolve() == adapter_1
        assert len(record["policy"]["adapter_sha256"]) == 64
    outcomes = read_outcomes([second])
    collection = json.loads((second / "collection.json").read_text())
    # an attempt lost to a server error (mlx_lm server drops a connection now and then) is recorded, not labelled
    lost = set(collection["server_error_sessions"])
    assert sum(collection["server_error_kinds"].values()) == len(lost)
    assert set(collection["server_error_kinds"]) <= set(SERVER_ERRORS)
    assert len(lost) == collection["server_errors"] <= 0.1 * 48 * collection["attempts"] and not lost & set(
        outcomes
    )
    assert {r["session_id"] for r in records} == set(outcomes) | lost
    # --quick: 48 tasks; an attempt the server failed twice is not labelled (its second try is in `lost` too)
    failed_twice = len(lost) - collection["run_again"]
    assert collection["episodes"] == len(outcomes) == 48 * collection["attempts"] - failed_twice
    assert collection["solved"] == sum(o["outcome"] == "success" for o in outcomes.values())
    assert all(o["source"] == "check" for o in read_outcomes([first]).values())

    # round 2's data: the teacher's episodes and the student's successes, failed attempts left out
    report = json.loads((two_rounds.second.data / "report.json").read_text())
    by_outcome = report["by_outcome"]
    assert set(by_outcome) <= {"success", "failure"} | (
        {"(none)"} if lost else set()
    )  # (none): server errors
    assert (
        by_outcome.get("failure", {"usable": 0})["usable"]
        == by_outcome.get("(none)", {"usable": 0})["usable"]
        == 0
    )
    assert by_outcome["success"]["usable"] == by_outcome["success"]["exchanges"] > 0
    assert report["config"]["require_outcome"] == "success"

    # adapter 2 was evaluated against adapter 1 (the one in use) on round 1's held-out turns and the held-out tasks
    evaluation = json.loads(two_rounds.second.report.read_text())
    assert evaluation["labels"] == {"candidate": "adapter", "baseline": "baseline adapter"}
    assert Path(evaluation["adapter"]).resolve() == two_rounds.second.adapter.resolve()
    assert Path(evaluation["config"]["baseline_adapter"]).resolve() == adapter_1
    assert Path(evaluation["data"]).resolve() == (two_rounds.first.data / "test.jsonl").resolve()
    # adapter 1's scores are read back from round 1, where it was the candidate, not generated again
    first_evaluation = json.loads(two_rounds.first.report.read_text())
    assert evaluation["identity"]["baseline"]["scores_from"] == str(two_rounds.first.report)
    assert evaluation["turns"]["baseline"] == first_evaluation["turns"]["candidate"]
    assert evaluation["agent"]["baseline"] == first_evaluation["agent"]["candidate"]
    assert "scores read from" in result.stderr

    # the run report: the curve over base, adapter 1, adapter 2, and the decision with its statistics
    run_report = json.loads((root / "reports" / f"{run}.json").read_text())
    assert [p["label"] for p in run_report["curve"]] == ["base", "adapter 1", "adapter 2"]
    assert [r["training"]["init_adapter"] for r in run_report["rounds"]] == [None, None]  # both from the base
    decision = run_report["rounds"][1]["decision"]
    agent_check = decision["checks"][0]
    assert agent_check["n"] == 6 and "p_one_sided" in agent_check
    expected_best = two_rounds.second if decision["promoted"] else two_rounds.first
    assert Path(run_report["best"]) == expected_best.adapter
    html = (root / "reports" / f"{run}.html").read_text()
    assert "data:image/png;base64," in html and "Promotion decisions" in html
    assert "round 2: adapter 2 solved" in result.stdout
    # over-calling next to exact calls, from the evaluation's one rate, and in the gate
    answer_turns = evaluation["turns"]["candidate"]["n_abstention_cases"]
    for point in run_report["curve"]:  # the same held-out turns every round
        assert point["answer_turns"] == answer_turns and 0 <= point["over_calls"] <= answer_turns
    over_rate = evaluation["turns"]["candidate"]["rates"]["over_call_rate"]
    assert run_report["curve"][2]["over_call_rate"] == over_rate
    assert "exact calls, over-calling" in result.stdout and "over-calling on no-call turns" in html
    if answer_turns:
        over_check = next(c for c in decision["checks"] if c.get("rate") == "over_call_rate")
        assert over_check["candidate"] == over_rate and over_check["n"] == answer_turns


def test_a_rerun_reuses_every_round(two_rounds):
    root = two_rounds.root
    again = flywheel("--quick", "--rounds", "2", "--root", str(root), timeout=300)
    assert again.stderr.count("(reused: complete from an earlier run)") == 8  # 4 stages × 2 rounds


def test_one_round_and_several_share_round_one(two_rounds):
    """`--rounds 2` after `--quick` with the same settings starts at round 2 (the fixture's run: round 1's
    four stages reused); and `--rounds 1` after that is the same round 1 again: nothing collected or trained."""
    from rich.console import Console

    from flywheel.loop import LoopConfig, run_loop

    root, run, first = two_rounds.root, two_rounds.run, two_rounds.first
    one = run_loop(LoopConfig(quick=True, root=root), console=Console(file=io.StringIO()))
    assert len(one.reused) == 4 and one.run == run.replace("quick-rounds-", "quick-")
    assert (one.report_json, one.adapter_dir, one.traces_dir) == (first.report, first.adapter, first.traces)
    assert not (root / "traces" / run / "round-1").exists()


def test_the_gate_refuses_a_worse_adapter_and_keeps_the_one_in_use(two_rounds, tmp_path):
    """A deliberately worse adapter (3 iterations from the base) against adapter 1: not promoted."""
    from flywheel.promote import decide

    adapter_1, data = two_rounds.first.adapter, two_rounds.first.data
    worse = tmp_path / "worse"
    manifest = json.loads((adapter_1 / "manifest.json").read_text())
    student = manifest["base_model"]["path"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--model",
            student,
            "--data",
            str(data),
            "--adapter",
            str(worse),
            "--fine-tune-type",
            "lora",
            "--num-layers",
            "-1",
            "--lora-rank",
            "32",
            "--lora-scale",
            "2",
            "--iters",
            "3",
            "--batch-size",
            "8",
            "--learning-rate",
            "1e-3",
            "--steps-per-eval",
            "3",
            "--save-every",
            "3",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluate",
            "--adapter",
            str(worse),
            "--model",
            student,
            "--baseline-adapter",
            str(adapter_1),
            "--data",
            str(data / "test.jsonl"),
            *QUICK_LOOP_EVALUATION,
            "--out",
            str(tmp_path),
            "--name",
            "gate",
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    report = json.loads((tmp_path / "gate.json").read_text())
    decision = decide(report)
    assert not decision["promoted"]
    agent = decision["checks"][0]
    assert not agent["passed"] and agent["candidate"] <= agent["baseline"]

    # adapter 1 scored again here, with the loop's settings, reaches round 1's verdicts on every turn and task:
    # what lets later rounds read its scores back (evaluate.reuse) instead of generating them again
    first = json.loads(two_rounds.first.report.read_text())
    for level, key, verdict in (("turns", "cases", "code"), ("agent", "episodes", "success")):
        again = [case[verdict] for case in report[level]["baseline"][key]]
        assert again == [case[verdict] for case in first[level]["candidate"][key]]


def test_a_round_can_top_up_the_adapter_in_use_on_its_new_successes(two_rounds, tmp_path):
    """`--top-up-passes 1`: round 2's adapter is adapter 1 continued for one pass over the train lines adapter 1
    never saw (the student's new successes), not a new adapter from the base, with `--top-up-replay 1` as many
    lines it did see beside them; evaluated and gated as any other.
    The run is extended in a copy, named with `--run`, its round 1 moved into the run's own round-1 places
    (every file now somewhere else than its reports say): round 1 and round 2's attempts and data are reused."""
    import hashlib
    import shutil

    from flywheel.steps import trained_on

    root, run = two_rounds.root, two_rounds.run
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    first = round_paths(copy, two_rounds.first.traces.name, 1, several=False)
    moved = round_paths(copy, run, 1, several=True)
    for source, target in (
        (first.traces, moved.traces),
        (first.data, moved.data),
        (first.adapter, moved.adapter),
    ):
        shutil.move(source, target)
    for suffix in (".json", ".json.flywheel-stage.json", ".html"):
        shutil.move(
            first.report.with_name(first.report.stem + suffix), moved.report.with_name("round-1" + suffix)
        )
    shutil.rmtree(copy / "adapters" / run / "round-2")
    for path in (copy / "reports" / run).glob("round-2*"):
        path.unlink()
    # the tiny student may solve none of its attempts: the user says four of them succeeded (their verdict
    # outranks the check), and round 2's data is curated again
    traces_2 = copy / "traces" / run / "round-2"
    failed = sorted(s for s, o in read_outcomes([traces_2]).items() if o["outcome"] == "failure")
    for session in failed[:4]:
        labelled = subprocess.run(
            [sys.executable, "-m", "flywheel", "label", session, "success", "--traces", str(traces_2)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert labelled.stdout.startswith(f"{session}: success")
    shutil.rmtree(copy / "data" / run / "round-2")
    args = ["--quick", "--rounds", "2", "--root", str(copy), "--run", run]
    result = flywheel(
        *args, "--top-up-passes", "1", "--top-up-replay", "1", "--eval-concurrency", "2", timeout=900
    )
    # round 1's four stages, round 2's attempt (round 2's curate runs again, with the user's verdicts)
    assert result.stderr.count("(reused: complete from an earlier run)") == 5
    assert "adapter 1 topped up on its new successes" in result.stderr

    data = copy / "data" / run
    # a line is known by what it trains (round 2 was curated in the copy, so its meta names other paths)
    seen = {trained_on(x) for x in (data / "round-1" / "train.jsonl").read_text().splitlines()}
    train_2 = (data / "round-2" / "train.jsonl").read_text().splitlines()
    new = [x for x in train_2 if trained_on(x) not in seen]
    top_up = (data / "round-2" / "top-up" / "train.jsonl").read_text().splitlines()
    replayed = top_up[len(new) :]
    assert new and top_up[: len(new)] == new
    # replayed: lines adapter 1 was trained on that are in round 2's train split too, one per new line
    again = [x for x in train_2 if trained_on(x) in seen]
    assert len(replayed) == min(len(new), len(again)) > 0
    assert set(replayed) <= set(again) and len(set(replayed)) == len(replayed)
    line = (
        f"top-up: adapter 1 continues on {len(new)} new train lines, beside {len(replayed)} it was trained on"
    )
    assert line in result.stderr
    adapter_1 = copy / "adapters" / run / "round-1"
    manifest = json.loads((copy / "adapters" / run / "round-2" / "manifest.json").read_text())
    # one pass over the new and replayed lines, in batches of at most the recipe's size
    batch = manifest["config"]["batch_size"]
    assert batch == min(8, len(top_up)) and manifest["config"]["iters"] == -(-len(top_up) // batch)
    assert manifest["config"]["init_adapter"] == str(adapter_1)
    sha256 = hashlib.sha256((adapter_1 / "adapters.safetensors").read_bytes()).hexdigest()
    assert manifest["config_notes"]["init_adapter_sha256"] == sha256

    evaluation = json.loads((copy / "reports" / run / "round-2.json").read_text())
    assert evaluation["config"]["agent_concurrency"] == 2
    assert evaluation["agent"]["candidate"]["summary"]["n_episodes"] == 6
    run_report = json.loads((copy / "reports" / f"{run}.json").read_text())
    assert [p["label"] for p in run_report["curve"]] == ["base", "adapter 1", "adapter 2"]
    assert "p_one_sided" in run_report["rounds"][1]["decision"]["checks"][0]
    training = {
        "iters": manifest["config"]["iters"],
        "init_adapter": str(adapter_1),
        "train_lines": len(top_up),
        "replay_lines": len(replayed),
    }
    assert run_report["rounds"][1]["training"] == training
    html = (copy / "reports" / f"{run}.html").read_text()
    iters = manifest["config"]["iters"]
    assert (
        f"from adapter 1, {iters} iterations on {len(top_up)} train lines ({len(replayed)} replayed)" in html
    )


def test_scores_are_read_back_only_for_the_same_weights_cases_and_settings(two_rounds, tmp_path):
    """`--baseline-report` refuses, with a one-line reason, a report whose candidate is other weights, that
    was scored with other settings or on other cases, whose verdicts its recorded outputs do not earn (edited
    by hand, or given by a scorer that has changed since), or that is not a report; nothing is scored first."""
    from evaluate import EvalConfig, EvalError, run

    one, two = two_rounds.first, two_rounds.second
    first = json.loads(one.report.read_text())
    loop_settings = {k: first["config"][k] for k in ("data", "limit", "tasks", "agent_max_steps", "seed")}
    config = EvalConfig(
        adapter=two.adapter,
        baseline_adapter=one.adapter,
        baseline_report=one.report,
        out_dir=tmp_path,
        **loop_settings,
    )

    def refused(**changes) -> str:
        with pytest.raises(EvalError) as error:
            run(config.replace(**changes))
        assert "\n" not in str(error.value) and not list(tmp_path.iterdir())
        return str(error.value)

    # other weights: adapter 1 with one tensor nudged (round 2's adapter is adapter 1 bit for bit when the tiny
    # student solved none of its attempts: the same data, the same seed)
    import shutil

    import mlx.core as mx

    other = tmp_path.parent / f"{tmp_path.name}-other-adapter"
    shutil.copytree(one.adapter, other)
    try:
        weights = mx.load(str(other / "adapters.safetensors"))
        name = sorted(weights)[0]
        weights[name] = weights[name] + 1e-3
        mx.save_safetensors(str(other / "adapters.safetensors"), weights)
        assert "its candidate is not this baseline (adapter_sha256" in refused(baseline_adapter=other)
    finally:
        shutil.rmtree(other)
    assert "scored with other settings (limit 6 then, 5 now)" in refused(limit=5)
    assert "agent_max_steps 6 then, 8 now" in refused(agent_max_steps=8)
    changed = tmp_path.parent / f"{tmp_path.name}-changed.jsonl"
    lines = Path(first["config"]["data"]).read_text().splitlines()
    sample = json.loads(lines[0])
    next(m for m in sample["messages"] if m["role"] == "user")["content"] = "another question"
    changed.write_text("\n".join([json.dumps(sample), *lines[1:]]) + "\n")
    try:
        assert "differs from" in refused(data=changed)
    finally:
        changed.unlink()

    def edited(name: str, edit) -> Path:
        report = json.loads(one.report.read_text())
        edit(report["turns"]["candidate"], report["agent"]["candidate"])
        path = tmp_path.parent / f"{tmp_path.name}-{name}.json"
        path.write_text(json.dumps(report))
        return path

    def verdict_flipped(turns, agent):
        case = turns["cases"][0]
        case["code"] = "wrong_value" if case["code"] == "ok" else "ok"

    def success_flipped(turns, agent):
        agent["episodes"][0]["success"] = not agent["episodes"][0]["success"]

    def one_more_solved(turns, agent):
        agent["summary"]["successes"] += 1

    def another_rate(turns, agent):
        rate = turns["rates"]["turn_success_rate"]
        turns["rates"]["turn_success_rate"] = rate + 0.25 if rate <= 0.75 else rate - 0.25

    for name, edit, reason in (
        ("verdict", verdict_flipped, "held-out turn 0 is recorded as"),
        ("success", success_flipped, "but its checks and error say otherwise"),
        ("summary", one_more_solved, "agent-level summary is not what its 6 episodes add up to"),
        ("rates", another_rate, "turn-level rates are not what its"),
    ):
        path = edited(name, edit)
        try:
            assert reason in refused(baseline_report=path)
        finally:
            path.unlink()
    assert "not an evaluation report" in refused(baseline_report=one.adapter / "manifest.json")
    assert "--baseline-report not found" in refused(baseline_report=tmp_path / "nowhere.json")
    assert "needs a baseline" in refused(baseline=False)


def test_evaluate_reads_the_baseline_back_from_its_report(two_rounds, tmp_path):
    """The README's `evaluate --baseline-report`: only the candidate is scored; the baseline's scores are the
    earlier report's candidate's. A report without the level asked for is refused in one line, exit 2."""
    one, two = two_rounds.first, two_rounds.second
    first = json.loads(one.report.read_text())
    settings = ["--data", first["config"]["data"], *QUICK_LOOP_EVALUATION, "--out", str(tmp_path)]

    def evaluate(baseline: Path, report: Path, *extra: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "evaluate",
            "--adapter",
            str(two.adapter),
            *settings,
            *extra,
        ]
        command += ["--baseline-adapter", str(baseline), "--baseline-report", str(report)]
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)

    # turn level only (the agent level's read-back is checked by the two-round test, at no extra cost here)
    result = evaluate(one.adapter, one.report, "--no-agent", "--name", "reuse")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "reuse.json").read_text())
    # equal down to wall times: read back, not scored again
    assert report["turns"]["baseline"] == first["turns"]["candidate"] and report["agent"] is None
    assert report["identity"]["baseline"]["scores_from"] == str(one.report)
    assert "scores read from" in result.stderr

    # that report's candidate (adapter 2) has turn-level scores only: the agent level cannot be read back
    refused = evaluate(two.adapter, tmp_path / "reuse.json", "--name", "refused")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().startswith("error: ") and len(refused.stderr.strip().splitlines()) == 1
    assert "has no agent-level scores of its candidate" in refused.stderr
    assert not (tmp_path / "refused.json").exists()


def test_focused_attempts_go_where_the_student_failed(suite):
    from types import SimpleNamespace

    from flywheel.rounds import focused_tasks

    templates = suite.templates("train")
    solved, half, never = "say_word", "read_value", "create_file"
    episodes = (
        [SimpleNamespace(template=solved, success=True)] * 4
        + [SimpleNamespace(template=half, success=s) for s in (True, False, True, False)]
        + [SimpleNamespace(template=never, success=False)] * 6
    )
    extra = focused_tasks(suite, episodes, 16, draw=1)
    counts = {t: sum(task.template == t for task in extra) for t in templates}
    assert counts[solved] == 0
    assert (counts[half], counts[never]) == (4, 12)
    own = {task.prompt for task in suite.tasks}
    assert not own & {task.prompt for task in extra}
    assert focused_tasks(suite, episodes[:4], 16, draw=1) == []
    # a template whose train pools are nearly spent gets what they still hold, not an error
    narrow = [SimpleNamespace(template="find_definition", success=False)]
    assert 0 < len(focused_tasks(suite, narrow, 50, draw=1)) < 50

    # "frontier": only the half-solved template has successes and failures both, so it takes the whole budget;
    # with no such template the share falls back to failures
    frontier = focused_tasks(suite, episodes, 16, draw=1, focus_on="frontier")
    assert {task.template for task in frontier} == {half} and len(frontier) == 16
    without_half = [e for e in episodes if e.template != half]
    fallback = focused_tasks(suite, without_half, 16, draw=1, focus_on="frontier")
    assert {task.template for task in fallback} == {never} and len(fallback) == 16
    assert focused_tasks(suite, episodes[:4], 16, draw=1, focus_on="frontier") == []

    # "optimistic": the never-solved template counts as solved once (1 × 6/6), as much as the half-solved one
    # (2 × 2/4), where "frontier" gave it nothing; the always-solved one still gets none
    optimistic = focused_tasks(suite, episodes, 16, draw=1, focus_on="optimistic")
    counts = {t: sum(task.template == t for task in optimistic) for t in templates}
    assert (counts[solved], counts[half], counts[never]) == (0, 8, 8)
    assert focused_tasks(suite, episodes[:4], 16, draw=1, focus_on="optimistic") == []


def test_focused_waves_stop_attempting_a_template_missed_k_times_and_spend_the_rest_where_it_can_succeed(
    suite,
):
    """`focus_give_up_after` k: the focused attempts run in waves of `attempt_concurrency`, shared again after
    each; a template with k misses and no success this round gets no more, so the budget ends up where the
    student sometimes succeeds. The student here is a policy by template (every 3rd attempt at `sometimes`
    succeeds), because what is tested is where the attempts go; the served student runs them in the next test."""
    from types import SimpleNamespace

    from flywheel.config import LoopConfig
    from flywheel.rounds import apportion, focus_in_waves

    solved, sometimes, never = "say_word", "read_value", "create_file"
    tried = Counter()
    waves = []

    def run(tasks, description):
        waves.append([task.template for task in tasks])
        out = []
        for task in tasks:
            tried[task.template] += 1
            success = task.template == solved or (task.template == sometimes and tried[sometimes] % 3 == 0)
            out.append(
                SimpleNamespace(template=task.template, success=success, error=None, prompt=task.prompt)
            )
        return out

    first = [
        t for name in (solved, sometimes, never) for t in [t for t in suite.train if t.template == name][:2]
    ]
    episodes = run(first, "first")
    config = LoopConfig(attempt_focus=20, focus_give_up_after=4, attempt_concurrency=3, focus_on="optimistic")
    everything, given_up = focus_in_waves(suite, first, episodes, config, 1, run)

    assert given_up == [never]
    assert len(everything) == 6 + 20 and all(len(w) <= 3 for w in waves[1:])
    assert tried[never] == 4 and tried[solved] == 2  # 2 first + 2 focused misses; always solved: none
    assert tried[sometimes] == 2 + 18
    focused = [e.prompt for e in everything[6:]]
    assert len(set(focused)) == 20 and not set(focused) & {t.prompt for t in suite.tasks}

    # by failures: the template never solved is still given up after k misses, the rest go where it can succeed
    tried.clear()
    config = config.replace(focus_on="failures", focus_give_up_after=3)
    everything, given_up = focus_in_waves(suite, first[2:], run(first[2:], "first"), config, 1, run)
    assert tried[never] == 3 and given_up == [never] and tried[sometimes] == 2 + 19

    # only templates it never solves have a claim: once each was missed k times they share the rest, and no
    # template was given up, since there was nowhere better to send its attempts
    tried.clear()
    only_never = [t for t in first if t.template == never]
    everything, given_up = focus_in_waves(suite, only_never, run(only_never, "first"), config, 1, run)
    assert len(everything) == 2 + 20 and tried[never] == 22 and given_up == []
    assert apportion(8, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 3, "c": 2}
    assert apportion(3, {"a": 0.1, "b": 0.9, "c": 0}) == {"b": 3} and apportion(5, {}) == {}


def test_an_attempt_the_server_dropped_is_run_again_alone_and_only_its_second_try_labelled(
    suite, flaky_teacher, monkeypatch, tmp_path
):
    """A dropped connection says nothing about the student: the attempt is run once more, alone, and labelled
    by that second try; the first try stays recorded, never labelled, and is counted with its error's kind.
    The student here is the scripted teacher behind the real recording proxy (a real mlx_lm server cannot be
    made to drop a chosen request); the real one is served in the two-round test above."""
    from contextlib import contextmanager

    from rich.console import Console

    import flywheel.serve
    from core.process import RecordingProxy
    from flywheel.config import LoopConfig
    from flywheel.rounds import attempt

    teacher = flaky_teacher(suite, drops=2)

    @contextmanager
    def serving(model, adapter, traces, label=None, max_tokens=None):
        with teacher, RecordingProxy(teacher.url, traces) as recording:
            yield flywheel.serve.Served(recording.base_url, str(model), adapter, {"label": label})

    monkeypatch.setattr(flywheel.serve, "serving", serving)
    config = LoopConfig(attempt_on="train", attempt_tasks=4, attempts=1, attempt_concurrency=2)
    traces = tmp_path / "traces"
    attempt(config, tmp_path / "student", None, suite, traces, 2, Console(file=io.StringIO()))
    collection = json.loads((traces / "collection.json").read_text())

    assert len(teacher.dropped) == 2
    outcomes = read_outcomes([traces])
    assert (
        collection["episodes"] == collection["solved"] == len(outcomes) == 4
    )  # all four solved, second try or first
    assert collection["run_again"] == collection["server_errors"] == 2
    assert set(collection["server_error_kinds"]) <= set(SERVER_ERRORS)
    unlabelled = set(collection["server_error_sessions"])
    assert len(unlabelled) == 2 and not unlabelled & set(outcomes)
    assert {record["session_id"] for record in read_records([traces])} <= set(outcomes) | unlabelled


def test_attempts_write_no_more_than_their_token_limit_per_request(tool_model, tmp_path):
    """`attempt_max_tokens` N: the served student (a real `mlx_lm server` behind the recorder) writes at most N
    tokens per request while it attempts, the limit a failing attempt that writes prose runs to."""
    from rich.console import Console

    from agent.tasks import load_suite
    from flywheel.config import LoopConfig
    from flywheel.rounds import attempt

    config = LoopConfig(attempt_tasks=7, attempts=1, attempt_max_tokens=3, attempt_concurrency=2)
    traces = tmp_path / "traces"
    attempt(config, Path(tool_model), None, load_suite(config.suite), traces, 1, Console(file=io.StringIO()))
    records = list(read_records([traces]))
    assert records and all(record["usage"]["completion_tokens"] <= 3 for record in records)
    assert any(record["finish_reason"] == "length" for record in records)  # it would have written more
    assert json.loads((traces / "collection.json").read_text())["max_tokens"] == 3


def test_the_served_student_attempts_in_waves_and_gives_up_on_what_it_misses_k_times(tool_model, tmp_path):
    """`focus_give_up_after` with the student served by a real `mlx_lm server` behind the recorder: held to 3
    tokens per request it misses every attempt, so after one first attempt per template each template gets
    at most one focused attempt (k = 2), and collection.json names those given up."""
    from rich.console import Console

    from agent.tasks import load_suite
    from flywheel.config import LoopConfig
    from flywheel.rounds import attempt
    from flywheel.runreport import attempts_summary

    config = LoopConfig(
        attempt_tasks=7, attempts=1, attempt_max_tokens=3, attempt_concurrency=2,
        attempt_focus=4, focus_on="optimistic", focus_give_up_after=2,
    )  # fmt: skip
    traces = tmp_path / "traces"
    attempt(config, Path(tool_model), None, load_suite(config.suite), traces, 1, Console(file=io.StringIO()))
    collection = json.loads((traces / "collection.json").read_text())
    tried = {t: v["episodes"] for t, v in collection["by_template"].items()}
    assert collection["episodes"] == 7 + 4 and collection["solved"] == 0 and len(tried) == 7
    assert sorted(tried.values()) == [1, 1, 1, 2, 2, 2, 2]
    assert collection["given_up"] and set(collection["given_up"]) < {t for t, n in tried.items() if n == 2}
    assert collection["focus_give_up_after"] == 2
    # the run report says what the round learned from, and what it gave up on
    assert f"given up after 2 misses: {', '.join(collection['given_up'])})" in attempts_summary(collection)
    assert len({record["session_id"] for record in read_records([traces])}) == 11


def test_a_top_up_replays_lines_the_adapter_in_use_was_trained_on_beside_the_new_ones(tmp_path):
    """`top_up_replay` r: round(r × new) lines the adapter in use was trained on, drawn with the seed from this
    round's train split only (a round-1 line that round 2 put elsewhere is never replayed), each at most once.
    A line is known by what it trains, not by where it came from: a run moved between rounds tops up the same."""
    from flywheel.config import LoopConfig
    from flywheel.steps import round_paths, top_up_lines

    first, second = (round_paths(tmp_path, "run", k, several=True) for k in (1, 2))
    for paths in (first, second):
        paths.data.mkdir(parents=True)

    def line(text: str, where: str) -> str:  # `meta` names the traces' path, which a moved run changes
        return json.dumps({"messages": [{"role": "user", "content": text}], "meta": {"source": where}})

    old = [line(f"old {i}", "/runs/a/traces/round-1") for i in range(10)]
    fresh = [line(f"new {i}", "/runs/b/traces/round-2") for i in range(4)]
    (first.data / "train.jsonl").write_text("\n".join(old) + "\n")
    old = [x.replace("/runs/a/", "/runs/b/") for x in old]  # round 2 curated after the run moved to b
    (second.data / "train.jsonl").write_text("\n".join(fresh[:2] + old[:8] + fresh[2:]) + "\n")

    def lines(replay: float, seed: int = 0) -> tuple[list[str], list[str]]:
        return top_up_lines(LoopConfig(top_up_iters=4, top_up_replay=replay, seed=seed), second, first)[:2]

    assert lines(0) == (fresh, [])
    new, replayed = lines(0.5)
    assert new == fresh and len(replayed) == 2 and set(replayed) <= set(old[:8])
    assert lines(0.5) == (new, replayed)  # the same seed draws the same lines
    assert {tuple(lines(1, seed)[1]) for seed in range(6)} != {tuple(lines(1)[1])}  # the seed decides them
    new, replayed = lines(5)  # more than there are: every one of the 8, once
    assert sorted(replayed) == sorted(old[:8])


def test_a_top_up_leaves_out_new_lines_of_templates_the_student_nearly_always_solved(tmp_path):
    """`top_up_max_solve_rate` m: a new line from a session whose template the student solved more than m of
    its attempts this round (collection.json, outcomes.jsonl: as `attempt` writes them) is left out; one of a
    template it rarely solved, or of a session no attempt made (a user's own), stays."""
    from core.outcomes import append_outcomes, outcome_record
    from flywheel.config import LoopConfig
    from flywheel.steps import LoopError, round_paths, top_up_lines

    first, second = (round_paths(tmp_path, "run", k, several=True) for k in (1, 2))
    for paths in (first, second):
        paths.data.mkdir(parents=True)
    second.traces.mkdir(parents=True)
    by_template = {
        "create_file": {"solved": 12, "episodes": 13},
        "count_lines": {"solved": 5, "episodes": 13},
    }
    (second.traces / "collection.json").write_text(json.dumps({"by_template": by_template}))
    append_outcomes(
        second.traces,
        [
            outcome_record("s-create", "success", "check", task_id="create_file-fresh2-00"),
            outcome_record("s-count", "success", "check", task_id="count_lines-fresh1002-03"),
            outcome_record("s-user", "success", "user"),
        ],
    )

    def line(text: str, session: str) -> str:
        return json.dumps({"messages": [{"role": "user", "content": text}], "meta": {"session_id": session}})

    old = [line(f"old {i}", f"teacher-{i}") for i in range(6)]
    create, count, user = line("create", "s-create"), line("count", "s-count"), line("mine", "s-user")
    (first.data / "train.jsonl").write_text("\n".join(old) + "\n")
    (second.data / "train.jsonl").write_text("\n".join([create, *old, count, user]) + "\n")

    def lines(rate: float) -> tuple[list[str], list[str], int]:
        return top_up_lines(
            LoopConfig(top_up_passes=1, top_up_replay=1, top_up_max_solve_rate=rate), second, first
        )

    assert lines(1.0)[0] == [create, count, user] and lines(1.0)[2] == 0
    new, replayed, left_out = lines(0.5)  # create_file 12/13 > 0.5: left out; count_lines 5/13 stays
    assert (new, left_out, len(replayed)) == ([count, user], 1, 2) and set(replayed) <= set(old)
    assert lines(0.3)[:3:2] == ([user], 2)
    (second.data / "train.jsonl").write_text("\n".join([create, *old]) + "\n")
    with pytest.raises(
        LoopError, match=r"no line adapter 1 was not trained on, 1 from templates it solved more than 50%"
    ):
        lines(0.5)


def test_a_top_up_without_new_lines_stops_the_round_saying_why(tmp_path):
    """Every train line of round 2 was already trained on by the adapter in use: nothing is trained, and the
    error names the file and what might find successes."""
    from rich.console import Console

    from flywheel.config import LoopConfig
    from flywheel.steps import LoopError, round_paths, top_up_round

    first, second = (round_paths(tmp_path, "run", k, several=True) for k in (1, 2))
    for paths in (first, second):
        paths.data.mkdir(parents=True)
        (paths.data / "train.jsonl").write_text('{"messages": []}\n')
        (paths.data / "valid.jsonl").write_text("")
    config = LoopConfig(top_up_iters=4)
    with pytest.raises(LoopError, match=r"round-2/train.jsonl holds no line adapter 1 was not trained on"):
        top_up_round(config, tmp_path / "student", second, first, Console(file=io.StringIO()))
    assert not second.adapter.exists() and not (second.data / "top-up").exists()


def test_giving_up_on_what_is_never_solved_sends_the_focused_attempts_to_the_rare_template_it_sometimes_solves(
    tmp_path, capsys
):
    """bench/focus_allocation.py replays the loop's own allocation code with measured success rates: given up
    after k misses, more of the same budget goes to `count_lines` (solved about one time in four) than one share
    by the first attempts gives it, because `copy_value` and `append_line` (never solved) stop taking theirs."""
    sys.path.insert(0, str(ROOT))
    from bench.focus_allocation import main

    measured = {
        "append_line": (0, 40), "copy_value": (0, 40), "count_lines": (15, 60), "create_file": (50, 55),
        "read_value": (9, 9), "run_script": (9, 9), "say_word": (9, 9),
    }  # fmt: skip
    collection = tmp_path / "collection.json"
    collection.write_text(
        json.dumps({"by_template": {t: {"solved": s, "episodes": n} for t, (s, n) in measured.items()}})
    )
    assert main(["--collections", str(collection), "--trials", "40", "--no-write"]) == 0
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    by_rule = {(r[0].strip(), r[1].strip()): float(r[2]) for r in rows[1:]}
    assert by_rule[("64", "10")] > by_rule[("64", "never (one share)")] + 5
    assert by_rule[("64", "15")] > by_rule[("64", "never (one share)")] + 5
