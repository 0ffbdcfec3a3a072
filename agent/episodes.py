"""The reference coding agent: pydantic-ai over an OpenAI-compatible endpoint, with real sandboxed tools.

    agent = build_agent("http://127.0.0.1:8080/v1", "default", Workspace(files), session_id="s1")
    episode = run_episode(task, base_url, model_name, max_steps=8)     # one task, checked end state
    episodes = run_episodes(suite.held_out, base_url, model_name)      # many, with a progress bar

Tools are read_file(path), write_file(path, content), list_files(path) and run_command(command, args, cwd?),
advertised with exactly the JSON schemas of `agent.tools.AGENT_TOOLS`. A sandbox refusal or a failing
command is an ordinary tool result ("Error: ..." / {"exit_code": 1, ...}); arguments that fail validation (or an
unknown tool name) make pydantic-ai send a retry prompt, counted as an invalid call; an empty response (what
mlx_lm.server returns when the model wrote malformed tool JSON) makes pydantic-ai resend the request, counted
in `empty_responses` and `retries`; `retries` counts every retry prompt and resend. Every HTTP request carries
`X-Flywheel-Session: <session id>` so the recording proxy can group an episode's requests. The number of model
requests is bounded by `max_steps` and the episode by `timeout`: a looping model ends as a failure, not a hang.
Sampling is greedy (temperature 0) unless `temperature` is given; the OpenAI client does not retry failed requests (max_retries=0), so each
model request is one HTTP request.

An episode records each tool call with its arguments and whether it succeeded (`calls`: no tool error, a
command's exit code 0), which the suite's `tool_result` checks take as the evidence of tool use, and the
`model` every response named (`models`), so a caller can tell which model answered.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import asdict, dataclass, field, replace

import httpx
from openai import AsyncOpenAI
from pydantic_ai import Agent, Tool, capture_run_messages
from pydantic_ai.messages import ModelResponse, RetryPromptPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import UsageLimits

from agent.sandbox import ToolError, Workspace
from agent.tasks import Task, ToolUse, run_checks
from agent.tools import AGENT_TOOLS, SYSTEM_PROMPT
from core.toolcalls import decode_arguments
from core.trace import SESSION_HEADER

DEFAULT_MAX_STEPS = 8
DEFAULT_TIMEOUT = 120.0
DEFAULT_REQUEST_TIMEOUT = 120.0
TOOL_ERROR_PREFIX = "Error: "


@dataclass
class Episode:
    task_id: str
    success: bool
    tool_calls: int
    invalid_calls: int
    retries: int
    steps: int
    wall_s: float
    answer: str | None
    error: str | None
    session_id: str = ""
    template: str = ""
    split: str = ""
    tool_errors: int = 0
    empty_responses: int = 0
    failed_checks: list[str] = field(default_factory=list)
    # {"name", "arguments", "ok"}: what ran, and whether it worked
    calls: list[dict] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # the `model` the server's responses named
    # run again, alone, after the server failed it (`run_episodes_retrying`): that first try's error and session
    first_try_error: str | None = None
    first_try_session: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def tool_schemas() -> dict[str, dict]:
    return {tool["function"]["name"]: tool["function"] for tool in AGENT_TOOLS}


def agent_tools(workspace: Workspace) -> list[Tool]:
    """pydantic-ai tools bound to `workspace`, advertised with the AGENT_TOOLS schemas verbatim."""

    def guarded(function, *args):
        try:
            return function(*args)
        except ToolError as error:
            return f"{TOOL_ERROR_PREFIX}{error}"
        except OSError as error:
            return f"{TOOL_ERROR_PREFIX}{error.strerror or error}"

    def read_file(path: str) -> str:
        return guarded(workspace.read_file, path)

    def write_file(path: str, content: str) -> str:
        return guarded(workspace.write_file, path, content)

    def list_files(path: str) -> str:
        return guarded(workspace.list_files, path)

    def run_command(command: str, args: list[str], cwd: str | None = None) -> str:
        return guarded(workspace.run_command, command, args, cwd)

    schemas = tool_schemas()

    async def advertise_exact_schema(ctx, tool_def):
        schema = schemas[tool_def.name]
        return replace(
            tool_def, description=schema["description"], parameters_json_schema=schema["parameters"]
        )

    functions = {f.__name__: f for f in (read_file, write_file, list_files, run_command)}
    if set(functions) != set(schemas):
        raise RuntimeError(f"AGENT_TOOLS names {sorted(schemas)} differ from the agent's {sorted(functions)}")
    return [
        Tool(function, takes_ctx=False, name=name, prepare=advertise_exact_schema, strict=False)
        for name, function in functions.items()
    ]


def build_agent(
    base_url: str,
    model_name: str,
    workspace: Workspace,
    session_id: str | None = None,
    *,
    instructions: str | None = SYSTEM_PROMPT,
    tool_retries: int = 2,
    max_tokens: int | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    http_client=None,
    api_key: str = "flywheel-local",
    temperature: float = 0.0,
) -> Agent:
    """A pydantic-ai Agent that talks to `base_url` (an OpenAI-style …/v1) and acts in `workspace`."""
    headers = {SESSION_HEADER: session_id or uuid.uuid4().hex}
    client = AsyncOpenAI(
        base_url=base_url,
        api_key=api_key,
        max_retries=0,
        timeout=request_timeout,
        default_headers=headers,
        http_client=http_client,
    )
    model = OpenAIChatModel(model_name, provider=OpenAIProvider(openai_client=client))
    settings = ModelSettings(temperature=temperature)
    if max_tokens is not None:
        settings["max_tokens"] = max_tokens
    return Agent(
        model,
        output_type=str,
        instructions=instructions,
        tools=agent_tools(workspace),
        retries=tool_retries,
        model_settings=settings,
    )


def count_messages(messages) -> dict:
    """Tool calls, invalid calls, retries, tool errors, empty responses and model responses (`steps`) of a
    run's messages."""
    counts = dict.fromkeys(("tool_calls", "invalid_calls", "retries", "tool_errors", "steps"), 0)
    counts["empty_responses"] = 0
    for index, message in enumerate(messages):
        if isinstance(message, ModelResponse) and not message.parts:
            # e.g. mlx_lm.server dropped a malformed call: pydantic-ai resends the same request (a retry)
            counts["empty_responses"] += 1
            counts["retries"] += index < len(messages) - 1
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                counts["tool_calls"] += 1
            elif isinstance(part, RetryPromptPart):
                counts["retries"] += 1
                counts["invalid_calls"] += part.tool_name is not None
            elif isinstance(part, ToolReturnPart):
                counts["tool_errors"] += str(part.content).startswith(TOOL_ERROR_PREFIX)
        counts["steps"] += isinstance(message, ModelResponse)
    return counts


