"""Stage 1: read trace lines in bounded batches, validate each against the trace schema, flatten to tables.

Parsing is the one per-line Python step: no Polars expression parses JSON without coercing types (its
`json_decode` turns 5 into "5" and 5.5 into 5), so it cannot tell a valid record from an invalid one.
Each line is parsed with orjson and checked with jsonschema-rs against THE schema file
(`core/schemas/trace-record.v1.schema.json`, formats off), plus the one format the schema names
(`started_at`, date-time) by a regex + calendar check no looser than jsonschema's FormatChecker. A line that fails any of that goes to
`core.trace.validation_errors` (the reference validator), whose verdict and message are final, so the
fast path can only speed up lines the reference validator accepts (tests/test_curate_validate.py checks the
equivalence with hypothesis).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import gc
import itertools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import orjson
import polars as pl

from core import trace
from core.samples import BENCHMARK_SESSION
from core.trace import policy_name

SORTED = orjson.OPT_SORT_KEYS


@functools.cache
def _fast_validator():
    return jsonschema_rs.validator_for(trace.schema(), validate_formats=False)


def formats_in_schema(node: Any = None, path: str = "") -> list[tuple[str, str]]:
    """Every (path, format) the schema declares; the fast path checks exactly these (a test pins the list)."""
    node = trace.schema() if node is None else node
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("format"), str):
            found.append((path, node["format"]))
        for key, value in node.items():
            found.extend(formats_in_schema(value, f"{path}/{key}"))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(formats_in_schema(value, f"{path}/{index}"))
    return found


def fast_valid(record: Any) -> bool:
    """True only when the reference validator would also accept `record`: structure by jsonschema-rs, the
    `started_at` date-time by `date_time_ok`. False means "ask the reference validator". (parse_batch runs
    the same two checks.)"""
    try:
        ok = type(record) is dict and _fast_validator().is_valid(record)
    except Exception:  # e.g. integers beyond 64 bits: let the reference validator decide
        return False
    return ok and date_time_ok(record["started_at"])


def line_error(raw: bytes) -> tuple[dict | None, str | None, str | None]:
    """(record, reason, detail) for a line the fast path refused, decided exactly as
    `core.trace.read_trace_lines` + `validation_errors` decide it."""
    text = raw.decode("utf-8", errors="replace")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return None, "not_json", f"not JSON: {error}"
    except RecursionError:
        return None, "not_json", "not JSON: nested too deeply"
    if not isinstance(record, dict):
        return None, "not_object", f"not a JSON object: {type(record).__name__}"
    errors = trace.validation_errors(record)
    if not errors:
        return record, None, None
    reason = (
        "unknown_schema_version"
        if errors[0].startswith("schema_version: unknown version")
        else "schema_invalid"
    )
    return None, reason, errors[0]


@dataclass
class RawBatch:
    """A bounded batch of non-blank lines: where each came from and its bytes."""

    xs: list[int] = field(default_factory=list)
    file_ids: list[int] = field(default_factory=list)
    line_nos: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)
    nbytes: int = 0


def read_batches(files: list[Path], batch_bytes: int, counters: dict[str, int]) -> Iterator[RawBatch]:
    """Non-blank lines of `files` in order, in batches of about `batch_bytes`; counts blank lines and bytes.
    A line without its trailing newline can only be a file's last line (torn write)."""
    batch, x = RawBatch(), 0
    for file_id, path in enumerate(files):
        offset, line_no = 0, 0
        with open(path, "rb") as handle:
            while chunk := handle.readlines(max(batch_bytes - batch.nbytes, 1 << 16)):
                lengths = list(map(len, chunk))
                starts = list(itertools.accumulate(lengths, initial=offset))
                offset = starts.pop()
                keep = [i for i, raw in enumerate(chunk) if raw.strip()]
                counters["bytes"] += offset - starts[0]
                counters["blank_lines"] += len(chunk) - len(keep)
                batch.xs.extend(range(x, x + len(keep)))
                batch.file_ids.extend([file_id] * len(keep))
                batch.line_nos.extend([line_no + 1 + i for i in keep])
                batch.offsets.extend([starts[i] for i in keep])
                batch.sizes.extend([lengths[i] for i in keep])
                batch.lines.extend([chunk[i] for i in keep])
                batch.nbytes += sum(lengths)
                x += len(keep)
                line_no += len(chunk)
                if batch.nbytes >= batch_bytes:
                    yield batch
                    batch = RawBatch()
    if batch.lines:
        yield batch


