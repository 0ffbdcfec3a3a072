"""The demo's default teacher: a *scripted demonstrator* served as an OpenAI-compatible chat endpoint.

It is a deterministic policy, not a language model. For each request it finds the task whose prompt is the
conversation's first user message, replays the tool calls and tool results so far, and answers with the next
tool call or the final answer that the task's template calls for. Values it reports or writes come from the
tool results it was sent (so it only succeeds when the tools really ran); names come from the prompt.

    with Teacher(load_suite("default")) as teacher:
        run_episode(task, teacher.base_url, teacher.model_name)

    python -m agent.teacher --suite default --port 8090      # serve until Ctrl-C

Endpoints on 127.0.0.1: POST /v1/chat/completions (non-stream, and stream as SSE with tool-call arguments
sent in fragments the way OpenAI does), GET /v1/models, GET /health. Tool-call arguments are JSON strings.
Usage counts are approximate (characters / 4). Every response's `model` is MODEL_NAME ("…scripted-
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
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.adversaries import ADVERSARIES
from agent.tasks import Suite, Task, load_suite
from core.net import free_port

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
    if not steps:
        return Call("read_file", {"path": p["file"]})
    if len(steps) == 1:
        text = steps[0].result or ""
        if value_of(p["key"], text) is None:
            return Answer(f"I could not find {p['key']} in {p['file']}.")
        pattern = rf"^(\s*{re.escape(p['key'])}\s*=\s*).*$"
        content = re.sub(pattern, lambda m: m.group(1) + p["new"], text, count=1, flags=re.MULTILINE)
        return Call("write_file", {"path": p["file"], "content": content})
    return finish_write(steps)


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
    if not steps:
        return Call("read_file", {"path": p["src"]})
    if len(steps) == 1:
        value = value_of(p["key"], steps[0].result)
        if value is None:
            return Answer(f"I could not find {p['key']} in {p['src']}.")
        return Call("write_file", {"path": p["dst"], "content": value + "\n"})
    return finish_write(steps)


def solve_say_word(task: Task, steps: list[Step]):
    return Answer(task.params["word"])


def solve_append_line(task: Task, steps: list[Step]):
    p = task.params
    if not steps:
        return Call("read_file", {"path": p["file"]})
    if len(steps) == 1:
        text = steps[0].result or ""
        if text.startswith("Error"):
            return Answer(f"Failed: {text}")
        if text and not text.endswith("\n"):
            text += "\n"
        return Call("write_file", {"path": p["file"], "content": text + p["line"] + "\n"})
    return finish_write(steps)


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


def completion_response(action, model: str, prompt: str, n_steps: int, prompt_tokens: int) -> dict:
    created = int(time.time())
    if isinstance(action, Call):
        arguments = json.dumps(action.arguments)
        message = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id(prompt, n_steps),
                    "type": "function",
                    "function": {"name": action.name, "arguments": arguments},
                }
            ],
        }
        finish, completion_tokens = "tool_calls", approx_tokens(action.name + arguments)
    elif isinstance(action, LostCall):
        message = {"role": "assistant", "content": None}
        finish, completion_tokens = "tool_calls", 1
    else:
        message = {"role": "assistant", "content": action.text}
        finish, completion_tokens = "stop", approx_tokens(action.text)
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def stream_chunks(response: dict, include_usage: bool) -> list[dict]:
    """The chunks of a streamed version of `response`: text in two pieces, tool-call arguments in fragments."""
    base = {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"]}
    base["model"] = response["model"]
    choice = response["choices"][0]
    message = choice["message"]

    def chunk(delta: dict, finish=None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    chunks = [chunk({"role": "assistant", "content": None if message.get("tool_calls") else ""})]
    for index, call in enumerate(message.get("tool_calls") or []):
        arguments = call["function"]["arguments"]
        head = {"index": index, "id": call["id"], "type": "function"}
        chunks.append(
            chunk({"tool_calls": [{**head, "function": {"name": call["function"]["name"], "arguments": ""}}]})
        )
        cut = len(arguments) // 2
        for piece in (arguments[:cut], arguments[cut:]):
            chunks.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    if message.get("content"):
        text = message["content"]
        cut = len(text) // 2
        chunks += [chunk({"content": piece}) for piece in (text[:cut], text[cut:]) if piece]
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**base, "choices": [], "usage": response["usage"]})
    return chunks


class TeacherHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls
    server: TeacherServer

    def log_message(self, format, *args):  # quiet unless asked
        if self.server.verbose:
            super().log_message(format, *args)

    def send_json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status: int, message: str) -> None:
        self.send_json(
            status, {"error": {"message": message, "type": "invalid_request_error", "code": status}}
        )

    def do_GET(self):
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self.send_json(200, {"status": "ok", "model": MODEL_NAME})
        elif path in ("/v1/models", "/models"):
            models = [MODEL_NAME] + [f"{MODEL_NAME}:{p}" for p in POLICIES if p != "solve"]
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "flywheel"} for m in models]
            self.send_json(200, {"object": "list", "data": data})
        else:
            self.send_error_json(404, f"no route {self.path}")

    def do_POST(self):
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self.send_error_json(404, f"no route {self.path}")
            return
        try:
            body = json.loads(raw or b"{}")
            messages = body["messages"]
            if not isinstance(messages, list):
                raise TypeError("messages must be a list")
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            self.send_error_json(400, f"bad request body: {error}")
            return
        requested = str(body.get("model") or MODEL_NAME)
        policy = self.server.policy
        if requested.startswith(MODEL_NAME + ":"):
            policy = requested.split(":", 1)[1]
            if policy not in POLICIES:
                self.send_error_json(404, f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
                return
        model = MODEL_NAME if policy == "solve" else f"{MODEL_NAME}:{policy}"
        prompt, steps = parse_conversation(messages)
        action = next_action(policy, self.server.tasks.get(prompt), steps)
        offered = {tool.get("function", {}).get("name") for tool in body.get("tools") or []}
        if isinstance(action, Call) and action.name not in offered:
            action = Answer(f"scripted demonstrator: the tool {action.name} is not available.")
        with self.server.lock:
            self.server.requests += 1
            if self.server.record:
                self.server.recorded.append({"headers": dict(self.headers.items()), "body": body})
        response = completion_response(action, model, prompt, len(steps), approx_tokens(json.dumps(messages)))
        if not body.get("stream"):
            self.send_json(200, response)
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for chunk in stream_chunks(response, include_usage):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()


class TeacherServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, tasks: dict[str, Task], policy: str, verbose: bool, record: bool = False):
        super().__init__(address, TeacherHandler)
        self.record = record
        self.recorded: list[dict] = []
        self.tasks = tasks
        self.policy = policy
        self.verbose = verbose
        self.requests = 0
        self.lock = threading.Lock()


class Teacher:
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
        self.host = host
        self.port = port or free_port(host)
        self.verbose = verbose
        self.record = record
        self.server: TeacherServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def model_name(self) -> str:
        return MODEL_NAME if self.policy == "solve" else f"{MODEL_NAME}:{self.policy}"

    @property
    def recorded(self) -> list[dict]:
        return self.server.recorded if self.server else []

    @property
    def requests(self) -> int:
        """Chat completion requests answered so far."""
        return self.server.requests if self.server else 0

    def start(self) -> Teacher:
        tasks = self.suite.by_prompt()
        self.server = TeacherServer((self.host, self.port), tasks, self.policy, self.verbose, self.record)
        self.thread = threading.Thread(target=self.server.serve_forever, name="teacher", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)

    def __enter__(self) -> Teacher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


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
    teacher.start()
    n_train, n_held = len(teacher.suite.train), len(teacher.suite.held_out)
    print(
        f"scripted demonstrator serving {n_train} train + {n_held} held-out tasks of suite {teacher.suite.name!r}"
    )
    print(f"base_url {teacher.base_url}  model {teacher.model_name}  (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        teacher.stop()


if __name__ == "__main__":
    main()
