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
import time
import uuid

from agent.actions import Answer, Call, LostCall, Step, solve
from agent.adversaries import ADVERSARIES
from agent.tasks import Suite, Task, load_suite
from core.scripted import CHAT_PATHS, Http, Reply, ScriptedServer, serve_until_stopped, tool_call

MODEL_NAME = "flywheel-scripted-demonstrator"
POLICIES = ("solve", "answer-only", "loop", "flaky", "escape", "lost-call", *ADVERSARIES)


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