def read_lines_at(path: Path, offsets: list[int]) -> list[bytes]:
    """The lines starting at byte `offsets` (ascending) of `path` (pass 2 re-reads only trajectory heads)."""
    out = []
    with open(path, "rb") as handle:
        for offset in offsets:
            handle.seek(offset)
            out.append(handle.readline())
    return out


# --------------------------------------------------------------------------------------------- flattening

EXCHANGE_SCHEMA = {
    "x": pl.Int64,
    "session_id": pl.String,
    "http_status": pl.Int64,
    "complete": pl.Boolean,
    "calls_lost": pl.Boolean,
    "error_type": pl.String,
    "finish_reason": pl.String,
    "endpoint": pl.String,
    "has_request": pl.Boolean,
    "n_messages": pl.Int64,
    "has_response": pl.Boolean,
    "tools_json": pl.String,
    "answered_by": pl.String,  # core.trace.policy_name
}
MESSAGE_SCHEMA = {
    "x": pl.Int64,
    "pos": pl.Int32,
    "role": pl.String,
    "content": pl.String,
    "content_kind": pl.String,
    "tool_call_id": pl.String,
}
CALL_SCHEMA = {
    "x": pl.Int64,
    "pos": pl.Int32,
    "k": pl.Int32,
    "call_id": pl.String,
    "name": pl.String,
    "args_raw": pl.String,
    "args_kind": pl.String,
}
TOOL_SCHEMA = {"x": pl.Int64, "name": pl.String, "parameters": pl.String}


def _content_text(content: Any) -> tuple[str | None, str]:
    """(text, kind) of a message content: a string, null, or a list of parts (text parts joined)."""
    if content is None:
        return None, "null"
    if isinstance(content, str):
        return content, "text"
    parts = content if isinstance(content, list) else [content]
    text = "\n".join(p.get("text") or "" for p in parts if isinstance(p, dict) and p.get("type") == "text")
    all_text = all(isinstance(p, dict) and p.get("type") == "text" for p in parts)
    return text, "parts" if all_text else "non_text_parts"


_EMPTY: dict = {}


def dumps(value: Any, sort_keys: bool = False) -> str:
    """Compact JSON; json's encoder for what orjson refuses (integers beyond 64 bits, NaN from the
    reference parser)."""
    try:
        return orjson.dumps(value, option=SORTED if sort_keys else None).decode()
    except TypeError:
        return json.dumps(value, sort_keys=sort_keys, separators=(",", ":"))