def tool_outcome(name: str, content) -> tuple[bool, str]:
    """(ran without error, what it returned) of a tool's return value; a command must also exit 0."""
    text = content if isinstance(content, str) else json.dumps(content)
    if text.startswith(TOOL_ERROR_PREFIX):
        return False, text
    if name == "run_command":
        try:
            result = json.loads(text)
            return result.get("exit_code") == 0, str(result.get("output", ""))
        except (json.JSONDecodeError, AttributeError):
            return False, text
    return True, text


def tool_uses(messages) -> list[ToolUse]:
    """Every tool call of a run, in order, with its outcome: the tool's return (matched by tool_call_id), or
    the retry prompt that refused its arguments (not ok); `ok` stays None for a call never answered."""
    uses: list[ToolUse] = []
    by_id: dict[str, ToolUse] = {}
    for message in messages:
        for part in message.parts:
            if isinstance(part, ToolCallPart):
                use = ToolUse(part.tool_name, decode_arguments(part.args), None)
                uses.append(use)
                by_id[part.tool_call_id] = use
            elif isinstance(part, ToolReturnPart) and part.tool_call_id in by_id:
                use = by_id[part.tool_call_id]
                use.ok, use.result = tool_outcome(use.name, part.content)
            elif isinstance(part, RetryPromptPart) and part.tool_call_id in by_id and part.tool_name:
                by_id[part.tool_call_id].ok = False
    return uses


