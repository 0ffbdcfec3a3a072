"""What the proxy captures of one chat-completions exchange, and the trace record built from it.

The mitmproxy hooks (addon.py) only copy references into an `Exchange` on the event loop; parsing,
stream reassembly, redaction and validation happen in `checked_record`, in the recorder process.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs

from core.toolcalls import LEAKED_MARKUP
from core.trace import new_record, schema, validation_errors
from proxy.redact import redact_text, redact_tree
from proxy.stream import completion_from_sse, loads, normalize_completion

# Why an exchange ended without a complete response (Exchange.failure).
UPSTREAM_UNREACHABLE = "upstream_unreachable"
UPSTREAM_ERROR = "upstream_error"
CLIENT_DISCONNECTED = "client_disconnected"
PROXY_STOPPED = "proxy_stopped"
RAW_LIMIT = 1_000_000  # characters of a raw body kept in a record


@dataclass
class Exchange:
    """Raw material of one record: filled by the hooks on the event loop, then pickled to the recorder
    process (recorder.py), which builds the record."""

    upstream: str
    endpoint: str
    session_id: str | None
    request_body: bytes
    started: float  # time.time() when the request's headers arrived
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: int | None = None
    content_encoding: str = ""
    streamed: bool = False  # an SSE body forwarded chunk by chunk through `tee`
    chunks: list[bytes] = field(default_factory=list)
    body: bytes | None = None  # a body mitmproxy buffered (not streamed)
    first_byte: float | None = None
    ended: float | None = None
    finished: bool = False  # the response hook ran: the whole body was forwarded
    failure: str | None = None  # one of the constants above
    failure_message: str = ""
    closed: bool = False  # handed to the recorder; the loop no longer touches it
    policy: dict | None = (
        None  # what the proxy was told answers (--policy, flywheel serve); see record_policy
    )

    def tee(self, data: bytes) -> bytes:
        """mitmproxy's `response.stream` callable: keep a reference to each chunk, forward it unchanged."""
        if data and not self.closed:
            if self.first_byte is None:
                self.first_byte = time.time()
            self.chunks.append(data)
        elif not data:
            self.ended = time.time()
        return data


@functools.cache
def _fast_validator():
    return jsonschema_rs.validator_for(schema(), validate_formats=False)


def schema_errors(record: dict[str, Any]) -> list[str]:
    """`core.trace.validation_errors`, with jsonschema-rs first: ~100x faster on the valid records
    that are nearly all of them. Formats are off there; the one format (started_at) is written by
    `rfc3339` below. Anything it refuses goes to the reference validator, whose verdict is final."""
    try:
        if _fast_validator().is_valid(record):
            return []
    except Exception:  # e.g. an integer beyond 64 bits: let the reference validator decide
        pass
    return validation_errors(record)


