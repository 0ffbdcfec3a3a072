"""Each benchmark owns one section of docs/BENCHMARKS.md, replaced in place on every run."""

from __future__ import annotations

import datetime as dt
import platform
import re
from pathlib import Path

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure below was written by the script named in its section (`uv run python bench/NAME.py`);\n"
    "ratios compare against a baseline measured in the same run. Re-run a script to refresh its section.\n"
)


def machine_line() -> str:
    import os

    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section `name` of docs/BENCHMARKS.md with `body`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else HEADER
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- bench:{name} -->\n## {title}\n\n"
        f"_`uv run python bench/{name}.py`, {stamp}, {machine_line()}._\n\n{body.strip()}\n"
        f"<!-- /bench:{name} -->\n"
    )
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->\n", re.S)
    text = (
        pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    )
    path.write_text(text)


def publish(name: str, title: str, body: str, write: bool = True) -> None:
    """Print a benchmark's section and, unless `write` is false, put it into docs/BENCHMARKS.md."""
    print(body)
    if write:
        write_section(name, title, body)