class Flattener:
    """Records → Polars DataFrames (exchanges, messages, calls, tools).

    One tuple per exchange, message and call, transposed into columns at the end with zip (C loops);
    per record only dictionary look-ups run in Python."""

    def __init__(self, with_tools: bool = False):
        self.with_tools = with_tools
        self.ex_rows: list[tuple] = []
        self.msg_rows: list[tuple] = []
        self.call_rows: list[tuple] = []
        self.tool_rows: list[tuple] = []
        self.tools_text: dict[int, str] = {}
        self._sorted_tools: dict[bytes, str] = {}

    def _tools_json(self, tools: list) -> str:
        """Tools as JSON with sorted keys; agents send the same tools with every request, so cache by text."""
        raw = dumps(tools)
        text = self._sorted_tools.get(raw)
        if text is None:
            if len(self._sorted_tools) > 64:
                self._sorted_tools.clear()
            text = self._sorted_tools[raw] = dumps(tools, sort_keys=True)
        return text

    def add(self, x: int, record: dict[str, Any]) -> None:
        get = record.get
        request = get("request") or _EMPTY
        response = get("response") or _EMPTY
        messages = request.get("messages") or []
        choices = response.get("choices") or ()
        if choices:
            messages = [*messages, choices[0].get("message") or _EMPTY]
        tools = request.get("tools") or []
        self.ex_rows.append(
            (
                x,
                get("session_id"),
                get("http_status"),
                get("complete"),
                "tool_calls_missing" in (get("flags") or ()),
                (get("error") or _EMPTY).get("type"),
                get("finish_reason"),
                get("endpoint"),
                bool(request),
                len(messages),
                bool(choices),
                self._tools_json(tools),
                policy_name(record),
            )
        )
        if self.with_tools:
            self.tools_text[x] = dumps(tools)
            for tool in tools:
                function = tool.get("function") or _EMPTY
                self.tool_rows.append((x, function.get("name"), dumps(function.get("parameters") or {})))
        self.msg_rows.extend(
            [
                (x, pos, m.get("role"), m.get("content"), m.get("tool_call_id"))
                for pos, m in enumerate(messages)
            ]
        )
        rows = self.call_rows
        for pos, m in enumerate(messages):
            tool_calls = m.get("tool_calls")
            if tool_calls:
                for k, tool_call in enumerate(tool_calls):
                    function = tool_call.get("function") or _EMPTY
                    rows.append(
                        (x, pos, k, tool_call.get("id"), function.get("name"), function.get("arguments"))
                    )

    def frames(self) -> dict[str, pl.DataFrame]:
        ex = dict(zip(EXCHANGE_SCHEMA, _columns(self.ex_rows, len(EXCHANGE_SCHEMA)), strict=True))
        x, pos, role, content, tool_call_id = _columns(self.msg_rows, 5)
        kind = ["null" if c is None else "text" for c in content]
        odd = [i for i, c in enumerate(content) if c is not None and type(c) is not str]
        if odd:  # content as a list of parts: keep the text parts
            content = list(content)
            for i in odd:
                content[i], kind[i] = _content_text(content[i])
        messages = _frame(
            {
                "x": x,
                "pos": pos,
                "role": role,
                "content": content,
                "content_kind": kind,
                "tool_call_id": tool_call_id,
            },
            MESSAGE_SCHEMA,
        ).with_columns(
            # OpenAI's "developer" role is the system prompt (pydantic-ai sends it for some profiles)
            pl.col("role").fill_null("assistant").replace("developer", "system"),
            pl.col("content").fill_null(""),
        )
        cx, cpos, k, call_id, name, arguments = _columns(self.call_rows, 6)
        args_kind = ["string" if type(a) is str else "null" if a is None else "object" for a in arguments]
        args_raw = [a if type(a) is str or a is None else dumps(a) for a in arguments]
        calls = {
            "x": cx,
            "pos": cpos,
            "k": k,
            "call_id": call_id,
            "name": name,
            "args_raw": args_raw,
            "args_kind": args_kind,
        }
        tools = dict(zip(TOOL_SCHEMA, _columns(self.tool_rows, 3), strict=True))
        return {
            "exchanges": _frame(ex, EXCHANGE_SCHEMA),
            "messages": messages,
            "calls": _frame(calls, CALL_SCHEMA),
            "tools": _frame(tools, TOOL_SCHEMA),
        }


def _columns(rows: list[tuple], width: int) -> list[list]:
    """Rows → columns (zip runs in C)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def _frame(columns: dict[str, list], schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """DataFrame from column lists: Polars infers each column, then casts (measured 6x faster than
    constructing with an explicit dtype for integer columns)."""
    return pl.DataFrame([_series(name, values, schema[name]) for name, values in columns.items()])


def _series(name: str, values: list, dtype: pl.DataType) -> pl.Series:
    try:
        return pl.Series(name, values).cast(dtype, strict=False)
    except (TypeError, OverflowError, pl.exceptions.PolarsError):
        # schema-valid but beyond 64 bits (e.g. "http_status": 1e30 as an integer): such a value becomes null
        if dtype.is_integer():
            values = [v if isinstance(v, int | float) and -(2**63) <= v < 2**63 else None for v in values]
        return pl.Series(name, values, dtype=dtype, strict=False)


# RFC 3339 date-time, no looser than rfc3339_validator (which jsonschema's FormatChecker uses): ASCII digits,
# upper-case T/Z only, no trailing newline, and the date must exist (year 1 or later).
_DATE_TIME = re.compile(
    r"[0-9]{4}-(?:0[1-9]|1[0-2])-[0-9]{2}T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)


def date_time_ok(value: str) -> bool:
    """`format: date-time`, True only where jsonschema's FormatChecker also accepts (~1 µs, vs ~20 µs)."""
    if not _DATE_TIME.fullmatch(value):
        return False
    try:
        datetime.date(int(value[:4]), int(value[5:7]), int(value[8:10]))
    except ValueError:
        return False
    return True


