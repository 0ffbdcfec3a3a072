"""The loop's collect stage: the reference agent runs the suite's train tasks against a teacher, through the
recording proxy, and the recorded exchanges are checked against what the agent sent."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

SCRIPTED_TEACHER = "scripted demonstrator"


class CollectError(RuntimeError):
    """The proxy did not record what the agent sent, or the teacher cannot be reached."""


def upstream_root(base_url: str) -> str:
    """The proxy forwards whole paths: strip a trailing /v1 from an OpenAI base URL."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def teacher_model_name(base_url: str, api_key: str, requested: str | None) -> str:
    """The model to ask the teacher for, checked against what it lists: `requested` must be listed; without it,
    the only listed model, or the one local model path of an `mlx_lm server` (which lists cached hub models
    first). Anything else is refused: collecting from a model nobody chose is the trap of `/v1/models[0]`."""
    from evaluate.served import DEFAULT_ALIAS, listed_models, served_model

    listed = listed_models(base_url, api_key)
    if requested is not None:
        if listed and requested not in listed and requested != DEFAULT_ALIAS:
            raise CollectError(f"{base_url} lists no model {requested!r} (it lists {', '.join(listed[:6])})")
        return requested
    if len(listed) == 1:
        return listed[0]
    try:
        served_model(base_url, DEFAULT_ALIAS, listed)
    except ValueError as error:
        raise CollectError(f"{error}; name the teacher with --teacher-model") from None
    return DEFAULT_ALIAS


def collect(config, suite, traces_dir: Path, console: Console) -> dict:
    """Run the reference agent on the suite's train tasks against the teacher, through the recording proxy."""
    from agent.episodes import run_episodes
    from agent.teacher import Teacher
    from core.outcomes import append_outcomes, outcome_record
    from core.process import RecordingProxy
    from core.trace import read_records

    tasks = [task for task in suite.train for _ in range(config.episodes_per_task)]
    with ExitStack() as stack:
        if config.teacher is None:
            teacher = stack.enter_context(Teacher(suite))
            upstream, model_name, label = teacher.url, teacher.model_name, SCRIPTED_TEACHER
        else:
            upstream = upstream_root(config.teacher)
            model_name = teacher_model_name(config.teacher, config.teacher_api_key(), config.teacher_model)
            teacher, label = None, f"{model_name} at {config.teacher}"
        console.print(f"  teacher: [bold]{label}[/]")
        proxy = stack.enter_context(RecordingProxy(upstream, traces_dir))
        episodes = run_episodes(
            tasks,
            proxy.base_url,
            model_name,
            description="collect · train tasks",
            max_steps=config.agent_max_steps + 2,
            api_key=config.teacher_api_key(),
        )
    summary = proxy.summary or {}
    # each episode's outcome is its task's own end-state check: curate's --require-outcome reads it
    append_outcomes(
        traces_dir,
        [
            outcome_record(e.session_id, "success" if e.success else "failure", "check", task_id=e.task_id)
            for e in episodes
        ],
    )
    records = list(read_records([traces_dir]))
    agent_requests = sum(e.steps for e in episodes)
    collection = {
        "teacher": label,
        "teacher_model": model_name,
        "episodes": len(episodes),
        "solved": sum(e.success for e in episodes),
        "agent_requests": agent_requests,
        "teacher_requests": getattr(teacher, "requests", None),
        "recorded": len(records),
        "proxy_summary": summary,
        "trace_files": sorted(str(p) for p in traces_dir.glob("*.jsonl")),
    }
    if len(records) != agent_requests or collection["teacher_requests"] not in (None, agent_requests):
        raise CollectError(
            f"proxy recorded {len(records)} exchanges; the agent made {agent_requests} requests"
            f" and the teacher answered {collection['teacher_requests']}"
        )
    return collection
