"""The sandbox's confinement, timeouts, truncation and network isolation, with real files and processes."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import pytest

from agent.sandbox import ToolError, Workspace, network_isolation


@pytest.fixture
def outside(tmp_path):
    """A directory next to (not inside) the workspace, with a secret file."""
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "secret.txt").write_text("top secret\n")
    return directory


@pytest.fixture
def workspace(tmp_path, outside):
    root = tmp_path / "ws"
    with Workspace({"a.txt": "hello\n", "sub/b.py": "print('b')\n"}, root=root, timeout=2) as ws:
        os.symlink(outside / "secret.txt", root / "link.txt")
        os.symlink(outside, root / "outdir")
        os.symlink("a.txt", root / "inner_link.txt")
        yield ws


def parse(result: str) -> dict:
    return json.loads(result)


@pytest.mark.parametrize(
    "path",
    ["../outside/secret.txt", "sub/../../outside/secret.txt", "/etc/hostname", "~/secret.txt", "link.txt"],
)
def test_reading_outside_is_refused(workspace, path):
    with pytest.raises(ToolError):
        workspace.read_file(path)


def test_writing_outside_is_refused(workspace, outside):
    for path in ["../escaped.txt", "/tmp/escaped-by-flywheel.txt", "outdir/escaped.txt", "link.txt"]:
        with pytest.raises(ToolError):
            workspace.write_file(path, "x")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "top secret\n"
    assert not Path("/tmp/escaped-by-flywheel.txt").exists()


def test_listing_and_commands_outside_are_refused(workspace):
    for path in ["/", "..", "outdir"]:
        with pytest.raises(ToolError):
            workspace.list_files(path)
    for command, args, cwd in [
        ("cat", ["/etc/hostname"], None),
        ("cat", ["../outside/secret.txt"], None),
        ("ls", ["."], ".."),
        ("ls", ["."], "outdir"),
        ("bash", ["-c", "id"], None),
        ("rm", ["-rf", "."], None),
        ("/bin/ls", [], None),
        ("find", [".", "-exec", "rm", "{}", ";"], None),
    ]:
        with pytest.raises(ToolError):
            workspace.run_command(command, args, cwd)


def test_inside_paths_work(workspace):
    assert workspace.read_file("a.txt") == "hello\n"
    assert workspace.read_file("inner_link.txt") == "hello\n"  # a symlink that stays inside is fine
    assert workspace.read_file("./sub/b.py") == "print('b')\n"
    assert workspace.write_file("new/dir/c.txt", "c") == "Wrote 1 characters to new/dir/c.txt."
    listing = workspace.list_files(".").splitlines()
    assert {"a.txt", "sub/b.py", "new/dir/c.txt"} <= set(listing)
    assert workspace.list_files("sub") == "sub/b.py"
    result = parse(workspace.run_command("python", ["b.py"], cwd="sub"))
    assert result == {"exit_code": 0, "output": "b\n"}
    with pytest.raises(ToolError, match="no such file"):
        workspace.read_file("missing.txt")


def test_nonzero_exit_is_a_result_not_an_error(workspace):
    result = parse(workspace.run_command("python", ["-c", "import sys; print('bad'); sys.exit(3)"]))
    assert result == {"exit_code": 3, "output": "bad\n"}
    result = parse(workspace.run_command("grep", ["nothing-matches", "a.txt"]))
    assert result["exit_code"] == 1


def test_timeout_kills_the_process_group(tmp_path):
    with Workspace(root=tmp_path / "ws", timeout=1.0) as ws:
        script = (
            "import subprocess, time\n"
            "child = subprocess.Popen(['sleep', '60'])\n"
            "open('child.pid', 'w').write(str(child.pid))\n"
            "time.sleep(60)\n"
        )
        started = time.monotonic()
        with pytest.raises(ToolError, match="timed out after 1s"):
            ws.run_command("python", ["-c", script])
        assert time.monotonic() - started < 10
        child = int((ws.path / "child.pid").read_text())
        time.sleep(0.2)
        status = Path(f"/proc/{child}/status")
        if status.exists():  # a killed orphan may linger as a zombie until init reaps it
            assert "zombie" in status.read_text().lower() or "(dead)" in status.read_text().lower()


def test_output_is_truncated(tmp_path):
    with Workspace(root=tmp_path / "ws", max_output=1000) as ws:
        result = parse(ws.run_command("python", ["-c", "print('x' * 50000)"]))
        assert result["exit_code"] == 0
        assert result["output"].startswith("x" * 1000)
        assert "[output truncated: 50001 bytes, first 1000 characters shown]" in result["output"]
        assert len(result["output"]) < 1100
        # a process writing far more than it keeps neither blocks nor bloats memory
        result = parse(ws.run_command("python", ["-c", "import sys; sys.stdout.write('y' * 20_000_000)"]))
        assert "20000000 bytes" in result["output"]


def test_command_environment_is_clean(tmp_path, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:1")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:1")
    monkeypatch.setenv("FLYWHEEL_SECRET", "s3cret")
    with Workspace(root=tmp_path / "ws") as ws:
        result = parse(
            ws.run_command("python", ["-c", "import os, json; print(json.dumps(dict(os.environ)))"])
        )
        env = json.loads(result["output"])
        assert not {k for k in env if "proxy" in k.lower()}
        assert "FLYWHEEL_SECRET" not in env
        assert env["HOME"] == str(ws.path)


CONNECT = "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=3); print('connected')"


def test_no_network_from_run_command(tmp_path):
    if network_isolation() == "none":
        pytest.skip("no network isolation on this machine (unshare/sandbox-exec unavailable)")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = str(server.getsockname()[1])
        with Workspace(root=tmp_path / "ws") as ws:
            result = parse(ws.run_command("python", ["-c", CONNECT, port]))
            assert result["exit_code"] != 0
            assert "connected" not in result["output"]
            assert "Error" in result["output"]
        # the control: the same command without isolation does reach the listening socket
        with Workspace(root=tmp_path / "ws2", isolate_network=False) as ws:
            result = parse(ws.run_command("python", ["-c", CONNECT, port]))
            assert result == {"exit_code": 0, "output": "connected\n"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="unshare is Linux-only")
def test_linux_uses_unshare():
    assert network_isolation() == "unshare"
