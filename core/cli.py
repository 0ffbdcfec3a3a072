"""What the `python -m` entry points share: the layout of their --help, and a bad input as one line on stderr."""

from __future__ import annotations

import argparse
import sys


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
