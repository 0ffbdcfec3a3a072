"""The recording proxy end to end: the real `python -m proxy` (mitmproxy 12) as a child process, a real
`mlx_lm server` with the tiny tool-calling model, the real openai client and a real pydantic-ai agent.

A scripted upstream (proxy/scripted_upstream.py, a minimal HTTP server) stands in only for what the
tiny model cannot produce on demand; each such test says so: parallel tool calls streamed as argument
fragments interleaved by index, malformed bodies, streams that drop or never send [DONE], and a stream
held open at a gate (to prove chunk-by-chunk forwarding and to abort a client mid-stream).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from bench.capture_harness import recorder_pid
from core.net import free_port
from core.trace import SESSION_HEADER, read_trace_lines, validation_errors
from proxy import RecordingProxy
from proxy.capture import Exchange, build_record, checked_record
from proxy.recorder import RESTART_INTERVAL
from proxy.scripted_upstream import LEAKED_TEXT, PARALLEL_CALLS, ScriptedUpstream
from proxy.server import parse_listen, parse_upstream
from proxy.stream import assemble, completion_from_sse, normalize_completion, parse_sse

ROOT = Path(__file__).resolve().parent.parent
MODEL = "default_model"  # mlx_lm.server's name for the model it was started with
API_KEY = "sk-proj-CLIENTkey0123456789abcdefABCDEF"  # sent as Authorization: Bearer; must never be stored


# ------------------------------------------------------------------------------------------------ helpers


def new_session() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def client_for(proxy: RecordingProxy, session: str, **options) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.base_url,
        api_key=API_KEY,
        max_retries=0,
        timeout=120,
        default_headers={SESSION_HEADER: session},
        **options,
    )


def session_records(trace_file: Path, session: str, count: int, timeout: float = 30.0) -> list[dict]:
    """The records of `session`, once `count` of them are written (the recorder writes after forwarding);
    checks each one against the schema, and that no more than `count` arrive."""
    deadline = time.monotonic() + timeout
    while True:
        lines = list(read_trace_lines([trace_file])) if trace_file.exists() else []
        records = [line.record for line in lines if line.record and line.record.get("session_id") == session]
        if len(records) >= count or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(records) == count, f"expected {count} records for {session}, found {len(records)}"
    for record in records:
        assert validation_errors(record) == [], validation_errors(record)
    return sorted(records, key=lambda r: r["started_at"])


def without_volatile(response: dict) -> dict:
    """A recorded response minus what differs between two runs: ids, timestamps, prompt-cache hits."""
    response = copy.deepcopy(response)
    for key in ("id", "created"):
        response.pop(key, None)
    for choice in response["choices"]:
        for call in choice["message"].get("tool_calls") or []:
            call.pop("id", None)
    if response.get("usage"):
        response["usage"].pop("prompt_tokens_details", None)
    return response


def streamed_message(chunks) -> dict:
    """What an openai streaming client saw, merged independently of proxy/stream.py."""
    content, calls, finish = "", {}, None
    for chunk in chunks:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for call in choice.delta.tool_calls or []:
                slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                slot["id"] = slot["id"] or call.id
                if call.function and call.function.name and call.function.name != slot["name"]:
                    slot["name"] += call.function.name
                slot["arguments"] += (call.function.arguments or "") if call.function else ""
            finish = choice.finish_reason or finish
    return {
        "content": content or None,
        "tool_calls": [calls[i] for i in sorted(calls)],
        "finish_reason": finish,
    }


def recorded_message(record: dict) -> dict:
    choice = record["response"]["choices"][0]
    message = choice["message"]
    calls = [
        {"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}
        for c in message.get("tool_calls") or []
    ]
    return {"content": message["content"], "tool_calls": calls, "finish_reason": choice["finish_reason"]}


def tool_prompt(tool_model_samples, kind: str = "read_file") -> list[dict]:
    """System + user messages of a training-style request the tiny tool model answers with a call."""
    for sample in tool_model_samples:
        calls = sample["messages"][2]["tool_calls"]
        if len(sample["messages"]) == 3 and calls[0]["function"]["name"] == kind and len(calls) == 1:
            return sample["messages"][:2]
    raise AssertionError(f"no {kind} sample")


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def samples():
    from models.tiny import tool_call_samples

    return tool_call_samples(200, seed=7)


@pytest.fixture(scope="module")
def real_proxy(tool_server, tmp_path_factory):
    with RecordingProxy(tool_server.url, tmp_path_factory.mktemp("traces-real")) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def scripted():
    with ScriptedUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def scripted_proxy(scripted, tmp_path_factory):
    with RecordingProxy(scripted.url, tmp_path_factory.mktemp("traces-scripted")) as proxy:
        yield proxy


# ------------------------------------------------------------------------ real mlx_lm server, real clients


def test_stream_and_non_stream_record_equal_responses(real_proxy, samples):
    """Greedy decoding of one prompt, answered whole and streamed: the two recorded responses are equal
    (ids, timestamps and prompt-cache counts aside), and each equals what the client received."""
    session = new_session()
    client = client_for(real_proxy, session)
    from agent.tools import AGENT_TOOLS

    request = dict(
        model=MODEL, messages=tool_prompt(samples), tools=AGENT_TOOLS, temperature=0, max_tokens=96
    )
    raw = client.chat.completions.with_raw_response.create(**request)
    received = json.loads(raw.http_response.content)
    chunks = list(
        client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )

    plain, streamed = session_records(real_proxy.trace_file, session, 2)
    assert (plain["stream"], streamed["stream"]) == (False, True)
    assert plain["complete"] and streamed["complete"] and not plain["flags"] and not streamed["flags"]
    assert plain["response"] == normalize_completion(received)  # byte-faithful capture of the plain body
    assert without_volatile(streamed["response"]) == without_volatile(plain["response"])
    assert streamed_message(chunks) == recorded_message(streamed)
    message = plain["response"]["choices"][0]["message"]
    assert (
        plain["finish_reason"] == "tool_calls" and message["tool_calls"][0]["function"]["name"] == "read_file"
    )
    assert plain["usage"]["completion_tokens"] > 0 and streamed["usage"] == streamed["response"]["usage"]
    assert plain["request"]["tools"] == AGENT_TOOLS and plain["request"]["messages"] == request["messages"]
    assert 0 < streamed["ttfb_ms"] <= streamed["latency_ms"]
    assert plain["upstream"] == real_proxy.upstream and plain["endpoint"] == "/v1/chat/completions"


def test_pydantic_ai_agent_with_tools(real_proxy, samples):
    """A real pydantic-ai agent with the four agent tools, through the proxy: every model request it makes
    is one record carrying those tools, each recorded response holds exactly the tool calls the agent
    then executed, and the tool result travels back in the next recorded request."""
    from pydantic_ai import Agent, Tool, UnexpectedModelBehavior, UsageLimitExceeded, capture_run_messages
    from pydantic_ai.messages import ModelResponse, ToolCallPart
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from pydantic_ai.usage import UsageLimits

    from agent.tools import AGENT_TOOLS, SYSTEM_PROMPT

    executed = []

    def tool(spec: dict) -> Tool:
        def run(**arguments) -> str:
            executed.append((spec["name"], arguments))
            return "def main():\n    print('hello')\n"

        return Tool.from_schema(run, spec["name"], spec["description"], spec["parameters"])

    session = new_session()
    http_client = openai.AsyncOpenAI(
        base_url=real_proxy.base_url,
        api_key=API_KEY,
        max_retries=0,
        default_headers={SESSION_HEADER: session},
    )
    agent = Agent(
        OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=http_client)),
        system_prompt=SYSTEM_PROMPT,
        tools=[tool(spec["function"]) for spec in AGENT_TOOLS],
        model_settings={"temperature": 0, "max_tokens": 96},
    )
    # the tiny model need not stop cleanly; what went over the wire is what is tested
    with capture_run_messages() as history, contextlib.suppress(UsageLimitExceeded, UnexpectedModelBehavior):
        agent.run_sync(tool_prompt(samples)[1]["content"], usage_limits=UsageLimits(request_limit=3))
    responses = [m for m in history if isinstance(m, ModelResponse)]
    records = session_records(real_proxy.trace_file, session, len(responses))
    assert executed, "the tiny tool model calls a tool for a training-style prompt"
    assert len(records) >= 2
    offered = {spec["function"]["name"] for spec in AGENT_TOOLS}
    for record, response in zip(records, responses, strict=True):
        assert {t["function"]["name"] for t in record["request"]["tools"]} == offered
        agent_calls = [(p.tool_name, p.args_as_dict()) for p in response.parts if isinstance(p, ToolCallPart)]
        assert recorded_calls_of(record) == agent_calls
    assert executed[0] == recorded_calls_of(records[0])[0]
    tool_results = [m for m in records[1]["request"]["messages"] if m["role"] == "tool"]
    assert tool_results and tool_results[0]["content"] == "def main():\n    print('hello')\n"


def recorded_calls_of(record: dict) -> list[tuple[str, dict]]:
    return [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for c in record["response"]["choices"][0]["message"].get("tool_calls") or []
    ]


def test_concurrent_requests_each_recorded_once(real_proxy, samples):
    """20 requests at once (half streamed): exactly 20 records, one per request, none mixed up. Under
    this burst mlx_lm.server occasionally closes a connection without answering; the agent then gets
    the 502 and that request's record says so (no client retries here, so every attempt is counted)."""
    session = new_session()
    client = client_for(real_proxy, session)
    prompts = [[{"role": "user", "content": f"Read notes_{i}.txt."}] for i in range(20)]

    def ask(i: int):
        request = dict(model=MODEL, messages=prompts[i], temperature=0, max_tokens=12)
        try:
            if i % 2:
                return i, streamed_message(list(client.chat.completions.create(**request, stream=True)))
            return i, client.chat.completions.create(**request).choices[0].message.content
        except openai.APIStatusError as error:
            return i, error

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        answers = dict(pool.map(ask, range(20)))
    failed = {i for i, answer in answers.items() if isinstance(answer, openai.APIStatusError)}
    assert len(failed) <= 4, answers
    records = session_records(real_proxy.trace_file, session, 20)
    assert len({r["id"] for r in records}) == 20
    cut = set()
    for record in records:
        i = int(record["request"]["messages"][0]["content"].split("_")[1].split(".")[0])
        assert record["stream"] == bool(i % 2)
        if i in failed:
            assert record["error"] is not None and record["http_status"] == answers[i].status_code
        elif i % 2 and not record["complete"]:
            # The server closed this stream mid-way: its SSE body ends with the connection, so the client saw
            # a clean end without [DONE]; the record says what happened and holds what the client got.
            assert "incomplete_stream" in record["flags"], record["flags"]
            if record["response"]:
                assert (recorded_message(record)["content"] or "") == (answers[i]["content"] or "")
            cut.add(i)
        elif i % 2:
            assert record["complete"] and recorded_message(record) == answers[i]
        else:
            assert record["complete"]
            assert record["response"]["choices"][0]["message"]["content"] == (answers[i] or None)
    assert len(failed | cut) <= 4, (failed, cut)


