"""Rounds ≥ 2 of the flywheel: the student learns from its own successes, and only a better adapter is promoted.

Round k: the best student so far (the last promoted adapter) is served by `mlx_lm server` behind the
recording proxy, exactly as `python -m flywheel serve` serves it to a user, and attempts tasks `attempts`
times at `temperature`: by default fresh tasks drawn from the suite's *train* pools for this round (new work,
as a deployed student meets; the suite's own train tasks, `attempt_on = "train"`, were all solved by the teacher,
so the student's successes on them repeat the teacher's episodes and dedupe removes them); each episode's
outcome is its task's own end-state check, written beside the traces (`core.outcomes`, source "check").
Held-out tasks, and the held-out pools, are never attempted. Curate
reads every round's traces so far with `require_outcome="success"` (the teacher's episodes and the student's
successes); adapter k is trained from the base on that data with the round-1 recipe (or, with `top_up_iters` or
`top_up_passes`, the best continues on the lines it was not trained on, beside `top_up_replay` it was:
`flywheel.steps`); adapter k and the best
are evaluated paired on the held-out tasks and round 1's held-out turns (the same cases every round; the best's
scores are read back from the round that made it, `evaluate.reuse`, not generated again); and
adapter k replaces the best only by the rule of `flywheel.promote`. Every round's artifacts are kept.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from core.turns import made_call
from flywheel.config import LoopConfig
from flywheel.promote import decide
from flywheel.runreport import solved_by_template, write_run_report
from flywheel.stages import stage_done
from flywheel.steps import LoopError, curate_round, evaluate_round, top_up_round, train_round

MAX_SERVER_ERROR_SHARE = 0.1  # more attempts than this lost to server errors: the server is failing, stop


def attempt(
    config: LoopConfig, student: Path, adapter: Path | None, suite, traces: Path, draw: int, console
) -> dict:
    """The served student attempts each task `config.attempts` times; outcomes from the tasks' own checks."""
    from agent.episodes import run_episodes_retrying, server_failed
    from core.outcomes import append_outcomes, outcome_record
    from core.trace import read_records
    from flywheel.serve import serving

    tasks = [task for task in attempted_tasks(suite, config, draw) for _ in range(config.attempts)]
    traces.mkdir(parents=True)
    label = f"round student ({adapter or 'base'})"
    with serving(student, adapter, traces, label=label, max_tokens=config.attempt_max_tokens) as served:
        console.print(f"  student: {served.describe()}")
        # mlx_lm server now and then drops a connection under concurrent load (a 502 for that request): such
        # an attempt says nothing about the student, so it is run again alone, and never labelled itself
        run = partial(
            run_episodes_retrying, base_url=served.base_url, model_name="default_model",
            concurrency=config.attempt_concurrency, max_steps=config.agent_max_steps + 2,
            temperature=config.temperature,
        )  # fmt: skip
        episodes = run(
            tasks,
            description=f"attempt · {len(tasks) // config.attempts} {config.attempt_on} tasks × {config.attempts}",
        )
        episodes, given_up = focused_attempts(suite, tasks, episodes, config, draw, run)
    # one the server failed again is neither labelled nor trained on; a failing server stops the round
    broken = [e for e in episodes if server_failed(e)]
    if len(broken) > MAX_SERVER_ERROR_SHARE * len(episodes):
        raise LoopError(
            f"{len(broken)}/{len(episodes)} attempts ended in a server error twice, not a failure of the student "
            f"(first: {broken[0].task_id}: {broken[0].error}); traces so far in {traces}"
        )
    # every recorded session without an outcome: first tries the server failed, and tries it failed again
    unlabelled = [(e.first_try_session, e.first_try_error) for e in episodes if e.first_try_error]
    unlabelled += [(e.session_id, e.error) for e in broken]
    episodes = [e for e in episodes if not server_failed(e)]
    append_outcomes(
        traces,
        [
            outcome_record(e.session_id, "success" if e.success else "failure", "check", task_id=e.task_id)
            for e in episodes
        ],
    )
    tried, solved = Counter(e.template for e in episodes), Counter(e.template for e in episodes if e.success)
    collection = {
        "policy": served.policy,
        "episodes": len(episodes),
        "run_again": sum(1 for e in episodes if e.first_try_error),  # labelled by their second try
        "server_errors": len(unlabelled),
        "server_error_sessions": [session for session, _ in unlabelled],  # recorded, never labelled
        "server_error_kinds": dict(Counter(error.split(":", 1)[0] for _, error in unlabelled)),
        "solved": sum(e.success for e in episodes),
        "by_template": {t: {"solved": solved[t], "episodes": n} for t, n in sorted(tried.items())},
        "agent_requests": sum(e.steps for e in episodes),
        "recorded": len(list(read_records([traces]))),
        "proxy_summary": served.summary,
        "attempts": config.attempts,
        "temperature": config.temperature,
        "attempt_on": config.attempt_on,
        "attempt_focus": config.attempt_focus,
        "focus_on": config.focus_on,
        "focus_give_up_after": config.focus_give_up_after,
        "given_up": given_up,  # templates that got no more focused attempts after that many misses
        "max_tokens": config.attempt_max_tokens,
    }
    (traces / "collection.json").write_text(json.dumps(collection, indent=2) + "\n")
    console.print(
        f"  {collection['solved']}/{collection['episodes']} attempts solved: "
        + solved_by_template(collection)
        + (f" ({collection['run_again']} run again after a server error)" if collection["run_again"] else "")
        + (f"; given up after {config.focus_give_up_after} misses: {', '.join(given_up)}" if given_up else "")
    )
    return {"recorded": collection["recorded"], "solved": collection["solved"]}


