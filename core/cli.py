"""What the `python -m` entry points share: the layout of their --help, and a bad input as one line on stderr."""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def command_parser(prog: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A command's parser whose epilog (examples, file layouts, exit codes) keeps its line breaks in --help."""
    return argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def fail(prog: str, error: object, code: int, *, what: str = "error") -> int:
    """Print `PROG: WHAT: ERROR` on stderr and return `code`, the exit status: `return fail(...)` in a main()."""
    print(f"{prog}: {what}: {error}", file=sys.stderr)
    return code


def interrupt_on_stop_signals() -> None:
    """SIGTERM (`kill`, a process manager) and SIGHUP (a closed terminal) unwind the command like Ctrl-C: a
    KeyboardInterrupt, so every `with` block stops its server children and removes their logs. Python's
    default for both is to die on the spot, leaving the logs in the temp directory. Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, _frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if signum is not None and signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, interrupt)
