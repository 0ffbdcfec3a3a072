"""The mitmproxy addon that records chat-completions exchanges.

Hooks run on mitmproxy's event loop and only take references (request bytes, response chunks,
timestamps) into an `Exchange` kept on `flow.metadata`; finished exchanges go to the recorder process
(recorder.py), which builds the trace records and appends them. Forwarding never waits for recording:
hooks catch everything, the SSE tee only appends a reference, and a slow disk, a full disk or a crashed
recorder only delays records or makes counted losses, never touches traffic.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mitmproxy import http

from core.trace import SESSION_HEADER
from proxy.capture import CLIENT_DISCONNECTED, PROXY_STOPPED, UPSTREAM_ERROR, UPSTREAM_UNREACHABLE, Exchange
from proxy.recorder import RecordWriter

log = logging.getLogger("proxy")

RECORDED_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
FEEDBACK_PATH = "/flywheel/feedback"  # answered by the proxy itself, never forwarded
METADATA_KEY = "flywheel"


@dataclass
class Stats:
    recorded: int = 0  # records written
    streamed: int = 0  # of which the request asked for a stream
    errors: int = 0  # of which the record carries an error
    passed_through: int = 0  # requests to other paths, forwarded unrecorded
    recording_failures: int = 0  # exchanges seen but not recorded (counted losses; the traffic still passed)
    losses: dict[str, int] = field(default_factory=dict)  # recording_failures by reason
    loss_file: str | None = None  # where each loss is listed (id, time, reason, session_id)
    abandoned: int = 0  # of the losses: left unwritten by a second Ctrl-C
    recorder_restarts: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Recorder:
    """mitmproxy addon: every POST /v1/chat/completions becomes one trace record; other paths pass."""

    def __init__(
        self,
        upstream: str,
        trace_file: Path,
        fsync: bool = False,
        loss_file: Path | None = None,
        policy: dict | None = None,
    ):
        self.upstream = upstream
        self.policy = policy
        self.stats = Stats()
        self.records = RecordWriter(trace_file, fsync=fsync, loss_file=loss_file)
        self.in_flight: dict[str, Exchange] = {}
        self.stopping = False  # set by the first stop signal: new chat requests are refused, not forwarded

    @property
    def trace_file(self) -> Path:
        return self.records.path

    def request(self, flow: http.HTTPFlow) -> None:
        recorded = False
        try:
            request = flow.request
            path = request.path.split("?", 1)[0]
            if path == FEEDBACK_PATH:
                flow.response = feedback(request, self.trace_file.parent)
                return
            if request.method != "POST" or path not in RECORDED_PATHS:
                self.stats.passed_through += 1
                return
            recorded = True
            if self.stopping:  # a request that would arrive after the summary: refuse it rather than lose it
                flow.kill()
                return
            exchange = Exchange(
                upstream=self.upstream,
                endpoint=path,
                session_id=request.headers.get(SESSION_HEADER),
                request_body=request.get_content(strict=False) or b"",
                started=request.timestamp_start or time.time(),
                policy=self.policy,
            )
            flow.metadata[METADATA_KEY] = exchange
            self.in_flight[exchange.id] = exchange
        except Exception as problem:  # never break the agent; never lose the exchange silently
            log.exception("recorder: request hook failed")
            if recorded and METADATA_KEY not in flow.metadata:
                self.records.lose(
                    uuid.uuid4().hex,
                    flow.request.headers.get(SESSION_HEADER),
                    f"request_hook_error: {type(problem).__name__}: {problem}",
                )

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        try:
            response = flow.response
            is_sse = response.headers.get("content-type", "").lower().startswith("text/event-stream")
            exchange: Exchange | None = flow.metadata.get(METADATA_KEY)
            if exchange is None:
                if is_sse:  # forward unrecorded streams unbuffered too
                    response.stream = True
                return
            exchange.status = response.status_code
            if is_sse:
                exchange.streamed = True
                exchange.content_encoding = response.headers.get("content-encoding", "").lower()
                response.stream = exchange.tee
            else:
                exchange.first_byte = time.time()
        except Exception:
            log.exception("recorder: responseheaders hook failed")
            if flow.response is not None and "event-stream" in flow.response.headers.get("content-type", ""):
                flow.response.stream = True

    def response(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, "response", _fill_response)

    def error(self, flow: http.HTTPFlow) -> None:
        self._finish(flow, "error", _fill_error)

    def done(self) -> None:
        """Shutdown: exchanges still in flight are recorded as incomplete, then the queue is drained."""
        self.stopping = True
        for exchange in list(self.in_flight.values()):
            exchange.failure = PROXY_STOPPED
            exchange.failure_message = "the proxy stopped before the exchange finished"
            self.records.submit(exchange)
        self.in_flight.clear()
        for key, value in self.records.close().items():
            setattr(self.stats, key, value)

    def _take(self, flow: http.HTTPFlow) -> Exchange | None:
        exchange = flow.metadata.pop(METADATA_KEY, None)
        if exchange is not None:
            self.in_flight.pop(exchange.id, None)
        return exchange

    def _finish(
        self, flow: http.HTTPFlow, hook: str, fill: Callable[[Exchange, http.HTTPFlow], None]
    ) -> None:
        """The last hook of a recorded flow: `fill` completes its exchange, which is then submitted. If `fill`
        raises, the exchange is still submitted, as a recording_error record: never lost, never raised."""
        exchange = self._take(flow)
        if exchange is None:
            return
        try:
            fill(exchange, flow)
        except Exception as problem:
            log.exception("recorder: %s hook failed", hook)
            exchange.failure, exchange.failure_message = (
                "recording_error",
                f"{type(problem).__name__}: {problem}",
            )
        self.records.submit(exchange)


def _fill_response(exchange: Exchange, flow: http.HTTPFlow) -> None:
    exchange.status = flow.response.status_code
    if not exchange.streamed:
        exchange.body = flow.response.get_content(strict=False) or b""
        exchange.ended = flow.response.timestamp_end or time.time()
    elif exchange.ended is None:
        exchange.ended = time.time()
    exchange.finished = True


def _fill_error(exchange: Exchange, flow: http.HTTPFlow) -> None:
    message = flow.error.msg if flow.error else "unknown error"
    if flow.response is not None:
        exchange.status = flow.response.status_code
    if "client disconnected" in message.lower():
        exchange.failure = CLIENT_DISCONNECTED
    elif flow.response is None and not flow.server_conn.timestamp_tcp_setup:
        exchange.failure = UPSTREAM_UNREACHABLE
        exchange.status = 502  # what mitmproxy answers the client
    else:
        exchange.failure = UPSTREAM_ERROR
        if exchange.status is None:
            exchange.status = 502
    exchange.failure_message = message


def feedback(request: http.Request, traces_dir: Path) -> http.Response:
    """`POST /flywheel/feedback {"session": ..., "outcome": "success" | "failure", "note": ...}`: the user's
    verdict on a session, appended to the traces' outcomes.jsonl (core.outcomes); 400 names what is wrong."""
    import json

    from core.outcomes import OutcomeError, record_outcome

    def answer(status: int, body: dict) -> http.Response:
        return http.Response.make(status, json.dumps(body), {"content-type": "application/json"})

    if request.method != "POST":
        return answer(405, {"error": f"POST a JSON object to {FEEDBACK_PATH}"})
    try:
        body = json.loads(request.get_content(strict=False) or b"")
        if not isinstance(body, dict):
            raise OutcomeError("the body must be a JSON object")
        unknown = set(body) - {"session", "outcome", "note"}
        if unknown:
            raise OutcomeError(f"unknown fields {sorted(unknown)} (known: session, outcome, note)")
        saved = record_outcome(
            traces_dir, body.get("session"), body.get("outcome"), "user", note=body.get("note")
        )
    except (ValueError, OutcomeError) as problem:
        return answer(400, {"error": str(problem)})
    except OSError as problem:  # the traffic goes on; the user is told the verdict was not kept
        return answer(503, {"error": f"could not record the outcome: {problem}"})
    return answer(200, {"recorded": saved})