def rfc3339(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round(max(0.0, end - start) * 1000, 3)


def _decode(raw: bytes, encoding: str) -> bytes:
    if encoding and encoding != "identity":
        from mitmproxy.net import encoding as codecs

        return codecs.decode(raw, encoding)
    return raw


def raw_body(exchange: Exchange) -> str:
    """The response body as text: a stream's chunks joined and decompressed (mitmproxy decoded a buffered
    body already)."""
    if exchange.streamed:
        return _decode(b"".join(exchange.chunks), exchange.content_encoding).decode("utf-8", "replace")
    return exchange.body.decode("utf-8", "replace") if exchange.body is not None else ""


def build_record(exchange: Exchange, run_id: str | None = None) -> dict[str, Any]:
    """The trace record for `exchange` (schema trace-record.v1), secrets redacted."""
    flags: list[str] = []
    error: dict[str, str] | None = None
    counts: Counter[str] = Counter()

    request: Any = None
    try:
        request = loads(exchange.request_body)
    except ValueError as problem:
        request_problem = f"request body is not JSON: {problem}"
    else:
        request_problem = (
            None if isinstance(request, dict) else f"request body is a JSON {type(request).__name__}"
        )
    if request_problem:
        request = None
        flags.append("non_json_request")
        error = {"type": "bad_request", "message": request_problem}
    stream = bool(request.get("stream")) if request else False

    raw_text = raw_body(exchange)

    response = None
    complete = exchange.finished
    keep_raw = False
    status = exchange.status
    done = False
    if exchange.streamed:
        response, done, problems = completion_from_sse(raw_text)
        if problems:
            flags.append("unparseable_response")
            keep_raw = True
        if not done:
            flags.append("incomplete_stream")
            complete = False
    elif raw_text and status is not None and status < 400:
        try:
            response = normalize_completion(loads(raw_text))
        except ValueError:
            flags.append("unparseable_response")
            keep_raw = True
    elif status is not None and exchange.finished and status < 400:
        flags.append("unparseable_response")  # an empty body

    if status is not None and status >= 400 and exchange.failure is None:
        flags.append("http_error")
        keep_raw = bool(raw_text)
        if error is None:  # a bad_request explains the upstream's 4xx better
            error = {"type": "upstream_error", "message": f"HTTP {status} from upstream: {raw_text[:500]}"}

    # openai-python stops reading at `data: [DONE]` and may close the connection before the stream's last
    # bytes reach it: the client had the whole answer, so that disconnect is not a failure.
    closed_after_done = exchange.failure == CLIENT_DISCONNECTED and done and "unparseable_response" not in flags
    if closed_after_done:
        complete = True
    elif exchange.failure is not None:
        complete = False
        message = exchange.failure_message
        if exchange.failure == UPSTREAM_UNREACHABLE:
            flags.append("upstream_error")
            status = 502
            message = f"upstream {exchange.upstream} unreachable: {message}"
        elif exchange.failure == CLIENT_DISCONNECTED:
            flags.append("client_disconnected")
        elif exchange.failure == UPSTREAM_ERROR:
            flags.append("upstream_error")
            if exchange.streamed and "incomplete_stream" not in flags:
                flags.append("incomplete_stream")
        error = {"type": exchange.failure, "message": message}

    finish_reason = None
    if response is not None:
        choices = response["choices"]
        finish_reason = choices[0].get("finish_reason") if choices else None
        if finish_reason == "length":
            flags.append("truncated")
        if any(
            isinstance(choice["message"].get("content"), str)
            and LEAKED_MARKUP.search(choice["message"]["content"])
            for choice in choices
        ):
            flags.append("leaked_tool_markup")
            keep_raw = True
        if any(
            choice.get("finish_reason") == "tool_calls" and not choice["message"].get("tool_calls")
            for choice in choices
        ):
            flags.append("tool_calls_missing")
            keep_raw = True

    if error is not None:
        error["message"] = redact_text(error["message"], counts)
    response = redact_tree(response, counts)
    fields = dict(
        id=exchange.id,
        session_id=exchange.session_id,
        started_at=rfc3339(exchange.started),
        latency_ms=_ms(exchange.started, exchange.ended) if exchange.finished or closed_after_done else None,
        ttfb_ms=_ms(exchange.started, exchange.first_byte),
        upstream=exchange.upstream,
        endpoint=exchange.endpoint,
        http_status=status,
        stream=stream,
        complete=complete,
        request=redact_tree(request, counts),
        response=response,
        usage=response.get("usage") if response else None,
        finish_reason=finish_reason,
        raw_response=redact_text(raw_text[:RAW_LIMIT], counts) if keep_raw and raw_text else None,
        flags=list(dict.fromkeys(flags)),
        error=error,
    )
    if run_id is not None:
        fields["run_id"] = run_id
    fields["policy"] = record_policy(exchange.policy, response)
    fields["redactions"] = dict(counts)
    return new_record(**fields)


def record_policy(policy: dict | None, response: Any) -> dict | None:
    """Which policy answered: what the proxy was told, plus the model the upstream named in its response."""
    served = response.get("model") if isinstance(response, dict) else None
    if not policy and not served:
        return None
    return {**(policy or {}), "served_model": served if isinstance(served, str) else None}


def checked_record(exchange: Exchange, run_id: str | None = None) -> dict[str, Any]:
    """`build_record`, made schema-valid whatever arrived: parts that do not follow the schema are
    dropped (named in `error`), and a failure of the builder itself becomes a recording_error record."""
    try:
        record = build_record(exchange, run_id)
    except Exception as problem:  # a bug in the recorder must not lose the fact of the exchange
        return fallback_record(exchange, run_id, f"{type(problem).__name__}: {problem}")
    errors = schema_errors(record)
    if not errors:
        return record
    dropped = []
    for part in ("request", "response"):
        if any(e.startswith(f"{part}.") or e.startswith(f"{part}:") for e in errors):
            record[part] = None
            dropped.append(part)
    if "response" in dropped:
        record["usage"] = record["finish_reason"] = None
        if record["raw_response"] is None:
            record["raw_response"] = redact_text(raw_body(exchange)[:RAW_LIMIT])
    record["error"] = {
        "type": "recording_error",
        "message": f"dropped {', '.join(dropped) or 'nothing'}: does not follow the trace schema: {errors[0]}",
    }
    if not schema_errors(record):
        return record
    return fallback_record(exchange, run_id, f"record does not follow the trace schema: {errors[0]}")


def fallback_record(exchange: Exchange, run_id: str | None, message: str) -> dict[str, Any]:
    """The least we know of an exchange whose record could not be built."""
    fields = dict(
        id=exchange.id,
        session_id=exchange.session_id if isinstance(exchange.session_id, str) else None,
        started_at=rfc3339(exchange.started),
        upstream=str(exchange.upstream),
        endpoint=str(exchange.endpoint),
        http_status=exchange.status if isinstance(exchange.status, int) else None,
        complete=False,
        error={"type": "recording_error", "message": redact_text(message[:2000])},
    )
    if run_id is not None:
        fields["run_id"] = run_id
    return new_record(**fields)
