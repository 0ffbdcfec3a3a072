"""Agent level: the suite's held-out tasks run by the reference agent against every side (`agent.episodes`).

    agent = evaluate_agent_level(config, plan, identities)  # suite, n_tasks, baseline, candidate, comparison

A local side is served by a fresh `mlx_lm server` (through the recording proxy with `via_proxy`), started on
the model's resolved local path and checked to serve it before any task runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluate.config import EvalConfig, EvalError, Plan, Side
from evaluate.served import DEFAULT_ALIAS, check_episode_models, verify_server


def side_episodes(
    config: EvalConfig, tasks: list, side: Side, identity: dict, traces: Path
) -> tuple[list[dict], dict | None]:
    """Run the tasks through the real agent against the side's server, or a fresh `mlx_lm server` (through
    the recording proxy into `traces` with `via_proxy`), checking which model serves them (`evaluate.served`:
    a started server is verified and recorded in `identity["agent_server"]`). Returns the episodes and,
    through the proxy, {"trace_file", "summary"}."""
    description = f"agent · {side.label}"
    if side.server:
        episodes = run_tasks(config, tasks, side.server, config.server_model, description)
        return checked(episodes, identity, side.server), None
    from core.process import MlxServer

    model = identity["model_path"] or side.model
    with MlxServer(model, adapter_path=side.adapter, max_tokens=config.max_tokens) as mlx_server:
        started = identity["agent_server"] = verify_server(mlx_server.base_url, DEFAULT_ALIAS, side.model)
        if not config.via_proxy:
            episodes = run_tasks(config, tasks, mlx_server.base_url, DEFAULT_ALIAS, description)
            return checked(episodes, started, mlx_server.base_url), None
        from core.process import RecordingProxy

        recording = RecordingProxy(mlx_server.url, traces / side.label)
        with recording:
            episodes = run_tasks(config, tasks, recording.base_url, DEFAULT_ALIAS, description)
    return checked(episodes, started, recording.base_url), {
        "trace_file": str(recording.trace_file),
        "summary": recording.summary,
    }


def run_tasks(config: EvalConfig, tasks: list, base_url: str, model_name: str, description: str) -> list:
    """The tasks' episodes, `agent_concurrency` at a time; an episode the server failed (a dropped connection,
    a timeout: `agent.episodes.server_failed`) is run once more, alone, so that it scores the model, not the
    server. One that fails so again stays a failure, and is counted in the summary's errors."""
    from agent.episodes import run_episodes_retrying

    return run_episodes_retrying(
        tasks, base_url, model_name, description=description, concurrency=config.agent_concurrency,
        max_steps=config.agent_max_steps, timeout=config.agent_timeout,
    )  # fmt: skip


def checked(episodes: list, verified: dict, base_url: str) -> list[dict]:
    """The episodes as dicts, once every response is known to come from the verified model."""
    rows = [episode.to_dict() for episode in episodes]
    check_episode_models(rows, verified["response_models"], base_url)
    return rows


def evaluate_agent_level(
    config: EvalConfig, plan: Plan, identities: dict, reused: dict | None = None
) -> dict[str, Any]:
    """Every side's episodes and summary, and with a baseline their paired comparison by task; a `reused`
    baseline (`evaluate.reuse`) is read back, once its tasks are checked to be these."""
    from agent.episodes import summarize
    from agent.tasks import load_suite, round_robin
    from evaluate import stats
    from evaluate.reuse import check_same_tasks

    try:
        suite = load_suite(config.tasks)
    except (FileNotFoundError, ValueError) as error:
        raise EvalError(f"--tasks {config.tasks}: {error}") from None
    tasks = round_robin(suite.held_out, config.limit) if config.limit else suite.held_out
    traces = Path(config.traces_dir or config.out_dir / f"{plan.name}-traces")
    agent: dict[str, Any] = {
        "suite": config.tasks,
        "n_tasks": len(tasks),
        "baseline": None,
        "comparison": None,
    }
    for side in plan.sides:
        if reused and side.role == "baseline":
            check_same_tasks(reused, tasks)
            agent["baseline"] = reused["agent"]
            continue
        episodes, recorded = side_episodes(config, tasks, side, identities[side.role], traces)
        agent[side.role] = {"episodes": episodes, "summary": summarize(episodes), "proxy": recorded}
    if plan.baseline:
        agent["comparison"] = stats.compare_agent(
            agent["baseline"]["episodes"], agent["candidate"]["episodes"], seed=config.seed
        )
    return agent
