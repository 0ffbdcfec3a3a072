"""The demo's default teacher: a *scripted demonstrator* served as an OpenAI-compatible chat endpoint.

It is a deterministic policy, not a language model. For each request it finds the task whose prompt is the
conversation's first user message, replays the tool calls and tool results so far, and answers with the next
tool call or the final answer that the task's template calls for. Values it reports or writes come from the
tool results it was sent (so it only succeeds when the tools really ran); names come from the prompt.

    with Teacher(load_suite("default")) as teacher:
        run_episode(task, teacher.base_url, teacher.model_name)

    python -m agent.teacher --suite default --port 8090      # serve until Ctrl-C

The policies plug into core.scripted's server (on 127.0.0.1: POST /v1/chat/completions, non-stream and
streamed with tool-call arguments in fragments the way OpenAI does; GET /v1/models; GET /health). Tool-call
arguments are JSON strings. Usage counts are approximate (characters / 4). Every response's `model` is MODEL_NAME ("…scripted-
demonstrator"), with ":<policy>" appended for the test policies, chosen by requesting model
"flywheel-scripted-demonstrator:<policy>":
  solve        the demonstrator (default)
  answer-only  answers "Done." at once, never calling a tool (its episodes must fail the checkers)
  loop         calls list_files forever (the agent's step limit must end it)
  flaky        first sends a call with invalid arguments, then solves (counts one invalid call and one retry)
  escape       tries to read and write outside the workspace, then reports what the tools said
  lost-call    answers like mlx_lm.server after the model wrote malformed tool JSON: finish_reason
               "tool_calls", content null and no tool_calls (the agent must end with an error)
  and the adversarial policies of `agent.adversaries` (candidates, empty, garbage, ...)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from agent.adversaries import ADVERSARIES
from agent.tasks import Suite, Task, load_suite
from core.scripted import CHAT_PATHS, Http, Reply, ScriptedServer, serve_until_stopped, tool_call

MODEL_NAME = "flywheel-scripted-demonstrator"
POLICIES = ("solve", "answer-only", "loop", "flaky", "escape", "lost-call", *ADVERSARIES)


@dataclass
class Step:
    """One tool call the assistant made and the tool result it got back (None if not answered yet)."""

    name: str
    arguments: dict
    result: str | None


@dataclass
class Call:
    name: str
    arguments: dict


@dataclass
class Answer:
    text: str


@dataclass
class LostCall:
    """A tool-call turn whose call the server could not parse (mlx_lm.server drops it silently)."""


ESCAPE_CALLS = (
    Call("read_file", {"path": "../outside.txt"}),
    Call("read_file", {"path": "/etc/hostname"}),
    Call("write_file", {"path": "../escaped.txt", "content": "x"}),
    Call("list_files", {"path": "/"}),
    Call("run_command", {"command": "cat", "args": ["../outside.txt"]}),
    Call("run_command", {"command": "bash", "args": ["-c", "id"]}),
)


def message_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def parse_conversation(messages: list[dict]) -> tuple[str, list[Step]]:
    """The first user message's text and the tool steps after it, in order."""
    prompt = next((message_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
    steps: list[Step] = []
    by_id: dict[str, Step] = {}
    for message in messages:
        if message.get("role") == "assistant":
            for call in message.get("tool_calls") or []:
                function = call.get("function", {})
                arguments = function.get("arguments") or {}
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments) if arguments.strip() else {}
                    except json.JSONDecodeError:
                        arguments = {"_unparsed": arguments}
                step = Step(function.get("name", ""), arguments, None)
                steps.append(step)
                by_id[call.get("id", "")] = step
        elif message.get("role") == "tool":
            step = by_id.get(message.get("tool_call_id", ""))
            if step is not None:
                step.result = message_text(message.get("content"))
    return prompt.strip(), steps


# ------------------------------------------------------------------------------------------- the policies


def value_of(key: str, text: str | None) -> str | None:
    """The value of a `key = value` line in `text`."""
    match = re.search(rf"^\s*{re.escape(key)}\s*=\s*(.*?)\s*$", text or "", re.MULTILINE)
    return match.group(1) if match else None


def command_output(result: str | None) -> tuple[int | None, str]:
    try:
        data = json.loads(result or "")
        return data.get("exit_code"), str(data.get("output", ""))
    except (json.JSONDecodeError, AttributeError):
        return None, result or ""


def finish_write(steps: list[Step]) -> Answer:
    result = steps[-1].result or ""
    return Answer(f"Failed: {result}" if result.startswith("Error") else "Done.")


def read_then_write(steps: list[Step], source: str, target: str, edit: Callable[[str], str | Answer]):
    """Read `source`, write what `edit` makes of its text to `target` (an Answer from `edit` ends the task
    instead), then report how the write went."""
    if not steps:
        return Call("read_file", {"path": source})
    if len(steps) == 1:
        edited = edit(steps[0].result or "")
        if isinstance(edited, Answer):
            return edited
        return Call("write_file", {"path": target, "content": edited})
    return finish_write(steps)


def solve_read_value(task: Task, steps: list[Step]):
    p = task.params
    if not steps:
        return Call("read_file", {"path": p["file"]})
    value = value_of(p["key"], steps[-1].result)
    return Answer(value if value is not None else f"I could not find {p['key']} in {p['file']}.")


def solve_create_file(task: Task, steps: list[Step]):
    p = task.params
    if not steps:
        return Call("write_file", {"path": p["file"], "content": p["text"] + "\n"})
    return finish_write(steps)


def solve_replace_value(task: Task, steps: list[Step]):
    p = task.params

    def replace(text: str) -> str | Answer:
        if value_of(p["key"], text) is None:
            return Answer(f"I could not find {p['key']} in {p['file']}.")
        pattern = rf"^(\s*{re.escape(p['key'])}\s*=\s*).*$"
        return re.sub(pattern, lambda m: m.group(1) + p["new"], text, count=1, flags=re.MULTILINE)

    return read_then_write(steps, p["file"], p["file"], replace)


def solve_find_definition(task: Task, steps: list[Step]):
    func = task.params["func"]
    if not steps:
        return Call("list_files", {"path": "."})
    for step in steps[1:]:
        if f"def {func}(" in (step.result or ""):
            return Answer(step.arguments.get("path", ""))
    listed = [line.strip() for line in (steps[0].result or "").splitlines() if line.strip().endswith(".py")]
    read = {step.arguments.get("path") for step in steps[1:]}
    for path in listed:
        if path not in read:
            return Call("read_file", {"path": path})
    return Answer(f"No file defines {func}.")


def solve_run_script(task: Task, steps: list[Step]):
    if not steps:
        return Call("run_command", {"command": "python", "args": [task.params["script"]]})
    _code, output = command_output(steps[-1].result)
    return Answer(output.strip())


def solve_copy_value(task: Task, steps: list[Step]):
    p = task.params

    def copy(text: str) -> str | Answer:
        value = value_of(p["key"], text)
        return Answer(f"I could not find {p['key']} in {p['src']}.") if value is None else value + "\n"

    return read_then_write(steps, p["src"], p["dst"], copy)


def solve_say_word(task: Task, steps: list[Step]):
    return Answer(task.params["word"])


def solve_append_line(task: Task, steps: list[Step]):
    p = task.params

    def append(text: str) -> str | Answer:
        if text.startswith("Error"):
            return Answer(f"Failed: {text}")
        if text and not text.endswith("\n"):
            text += "\n"
        return text + p["line"] + "\n"

    return read_then_write(steps, p["file"], p["file"], append)


def solve_count_lines(task: Task, steps: list[Step]):
    if not steps:
        return Call("run_command", {"command": "wc", "args": ["-l", task.params["file"]]})
    _code, output = command_output(steps[-1].result)
    match = re.match(r"\s*(\d+)", output)
    return Answer(match.group(1) if match else f"Failed: {output.strip()}")


TEMPLATE_POLICIES = {
    "read_value": solve_read_value,
    "report_value": solve_read_value,
    "create_file": solve_create_file,
    "replace_value": solve_replace_value,
    "find_definition": solve_find_definition,
    "run_script": solve_run_script,
    "copy_value": solve_copy_value,
    "say_word": solve_say_word,
    "append_line": solve_append_line,
    "count_lines": solve_count_lines,
}


def next_action(policy: str, task: Task | None, steps: list[Step]) -> Call | Answer | LostCall:
    """The scripted demonstrator's next move for `task` after `steps`."""
    if policy in ADVERSARIES:
        return ADVERSARIES[policy](task, steps)
    if policy == "answer-only":
        return Answer("Done.")
    if policy == "loop":
        return Call("list_files", {"path": "."})
    if policy == "lost-call":
        return LostCall()
    if policy == "escape":
        if len(steps) < len(ESCAPE_CALLS):
            return ESCAPE_CALLS[len(steps)]
        return Answer("\n".join((step.result or "").split("\n", 1)[0] for step in steps))
    if task is None:
        return Answer("scripted demonstrator: no task in its suite has this prompt.")
    if policy == "flaky":
        if not steps:
            return Call("read_file", {"file": "?"})
        steps = steps[1:]
    solve = TEMPLATE_POLICIES.get(task.template)
    if solve is None:
        return Answer(f"scripted demonstrator: no policy for template {task.template!r}.")
    return solve(task, steps)


# ------------------------------------------------------------------------------------------- the server


def approx_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def call_id(prompt: str, index: int) -> str:
    return "call_" + hashlib.sha1(f"{prompt}\0{index}".encode()).hexdigest()[:16]


def reply_for(action, model: str, prompt: str, n_steps: int, prompt_tokens: int) -> Reply:
    """The chat-completion turn that carries `action`."""
    if isinstance(action, Call):
        arguments = json.dumps(action.arguments)
        call = tool_call(call_id(prompt, n_steps), action.name, arguments)
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish, completion_tokens = "tool_calls", approx_tokens(action.name + arguments)
    elif isinstance(action, LostCall):
        message = {"role": "assistant", "content": None}
        finish, completion_tokens = "tool_calls", 1
    else:
        message = {"role": "assistant", "content": action.text}
        finish, completion_tokens = "stop", approx_tokens(action.text)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return Reply(message, finish, model, usage, id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()))


