"""The trace record: one recorded chat-completions exchange, one JSONL line.

The JSON Schema in `schemas/trace-record.v1.schema.json` is the single definition; the proxy writes
records with `TraceWriter`, curate reads them with `read_trace_lines`, and both validate with
`validate_record`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import os
import stat
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from core.outcomes import OUTCOMES_FILE

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schemas" / f"trace-record.v{SCHEMA_VERSION}.schema.json"
SESSION_HEADER = "X-Flywheel-Session"


@functools.cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(), format_checker=jsonschema.FormatChecker())


def validation_errors(record: Any) -> list[str]:
    """Every schema violation of `record` as 'field.path: message', most specific first; [] when valid."""
    if isinstance(record, dict) and record.get("schema_version") not in (None, SCHEMA_VERSION):
        return [
            f"schema_version: unknown version {record['schema_version']!r} (this reader knows {SCHEMA_VERSION})"
        ]
    errors = [_most_specific(e) for e in _validator().iter_errors(record)]
    errors.sort(key=lambda e: (-len(e.absolute_path), str(e.absolute_path)))
    return [f"{_json_path(e)}: {e.message}" for e in errors]


def _most_specific(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """Descend through oneOf/anyOf alternatives to the sub-error that names the offending field."""
    while error.context:
        error = max(error.context, key=lambda e: (len(e.absolute_path), e.validator != "type"))
    return error


def validate_record(record: Any) -> None:
    """Raise ValueError with the first violation when `record` does not follow the schema."""
    if errors := validation_errors(record):
        raise ValueError(errors[0])


def _json_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(record)"


def policy_name(record: dict[str, Any]) -> str | None:
    """The name a record's answering policy goes by: its label, else its adapter, else its model path, else the
    model the upstream named (records from before policies were recorded have only that)."""
    policy = record.get("policy") or {}
    for key in ("label", "adapter_path", "model_path", "served_model"):
        if policy.get(key):
            return policy[key]
    response = record.get("response")
    return response.get("model") if isinstance(response, dict) else None


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_record(**fields: Any) -> dict[str, Any]:
    """A record with every required field present (defaults for an exchange not yet answered)."""
    record: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "id": uuid.uuid4().hex,
        "session_id": None,
        "started_at": utc_now(),
        "latency_ms": None,
        "ttfb_ms": None,
        "upstream": "",
        "endpoint": "/v1/chat/completions",
        "http_status": None,
        "stream": False,
        "complete": False,
        "request": None,
        "response": None,
        "usage": None,
        "finish_reason": None,
        "raw_response": None,
        "flags": [],
        "redactions": {},
        "error": None,
    }
    unknown = set(fields) - set(schema()["properties"])
    if unknown:
        raise KeyError(f"not trace-record fields: {sorted(unknown)}")
    record.update(fields)
    return record


def run_file_name(started: dt.datetime | None = None) -> str:
    """File name of one proxy run: its UTC start time plus the pid, so parallel proxies never share a file."""
    started = started or dt.datetime.now(dt.UTC)
    return f"{started.strftime('%Y%m%dT%H%M%S')}Z-{os.getpid()}.jsonl"


def loss_file_for(trace_file: Path | str, directory: Path | str | None = None) -> Path:
    """The side file beside a trace file that lists the exchanges the proxy saw but could not record (one
    JSON line each: id, time, reason, session_id). Not `*.jsonl`, so trace readers never take it for
    records."""
    trace_file = Path(trace_file)
    name = trace_file.name.removesuffix(".jsonl") + ".losses.ndjson"
    return Path(directory) / name if directory is not None else trace_file.with_name(name)


class TraceWriter:
    """Append-only JSONL: one complete line per record, written as one unbuffered append, safe across threads.

    A write that fails part-way (a full disk) can leave a fragment of a line at the end of the file; before
    the next append the file is cut back to its last complete line, so the fragment never joins the next
    record. A fragment already there when the file is opened (a writer killed mid-line) is cut back too;
    `cut_bytes` says how much was removed. `write` returns the file's size after the record.
    """

    def __init__(self, directory: Path | str, file_name: str | None = None, fsync: bool = False):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / (file_name or run_file_name())
        self.fsync = fsync
        self.records_written = 0
        self.cut_bytes = 0
        self._lock = threading.Lock()
        self._file = open(self.path, "a+b", buffering=0)  # noqa: SIM115 (held for the run; read to cut back)
        self._regular = stat.S_ISREG(os.fstat(self._file.fileno()).st_mode)  # /dev/full is not
        self._cut_back()

    @property
    def run_id(self) -> str:
        return self.path.stem

    def write(self, record: dict[str, Any]) -> int:
        data = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._lock:
            self._cut_back()
            try:
                written = 0
                while written < len(data):
                    written += self._file.write(data[written:])
                if self.fsync:
                    os.fsync(self._file.fileno())
            except OSError:
                with contextlib.suppress(OSError):  # try now; the next write tries again before appending
                    self._cut_back()
                raise
            self.records_written += 1
            return self.size()

    def size(self) -> int:
        """The file's size (0 for what is not a regular file, e.g. /dev/full)."""
        return os.fstat(self._file.fileno()).st_size if self._regular else 0

    def _cut_back(self) -> None:
        """Truncate the file after its last newline (nothing to do when it ends with one)."""
        if not self._regular:
            return
        size = self.size()
        if size == 0 or os.pread(self._file.fileno(), 1, size - 1) == b"\n":
            return
        end = size
        while end > 0:
            start = max(0, end - 65536)
            block = os.pread(self._file.fileno(), end - start, start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        os.ftruncate(self._file.fileno(), end)
        self.cut_bytes += size - end

    def close(self) -> None:
        with self._lock:
            self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@dataclass(frozen=True)
class TraceLine:
    """One line of a trace file: the parsed record, or why it could not be parsed."""

    path: Path
    line_no: int
    text: str
    record: dict[str, Any] | None
    error: str | None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line_no}"


# JSONL files kept beside the traces that are not trace records.
SIDE_FILES = frozenset({OUTCOMES_FILE})


def trace_files(paths: Iterable[Path | str]) -> list[Path]:
    """The .jsonl files named by `paths` (files, or directories searched recursively, side files left out),
    sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*.jsonl")) if p.name not in SIDE_FILES)
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such trace file or directory")
    return found


def read_trace_lines(paths: Iterable[Path | str]) -> Iterator[TraceLine]:
    """Every non-blank line of the trace files, parsed but not schema-validated; never raises on bad lines."""
    for path in trace_files(paths):
        with open(path, "rb") as handle:
            for line_no, raw in enumerate(handle, start=1):
                text = raw.decode("utf-8", errors="replace")
                if not text.strip():
                    continue
                if not raw.endswith(b"\n"):
                    yield TraceLine(
                        path, line_no, text, None, "torn line: no trailing newline (write interrupted)"
                    )
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    yield TraceLine(path, line_no, text, None, f"not JSON: {error}")
                    continue
                if not isinstance(record, dict):
                    yield TraceLine(path, line_no, text, None, f"not a JSON object: {type(record).__name__}")
                    continue
                yield TraceLine(path, line_no, text, record, None)


def read_records(paths: Iterable[Path | str]) -> Iterator[dict[str, Any]]:
    """Valid records only; raises ValueError naming file:line at the first bad one (strict readers, tests)."""
    for line in read_trace_lines(paths):
        if line.error:
            raise ValueError(f"{line.where}: {line.error}")
        if errors := validation_errors(line.record):
            raise ValueError(f"{line.where}: {errors[0]}")
        yield line.record