def test_seeded_secrets_never_reach_the_trace_file(real_proxy, scripted_proxy):
    """Secrets in user messages, tool results and tool-call arguments (real server), and echoed back in a
    response (scripted echo upstream), plus the client's API key header: none is in any trace file."""
    secrets = {
        "openai": "sk-proj-SEEDsecret0123456789abcdefXYZ",
        "aws": "AKIAZZZZSEEDSECRET99",
        "password": "seeded-hunter2-password",
        "pem": "MIIEowIBAAKCAQEAseededPEMbody0123456789",
    }
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{secrets['pem']}\n-----END RSA PRIVATE KEY-----"
    messages = [
        {"role": "user", "content": f"deploy with {secrets['openai']} and {secrets['aws']}"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "write_file",
                        "arguments": json.dumps(
                            {"path": ".env", "content": f"DB_PASSWORD={secrets['password']}\n"}
                        ),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"wrote key file:\n{pem}"},
        {"role": "user", "content": "thanks"},
    ]
    session = new_session()
    for proxy, model in ((real_proxy, MODEL), (scripted_proxy, "echo")):
        client = client_for(proxy, session)
        client.chat.completions.create(model=model, messages=messages, max_tokens=8)
        list(client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True))
    echo = [{"role": "user", "content": f"say {secrets['openai']} {secrets['aws']}"}]
    client_for(scripted_proxy, session).chat.completions.create(model="echo", messages=echo)

    real = session_records(real_proxy.trace_file, session, 2)
    scripted_records = session_records(scripted_proxy.trace_file, session, 3)
    for record in real + scripted_records[:2]:
        assert record["redactions"] == {
            "openai_api_key": 1,
            "aws_access_key_id": 1,
            "env_secret": 1,
            "private_key": 1,
        }
    echoed = scripted_records[2]
    assert echoed["response"]["choices"][0]["message"]["content"] == (
        "echo: say [REDACTED:openai_api_key] [REDACTED:aws_access_key_id]"
    )
    assert echoed["redactions"] == {"openai_api_key": 2, "aws_access_key_id": 2}  # request and response
    text = real_proxy.trace_file.read_text() + scripted_proxy.trace_file.read_text()
    for secret in [*secrets.values(), API_KEY]:
        assert secret not in text


