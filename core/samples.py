"""mlx-lm chat samples: one JSON object a line, {"messages": [...], "tools": [...]}. Curate writes them; train and
evaluate read them here, so a malformed line gets the same one-line error, naming path:line, wherever it is read.

Two kinds, told apart by one top-level key:
- a per-turn sample (no key): the last message is the assistant turn that training supervises and evaluation
  scores; everything before it is the prompt (mlx-lm's ChatDataset with `mask_prompt`).
- a session sample, `"supervise": "all_assistant_turns"` or a list of message indices (`[2, 6, 8]`, each an
  assistant message, increasing): one whole trajectory in which those assistant turns are supervised exactly
  once and everything else is masked (a turn left out, e.g. a failed call, stays as context). It stands for the
  per-turn samples of its supervised turns (`per_turn_samples`) at the cost of one sequence instead of one per
  turn; `supervised_spans` says which tokens those turns are, and only exists when the chat template renders
  each turn's generation prompt as a token prefix of the whole (a template that rewrites earlier turns gets
  per-turn samples instead). Plain `mlx_lm lora` ignores the key and supervises only the last turn: give it
  `per_turn_samples`.
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
SUPERVISE = "supervise"  # top-level key of a session sample
ALL_ASSISTANT_TURNS = "all_assistant_turns"  # every assistant message is supervised (else: a list of indices)


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

    @property
    def is_session(self) -> bool:
        return is_session(self.data)

    def per_turn(self) -> list[Sample]:
        """The per-turn samples this sample stands for (itself, unless it is a session sample)."""
        if not self.is_session:
            return [self]
        return [
            Sample(f"{self.where} turn {k}", data) for k, data in enumerate(per_turn_samples(self.data), 1)
        ]


def is_session(data: dict[str, Any]) -> bool:
    return SUPERVISE in data


def session_sample(
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    turns: list[int] | None = None,
) -> dict[str, Any]:
    """A whole trajectory as one sample supervising the assistant messages at `turns` (None: all of them)."""
    supervise = ALL_ASSISTANT_TURNS if turns is None else list(turns)
    return {"messages": messages, "tools": tools or [], SUPERVISE: supervise}


def assistant_turns(data: dict[str, Any]) -> list[int]:
    """Indices of the supervised messages: the named ones or every assistant message of a session sample,
    else the last one."""
    messages = data["messages"]
    if not is_session(data):
        return [len(messages) - 1]
    if isinstance(data[SUPERVISE], list):
        return list(data[SUPERVISE])
    return [i for i, message in enumerate(messages) if message.get("role") == "assistant"]


def per_turn_samples(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain mlx-lm chat samples, one per supervised turn, each ending with that turn (what `mlx_lm lora`
    trains on, and what a session sample's loss adds up to)."""
    tools = data.get("tools")
    return [
        {"messages": data["messages"][: i + 1], **({"tools": tools} if tools is not None else {})}
        for i in assistant_turns(data)
    ]


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
    if SUPERVISE in data:
        check_supervise(data[SUPERVISE], messages, where)
    for turn in assistant_turns(data):
        name = "messages[-1]" if turn == len(messages) - 1 else f"messages[{turn}]"
        for i, call in enumerate(messages[turn].get("tool_calls") or []):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise SampleError(f"{where}: {name}.tool_calls[{i}].function.name missing")
    tools = data.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise SampleError(f"{where}: 'tools' must be a list of tool definitions")
    return Sample(where, data)


