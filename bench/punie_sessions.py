"""Punie-like sessions for bench/session_training.py: an agent whose every request carries a ~20,000-character
system prompt (Python stubs of the functions its `execute_code` tool may call) and 8 tools (`strict`, `anyOf`
parameters), 3-10 tool calls per session with their results, then a final answer; generated from a seed."""

from __future__ import annotations

import json
import random

STRICT = {"additionalProperties": False}


def _tool(name: str, summary: str, returns: str, properties: dict, required: list[str], strict: bool = True):
    parameters = {"type": "object", "properties": properties, "required": required}
    function = {
        "name": name,
        "description": f"<summary>{summary}</summary><returns>{returns}</returns>",
        "parameters": {**parameters, **(STRICT if strict else {})},
    }
    if strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _terminal_tool(name: str, summary: str, returns: str) -> dict:
    properties = {"terminal_id": {"type": "string", "description": "Id returned by run_command."}}
    return _tool(name, summary, returns, properties, ["terminal_id"])


PUNIE_LIKE_TOOLS = [
    _tool(
        "read_file",
        "Read a text file of the workspace.",
        "The file's contents.",
        {"path": {"type": "string", "description": "Path relative to the workspace root."}},
        ["path"],
    ),
    _tool(
        "write_file",
        "Create or replace a text file of the workspace.",
        "A confirmation with the number of characters written.",
        {
            "path": {"type": "string", "description": "Path relative to the workspace root."},
            "content": {"type": "string", "description": "The complete new contents."},
        },
        ["path", "content"],
    ),
    _tool(
        "run_command",
        "Start a program in a terminal of the workspace.",
        "The terminal id and the output so far.",
        {
            "command": {"type": "string", "description": "The program to run."},
            "args": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
                "description": "Its arguments.",
            },
            "cwd": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "Working directory relative to the workspace root.",
            },
        },
        ["command"],
        strict=False,
    ),
    _tool(
        "execute_code",
        "Run Python code that may call the workspace functions listed in the system prompt.",
        "What the code printed, and the value of its last expression.",
        {"code": {"type": "string", "description": "Python source."}},
        ["code"],
    ),
    _terminal_tool(
        "get_terminal_output", "Read what a terminal printed since the last read.", "The new output."
    ),
    _terminal_tool("release_terminal", "Forget a finished terminal.", "A confirmation."),
    _terminal_tool("wait_for_terminal_exit", "Wait until a terminal's program exits.", "Its exit code."),
    _terminal_tool("kill_terminal", "Stop a terminal's program.", "A confirmation."),
]

# The functions `execute_code` may call: name | parameters | what it does | what it returns.
WORKSPACE_FUNCTIONS = [
    tuple(part.strip() for part in line.split("|"))
    for line in """\
read_text | path: str | reads a text file | the text
write_text | path: str, text: str | writes a text file, creating folders | the number of characters
append_text | path: str, text: str | appends to a text file | the new size in characters
list_dir | path: str = '.' | lists a folder | the names, folders first
glob_files | pattern: str | finds files by a glob pattern | the matching paths
grep | pattern: str, path: str = '.' | searches files for a regular expression | (path, line, text) rows
file_info | path: str | describes a file | size, modification time and kind
move_path | source: str, target: str | moves or renames a file or folder | the new path
delete_path | path: str | deletes a file or an empty folder | True when something was deleted
make_dir | path: str | creates a folder and its parents | the folder's path
run | argv: list[str], cwd: str or None = None | runs a program to completion | exit code and output
run_tests | selector: str or None = None | runs the test suite or a part of it | a summary per test
lint | paths: list[str] or None = None | checks style and common mistakes | findings per file
format_code | paths: list[str] or None = None | reformats source files | the changed paths
type_check | paths: list[str] or None = None | checks type annotations | the errors found
git_status |  | shows changed and untracked files | (status, path) rows
git_diff | path: str or None = None | shows uncommitted changes | a unified diff
git_log | limit: int = 10 | shows recent commits | (hash, author, subject) rows
git_commit | message: str | commits every staged change | the new commit's hash
parse_python | path: str | parses a Python module | its classes and functions with line numbers
find_symbol | name: str | locates where a name is defined | (path, line) rows
find_references | name: str | locates where a name is used | (path, line, text) rows
replace_in_file | path: str, old: str, new: str | replaces one exact passage | True when it was found
read_json | path: str | reads a JSON file | the parsed value
write_json | path: str, value: object | writes a JSON file, indented | the number of characters
http_get | url: str | fetches a URL from the local network | status code and body
""".splitlines()
]

PREAMBLE = """\
You are a careful software engineer working inside one project workspace. You can read and change its files,
run its programs and tests, and inspect its history. Work in small verified steps: look before you change
anything, change one thing at a time, and run the relevant tests after every change. Never guess the contents
of a file you have not read. Prefer the project's own conventions (naming, layout, test style) over your own.

Tools. You have eight tools. `read_file` and `write_file` work on single files. `run_command` starts a program
in a terminal and returns at once with its id; use `get_terminal_output`, `wait_for_terminal_exit`,
`kill_terminal` and `release_terminal` with that id. `execute_code` runs Python in the workspace, where the
functions below are already imported: use it to combine several reads, searches or checks in one step.

Answers. When the task is done, reply with a short summary of what you changed and how you verified it. If
you could not finish, say what is missing and why. Do not paste whole files into your answer.

Conventions. Keep functions short and named for what they do; write a test for every bug you fix, named
after the behaviour it checks; keep imports at the top of a module and sorted; leave no debugging prints or
commented-out code behind; and update the documentation in the same change as the behaviour it describes.

Functions available inside execute_code:
"""