def response_models(messages) -> list[str]:
    """The `model` every response of the run named (what the server says answered)."""
    return sorted({m.model_name for m in messages if isinstance(m, ModelResponse) and m.model_name})


# Errors of the serving side (HTTP status, connection, timeout): the model never answered, so the episode says
# nothing about the policy. Names as `describe` writes them.
SERVER_ERRORS = ("ModelHTTPError", "ModelAPIError", "APIConnectionError", "APIStatusError", "APITimeoutError", "ConnectError",
                 "ReadTimeout", "RemoteProtocolError", "TimeoutError")  # fmt: skip


def server_failed(episode: Episode) -> bool:
    """The episode ended because the server failed, not because the model did."""
    return bool(episode.error) and episode.error.split(":", 1)[0] in SERVER_ERRORS


def describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "TimeoutError: episode exceeded its time limit"
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:500]


async def run_episode_async(
    task: Task,
    base_url: str,
    model_name: str,
    *,
    max_steps: int = DEFAULT_MAX_STEPS,
    timeout: float = DEFAULT_TIMEOUT,
    session_id: str | None = None,
    stream: bool = False,
    command_timeout: float = 10.0,
    **agent_options,
) -> Episode:
    """Run `task` once in a fresh workspace and check its end state (see `run_episode`)."""
    session_id = session_id or f"{task.id}-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    answer = error = None
    with Workspace(task.files, timeout=command_timeout) as workspace:
        agent = build_agent(base_url, model_name, workspace, session_id, **agent_options)
        limits = UsageLimits(request_limit=max_steps)
        handler = _drain_events if stream else None
        with capture_run_messages() as messages:
            try:
                run = agent.run(task.prompt, usage_limits=limits, event_stream_handler=handler)
                result = await asyncio.wait_for(run, timeout)
                answer = result.output
            except Exception as exc:  # any failure of the run is a failed episode, reported in `error`
                error = describe(exc)
                answer = None
        if agent_options.get("http_client") is None:  # ours: close its connections now
            await agent.model.client.close()
        counts = count_messages(messages)
        uses = tool_uses(messages)
        checks = run_checks(task, workspace.path, answer, uses)
    failed = [f"{r.check['type']}: {r.detail}" for r in checks if not r.passed]
    return Episode(
        task_id=task.id,
        success=error is None and not failed,
        tool_calls=counts["tool_calls"],
        invalid_calls=counts["invalid_calls"],
        retries=counts["retries"],
        steps=counts["steps"],
        wall_s=round(time.monotonic() - started, 3),
        answer=answer,
        error=error,
        session_id=session_id,
        template=task.template,
        split=task.split,
        tool_errors=counts["tool_errors"],
        empty_responses=counts["empty_responses"],
        failed_checks=failed,
        calls=[{"name": use.name, "arguments": use.arguments, "ok": use.ok} for use in uses],
        models=response_models(messages),
    )


async def _drain_events(ctx, events) -> None:
    async for _event in events:
        pass


def run_episode(task: Task, base_url: str, model_name: str, **options) -> Episode:
    """Run one task with the reference agent against `base_url` and check its end state.

    Options: max_steps (model requests, default 8), timeout (seconds for the whole episode, default 120),
    session_id, stream (use streaming requests), command_timeout, and build_agent's keyword options.
    Not callable from inside a running event loop: use `run_episode_async` there."""
    return asyncio.run(run_episode_async(task, base_url, model_name, **options))


