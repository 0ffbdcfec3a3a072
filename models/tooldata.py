"""The tiny tool-calling model's training data: chats in which a user asks for a file to be read, listed or
written or a command to be run, and the assistant calls the agent's tools (`agent.tools`) to do it.

    tool_call_samples(n, seed)   n mlx-lm chat samples {"messages", "tools"}, deterministic for a seed

Requests, paths, contents and commands are drawn from `models.corpus`'s word lists. `models.tiny` trains its
tokenizer on these chats rendered by its chat template, and fine-tunes the tool-calling model on them.
"""

from __future__ import annotations

import json
import random

from agent.tools import AGENT_TOOLS, SYSTEM_PROMPT
from models import corpus

READ_REQUESTS = [
    "Read {path}.",
    "Show me {path}.",
    "What is in {path}?",
    "Open {path} and show me its contents.",
    "Print the contents of {path}.",
    "Can you read {path} for me?",
    "Please look at {path}.",
    "I need to see {path}.",
]
LIST_REQUESTS = [
    "List the files in {path}.",
    "What files are in {path}?",
    "Show me what is inside {path}.",
    "Which files does {path} contain?",
    "List {path}.",
    "Can you list the folder {path}?",
]
WRITE_REQUESTS = [
    "Write {content} to {path}.",
    "Create {path} with the content {content}.",
    "Save the text {content} in {path}.",
    "Put {content} into {path}.",
    "Overwrite {path} with {content}.",
]
RUN_REQUESTS = [
    "Run {cmdline}.",
    "Execute {cmdline}.",
    "Please run the command {cmdline}.",
    "Can you run {cmdline} for me?",
]
RUN_IN_REQUESTS = ["Run {cmdline} in {cwd}.", "Execute {cmdline} inside {cwd}.", "In {cwd}, run {cmdline}."]
PARALLEL_READ_REQUESTS = ["Read {path} and {other}.", "Show me both {path} and {other}."]
MENTION_IN_BACKTICKS = 0.8
ANSWER_FRACTION = 0.25  # samples that end with the answer after the tool results rather than with the call
WRITE_CONTENTS = [
    "hello world",
    "TODO: add tests",
    "print('hi')",
    "# Notes",
    "x = 1",
    "done",
    "version = 2",
    "fix the bug",
]


def _call(rng: random.Random, name: str, arguments: dict) -> dict:
    call_id = "call_" + "".join(rng.choice("0123456789abcdef") for _ in range(12))
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _mention(rng: random.Random, text: str) -> str:
    """Mostly in backticks: a path or value then splits into the same tokens as inside the JSON arguments
    (`src/app.py` and "src/app.py" both give `src` `/app` `.py`; a bare " src/app.py" gives ` src`). Measured:
    it made the trained model's JSON more reliable (parseable calls 77-80/80 over 5 seeds, was 61-80/80)."""
    return f"`{text}`" if rng.random() < MENTION_IN_BACKTICKS else text


def _tool_turn(rng: random.Random) -> tuple[str, list[dict], list[str], str]:
    """A request, the assistant's calls, each call's tool result, and the final answer after the results."""
    kind = rng.choice(["read", "read", "list", "write", "run", "run", "run", "parallel"])
    if kind == "read":
        path = corpus.random_path(rng)
        content = rng.choice(corpus.FILE_CONTENTS)
        answer = rng.choice([f"Here is {path}:\n{content}", f"I read {path}. It contains:\n{content}"])
        return (
            rng.choice(READ_REQUESTS).format(path=_mention(rng, path)),
            [_call(rng, "read_file", {"path": path})],
            [content],
            answer,
        )
    if kind == "list":
        path = rng.choice(corpus.DIRECTORIES + ["."])
        names = sorted(
            {f"{rng.choice(corpus.STEMS)}{rng.choice(corpus.EXTENSIONS)}" for _ in range(rng.randint(1, 4))}
        )
        answer = f"{path} contains: {', '.join(names)}."
        request = rng.choice(LIST_REQUESTS).format(path=_mention(rng, path))
        return request, [_call(rng, "list_files", {"path": path})], ["\n".join(names)], answer
    if kind == "write":
        path = corpus.random_path(rng)
        content = rng.choice(WRITE_CONTENTS)
        request = rng.choice(WRITE_REQUESTS).format(path=_mention(rng, path), content=_mention(rng, content))
        result = f"Wrote {len(content)} characters to {path}."
        answer = rng.choice([f"Done: {path} now contains {content!r}.", f"I wrote {path}."])
        return request, [_call(rng, "write_file", {"path": path, "content": content})], [result], answer
    if kind == "run":
        command, arg_lists = rng.choice(corpus.COMMANDS)
        args = rng.choice(arg_lists)
        cmdline = " ".join([command, *args])
        arguments = {"command": command, "args": args}
        if rng.random() < 0.3:
            arguments["cwd"] = rng.choice(corpus.DIRECTORIES)
            request = rng.choice(RUN_IN_REQUESTS).format(
                cmdline=_mention(rng, cmdline), cwd=_mention(rng, arguments["cwd"])
            )
        else:
            request = rng.choice(RUN_REQUESTS).format(cmdline=_mention(rng, cmdline))
        code = rng.choice([0, 0, 0, 1])
        result = json.dumps(
            {"exit_code": code, "output": rng.choice(["ok", "1 passed", "no changes", "error"])}
        )
        answer = f"`{cmdline}` finished with exit code {code}."
        return request, [_call(rng, "run_command", arguments)], [result], answer
    path, other = corpus.random_path(rng), corpus.random_path(rng)
    contents = [rng.choice(corpus.FILE_CONTENTS), rng.choice(corpus.FILE_CONTENTS)]
    calls = [_call(rng, "read_file", {"path": path}), _call(rng, "read_file", {"path": other})]
    answer = f"I read {path} and {other}."
    request = rng.choice(PARALLEL_READ_REQUESTS).format(path=_mention(rng, path), other=_mention(rng, other))
    return request, calls, contents, answer


def tool_call_samples(n: int, seed: int) -> list[dict]:
    """`n` mlx-lm chat samples {"messages", "tools"}; about 70% end with the tool call, the rest with the
    final answer after the tool results (so a model learns to stop). Arguments are dicts, as mlx-lm's
    ChatDataset passes them unchanged to the template."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        request, calls, results, answer = _tool_turn(rng)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": request},
            {"role": "assistant", "content": None, "tool_calls": calls},
        ]
        if rng.random() < ANSWER_FRACTION:
            for call, result in zip(calls, results, strict=True):
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
            messages.append({"role": "assistant", "content": answer})
        samples.append({"messages": messages, "tools": AGENT_TOOLS})
    return samples