def workspace_stub(name: str, params: str, does: str, returns: str) -> str:
    params = params.replace(" or None", " | None")
    args = [p.split(":")[0].strip() for p in params.split(",") if p.strip()]
    arg_lines = (
        "".join(
            f"        {arg}: the {arg.replace('_', ' ')} this call works on; see the project's layout for valid values.\n"
            for arg in args
        )
        or "        (none)\n"
    )
    return (
        f"def {name}({params}):\n"
        f'    """{does.capitalize()} in the workspace and returns {returns}.\n\n'
        f"    Paths are relative to the workspace root and may not leave it. Errors are raised as exceptions\n"
        f"    whose message names the path or argument at fault; catch them to try something else.\n\n"
        f"    Args:\n{arg_lines}\n"
        f"    Returns:\n        {returns.capitalize()}.\n\n"
        f"    Raises:\n        FileNotFoundError: a path that does not exist.\n"
        f"        PermissionError: a path outside the workspace, or one the project marks read-only.\n\n"
        f"    Example:\n        >>> result = {name}({', '.join(repr(a) for a in args)})\n"
        f'    """\n\n'
    )


def punie_like_system_prompt() -> str:
    return PREAMBLE + "\n" + "".join(workspace_stub(*entry) for entry in WORKSPACE_FUNCTIONS)


TASKS = [
    "The test for the config loader fails since yesterday's change. Find out why and fix it.",
    "Add a --verbose flag to the command-line entry point and document it in the README.",
    "Rename the helper `load_cfg` to `load_config` everywhere and keep the tests passing.",
    "The CSV export writes an empty last line. Fix it and add a test.",
    "Find every TODO in the package and list them with their files in TODO.md.",
    "Make the retry decorator stop after the configured number of attempts and test it.",
]
MODULES = [
    "src/app/config.py",
    "src/app/cli.py",
    "src/app/export.py",
    "src/app/retry.py",
    "tests/test_app.py",
]


def _source(rng: random.Random, path: str) -> str:
    names = rng.sample(["load", "parse", "merge", "export", "retry", "render", "check", "write"], 3)
    body = "".join(
        f"def {n}_{path.rsplit('/', 1)[-1][:-3]}(value, *, strict=False):\n"
        f"    if strict and value is None:\n        raise ValueError('{n}: value is required')\n"
        f"    return value\n\n"
        for n in names
    )
    return f'"""{path}: part of the app."""\n\nfrom __future__ import annotations\n\n' + body


def _step(rng: random.Random, terminal: list[str]) -> tuple[str, dict, str]:
    """One tool call and its result."""
    if terminal and rng.random() < 0.5:
        name = rng.choice(
            ["get_terminal_output", "wait_for_terminal_exit", "release_terminal", "kill_terminal"]
        )
        result = {
            "get_terminal_output": "collected 12 items\n\ntests/test_app.py ........F...\n",
            "wait_for_terminal_exit": "exit code 1",
            "release_terminal": "released",
            "kill_terminal": "killed",
        }[name]
        return name, {"terminal_id": terminal[-1]}, result
    kind = rng.choice(["read", "read", "run", "code", "write"])
    path = rng.choice(MODULES)
    if kind == "read":
        return "read_file", {"path": path}, _source(rng, path)
    if kind == "write":
        return "write_file", {"path": path, "content": _source(rng, path)}, f"wrote {path}"
    if kind == "code":
        code = (
            f"rows = grep({rng.choice(['TODO', 'load_cfg', 'retry'])!r}, 'src')\nprint(len(rows), rows[:3])"
        )
        return "execute_code", {"code": code}, "3 [('src/app/cli.py', 12, 'TODO: flags')]"
    terminal.append(f"term-{len(terminal) + 1}")
    arguments = {"command": "pytest", "args": ["-q", "tests/"], "cwd": rng.choice([None, "."])}
    return "run_command", arguments, json.dumps({"terminal_id": terminal[-1], "output": "running"})


def punie_like_sessions(count: int, seed: int = 0) -> list[dict]:
    """`count` session samples: the system prompt, a task, 3-10 tool calls with their results, an answer."""
    from core.samples import session_sample
    from core.toolcalls import ToolCall

    rng = random.Random(seed)
    system = punie_like_system_prompt()
    samples = []
    for _ in range(count):
        messages = [{"role": "system", "content": system}, {"role": "user", "content": rng.choice(TASKS)}]
        terminal: list[str] = []
        for _ in range(rng.randint(3, 10)):
            name, arguments, result = _step(rng, terminal)
            call = ToolCall(name, arguments).as_openai(f"call_{rng.getrandbits(64):016x}")
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        messages.append({"role": "assistant", "content": "Fixed it: the tests pass again (12 passed)."})
        samples.append(session_sample(messages, PUNIE_LIKE_TOOLS))
    return samples