# ------------------------------------------------------------------------------------ scripted upstream


def test_first_chunk_reaches_client_before_upstream_sends_the_last(scripted, scripted_proxy):
    """Scripted upstream (a model cannot be paused): it sends one chunk, then waits at a gate the test
    opens only after that chunk came out of the proxy. Buffering would deadlock into a read timeout."""
    scripted.gate.clear()
    scripted.finished.clear()
    session = new_session()
    body = {"model": "gated", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    headers = {SESSION_HEADER: session}
    with httpx.stream(
        "POST", f"{scripted_proxy.base_url}/chat/completions", json=body, headers=headers, timeout=5
    ) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert '"first"' in first
        assert not scripted.finished.is_set()  # the upstream has not sent its last chunk yet
        scripted.gate.set()
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]"
    (record,) = session_records(scripted_proxy.trace_file, session, 1)
    assert record["complete"] and record["response"]["choices"][0]["message"]["content"] == "first last"


def test_client_abort_mid_stream_records_what_arrived(scripted, scripted_proxy):
    """Scripted upstream holds the stream open at a gate; the client reads one chunk and hangs up. The
    record is marked incomplete, keeps the first chunk's content, and the proxy keeps serving."""
    scripted.gate.clear()
    session = new_session()
    body = {"model": "gated", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST", f"{scripted_proxy.base_url}/chat/completions", json=body, headers={SESSION_HEADER: session}
    ) as response:
        next(line for line in response.iter_lines() if line.startswith("data:"))
    (record,) = session_records(scripted_proxy.trace_file, session, 1)
    scripted.gate.set()
    assert record["complete"] is False
    assert "client_disconnected" in record["flags"] and record["error"]["type"] == "client_disconnected"
    assert record["response"]["choices"][0]["message"]["content"] == "first"
    assert record["http_status"] == 200 and record["latency_ms"] is None
    after = client_for(scripted_proxy, session).chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "still there?"}]
    )
    assert after.choices[0].message.content == "echo: still there?"


