"""A per-task workspace whose file and command tools run for real, confined to one temporary directory.

Confinement rules (a refusal raises `ToolError`; the agent hands its message to the model as the tool result):
- file paths are relative to the workspace root; absolute paths, `~` and `..` segments are refused, and the
  resolved path (symlinks followed) must stay inside the root, so a symlink pointing out is refused too;
- `run_command` runs `[command, *args]` without a shell, only for commands on `ALLOWED_COMMANDS` (python and
  read-only text utilities; `find` without its -exec/-delete family), with `cwd`
  confined like a file path, arguments that are absolute paths or contain `..` segments refused, stdin closed,
  a clean environment (no proxy variables, HOME = the workspace), a timeout that kills the whole process group,
  and stdout+stderr truncated to `max_output` characters; the result is JSON {"exit_code", "output"}, the shape
  `models.tooldata`'s training samples use;
- no network for commands: on Linux the command runs under `unshare -rn` (falling back to `unshare -n`, which
  needs root), a fresh network namespace where even loopback is down; on macOS under `sandbox-exec` with a
  deny-network profile, if a probe run of it succeeds (Apple deprecated sandbox-exec; that path is untested
  here, this machine is Linux). `network_isolation()` says which one is in effect; "none" means only the clean
  environment applies (a note is printed once to stderr).

This guards against a confused model, not an adversary: `python` may still read files outside the workspace.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path, PurePosixPath

ALLOWED_COMMANDS = frozenset(
    {
        "python",
        "python3",
        "ls",
        "cat",
        "grep",
        "wc",
        "echo",
        "head",
        "tail",
        "sort",
        "uniq",
        "cut",
        "tr",
        "find",
        "diff",
        "pwd",
        "true",
        "false",
        "sleep",
    }
)
FIND_ACTIONS = frozenset({"-exec", "-execdir", "-ok", "-okdir", "-delete", "-fprint", "-fprintf", "-fls"})
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"
MACOS_DENY_NETWORK = "(version 1)(allow default)(deny network*)"
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_OUTPUT = 4000
MAX_READ_CHARS = 20000
MAX_WRITE_CHARS = 1_000_000
MAX_LISTED = 200


class ToolError(Exception):
    """A tool call the sandbox refused or could not carry out; its message is shown to the model."""


def _probe(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def _network_wrapper() -> tuple[str, tuple[str, ...]]:
    """(name, argv prefix) of the working way to run a command without network on this machine."""
    if sys.platform.startswith("linux"):
        unshare = shutil.which("unshare", path=CLEAN_PATH)
        true = shutil.which("true", path=CLEAN_PATH) or "true"
        if unshare:
            for flags in ("-rn", "-n"):
                if _probe([unshare, flags, true]):
                    return "unshare", (unshare, flags)
    elif sys.platform == "darwin":
        sandbox_exec = shutil.which("sandbox-exec", path=CLEAN_PATH)
        if sandbox_exec and _probe([sandbox_exec, "-p", MACOS_DENY_NETWORK, "/usr/bin/true"]):
            return "sandbox-exec", (sandbox_exec, "-p", MACOS_DENY_NETWORK)
    print(
        "flywheel sandbox: no network isolation available here (no working unshare/sandbox-exec); "
        "commands run with a clean environment only",
        file=sys.stderr,
    )
    return "none", ()


def network_isolation() -> str:
    """How `run_command` cuts the network on this machine: "unshare", "sandbox-exec" or "none"."""
    return _network_wrapper()[0]


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[output truncated: {len(text) - limit} more characters]"


class Workspace:
    """A temporary directory holding one task's files, with confined tool implementations.

    `Workspace(files={"a.txt": "hi\\n"})` creates the directory and the files; use it as a context manager
    (or call `close()`) to delete it. `root` adopts an existing directory instead (not deleted on close).
    """

    def __init__(
        self,
        files: dict[str, str] | None = None,
        *,
        root: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
        allowed_commands: frozenset[str] | set[str] = ALLOWED_COMMANDS,
        isolate_network: bool = True,
    ):
        self._owned = root is None
        self.path = Path(tempfile.mkdtemp(prefix="flywheel-task-") if root is None else root).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.max_output = max_output
        self.allowed_commands = frozenset(allowed_commands)
        self.isolate_network = isolate_network
        for name, content in (files or {}).items():
            target = self.resolve(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)

    def resolve(self, path: str) -> Path:
        """The real path of workspace-relative `path`, or ToolError if it is absolute or leaves the root."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError("path must be a non-empty relative path")
        if "\x00" in path:
            raise ToolError(f"invalid path {path!r}")
        if path.startswith(("/", "\\", "~")) or PurePosixPath(path).is_absolute() or Path(path).is_absolute():
            raise ToolError(f"{path}: absolute paths are not allowed; use a path relative to the workspace")
        if ".." in PurePosixPath(path.replace("\\", "/")).parts:
            raise ToolError(f"{path}: '..' is not allowed; stay inside the workspace")
        resolved = (self.path / path).resolve()
        if not resolved.is_relative_to(self.path):
            raise ToolError(f"{path}: resolves outside the workspace (symlink?)")
        return resolved

    def relative(self, real: Path) -> str:
        return real.relative_to(self.path).as_posix() or "."

    def read_file(self, path: str) -> str:
        target = self.resolve(path)
        if target.is_dir():
            raise ToolError(f"{path}: is a directory")
        if not target.exists():
            raise ToolError(f"{path}: no such file")
        text = target.read_bytes().decode("utf-8", errors="replace")
        return truncate(text, MAX_READ_CHARS)

    def write_file(self, path: str, content: str) -> str:
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if len(content) > MAX_WRITE_CHARS:
            raise ToolError(f"content too large ({len(content)} characters; limit {MAX_WRITE_CHARS})")
        target = self.resolve(path)
        if target.is_dir():
            raise ToolError(f"{path}: is a directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
        return f"Wrote {len(content)} characters to {self.relative(target)}."

    def list_files(self, path: str = ".") -> str:
        """Files under `path`, recursively, one workspace-relative path a line (directories end with /)."""
        target = self.resolve(path)
        if not target.exists():
            raise ToolError(f"{path}: no such directory")
        if not target.is_dir():
            return self.relative(target)
        entries = []
        for directory, dir_names, file_names in os.walk(target):
            dir_names.sort()
            here = Path(directory)
            entries += [self.relative(here / name) + "/" for name in dir_names if not os.listdir(here / name)]
            entries += [self.relative(here / name) for name in sorted(file_names)]
        if not entries:
            return "(empty)"
        entries.sort()
        more = len(entries) - MAX_LISTED
        return "\n".join(entries[:MAX_LISTED]) + (f"\n[{more} more entries]" if more > 0 else "")

    def check_arguments(self, args: list[str]) -> None:
        for arg in args:
            if not isinstance(arg, str):
                raise ToolError("args must be a list of strings")
            if arg.startswith(("/", "~")):
                raise ToolError(f"argument {arg!r}: absolute paths are not allowed")
            if ".." in PurePosixPath(arg).parts:
                raise ToolError(f"argument {arg!r}: '..' is not allowed")

    def command_argv(self, command: str, args: list[str]) -> list[str]:
        if command not in self.allowed_commands:
            allowed = ", ".join(sorted(self.allowed_commands))
            raise ToolError(f"command {command!r} is not allowed; allowed: {allowed}")
        if command in ("python", "python3"):
            executable = sys.executable
        else:
            executable = shutil.which(command, path=CLEAN_PATH)
            if executable is None:
                raise ToolError(f"command {command!r} is not installed")
        self.check_arguments(args)
        if command == "find" and FIND_ACTIONS & set(args):
            raise ToolError(f"find: {', '.join(sorted(FIND_ACTIONS & set(args)))} not allowed")
        prefix = _network_wrapper()[1] if self.isolate_network else ()
        return [*prefix, executable, *args]

    def environment(self) -> dict[str, str]:
        return {
            "PATH": CLEAN_PATH,
            "HOME": str(self.path),
            "TMPDIR": str(self.path),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONNOUSERSITE": "1",
        }

    def run_command(self, command: str, args: list[str] | None = None, cwd: str | None = None) -> str:
        """Run an allowed command; returns JSON `{"exit_code": N, "output": "..."}` (stdout and stderr merged).

        A nonzero exit is a normal result; refusals and timeouts raise ToolError."""
        args = list(args or [])
        argv = self.command_argv(command, args)
        workdir = self.resolve(cwd) if cwd not in (None, "", ".") else self.path
        if not workdir.is_dir():
            raise ToolError(f"cwd {cwd!r}: no such directory")
        try:
            process = subprocess.Popen(
                argv,
                cwd=workdir,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            raise ToolError(f"{command}: {error.strerror or error}") from error
        kept: list[bytes] = []
        total = [0]
        reader = threading.Thread(
            target=_drain_stream, args=(process.stdout, self.max_output * 4, kept, total), daemon=True
        )
        reader.start()
        timed_out = False
        try:
            process.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(process)
            process.wait()
        reader.join(timeout=5)  # a grandchild that left the group may hold the pipe: stop waiting for it
        output = b"".join(kept).decode("utf-8", errors="replace")
        if len(output) > self.max_output or total[0] > sum(map(len, kept)):
            output = f"{output[: self.max_output]}\n[output truncated: {total[0]} bytes, first {self.max_output} characters shown]"
        if timed_out:
            raise ToolError(f"command timed out after {self.timeout:g}s and was killed\n{output}".rstrip())
        return json.dumps({"exit_code": process.returncode, "output": output})

    def files(self) -> dict[str, str]:
        """Every regular file in the workspace as {relative path: text} (for checkers and reports)."""
        out = {}
        for directory, _dirs, names in os.walk(self.path):
            for name in names:
                real = Path(directory) / name
                if real.is_file() and not real.is_symlink():
                    out[self.relative(real)] = real.read_bytes().decode("utf-8", errors="replace")
        return dict(sorted(out.items()))


def _drain_stream(stream, keep: int, sink: list[bytes], total: list[int]) -> None:
    """Read a pipe to its end keeping the first `keep` bytes, so a chatty process neither blocks nor bloats."""
    kept = 0
    while chunk := stream.read1(65536):
        total[0] += len(chunk)
        if kept < keep:
            sink.append(chunk[: keep - kept])
            kept += len(sink[-1])
    stream.close()


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()
