"""Fixtures shared by every test: the tiny models (built once, cached), a served tool model, the task suite."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)

# The tests press Ctrl-C as a terminal does. A runner started in the background by a non-interactive shell
# inherits SIGINT ignored, Python then leaves it ignored, and every child would inherit that too: restore
# Python's own handler (a caught signal is reset to the default in the children).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Child processes (mlx_lm server, proxy, CLIs) would otherwise recompile every import each time (~4 s each).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(tmp_path_factory):
    """The suite leaves no file of ours in the temp directory and no server running: this process's temp
    files go to a private directory that must be empty at the end (pytest's own tmp_path directories
    stay where pytest keeps them), and no child serving a model or the proxy may outlive the session."""
    tmp_path_factory.getbasetemp()
    private = Path(tempfile.mkdtemp(prefix="flywheel-tests-"))
    previous, tempfile.tempdir = tempfile.tempdir, str(private)
    yield
    tempfile.tempdir = previous
    left = sorted(path.name for path in private.iterdir())
    shutil.rmtree(private, ignore_errors=True)
    assert left == [], f"the tests left these in the temp directory: {left}"
    assert servers_still_running() == [], "servers outlived the tests"


def servers_still_running() -> list[str]:
    """Command lines of this process's live children that serve a model or are the proxy (Linux /proc)."""
    found = []
    for children in Path("/proc/self/task").glob("*/children"):
        for pid in children.read_text().split():
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and ("mlx_lm server" in command or "-m proxy" in command):
                found.append(f"{pid}: {command}")
    return found


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """`python -m flywheel --quick` run fresh, then again (every stage reused): (root, run, first, again).
    tests/test_rounds.py extends the same root to two rounds, which shares this round 1 instead of running it
    again (the round-sharing it tests)."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("flywheel-run")
    command = [sys.executable, "-m", "flywheel", "--quick", "--root", str(root)]
    env = dict(os.environ, COLUMNS="400")  # rich wraps at 80 columns without a terminal
    repo = Path(__file__).resolve().parent.parent
    first = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=900, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    again = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    (run_name,) = [p.name for p in (root / "traces").iterdir()]
    return root, run_name, first, again


@pytest.fixture(scope="session")
def tiny_model():
    """Directory of the random-weight tiny Qwen2-style model (no tool skill)."""
    from models.tiny import cached_model

    return cached_model("random")


@pytest.fixture(scope="session")
def tool_model():
    """Directory of the tiny model trained to emit <tool_call> blocks for the agent tools."""
    from models.tiny import cached_model

    return cached_model("tool-calling")


@pytest.fixture(scope="session")
def flaky_teacher():
    """The scripted teacher whose first request of each of the first `drops` tasks loses its connection, as a
    loaded `mlx_lm server` drops one now and then: `flaky_teacher(suite, drops=2)`."""
    from agent.teacher import Teacher

    class FlakyTeacher(Teacher):
        def __init__(self, suite, drops: int):
            super().__init__(suite)
            self.drops, self.dropped = drops, []

        async def answer(self, request, http):
            first_user = next(m["content"] for m in request["messages"] if m["role"] == "user")
            if len(self.dropped) < self.drops and first_user not in self.dropped:
                self.dropped.append(first_user)
                http.reset()
                return
            await super().answer(request, http)

    return FlakyTeacher


@pytest.fixture(scope="module")
def suite():
    """The default task suite (agent/suites/default.json), loaded once per test module."""
    from agent.tasks import load_suite

    return load_suite("default")


@pytest.fixture(scope="session")
def tool_server(tool_model):
    """A real `mlx_lm server` serving the tool-calling tiny model, for the whole session."""
    from core.process import MlxServer

    with MlxServer(tool_model) as server:
        yield server