def test_parallel_tool_calls_fragmented_and_interleaved(scripted_proxy):
    """Scripted upstream: two tool calls streamed OpenAI-style, arguments in 4-character fragments
    interleaved by index (the tiny model behind mlx_lm.server sends each call whole)."""
    session = new_session()
    client = client_for(scripted_proxy, session)
    request = dict(model="parallel-tools", messages=[{"role": "user", "content": "read both"}])
    client.chat.completions.create(**request)
    chunks = list(
        client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True})
    )
    plain, streamed = session_records(scripted_proxy.trace_file, session, 2)
    assert streamed["response"] == plain["response"]
    expected = [{"id": i, "name": n, "arguments": a} for i, n, a in PARALLEL_CALLS]
    assert recorded_message(streamed)["tool_calls"] == expected
    assert streamed_message(chunks) == recorded_message(streamed)
    assert streamed["finish_reason"] == "tool_calls" and streamed["usage"]["total_tokens"] == 8


def test_mlx_shaped_stream_equals_plain(scripted_proxy):
    """Scripted upstream replaying mlx_lm.server's stream shape (keepalive comment, role in every chunk,
    whole call at index 0, usage chunk with object chat.completion and no choices)."""
    session = new_session()
    client = client_for(scripted_proxy, session)
    request = dict(model="mlx-style-tool", messages=[{"role": "user", "content": "read a.py"}])
    client.chat.completions.create(**request)
    list(client.chat.completions.create(**request, stream=True, stream_options={"include_usage": True}))
    plain, streamed = session_records(scripted_proxy.trace_file, session, 2)
    assert streamed["response"] == plain["response"]
    assert streamed["response"]["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    ("script", "stream", "flags", "complete", "error_type", "raw_kept"),
    [
        ("not-json", False, ["unparseable_response"], True, None, True),
        ("not-json", True, ["unparseable_response"], True, None, True),
        ("leaked-markup", True, ["leaked_tool_markup"], True, None, True),
        ("missing-tool-calls", False, ["tool_calls_missing"], True, None, True),
        ("missing-tool-calls", True, ["tool_calls_missing"], True, None, True),
        ("no-done", True, ["incomplete_stream"], False, None, False),
        ("drop", True, ["incomplete_stream", "upstream_error"], False, "upstream_error", False),
        ("http-error", False, ["http_error"], True, "upstream_error", True),
    ],
)
def test_flags_for_odd_responses(scripted_proxy, script, stream, flags, complete, error_type, raw_kept):
    """Scripted upstream: bodies a healthy model server does not send on demand."""
    session = new_session()
    body = {"model": script, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    try:
        httpx.post(
            f"{scripted_proxy.base_url}/chat/completions",
            json=body,
            headers={SESSION_HEADER: session},
            timeout=10,
        ).read()
    except httpx.HTTPError:
        assert script == "drop"  # the client sees the upstream's dropped connection
    (record,) = session_records(scripted_proxy.trace_file, session, 1)
    assert sorted(record["flags"]) == sorted(flags)
    assert record["complete"] is complete
    assert (record["error"] or {}).get("type") == error_type
    assert (record["raw_response"] is not None) is raw_kept
    if script == "leaked-markup":
        assert record["response"]["choices"][0]["message"]["content"] == LEAKED_TEXT


def test_non_json_request_passes_and_is_recorded_as_bad_request(scripted_proxy):
    session = new_session()
    response = httpx.post(
        f"{scripted_proxy.base_url}/chat/completions", content=b"{not json", headers={SESSION_HEADER: session}
    )
    assert response.status_code == 400  # the upstream's answer, forwarded
    (record,) = session_records(scripted_proxy.trace_file, session, 1)
    assert record["request"] is None and record["error"]["type"] == "bad_request"
    assert set(record["flags"]) == {"non_json_request", "http_error"} and record["http_status"] == 400


def test_other_paths_pass_through_unrecorded(scripted, scripted_proxy):
    session = new_session()
    for path in ("/health", "/v1/models"):
        response = httpx.get(f"{scripted_proxy.url}{path}", headers={SESSION_HEADER: session})
        assert response.status_code == 200
    assert httpx.get(f"{scripted_proxy.url}/v1/chat/completions").status_code == 404  # GET: not recorded
    time.sleep(0.3)
    assert [
        line for line in read_trace_lines([scripted_proxy.trace_file]) if line.record["session_id"] == session
    ] == []
    assert {"/health", "/v1/models"} <= {exchange.path for exchange in scripted.received}


# ------------------------------------------------------------------------------- a proxy process each


def test_upstream_down_gets_502_and_an_error_record(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    session = new_session()
    with RecordingProxy(dead, tmp_path) as proxy:
        response = httpx.post(
            f"{proxy.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={SESSION_HEADER: session},
        )
        assert response.status_code == 502 and "Connect" in response.text
        with pytest.raises(openai.InternalServerError) as raised:
            client_for(proxy, session).chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}], stream=True
            )
        assert raised.value.status_code == 502
        records = session_records(proxy.trace_file, session, 2)
        summary = proxy.stop()
    for record in records:
        assert record["http_status"] == 502 and record["complete"] is False
        assert record["error"]["type"] == "upstream_unreachable" and dead in record["error"]["message"]
        assert "upstream_error" in record["flags"] and record["response"] is None
    assert summary["recorded"] == 2 and summary["errors"] == 2