def attempted_tasks(suite, config: LoopConfig, draw: int) -> list:
    """What the student attempts in a round: `attempt_tasks` tasks (default: as many as the suite trains on)
    spread over the templates it meets (`Suite.attempted_templates`): fresh ones from the train pools (`draw`
    picks them), or the suite's own."""
    from agent.tasks import fresh_train_tasks, round_robin

    wanted = config.attempt_tasks or len(suite.train)
    if config.attempt_on == "fresh":
        per_template = -(-wanted // len(suite.attempted_templates()))
        return round_robin(fresh_train_tasks(suite, per_template, draw), wanted)
    return round_robin(suite.train, wanted)


def focused_tasks(suite, episodes: list, budget: int, draw: int, focus_on: str = "failures") -> list:
    """`budget` more fresh tasks, shared among templates in proportion to `focus_weights` of `episodes`.
    A template whose train pools hold fewer new prompts gets only those."""
    from agent.tasks import fresh_train_tasks

    weights = focus_weights(episodes, focus_on)
    total = sum(weights.values())
    if not total:
        return []
    shares = {t: round(budget * w / total) for t, w in weights.items() if w}
    return fresh_train_tasks(suite, shares, 1000 + draw)


def focused_attempts(
    suite, tasks: list, episodes: list, config: LoopConfig, draw: int, run
) -> tuple[list, list[str]]:
    """After the first attempts (`tasks`, `episodes`, run by `run`), the `attempt_focus` more: in waves that
    give up on templates never solved (`focus_give_up_after`), else shared once by the first attempts.
    Returns every attempt and the templates given up."""
    if config.attempt_focus and config.focus_give_up_after:
        return focus_in_waves(suite, tasks, episodes, config, draw, run)
    if not config.attempt_focus:
        return episodes, []
    extra = focused_tasks(suite, episodes, config.attempt_focus, draw, config.focus_on)
    return episodes + run(extra, description=f"attempt · {len(extra)} more, by {config.focus_on}"), []


def focus_in_waves(
    suite, tasks: list, episodes: list, config: LoopConfig, draw: int, run
) -> tuple[list, list[str]]:
    """After the first attempts (`tasks`, `episodes`), `config.attempt_focus` more fresh tasks (none met yet),
    run in waves of `attempt_concurrency` and shared again after each wave by `focus_weights` of every attempt
    so far, so that the budget follows what the attempts find.
    A template missed `focus_give_up_after` times this round without one success gets no more while another
    template still may: the student almost surely cannot solve it yet, and each of its attempts would be one
    fewer where it sometimes can. When every template with a claim was missed that often, they share what is
    left (a rare template missed k times by chance still gets its chance, and no attempt goes unspent).
    Returns every attempt (the first ones, then the waves') and the templates given up, in that order."""
    from agent.episodes import server_failed
    from agent.tasks import fresh_train_tasks

    met = {task.prompt for task in tasks}
    pool = {t: config.attempt_focus for t in Counter(e.template for e in episodes)}
    queues: dict[str, list] = {}
    for task in fresh_train_tasks(suite, pool, 1000 + draw):
        if task.prompt not in met:
            queues.setdefault(task.template, []).append(task)
    given_up: list[str] = []
    budget = config.attempt_focus
    while budget > 0:
        judged = [e for e in episodes if not server_failed(e)]
        tried, solved = Counter(e.template for e in judged), Counter(e.template for e in judged if e.success)
        claims = {t: w for t, w in focus_weights(judged, config.focus_on).items() if w and queues.get(t)}
        # misses each claimant not solved yet may still have: a wave gives it no more than that
        misses_left = {t: config.focus_give_up_after - tried[t] for t in claims if not solved[t]}
        hopeful = {t: w for t, w in claims.items() if misses_left.get(t, 1) > 0}
        if hopeful:
            given_up += sorted(t for t in claims if t not in hopeful and t not in given_up)
        else:  # every claimant was missed k times: there is nowhere better to go, so they share the rest
            hopeful, misses_left = claims, {}
        shares = apportion(min(budget, config.attempt_concurrency), hopeful)
        wave = [
            queues[t].pop(0)
            for t, n in shares.items()
            for _ in range(min(n, len(queues[t]), misses_left.get(t, n)))
        ]
        if not wave:
            break
        episodes = episodes + run(wave, description=f"attempt · {len(wave)} more, by {config.focus_on}")
        budget -= len(wave)
    return episodes, given_up


def apportion(total: int, weights: dict[str, float]) -> dict[str, int]:
    """`total` shared in proportion to `weights` in whole numbers that add up to it (largest remainders; ties
    to the template named first), none to a weight of 0."""
    weights = {t: w for t, w in sorted(weights.items()) if w > 0}
    if not weights:
        return {}
    exact = {t: total * w / sum(weights.values()) for t, w in weights.items()}
    shares = {t: int(x) for t, x in exact.items()}
    by_remainder = sorted(exact, key=lambda t: exact[t] - shares[t], reverse=True)
    for t in by_remainder[: total - sum(shares.values())]:
        shares[t] += 1
    return {t: n for t, n in shares.items() if n}


def focus_weights(episodes: list, focus_on: str) -> dict[str, float]:
    """Each template's claim on the focused attempts. "failures": how often the student failed it (a template it
    always solves gets none): where its own successes are rarest. "frontier": successes × failures / attempts
    (n·p·(1 − p), largest at half solved), because an attempt only yields training data where the student
    sometimes succeeds; a template it never solved gets none, unless no template was sometimes solved, when
    the weights fall back to failures. "optimistic": as "frontier", with a template it never solved counted as
    solved once, so that it keeps a share (the student may solve it one time in three and have missed four)."""
    tried = Counter(e.template for e in episodes)
    failed = Counter(e.template for e in episodes if not e.success)
    if focus_on == "optimistic":
        return {t: max(n - failed[t], 1) * failed[t] / n for t, n in tried.items()}
    if focus_on == "frontier":
        frontier = {t: (n - failed[t]) * failed[t] / n for t, n in tried.items()}
        if any(frontier.values()):
            return frontier
    return dict(failed)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """Wilson score 95% interval of a success rate (None when n = 0)."""
    if n == 0:
        return None, None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def side_point(report: dict, side: str) -> dict[str, Any]:
    """Held-out agent success, exact-call accuracy on call turns and over-calling on no-call turns (a call
    where none is right, `core.turns.made_call`) of one side of an evaluation, with CIs."""
    agent = ((report.get("agent") or {}).get(side) or {}).get("summary") or {}
    n_tasks, solved = agent.get("n_episodes", 0), agent.get("successes", 0)
    turns = (report.get("turns") or {}).get(side) or {}
    calls = [c for c in turns.get("cases", []) if c["expected_calls"]]
    exact = sum(c["code"] == "ok" for c in calls)
    answers = [c for c in turns.get("cases", []) if not c["expected_calls"]]
    over = sum(made_call(c["tool_calls"], c["unparsed"]) for c in answers)
    return {
        "agent_solved": solved,
        "agent_tasks": n_tasks,
        "agent_rate": solved / n_tasks if n_tasks else None,
        "agent_ci": wilson(solved, n_tasks),
        "exact_calls": exact,
        "call_turns": len(calls),
        "exact_call_rate": exact / len(calls) if calls else None,
        "exact_call_ci": wilson(exact, len(calls)),
        "over_calls": over,
        "answer_turns": len(answers),
        "over_call_rate": over / len(answers) if answers else None,
        "over_call_ci": wilson(over, len(answers)),
    }


def run_rounds(config: LoopConfig, student: Path, suite, all_paths: list, stages, console):
    """Rounds 2..N after round 1 (already run); returns (round summaries, best adapter or None, last paths)."""

    first = all_paths[0]
    test_split = first.data / "test.jsonl"  # every round is scored on the same held-out turns
    report = json.loads(first.report.read_text())
    # round 1 is the loop of one round: its adapter is the one in use; the rule is reported, not applied
    decision = {**decide(report), "promoted": True, "applied": False}
    # the round that made the adapter in use: its adapter, and its report, where that adapter was the candidate
    # (its scores are read back, not generated again)
    best = first
    summaries = [round_summary(1, first, report, decision, "base", best.adapter)]
    for paths in all_paths[1:]:
        k, in_use = paths.number, best
        baseline, baseline_name = in_use.adapter, f"adapter {in_use.number}"
        console.rule(f"round {k}: the student's own successes")
        stages.run(
            "attempt",
            f"{k}a the student ({baseline_name}) attempts {config.attempt_on} train-distribution tasks",
            paths.traces,
            lambda paths=paths, baseline=baseline, k=k: attempt(
                config, student, baseline, suite, paths.traces, k, console
            ),
        )
        traces = [p.traces for p in all_paths[:k]]
        stages.run(
            "curate",
            f"{k}b curate (successful episodes of rounds 1-{k})",
            paths.data,
            lambda paths=paths, traces=traces: curate_round(
                traces, paths.data, config, student, console, require_outcome="success"
            ),
        )
        if config.tops_up:
            title = f"{k}c adapter {k}: {baseline_name} topped up on its new successes"
            build = partial(top_up_round, config, student, paths, in_use, console)
        else:
            title, build = f"{k}c train adapter {k}", partial(train_round, config, student, paths, console)
        stages.run("train", title, paths.adapter, build)
        stages.run(
            "evaluate",
            f"{k}d evaluate adapter {k} vs {baseline_name}",
            paths.report,
            lambda paths=paths, in_use=in_use: evaluate_round(
                config, student, paths, test_split, console, in_use.adapter, in_use.report
            ),
        )
        report = json.loads(paths.report.read_text())
        decision = decide(report)
        if decision["promoted"]:
            best = paths
        console.print(f"round {k}: {decision['reason']}")
        summaries.append(round_summary(k, paths, report, decision, baseline_name, best.adapter))
    # round 1 may be a one-round run's (shared), laid out as one; rounds ≥ 2 are always reports/RUN/round-K.json
    run_reports = all_paths[-1].report.parent
    write_run_report(config, run_reports.parent, run_reports.name, summaries)
    return summaries, best.adapter, all_paths[-1]


def training_summary(adapter: Path) -> dict[str, Any]:
    """How the round's adapter was made, from its manifest: iterations, the adapter it started from (None: the
    base), its train lines, and how many of them a top-up replayed (from its stage's completion marker)."""
    manifest = json.loads((adapter / "manifest.json").read_text())
    config = manifest["config"]
    return {
        "iters": config["iters"],
        "init_adapter": config.get("init_adapter"),
        "train_lines": manifest["data"]["files"]["train.jsonl"]["lines"],
        "replay_lines": (stage_done(adapter) or {}).get("replay_lines", 0),
    }


def round_summary(k: int, paths, report: dict, decision: dict, compared_with: str, best: Path | None) -> dict:
    collection_file = paths.traces / "collection.json"
    collection = json.loads(collection_file.read_text()) if collection_file.exists() else {}
    return {
        "round": k,
        "traces": str(paths.traces),
        "data": str(paths.data),
        "adapter": str(paths.adapter),
        "report": str(paths.report),
        "compared_with": compared_with,
        "training": training_summary(paths.adapter),
        "collection": {
            key: collection.get(key) for key in ("teacher", "episodes", "solved", "by_template", "policy")
        },
        "baseline": side_point(report, "baseline"),
        "candidate": side_point(report, "candidate"),
        "decision": decision,
        "best_after": str(best) if best else "base",
    }