@dataclass
class ParsedBatch:
    frames: dict[str, pl.DataFrame]
    rejects: pl.DataFrame  # x, reason, detail
    locations: pl.DataFrame  # x, file_id, line_no, offset, size (every line of the batch)
    fast: int  # lines accepted by the fast path
    slow: int  # lines sent to the reference validator


REJECT_SCHEMA = {"x": pl.Int64, "reason": pl.String, "detail": pl.String}
LOCATION_SCHEMA = {
    "x": pl.Int64,
    "file_id": pl.Int32,
    "line_no": pl.Int64,
    "offset": pl.Int64,
    "size": pl.Int64,
}


@contextlib.contextmanager
def gc_paused():
    """Parsing allocates millions of containers that live until the batch is flattened; Python's cyclic GC
    would rescan them over and over (measured: 3-4x slower parsing). Nothing here makes cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def parse_batch(batch: RawBatch, with_tools: bool = False) -> ParsedBatch:
    """Stage 1 on one batch: every line becomes a valid record (flattened) or a reject with its reason."""
    flat = Flattener(with_tools)
    rejects = {name: [] for name in REJECT_SCHEMA}
    loads, structure_ok = orjson.loads, _fast_validator().is_valid
    accepted, refused = 0, []
    with gc_paused():
        for x, raw in zip(batch.xs, batch.lines, strict=True):
            if not raw.endswith(b"\n"):
                rejects["x"].append(x)
                rejects["reason"].append("torn_line")
                rejects["detail"].append("torn line: no trailing newline (write interrupted)")
                continue
            try:
                # (orjson reads integers beyond 64 bits as floats; the verdict is the same, and tool-call
                # arguments, sent as JSON strings, are parsed exactly by json in stage 5/6)
                record = loads(raw)
                ok = type(record) is dict and structure_ok(record) and date_time_ok(record["started_at"])
            except (
                Exception
            ):  # not JSON for orjson, or values jsonschema-rs cannot take: the reference decides
                ok = False
            if ok and not str(record.get("session_id")).startswith(BENCHMARK_SESSION):
                flat.add(x, record)
                accepted += 1
            else:
                refused.append((x, raw))
        for x, raw in refused:
            record, reason, detail = line_error(raw)
            if record is not None and str(record.get("session_id")).startswith(BENCHMARK_SESSION):
                # public benchmark cases are for evaluation only
                detail = f"session {record['session_id']}: benchmark data is never trained on"
                record, reason = None, "benchmark_data"
            if record is None:
                rejects["x"].append(x)
                rejects["reason"].append(reason)
                rejects["detail"].append(detail)
            else:
                flat.add(x, record)
    locations = _frame(
        {
            "x": batch.xs,
            "file_id": batch.file_ids,
            "line_no": batch.line_nos,
            "offset": batch.offsets,
            "size": batch.sizes,
        },
        LOCATION_SCHEMA,
    )
    return ParsedBatch(
        flat.frames(), pl.DataFrame(rejects, schema=REJECT_SCHEMA), locations, accepted, len(refused)
    )


def parse_records(xs: list[int], lines: list[bytes]) -> dict[str, pl.DataFrame]:
    """Flatten lines already known to be valid (pass 2 re-reads trajectory heads), with their tools."""
    flat = Flattener(with_tools=True)
    with gc_paused():
        for x, raw in zip(xs, lines, strict=True):
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                record = json.loads(raw.decode("utf-8", errors="replace"))
            flat.add(x, record)
    frames = flat.frames()
    frames["tools_text"] = pl.DataFrame(
        {"x": list(flat.tools_text), "tools_text": list(flat.tools_text.values())},
        schema={"x": pl.Int64, "tools_text": pl.String},
    )
    return frames