def test_cli_lines_and_summary_on_sigint(tmp_path):
    """`python -m proxy` as a user runs it: a startup line naming where it listens, the upstream and the
    trace file; Ctrl-C with an idle keep-alive connection and a stream still open (scripted upstream
    holding it at its gate) prints a one-line summary and no tracebacks, and records the open stream as
    incomplete."""
    with ScriptedUpstream() as upstream, httpx.Client() as client:
        command = [sys.executable, "-m", "proxy", "--upstream", upstream.url, "--listen", "127.0.0.1:0"]
        command += ["--traces", str(tmp_path)]
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
        )
        try:
            startup = process.stdout.readline()
            assert "listening on http://127.0.0.1:" in startup and upstream.url in startup
            url = startup.split("listening on ")[1].split()[0]
            trace_file = Path(
                startup.split("recording POST /v1/chat/completions to ")[1].split(". Ctrl-C")[0]
            )
            assert trace_file.parent == tmp_path
            body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
            assert client.post(f"{url}/v1/chat/completions", json=body).status_code == 200
            assert client.post(f"{url}/v1/chat/completions", json={**body, "stream": True}).status_code == 200
            assert client.get(f"{url}/v1/models").status_code == 200
            gated = {**body, "model": "gated", "stream": True}
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=gated, timeout=10) as open_stream:
                next(open_stream.iter_lines())
                process.send_signal(signal.SIGINT)
                out, err = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, err
    assert "Traceback" not in err, err
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("proxy stopped after") and str(trace_file) in summary
    assert "3 exchanges recorded (2 streamed), 1 with errors, 1 passed through" in summary
    records = [json.loads(line) for line in trace_file.read_text().splitlines()]
    assert [r["complete"] for r in records] == [True, True, False]
    # whichever mitmproxy noticed first while shutting down: its own stop or the connection closing
    assert records[2]["error"]["type"] in ("proxy_stopped", "client_disconnected")
    assert records[2]["response"]["choices"][0]["message"]["content"] == "first"
    assert validation_errors(records[2]) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to simulate a full disk")
