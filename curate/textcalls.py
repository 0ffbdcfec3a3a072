"""Tool calls written as text in an assistant message's `content` instead of structured `tool_calls`.

Training on such text teaches a model to *talk about* calling tools: the server's parser never sees a call
and the agent never runs one (the failure that made a whole training effort show 0% gain). Curate finds
them with the regexes below (Polars, vectorised) and converts the ones that parse unambiguously against the
request's tools with `parse_text_calls` (Python, only on the flagged messages): stage 5, `convert_text_calls`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from core.toolcalls import LEAKED_MARKUP
from curate.read import dumps

# Detection, one regex per format (Rust syntax, for Polars). Order matters: the first match names the format.
DETECT: dict[str, str] = {
    "function_xml": r"<function=[^>\s]+>",
    "tool_call_tag": r"<tool_call>",
    "tool_call_prefix": r"(?i)\btool[ _]?call\s*:\s*[\[{]",
    "fenced_json": r"(?s)```(?:json|JSON)?\s*[\[{].*?\x22name\x22\s*:",
    "bare_json": r"(?s)^\s*[\[{].*\x22name\x22\s*:.*[\]}]\s*$",
    "other_markup": LEAKED_MARKUP.pattern,
}

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
_FUNCTION_BLOCK = re.compile(
    r"(?:<tool_call>\s*)?<function=([^>\s]+)>(.*?)</function>(?:\s*</tool_call>)?", re.S
)
_PARAMETER = re.compile(r"<parameter=([^>\s]+)>(.*?)</parameter>", re.S)
_PREFIX = re.compile(r"(?i)\btool[ _]?call\s*:\s*")
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


@dataclass
class TextCalls:
    """What a text-about-tools message holds: `status` is "converted" when every call parsed and names a tool."""

    format: str
    status: str  # converted | unparseable | unknown_tool | bad_arguments | mixed_markup | not_a_call
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    content: str = ""  # the text left once the calls are cut out
    detail: str = ""


def detect_format(content: str) -> str | None:
    """The first format in DETECT whose regex matches (Python `re`, same patterns), or None."""
    for name, pattern in DETECT.items():
        if re.search(pattern, content):
            return name
    return None


def _call_from_json(obj: Any) -> tuple[str, Any] | None:
    """(name, arguments) from the JSON shapes models write: {"name", "arguments"|"parameters"|"args"},
    {"function": {"name", "arguments"}} (OpenAI), {"type": "function", "function": {...}}."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):
        return _call_from_json(obj["function"])
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None
    for key in ("arguments", "parameters", "args", "input"):
        if key in obj:
            arguments = obj[key]
            break
    else:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return name, arguments  # reported as bad_arguments
    return name, arguments


def _json_values(text: str) -> tuple[list[Any], str] | None:
    """All JSON values in `text` one after another (whitespace/commas between), or None if any part fails."""
    decoder = json.JSONDecoder()
    values, index, text = [], 0, text.strip()
    while index < len(text):
        while index < len(text) and text[index] in " \t\r\n,":
            index += 1
        if index >= len(text):
            break
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return None
        values.extend(value if isinstance(value, list) else [value])
    return values, ""


def _looks_like_call(value: Any) -> bool:
    """A JSON value shaped like a tool call (not just any object with a "name", e.g. a JSON answer)."""
    if not isinstance(value, dict):
        return False
    if isinstance(value.get("function"), dict):
        return True
    return isinstance(value.get("name"), str) and any(k in value for k in ("arguments", "parameters", "args"))


def _json_calls(text: str) -> list[tuple[str, Any]] | None:
    parsed = _json_values(text)
    if parsed is None or not parsed[0]:
        return None
    calls = [_call_from_json(value) for value in parsed[0]]
    return None if any(call is None for call in calls) else calls