def check_supervise(supervise: Any, messages: list[dict[str, Any]], where: str) -> None:
    """`supervise` is "all_assistant_turns" or increasing indices of assistant messages; SampleError if not."""
    if supervise == ALL_ASSISTANT_TURNS:
        return
    expected = f"{SUPERVISE!r} must be {ALL_ASSISTANT_TURNS!r} or a list of assistant message indices"
    if not isinstance(supervise, list) or not supervise:
        raise SampleError(f"{where}: {expected}, got {supervise!r}")
    for k, turn in enumerate(supervise):
        if type(turn) is not int or not 0 <= turn < len(messages):
            raise SampleError(f"{where}: {SUPERVISE}[{k}] = {turn!r} is not an index of 'messages'")
        if messages[turn]["role"] != "assistant":
            raise SampleError(
                f"{where}: {SUPERVISE}[{k}] = {turn}: messages[{turn}] has role {messages[turn]['role']!r}, "
                "not 'assistant'"
            )
        if k and turn <= supervise[k - 1]:
            raise SampleError(f"{where}: {SUPERVISE!r} must be increasing, got {supervise!r}")


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


# ------------------------------------------------------------------------------------------ supervised spans


def sample_tokens(tokenizer, data: dict[str, Any]) -> list[int]:
    """The whole sample's tokens, as mlx_lm.server and mlx-lm's ChatDataset render the conversation."""
    return _tokens(tokenizer, _server_messages(data), data.get("tools") or None)


def _server_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    from core.toolcalls import server_messages

    return server_messages(data["messages"])


def _tokens(tokenizer, messages: list[dict], tools: list[dict] | None, prompt: bool = False) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=prompt, return_dict=False)
    )


class SpanError(ValueError):
    """The chat template does not render the sample so that each supervised turn's tokens can be masked in;
    `reason` says why without naming the turn (to count them)."""

    def __init__(self, which: str, reason: str):
        super().__init__(f"{which}: {reason}")
        self.reason = reason


def too_long(max_seq_length: int) -> str:
    """Why a session sample longer than max_seq_length is trained as its per-turn samples."""
    return f"longer than max_seq_length {max_seq_length}"


@dataclass(frozen=True)
class Supervision:
    """A sample's tokens as the server renders them, and the [start, end) token ranges that the loss counts."""

    tokens: list[int]
    spans: tuple[tuple[int, int], ...]

    @property
    def supervised(self) -> int:
        return sum(end - start for start, end in self.spans)


def supervised_spans(tokenizer, data: dict[str, Any]) -> Supervision:
    """Tokens of the whole sample and, for each supervised assistant turn, the tokens that turn adds: from the
    end of its generation prompt (`messages[:i]`, `add_generation_prompt`) to the end of `messages[:i + 1]`,
    both rendered alone exactly as mlx_lm.server and mlx-lm's ChatDataset render them.

    A span exists only when both renderings are token prefixes of the whole: then a causal model sees the
    same context at every supervised token as in that turn's per-turn sample, so the session's loss is the
    sum of the per-turn losses. SpanError (naming the turn) otherwise, e.g. for templates that rewrite or
    drop parts of earlier turns once a later one exists."""
    messages = _server_messages(data)
    tools = data.get("tools") or None

    def tokens_of(upto: int, prompt: bool = False) -> list[int]:
        return _tokens(tokenizer, messages[:upto], tools, prompt)

    whole = tokens_of(len(messages))
    spans: list[tuple[int, int]] = []
    turns = assistant_turns(data)
    for k, turn in enumerate(turns, 1):
        final = len(turns) == 1 and turn == len(messages) - 1
        which = "the final assistant turn" if final else f"assistant turn {k} (messages[{turn}])"
        prompt = tokens_of(turn, prompt=True)
        upto = whole if turn == len(messages) - 1 else tokens_of(turn + 1)
        if whole[: len(prompt)] != prompt or whole[: len(upto)] != upto:
            raise SpanError(
                which,
                "its prompt's tokens are not a prefix of the whole conversation's tokens "
                "(the chat template rewrites earlier turns)",
            )
        if len(upto) <= len(prompt):
            raise SpanError(which, "it renders to no tokens")
        if spans and len(prompt) < spans[-1][1]:
            raise SpanError(which, "its tokens overlap the previous turn's")
        spans.append((len(prompt), len(upto)))
    return Supervision(whole, tuple(spans))
