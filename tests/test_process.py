"""The managed process (core/process.py) that starts every server child: readiness, logs that never outlive it,
errors that quote the log, and one Ctrl-C behaviour, tested the way a terminal delivers it (SIGINT to the
whole foreground process group, `os.killpg`), never only to one pid."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from core.process import ManagedProcess, MlxServer, ProcessError, python_command
from proxy import RecordingProxy

ROOT = Path(__file__).resolve().parent.parent
LINUX = sys.platform.startswith("linux")


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """This process's temp directory, for the test: what our code leaves in it is visible."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def group_gone(pgid: int, timeout: float) -> bool:
    """Wait until no process is left in process group `pgid`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def echo(url: str, text: str = "hi") -> str:
    body = {"model": "echo", "messages": [{"role": "user", "content": text}]}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).json()["choices"][0]["message"][
        "content"
    ]


# ------------------------------------------------------------------------------------- start, stop, logs


def test_start_stop_cycle_leaves_no_file_and_no_process(private_tmp, tmp_path, tiny_model):
    """A python-module server (the scripted upstream as its own process), the proxy in front of it, and a
    real `mlx_lm server`: each ready, answering, and after stop gone with its temp log."""
    with ManagedProcess(python_command("proxy.scripted_upstream"), ready_event="listening") as upstream:
        assert upstream.log_path.parent == private_tmp and upstream.log_path.name.startswith("server-")
        assert httpx.get(f"{upstream.url}/health").status_code == 200
        with RecordingProxy(upstream.url, tmp_path / "traces") as proxy:
            assert proxy.log_path.name.startswith("flywheel-proxy-") and proxy.log_path.exists()
            assert echo(proxy.url) == "echo: hi"
            pids = [upstream.process.pid, proxy.process.pid]
        assert proxy.summary["recorded"] == 1
    with MlxServer(tiny_model, max_tokens=4) as server:
        assert server.log_path.name.startswith("mlx-server-")
        assert httpx.get(f"{server.url}/health").status_code == 200
        pids.append(server.process.pid)
    assert not any(map(alive, pids))
    assert list(private_tmp.iterdir()) == []
    assert "Starting httpd" in server.log_tail()  # the tail is kept after the file is gone


def test_failed_start_quotes_the_log_and_leaves_nothing(private_tmp, tmp_path):
    """mlx_lm server on a model that does not exist, and a child that exits before it is ready: one error
    each, quoting the log's tail; no log file, no process."""
    with pytest.raises(ProcessError, match="mlx_lm server failed to start") as failed:
        MlxServer(tmp_path / "no-such-model", startup_timeout=60).start()
    assert "--- log tail ---" in str(failed.value) and "no-such-model" in str(failed.value)
    dying = ManagedProcess(
        [sys.executable, "-c", "import sys; print('cannot bind', file=sys.stderr); sys.exit(3)"],
        ready_event="listening",
    )
    with pytest.raises(ProcessError, match="exited with code 3 before it was ready") as failed:
        dying.start()
    assert "cannot bind" in str(failed.value)
    slow = ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"], ready_event="listening")
    slow.startup_timeout = 1
    with pytest.raises(ProcessError, match="no 'listening' event within 1s"):
        slow.start()
    assert not alive(dying.process.pid) and not alive(slow.process.pid)
    assert list(private_tmp.iterdir()) == []


def test_a_child_that_dies_on_its_own_is_reported_with_its_log(private_tmp):
    script = (
        "import json, sys, time; print(json.dumps({'event': 'listening', 'port': 1}), flush=True); "
        "time.sleep(0.2); print('out of memory', file=sys.stderr); sys.exit(4)"
    )
    child = ManagedProcess([sys.executable, "-c", script], ready_event="listening").start()
    child.process.wait(30)
    child.stop()
    assert "exited on its own with code 4" in child.exit_error and "out of memory" in child.exit_error
    assert list(private_tmp.iterdir()) == []


def test_ctrl_c_while_starting_stops_the_child_and_propagates(private_tmp):
    never_ready = ManagedProcess(
        [sys.executable, "-c", "import time; time.sleep(60)"], ready_event="listening"
    )
    done = threading.Event()

    def press_ctrl_c() -> None:  # once the child runs, and again until start() gives up (a loaded machine)
        while not done.wait(1.0):
            if never_ready.process is not None and not done.is_set():
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    # as in a terminal: Python's own Ctrl-C handler (a runner started in the background by a non-interactive
    # shell inherits SIGINT ignored, and Python then leaves it ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Thread(target=press_ctrl_c, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            never_ready.start()
    finally:
        done.set()
        signal.signal(signal.SIGINT, previous)
    assert not alive(never_ready.process.pid)
    assert list(private_tmp.iterdir()) == []


# ------------------------------------------------------------------------------------------ Ctrl-C

PARENT = """
import json, sys, httpx
from core.process import ManagedProcess, python_command
from proxy import RecordingProxy

try:
    with (
        ManagedProcess(python_command("proxy.scripted_upstream"), ready_event="listening") as upstream,
        RecordingProxy(upstream.url, sys.argv[1]) as proxy,
    ):
        pids = [upstream.process.pid, proxy.process.pid]
        print(json.dumps({"pids": pids, "trace_file": str(proxy.trace_file)}), flush=True)
        body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
        with httpx.Client(base_url=proxy.base_url) as client:
            while True:
                client.post("/chat/completions", json=body)
except KeyboardInterrupt:
    print(json.dumps({"interrupted": True, "summary": proxy.summary}), flush=True)
    sys.exit(130)
"""