class Teacher(ScriptedServer):
    """The scripted demonstrator on 127.0.0.1:`port` (a free one by default), serving in a background thread."""

    def __init__(
        self,
        suite: Suite | str | None = None,
        *,
        policy: str = "solve",
        host: str = "127.0.0.1",
        port: int | None = None,
        verbose: bool = False,
        record: bool = False,
    ):
        """`record=True` keeps every chat request's headers and body in `.recorded` (for tests)."""
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
        self.suite = suite if isinstance(suite, Suite) else load_suite(suite or "default")
        self.policy = policy
        self.verbose = verbose
        self.tasks = self.suite.by_prompt()
        models = [MODEL_NAME] + [f"{MODEL_NAME}:{p}" for p in POLICIES if p != "solve"]
        super().__init__(self.answer, models=models, host=host, port=port or 0, record=record)

    @property
    def model_name(self) -> str:
        return MODEL_NAME if self.policy == "solve" else f"{MODEL_NAME}:{self.policy}"

    @property
    def recorded(self) -> list[dict]:
        """The chat requests received (with `record=True`): {"headers", "body"} each."""
        return [
            {"headers": r.headers, "body": r.json()}
            for r in self.received
            if r.method == "POST" and r.path.rstrip("/") in CHAT_PATHS
        ]

    async def answer(self, request: dict, http: Http) -> None:
        requested = str(request.get("model") or MODEL_NAME)
        policy = self.policy
        if requested.startswith(MODEL_NAME + ":"):
            policy = requested.split(":", 1)[1]
            if policy not in POLICIES:
                await http.error(404, f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
                return
        model = MODEL_NAME if policy == "solve" else f"{MODEL_NAME}:{policy}"
        messages = request["messages"]
        prompt, steps = parse_conversation(messages)
        action = next_action(policy, self.tasks.get(prompt), steps)
        offered = {tool.get("function", {}).get("name") for tool in request.get("tools") or []}
        if isinstance(action, Call) and action.name not in offered:
            action = Answer(f"scripted demonstrator: the tool {action.name} is not available.")
        if self.verbose:
            print(f"teacher: {model} step {len(steps)} -> {type(action).__name__}", flush=True)
        reply = reply_for(action, model, prompt, len(steps), approx_tokens(json.dumps(messages)))
        await http.reply(request, reply)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m agent.teacher",
        description="Serve the scripted demonstrator (a deterministic policy that solves the task suite) as an "
        "OpenAI-compatible /v1/chat/completions endpoint on 127.0.0.1.",
        epilog="example: python -m agent.teacher --suite default --port 8090  "
        "(then point an agent at http://127.0.0.1:8090/v1, model flywheel-scripted-demonstrator)",
    )
    parser.add_argument(
        "--suite", default="default", help="suite name or path to a suite JSON (default: default)"
    )
    parser.add_argument(
        "--port", type=int, default=8090, help="port on 127.0.0.1 (default 8090; 0 = any free)"
    )
    parser.add_argument("--policy", choices=POLICIES, default="solve", help="default policy (default: solve)")
    parser.add_argument("--verbose", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    teacher = Teacher(args.suite, policy=args.policy, port=args.port or None, verbose=args.verbose)

    def announce(server: Teacher) -> None:
        n_train, n_held = len(server.suite.train), len(server.suite.held_out)
        print(
            f"scripted demonstrator serving {n_train} train + {n_held} held-out tasks of suite "
            f"{server.suite.name!r}"
        )
        print(f"base_url {server.base_url}  model {server.model_name}  (Ctrl-C stops)", flush=True)

    serve_until_stopped(teacher, announce)


if __name__ == "__main__":
    main()
