"""mlx-lm chat samples: one JSON object a line, {"messages": [...], "tools": [...]}; the last message is the
assistant turn that training supervises and evaluation scores. Curate writes them; train and evaluate read
them here, so a malformed line gets the same one-line error, naming path:line, wherever it is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Public benchmark data (BFCL) is for evaluation only. A sample converted from it carries BENCHMARK_KEY (its
# pinned source), and evaluating it through a server sends the session id BENCHMARK_SESSION + source, so a
# recording proxy on the way marks the traces too: train refuses such samples, curate such records.
BENCHMARK_KEY = "benchmark"
BENCHMARK_SESSION = "flywheel-benchmark:"


class SampleError(ValueError):
    """A line that is not a chat sample; the message names path:line and the field."""


@dataclass(frozen=True)
class Sample:
    where: str  # "path:line"
    data: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.data["messages"]

    @property
    def tools(self) -> list[dict[str, Any]]:
        return self.data.get("tools") or []

    @property
    def prompt(self) -> list[dict[str, Any]]:
        """Every message before the final assistant turn."""
        return self.messages[:-1]

    @property
    def reference(self) -> dict[str, Any]:
        """The final assistant turn."""
        return self.messages[-1]


def check_sample(data: Any, where: str) -> Sample:
    """`data` as a Sample, or SampleError naming `where` and the field at fault."""
    if not isinstance(data, dict):
        raise SampleError(f"{where}: a sample must be a JSON object with 'messages', got {type(data).__name__}")
    messages = data.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise SampleError(f"{where}: 'messages' must be a list of at least a prompt and the assistant turn")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise SampleError(f"{where}: messages[{i}] must be an object with a 'role'")
    final = messages[-1]
    if final["role"] != "assistant":
        raise SampleError(
            f"{where}: the last message has role {final['role']!r}; it must be the assistant turn"
        )
    for i, call in enumerate(final.get("tool_calls") or []):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise SampleError(f"{where}: messages[-1].tool_calls[{i}].function.name missing")
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise SampleError(f"{where}: 'tools' must be a list of tool definitions")
    return Sample(where, data)


def read_samples(path: Path | str) -> list[Sample]:
    """Every sample of a chat JSONL file (blank lines skipped); SampleError at the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    samples = []
    with open(path, encoding="utf-8") as handle:
        for line_no, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                data = json.loads(text)
            except json.JSONDecodeError as error:
                raise SampleError(f"{where}: invalid JSON: {error.msg} (column {error.colno})") from None
            samples.append(check_sample(data, where))
    return samples


def sample_line(data: dict[str, Any]) -> str:
    """One JSONL line (with its newline) for a sample."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n"