def start_parent(tmp_path: Path, script: str = PARENT) -> tuple[subprocess.Popen, dict, Path]:
    """`script` in a process group of its own (a terminal's foreground job), with a private TMPDIR."""
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "traces")],
        cwd=ROOT,
        env=dict(os.environ, TMPDIR=str(temp)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    started = json.loads(parent.stdout.readline() or "{}")
    assert started, parent.stderr.read()[-3000:]
    trace_file = Path(started["trace_file"])
    deadline = time.monotonic() + 30
    while (not trace_file.exists() or trace_file.read_text().count("\n") < 5) and time.monotonic() < deadline:
        time.sleep(0.05)
    return parent, started, temp


def test_terminal_ctrl_c_stops_the_parent_and_every_child(tmp_path):
    """The Ctrl-C behaviour, decided: SIGINT to the whole group reaches the children (they stay in the
    caller's group), each finishes and exits, the parent's `with` blocks unwind; nothing is left running,
    no log is left in the temp directory."""
    parent, started, temp = start_parent(tmp_path)
    os.killpg(parent.pid, signal.SIGINT)
    out, err = parent.communicate(timeout=90)
    assert parent.returncode == 130, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1])["interrupted"]
    assert group_gone(parent.pid, 10), "a child outlived the Ctrl-C"
    assert not any(map(alive, started["pids"]))
    assert list(temp.iterdir()) == []


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_do_not_outlive_a_killed_parent(tmp_path):
    """SIGKILL runs no cleanup in the parent: PR_SET_PDEATHSIG tells each child, which stops on its own."""
    parent, started, _ = start_parent(tmp_path)
    os.kill(parent.pid, signal.SIGKILL)
    parent.communicate(timeout=30)
    assert group_gone(parent.pid, 60), "a child outlived its SIGKILLed parent"
    assert not any(map(alive, started["pids"]))


@pytest.mark.slow  # ~35 s: an mlx_lm server, the proxy and the agent, then the Ctrl-C
@pytest.mark.skipif(not LINUX, reason="finds the process group's members via /proc")
def test_ctrl_c_during_evaluate_via_proxy_leaves_no_server_log_or_torn_record(tmp_path, tool_model):
    """`python -m evaluate --via-proxy` as a user runs it: the real agent, through the recording proxy, against
    an `mlx_lm server` it starts. Ctrl-C (SIGINT to the whole group) mid-run: every process ends, no
    `mlx_lm server` is left, no log stays in the temp directory, and every trace line is a complete record."""
    from core.trace import read_trace_lines, validation_errors

    temp = tmp_path / "child-tmp"
    temp.mkdir()
    traces = tmp_path / "traces"
    command = python_command(
        "evaluate", "--model", tool_model, "--no-turns", "--via-proxy", "--limit", "6", "--max-tokens", "48",
        "--agent-max-steps", "4", "--out", tmp_path / "reports", "--name", "interrupted", "--traces", traces,
    )  # fmt: skip
    with in_own_group(command, temp) as run:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.poll() is None:
            written = [p for p in traces.rglob("*.jsonl") if p.read_bytes().count(b"\n") >= 2]
            if written:
                break
            time.sleep(0.1)
        assert written, f"no record within the deadline: {run.stderr.read()[-3000:] if run.poll() else ''}"
        servers = [
            pid for pid in group_members(run.pid) if b"mlx_lm" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert servers, "the mlx_lm server runs in the caller's process group"
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=120)
    assert run.returncode != 0, err[-2000:]
    assert group_gone(run.pid, 30), "something outlived the Ctrl-C"
    assert not any(map(alive, servers)), "an orphaned mlx_lm server"
    assert [p.name for p in temp.iterdir() if p.name != "mlx"] == []  # mlx/: MLX's own kernel cache
    lines = list(read_trace_lines([traces]))
    assert lines and all(line.error is None and validation_errors(line.record) == [] for line in lines)


@contextlib.contextmanager
def in_own_group(command: list, temp: Path):
    """`command` run as a terminal runs it: its own process group (the test plays the terminal that signals
    it) with `temp` as its temp directory; SIGKILLed, group and all, if the test fails before it ends."""
    run = subprocess.Popen(
        command, cwd=ROOT, env=dict(os.environ, TMPDIR=str(temp)), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        yield run
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """Pids in process group `pgid` (Linux /proc)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                members.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


@pytest.mark.skipif(not LINUX, reason="finds the process group's members via /proc")
@pytest.mark.parametrize("stop", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)])
def test_a_stop_signal_to_the_loop_leaves_no_child_or_log(tmp_path, stop):
    """`python -m flywheel` stopped by `kill -TERM -PGID` (a process manager) or a closed terminal (SIGHUP to
    the group) while its proxy runs: it unwinds like Ctrl-C, so no child outlives it and no server log is left
    in the temp directory (Python's default for both signals is to die without running any `with` block)."""
    temp = tmp_path / "child-tmp"
    temp.mkdir()
    command = python_command("flywheel", "--quick", "--root", tmp_path / "root")
    with in_own_group(command, temp) as run:
        deadline = time.monotonic() + 240
        logs: list[Path] = []
        while time.monotonic() < deadline and run.poll() is None and not logs:
            logs = list(temp.glob("flywheel-proxy-*.log"))
            time.sleep(0.1)
        assert logs, f"the loop's proxy never started: {run.stderr.read()[-3000:] if run.poll() else ''}"
        children = [pid for pid in group_members(run.pid) if pid != run.pid]
        assert children, "the proxy runs in the loop's process group"
        os.killpg(run.pid, stop)
        _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and f"stopped by {stop.name}" in err, err[-2000:]
    assert group_gone(run.pid, 30), "something outlived the stop signal"
    assert not any(map(alive, children)), "an orphaned child"
    assert [p.name for p in temp.iterdir() if p.name != "mlx"] == [], err[-2000:]