def test_full_disk_never_breaks_traffic(tmp_path):
    """Every write to /dev/full fails with ENOSPC: the agent's requests still succeed, the failure is
    logged and counted."""
    with ScriptedUpstream() as upstream:
        proxy = RecordingProxy(
            upstream.url, tmp_path, trace_file="/dev/full", log_path=tmp_path / "proxy.log"
        )
        with proxy:
            client = client_for(proxy, new_session())
            for _ in range(3):
                answer = client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "hi"}]
                )
                assert answer.choices[0].message.content == "echo: hi"
            chunks = list(
                client.chat.completions.create(
                    model="echo", messages=[{"role": "user", "content": "hi"}], stream=True
                )
            )
            assert streamed_message(chunks)["content"] == "echo: hi"
            summary = proxy.stop()
    assert summary["recording_failures"] == 4 and summary["recorded"] == 0
    log = (tmp_path / "proxy.log").read_text()
    assert "could not write to /dev/full" in log and "Traceback" not in log


@pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="finds the recorder process via /proc (Linux)"
)
def test_killed_recorder_never_breaks_traffic_and_is_restarted(tmp_path):
    """SIGKILL the recorder process: requests keep succeeding, the proxy logs it, starts a new recorder,
    and later exchanges are recorded again."""
    with ScriptedUpstream() as upstream:
        proxy = RecordingProxy(upstream.url, tmp_path, log_path=tmp_path / "proxy.log")
        with proxy:
            session = new_session()
            client = client_for(proxy, session)

            def ask(text: str) -> str:
                message = [{"role": "user", "content": text}]
                return (
                    client.chat.completions.create(model="echo", messages=message).choices[0].message.content
                )

            assert ask("before") == "echo: before"
            session_records(proxy.trace_file, session, 1)
            first = recorder_pid(proxy.process.pid)
            os.kill(first, signal.SIGKILL)
            time.sleep(RESTART_INTERVAL + 0.5)  # SIGKILL is immediate; past the restart guard
            assert ask("after") == "echo: after"  # this one finds the recorder dead and restarts it
            assert recorder_pid(proxy.process.pid) != first
            records = session_records(proxy.trace_file, session, 2)
            summary = proxy.stop()
    assert [r["request"]["messages"][0]["content"] for r in records] == ["before", "after"]
    assert summary["recorded"] == 2  # what the killed recorder wrote counts too
    assert "recorder process exited" in (tmp_path / "proxy.log").read_text()


@pytest.mark.skipif(
    not Path("/proc/self/task").exists(), reason="finds the recorder process via /proc (Linux)"
)
def test_recorder_exits_when_the_proxy_is_killed(tmp_path):
    """No orphan: SIGKILL the proxy (no shutdown hook runs) and its recorder process goes too."""
    with ScriptedUpstream() as upstream, RecordingProxy(upstream.url, tmp_path) as proxy:
        recorder = recorder_pid(proxy.process.pid)
        proxy.process.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{recorder}").exists() and time.monotonic() < deadline:
            if Path(f"/proc/{recorder}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                break  # exited; a zombie until its (dead) parent's reaper collects it
            time.sleep(0.1)
        assert time.monotonic() < deadline, "the recorder outlived its proxy"


def test_listening_beyond_loopback_warns_and_a_failed_bind_is_clear(tmp_path):
    """192.0.2.1 (TEST-NET-1) is no address of this machine: the warning for a non-loopback --listen is
    printed, then the bind fails with a clear error, exit code 1 and no empty trace file left behind."""
    command = [sys.executable, "-m", "proxy", "--upstream", "http://127.0.0.1:9", "--listen", "192.0.2.1:0"]
    result = subprocess.run(
        [*command, "--traces", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "beyond loopback" in result.stderr and "failed to listen on 192.0.2.1" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_get_one_line_errors():
    with pytest.raises(ValueError, match="without a path such as /v1"):
        parse_upstream("http://127.0.0.1:8080/v1")
    with pytest.raises(ValueError, match="expected an http"):
        parse_upstream("ftp://host")
    assert parse_upstream("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert parse_listen("0") == ("127.0.0.1", 0) and parse_listen("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost:http")
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--upstream", "http://127.0.0.1:1/v1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ stream merging, records


OPENAI_STYLE_CHUNKS = [
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"content": "Reading "}, "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"tool_calls": [
         {"index": 0, "id": "a", "type": "function", "function": {"name": "read_file", "arguments": '{"pa'}}]},
         "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"tool_calls": [
         {"index": 1, "id": "b", "type": "function", "function": {"name": "list_files", "arguments": '{"path'}}]},
         "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": 'th": "x"}'}}]},
                  "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 1, "function": {"arguments": '": "."}'}}]},
                  "finish_reason": None}]},
    {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
]  # fmt: skip


