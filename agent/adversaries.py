"""Adversarial policies: ways to look busy or plausible without doing a task's work, served by the teacher.

Each is a policy in the teacher's style (`agent.teacher.next_action`): given the task (None for an unknown
prompt) and the tool steps so far, the next tool call or answer. The teacher serves them as real
OpenAI-compatible endpoints (model "flywheel-scripted-demonstrator:<policy>"), so the real agent, the real
sandbox and the real scorers meet them. None of them may pass a task that needs tools, nor make an exact call
on a turn that calls for one (tests/test_adversaries.py):

  candidates    never calls a tool; answers with every number and word of the task's prompt and files, and
                the numbers 0-20 (a list that contains most right answers)
  empty         answers ""
  whitespace    answers with spaces and newlines
  garbage       calls every tool with garbage arguments (wrong types, missing keys, paths out of the
                workspace, commands not allowed), then answers with the candidates
  right-tool    calls the tool the task starts with, on a near-twin of the right argument (the file name
                with ".bak"), then answers with the candidates
  repeat        repeats one harmless call (`ls`) until the agent's step limit ends the episode
  call-as-text  writes the call the task needs as text in its answer, never as a structured call
  right-call    makes the task's reading calls exactly (read, list, run: real evidence), never writes, and
                answers with the candidates plus every number the tools returned; at turn level its first
                calls are right, and are credited: only its answers are lies
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from agent.actions import Answer, Call, Step, solve
from agent.tasks import NUMBER, Task

WORD = re.compile(r"[A-Za-z_][\w.-]*")
GUESSES = [str(n) for n in range(21)]  # small counts: what a "how many lines" guess would list
REPEATED = ("run_command", {"command": "ls", "args": []})
GARBAGE = (
    ("read_file", {"path": 404}),
    ("write_file", {"path": "", "content": None}),
    ("list_files", {"dir": "?"}),
    ("run_command", {"command": "rm", "args": "-rf /"}),
    ("read_file", {"path": "\u0000\u0007"}),
    ("write_file", {"path": "../../escaped.txt", "content": "garbage"}),
    ("list_files", {"path": "/dev/null/x"}),
    ("run_command", {"command": "%%%", "args": ["@@@"]}),
)


def unique(items) -> list[str]:
    return list(dict.fromkeys(items))


def candidate_list(task: Task | None, steps: list[Step], from_results: bool = False) -> str:
    """Every number and word of the task's prompt, file names and file contents (and, `from_results`, every
    number the tool results showed), plus the numbers 0-20, space-separated."""
    texts = [task.prompt, *task.files, *task.files.values()] if task else []
    shown = [step.result or "" for step in steps] if from_results else []
    numbers = unique([n for text in texts + shown for n in NUMBER.findall(text)] + GUESSES)
    words = unique(w for text in texts for w in WORD.findall(text))
    return " ".join(numbers + words)


def solution(task: Task | None, steps: list[Step]) -> Call | Answer:
    """What the scripted demonstrator would do next."""
    return solve(task, steps)


def call_as_text(name: str, arguments: dict) -> str:
    return f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def near_twin(arguments: dict) -> dict:
    """The arguments with every path one step off: `x.txt` -> `x.txt.bak` (also inside a command's args)."""
    twin = dict(arguments)
    if isinstance(twin.get("path"), str):
        twin["path"] += ".bak"
    if isinstance(twin.get("args"), list):
        twin["args"] = [arg + ".bak" if "." in arg else arg for arg in twin["args"]]
    return twin


def candidates(task, steps):
    return Answer(candidate_list(task, steps))


def empty(task, steps):
    return Answer("")


def whitespace(task, steps):
    return Answer(" \n\t \n")


def garbage(task, steps):
    if len(steps) < len(GARBAGE):
        return Call(*GARBAGE[len(steps)])
    return candidates(task, steps)


def right_tool(task, steps):
    first = solution(task, [])
    if not steps and isinstance(first, Call):
        return Call(first.name, near_twin(first.arguments))
    return candidates(task, steps)


def repeat(task, steps):
    return Call(*REPEATED)


def call_text(task, steps):
    action = solution(task, steps)
    if not isinstance(action, Call):
        action = solution(task, [])
    if not isinstance(action, Call):
        action = Call("list_files", {"path": "."})
    return Answer(call_as_text(action.name, action.arguments))


def right_call(task, steps):
    action = solution(task, steps)
    if isinstance(action, Call) and action.name != "write_file":
        return action
    return Answer(candidate_list(task, steps, from_results=True))


ADVERSARIES: dict[str, Callable] = {
    "candidates": candidates,
    "empty": empty,
    "whitespace": whitespace,
    "garbage": garbage,
    "right-tool": right_tool,
    "repeat": repeat,
    "call-as-text": call_text,
    "right-call": right_call,
}
