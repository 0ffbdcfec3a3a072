"""What a scripted policy does next, given the tool steps so far (call a tool, answer, or lose a call), and the
demonstrator's own policy per task template: the work done right, which the teacher serves and the adversaries
imitate up to the point where they cheat."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from agent.tasks import Task


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


def solve_add_numbers(task: Task, steps: list[Step]):
    """A question none of the agent's tools serves: answered directly, without a call."""
    return Answer(task.params["total"])


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
    "add_numbers": solve_add_numbers,
    "count_apples": solve_add_numbers,
    "append_line": solve_append_line,
    "count_lines": solve_count_lines,
}


def solve(task: Task, steps: list[Step]) -> Call | Answer:
    """The demonstrator's next action on `task` after `steps`."""
    policy = TEMPLATE_POLICIES.get(task.template)
    if policy is None:
        return Answer(f"scripted demonstrator: no policy for template {task.template!r}.")
    return policy(task, steps)