async def run_episodes_async(
    tasks: list[Task], base_url: str, model_name: str, *, concurrency: int = 1, progress=None, **options
) -> list[Episode]:
    in_flight = max(1, concurrency)
    semaphore = asyncio.Semaphore(in_flight)
    # with N in flight an episode gets at least 1/N of the server: its time limits (the episode's and each
    # request's) are N times one alone's, so that load never turns into a time-out
    options = {
        **options,
        "timeout": options.get("timeout", DEFAULT_TIMEOUT) * in_flight,
        "request_timeout": options.get("request_timeout", DEFAULT_REQUEST_TIMEOUT) * in_flight,
    }
    # one connection pool for all episodes: a new client per episode costs ~45 ms (TLS context set-up)
    async with httpx.AsyncClient(timeout=options["request_timeout"]) as shared:
        options = {"http_client": shared, **options}

        async def one(task: Task) -> Episode:
            async with semaphore:
                episode = await run_episode_async(task, base_url, model_name, **options)
            if progress is not None:
                progress(episode)
            return episode

        return list(await asyncio.gather(*(one(task) for task in tasks)))


def run_episodes(
    tasks: list[Task],
    base_url: str,
    model_name: str,
    *,
    concurrency: int = 1,
    show_progress: bool = True,
    description: str = "episodes",
    **options,
) -> list[Episode]:
    """Run every task (in order, `concurrency` at a time) with a rich progress bar; episodes in task order.
    With N in flight the time limits (`timeout`, `request_timeout`) are N times one episode's alone."""
    if not show_progress:
        return asyncio.run(
            run_episodes_async(tasks, base_url, model_name, concurrency=concurrency, **options)
        )
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[ok]}"),
    )
    with Progress(*columns, TimeElapsedColumn(), transient=False) as bar:
        bar_id = bar.add_task(description, total=len(tasks), ok="")
        passed = [0]

        def advance(episode: Episode) -> None:
            passed[0] += episode.success
            bar.update(bar_id, advance=1, ok=f"{passed[0]} passed")

        return asyncio.run(
            run_episodes_async(
                tasks, base_url, model_name, concurrency=concurrency, progress=advance, **options
            )
        )


def run_episodes_retrying(
    tasks: list[Task], base_url: str, model_name: str, *, concurrency: int = 1, description: str, **options
) -> list[Episode]:
    """`run_episodes`, then each episode the server failed (`server_failed`: a dropped connection, a timeout)
    run once more, alone, so that it says something about the model, not the server; the first try's error
    and session stay on record. One that fails so again is kept as it is."""
    episodes = run_episodes(
        tasks, base_url, model_name, concurrency=concurrency, description=description, **options
    )
    again = [i for i, episode in enumerate(episodes) if server_failed(episode)]
    if not again:
        return episodes
    retried = run_episodes(
        [tasks[i] for i in again], base_url, model_name, description=f"{description} (again)", **options
    )
    for i, episode in zip(again, retried, strict=True):
        first = episodes[i]
        episodes[i] = replace(episode, first_try_error=first.error, first_try_session=first.session_id)
    return episodes


def summarize(episodes: list[Episode] | list[dict]) -> dict:
    """Successes, success rate, errors, per-episode means and totals, overall and per template (JSON-ready).
    Takes Episodes or their dicts (a report's episodes); a rate or mean of no episodes is None."""
    rows = [e.to_dict() if isinstance(e, Episode) else e for e in episodes]

    def totals(group: list[dict]) -> dict:
        n = len(group)
        successes = sum(1 for e in group if e.get("success"))
        out = {"n_episodes": n, "successes": successes, "success_rate": successes / n if n else None}
        for key in ("tool_calls", "invalid_calls", "retries", "steps", "wall_s"):
            values = [e[key] for e in group if e.get(key) is not None]
            out[f"mean_{key}"] = sum(values) / len(values) if values else None
            out[key] = sum(values)
        out["errors"] = sum(1 for e in group if e.get("error"))
        return out

    templates = sorted({e.get("template") or "" for e in rows})
    by_template = {t: totals([e for e in rows if (e.get("template") or "") == t]) for t in templates}
    return {**totals(rows), "by_template": by_template}