def test_merge_agrees_with_openai_stream_accumulator():
    """On an OpenAI-style stream (role once, arguments fragmented and interleaved), our merge gives what
    openai's own ChatCompletionStreamState gives."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    state = ChatCompletionStreamState()
    for chunk in OPENAI_STYLE_CHUNKS:
        state.handle_chunk(ChatCompletionChunk.model_validate(chunk))
    theirs = state.get_final_completion().choices[0]
    ours = assemble(OPENAI_STYLE_CHUNKS)["choices"][0]
    assert ours["message"]["content"] == theirs.message.content == "Reading "
    assert ours["finish_reason"] == theirs.finish_reason == "tool_calls"
    assert [
        (c["id"], c["function"]["name"], c["function"]["arguments"]) for c in ours["message"]["tool_calls"]
    ] == [(c.id, c.function.name, c.function.arguments) for c in theirs.message.tool_calls]
    assert json.loads(ours["message"]["tool_calls"][1]["function"]["arguments"]) == {"path": "."}


def test_merge_handles_mlx_role_repeats_and_calls_without_index():
    chunks = [
        {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "a"}}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "b"}}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}]}}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"id": "2", "function": {"name": "g", "arguments": "{"}}]}}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"tool_calls": [{"function": {"arguments": "}"}}]}}]},
        {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": "tool_calls"}]},
        {"id": "x", "object": "chat.completion", "choices": [], "usage": {"total_tokens": 3}},
    ]  # fmt: skip
    result = assemble(chunks)
    message = result["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] == "ab"
    assert [(c["id"], c["function"]["arguments"]) for c in message["tool_calls"]] == [
        ("1", "{}"),
        ("2", "{}"),
    ]
    assert result["usage"] == {"total_tokens": 3} and result["object"] == "chat.completion"


def test_parse_sse_edge_cases():
    text = ': keepalive 1/2\r\n\r\ndata: {"a":\r\ndata: 1}\r\n\r\nevent: x\nid: 7\ndata:{"b":2}\n\ndata: [DONE]\n\n'
    assert parse_sse(text) == (['{"a":\n1}', '{"b":2}'], True)
    assert parse_sse('data: {"c":3}') == (['{"c":3}'], False)  # cut off without its blank line
    completion, done, problems = completion_from_sse("data: {oops\n\ndata: [DONE]\n\n")
    assert completion is None and done and problems


def exchange(**fields) -> Exchange:
    base = dict(upstream="http://127.0.0.1:1", endpoint="/v1/chat/completions", session_id="s",
                request_body=b'{"messages": [{"role": "user", "content": "hi"}]}', started=time.time())  # fmt: skip
    return Exchange(**{**base, **fields})


def test_a_client_that_hangs_up_after_done_got_the_whole_answer():
    """openai-python stops reading at `data: [DONE]` and may close before the stream's last bytes: mitmproxy
    then reports a client disconnect, yet the client had every event. Complete, not a loss; a hang-up
    before [DONE] stays an incomplete client_disconnected record."""
    from proxy.capture import CLIENT_DISCONNECTED

    event = {"choices": [{"index": 0, "delta": {"content": "all"}, "finish_reason": "stop"}]}
    body = f"data: {json.dumps(event)}\n\n".encode()
    hung_up = dict(status=200, streamed=True, failure=CLIENT_DISCONNECTED, failure_message="client disconnected")
    after = build_record(exchange(chunks=[body, b"data: [DONE]\n\n"], **hung_up))
    assert after["complete"] and after["error"] is None and after["flags"] == []
    assert after["response"]["choices"][0]["message"]["content"] == "all" and validation_errors(after) == []
    before = build_record(exchange(chunks=[body], **hung_up))
    assert not before["complete"] and before["error"]["type"] == CLIENT_DISCONNECTED
    assert {"client_disconnected", "incomplete_stream"} <= set(before["flags"])


def test_non_json_request_is_a_bad_request_record():
    record = build_record(exchange(request_body=b"not json", status=400, body=b"{}", finished=True))
    assert record["request"] is None and record["error"]["type"] == "bad_request"
    assert "non_json_request" in record["flags"] and validation_errors(record) == []


def test_recorder_bug_still_yields_a_valid_recording_error_record():
    broken = exchange(request_body=None)  # json.loads(None) raises TypeError inside build_record
    record = checked_record(broken)
    assert record["error"]["type"] == "recording_error" and "TypeError" in record["error"]["message"]
    assert validation_errors(record) == [] and record["id"] == broken.id


def test_response_outside_the_schema_is_dropped_not_the_record():
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": {"not": "a string"}}}]})
    record = checked_record(exchange(status=200, body=body.encode(), finished=True))
    assert validation_errors(record) == []
    assert record["response"] is None and record["raw_response"] == body
    assert record["error"]["type"] == "recording_error" and "response" in record["error"]["message"]
    assert record["request"]["messages"][0]["content"] == "hi"


def test_redaction_counts_match_markers():
    body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "AKIAIOSFODNN7EXAMPLE"}}]})
    request = json.dumps({"messages": [{"role": "user", "content": "DB_PASSWORD=hunter2"}]}).encode()
    record = build_record(exchange(request_body=request, status=200, body=body.encode(), finished=True))
    text = json.dumps(record)
    assert Counter({"aws_access_key_id": 1, "env_secret": 1}) == Counter(record["redactions"])
    assert text.count("[REDACTED:") == 2 and "hunter2" not in text


def test_the_wrapper_waits_longer_than_the_recorder_drains():
    """RecordingProxy.stop SIGKILLs after its timeout; the proxy may spend up to the writer's drain timeout
    writing queued records: a shorter wrapper timeout loses the summary and the unflushed records."""
    import inspect

    from proxy.recorder import RecordWriter

    drain = inspect.signature(RecordWriter.close).parameters["timeout"].default
    assert RecordingProxy("http://127.0.0.1:9", "traces").stop_timeout > drain


def test_an_exception_in_the_request_hook_is_a_counted_loss(tmp_path, monkeypatch):
    """The request hook failing (here: building the exchange raises) must not drop the exchange silently:
    it is counted, in the summary and in the side file of losses."""
    from mitmproxy.test import tflow

    import proxy.addon
    from core.trace import loss_file_for

    def broken(**fields):
        raise MemoryError("no room for the request body")

    recorder = proxy.addon.Recorder("http://127.0.0.1:9", tmp_path / "run.jsonl")
    recorder.records.wait_ready()
    monkeypatch.setattr(proxy.addon, "Exchange", broken)
    flow = tflow.tflow()
    flow.request.method, flow.request.path = "POST", "/v1/chat/completions"
    flow.request.headers[SESSION_HEADER] = "hook-failure"
    recorder.request(flow)
    recorder.done()
    assert recorder.stats.recording_failures == 1 and recorder.stats.recorded == 0
    (loss,) = [json.loads(line) for line in loss_file_for(tmp_path / "run.jsonl").read_text().splitlines()]
    assert loss["session_id"] == "hook-failure" and loss["reason"].startswith("request_hook_error: MemoryError")


def test_a_compressed_stream_s_fallback_raw_body_is_stored_decompressed():
    """A gzip-encoded stream whose reassembled response breaks the schema: the response is dropped and the
    raw body kept instead, decompressed (readable), not as the gzip bytes that went over the wire."""
    import gzip

    events = 'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": {"not": "text"}}}]}\n\ndata: [DONE]\n\n'
    record = checked_record(
        exchange(streamed=True, content_encoding="gzip", chunks=[gzip.compress(events.encode())],
                 status=200, finished=True)
    )  # fmt: skip
    assert record["response"] is None and record["error"]["type"] == "recording_error"
    assert record["raw_response"] == events


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="freezes the recorder with SIGSTOP")
def test_a_record_written_but_not_acknowledged_is_not_also_counted_lost(tmp_path):
    """The recorder froze (SIGSTOP) right after writing a record, before it acknowledged it; a second
    Ctrl-C then abandons what is pending. The record is in the file, so it counts as recorded, not lost:
    a record or a loss, never both."""
    from core.trace import TraceWriter, loss_file_for
    from proxy.recorder import RecordWriter

    path = tmp_path / "run.jsonl"
    writer = RecordWriter(path)
    writer.wait_ready()
    os.kill(writer._child.process.pid, signal.SIGSTOP)
    written, pending = exchange(status=200, body=b"{}", finished=True), exchange(status=200, finished=True)
    writer.submit(written)
    writer.submit(pending)
    with TraceWriter(tmp_path, path.name) as trace:  # what the recorder wrote before it froze
        trace.write(checked_record(written, trace.run_id))
    writer.abandon.set()
    counts = writer.close()
    assert (counts["recorded"], counts["recording_failures"], counts["abandoned"]) == (1, 1, 1)
    (loss,) = [json.loads(line) for line in loss_file_for(path).read_text().splitlines()]
    assert loss["id"] == pending.id and loss["reason"] == "abandoned"