def _xml_value(raw: str, schema: dict[str, Any] | None) -> Any:
    value = raw.strip("\n")
    if (schema or {}).get("type") == "string":
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def parse_text_calls(content: str, tools: dict[str, dict[str, Any]], fmt: str | None = None) -> TextCalls:
    """Parse the calls in `content` against `tools` ({name: parameters schema}).

    Unambiguous means: every block of the detected format parses, every call names one of `tools`, every
    `arguments` is a JSON object, and no other tool markup is left in the remaining text.
    """
    fmt = fmt or detect_format(content) or "none"
    calls: list[tuple[str, Any]] | None = None
    rest = content
    if fmt == "function_xml":
        calls = []
        for match in _FUNCTION_BLOCK.finditer(content):
            name = match.group(1)
            props = ((tools.get(name) or {}).get("properties")) or {}
            args = {
                p.group(1): _xml_value(p.group(2), props.get(p.group(1)))
                for p in _PARAMETER.finditer(match.group(2))
            }
            calls.append((name, args))
        rest = _FUNCTION_BLOCK.sub("", content)
    elif fmt == "tool_call_tag":
        calls = []
        for match in _TOOL_CALL_BLOCK.finditer(content):
            block = _json_calls(match.group(1))
            if block is None:
                return TextCalls(
                    fmt,
                    "unparseable",
                    content=content,
                    detail=f"bad <tool_call> block {match.group(1)[:60]!r}",
                )
            calls.extend(block)
        rest = _TOOL_CALL_BLOCK.sub("", content)
    elif fmt == "tool_call_prefix":
        calls = []
        pieces = _PREFIX.split(content)
        rest = pieces[0]
        for piece in pieces[1:]:
            decoder = json.JSONDecoder()
            try:
                value, end = decoder.raw_decode(piece.lstrip())
            except json.JSONDecodeError:
                return TextCalls(
                    fmt, "unparseable", content=content, detail=f"bad JSON after 'Tool call:' {piece[:60]!r}"
                )
            block = _json_calls(json.dumps(value))
            if block is None:
                return TextCalls(
                    fmt, "unparseable", content=content, detail="JSON after 'Tool call:' is not a call"
                )
            calls.extend(block)
            rest += piece.lstrip()[end:]
    elif fmt in ("fenced_json", "bare_json"):
        # JSON that is not shaped like a call is an answer that happens to be JSON: leave it alone
        blocks = [m.group(1) for m in _FENCE.finditer(content)] if fmt == "fenced_json" else [content]
        values = [v for block in blocks for v in ((_json_values(block) or ([], ""))[0])]
        if not any(_looks_like_call(v) for v in values):
            return TextCalls(fmt, "not_a_call", content=content)
    if fmt == "fenced_json":  # convert the fenced blocks that are calls; other code blocks stay
        calls = []

        def cut(match: re.Match) -> str:
            parsed = _json_values(match.group(1))
            if parsed and parsed[0] and all(_looks_like_call(v) for v in parsed[0]):
                calls.extend(_call_from_json(v) for v in parsed[0])
                return ""
            return match.group(0)

        rest = _FENCE.sub(cut, content)
    if fmt == "bare_json":
        calls = _json_calls(content)
        rest = ""
    if not calls:
        return TextCalls(fmt, "unparseable", content=content, detail=f"no {fmt} tool call could be parsed")
    rest = re.sub(r"\n{3,}", "\n\n", rest).strip()
    if LEAKED_MARKUP.search(rest) or _PREFIX.search(rest):
        return TextCalls(fmt, "mixed_markup", calls, rest, "tool markup left after cutting out the calls")
    for name, arguments in calls:
        if name not in tools:
            return TextCalls(fmt, "unknown_tool", calls, rest, f"{name!r} is not one of the request's tools")
        if not isinstance(arguments, dict):
            return TextCalls(
                fmt, "bad_arguments", calls, rest, f"arguments of {name!r} are not a JSON object"
            )
    return TextCalls(fmt, "converted", calls, rest)


# ------------------------------------------------------------------------------------ stage 5 over tables

STATUS_SCHEMA = {"x": pl.Int64, "pos": pl.Int32, "tt_status": pl.String, "tt_detail": pl.String}


def detected_format() -> pl.Expr:
    """The text-about-tools format of an assistant message's content (first DETECT match), or null."""
    expr = pl.when(False).then(pl.lit(None, dtype=pl.String))
    for name, pattern in DETECT.items():
        expr = expr.when(pl.col("content").str.contains(pattern)).then(pl.lit(name))
    return pl.when(pl.col("role") == "assistant").then(expr)


def _verdict(content: str, fmt: str, structured: bool, tools: dict[str, dict], policy: str) -> TextCalls:
    if structured:
        return TextCalls(
            fmt, "mixed_markup", detail="tool-call markup in content next to structured tool_calls"
        )
    if policy == "reject":
        return TextCalls(fmt, "rejected", detail="text_tool_calls = 'reject'")
    return parse_text_calls(content, tools, fmt)


def convert_text_calls(
    messages: pl.DataFrame, calls: pl.DataFrame, tools: pl.DataFrame, policy: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Flag assistant messages carrying tool calls as text; convert the unambiguous ones into structured
    calls (content keeps the surrounding prose) unless `policy` is "reject". Adds tt_format, tt_status,
    tt_detail to messages. Python parses only the flagged messages (no expression parses these formats)."""
    structured = calls.select("x", "pos").unique().with_columns(_structured=pl.lit(True))
    messages = (
        messages.lazy()
        .with_columns(tt_format=detected_format())
        .join(structured.lazy(), on=["x", "pos"], how="left", maintain_order="left")
        .with_columns(pl.col("_structured").fill_null(False))
        .collect()
    )
    candidates = messages.filter(pl.col("tt_format").is_not_null())
    schemas = _tool_schemas(tools, candidates.get_column("x").unique())
    statuses, contents, new_calls = [], [], []
    for x, pos, content, fmt, has_calls in candidates.select(
        "x", "pos", "content", "tt_format", "_structured"
    ).iter_rows():
        verdict = _verdict(content, fmt, has_calls, schemas.get(x, {}), policy)
        statuses.append((x, pos, verdict.status, verdict.detail))
        if verdict.status == "converted":
            contents.append((x, pos, verdict.content))
            new_calls += [
                (x, pos, k, f"call_t{x}_{pos}_{k}", name, dumps(arguments), "object")
                for k, (name, arguments) in enumerate(verdict.calls)
            ]
    status_table = pl.DataFrame(statuses, schema=STATUS_SCHEMA, orient="row")
    content_table = pl.DataFrame(
        contents, schema={"x": pl.Int64, "pos": pl.Int32, "_new_content": pl.String}, orient="row"
    )
    messages = (
        messages.lazy()
        .join(status_table.lazy(), on=["x", "pos"], how="left", maintain_order="left")
        .join(content_table.lazy(), on=["x", "pos"], how="left", maintain_order="left")
        .with_columns(content=pl.coalesce("_new_content", "content"))
        .drop("_new_content", "_structured")
        .collect()
    )
    if new_calls:
        calls = pl.concat([calls, pl.DataFrame(new_calls, schema=calls.schema, orient="row")])
    return messages, calls


def _tool_schemas(tools: pl.DataFrame, xs: pl.Series) -> dict[int, dict[str, dict]]:
    """{x: {tool name: parameters schema}} of the exchanges `xs` (the few with text-about-tools)."""
    out: dict[int, dict[str, dict]] = {}
    for x, name, parameters in tools.filter(pl.col("x").is_in(xs.implode())).iter_rows():
        out.setdefault(x, {})[name] = json.loads(parameters)
    return out
