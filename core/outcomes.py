"""Episode outcomes beside the traces: whether an agent session did what it was asked.

An outcome names a session (the `session_id` of its trace records) and says `success` or `failure`, with its
source: `check` (a task's end-state check, written by the loop's collect stage), `user` (the proxy's
`POST /flywheel/feedback`, or `python -m flywheel label`) or `agent` (the agent's own signals). They are
appended as JSON lines to `outcomes.jsonl` in the traces directory, never to a trace file, and joined to the
sessions by curate (`--require-outcome success`).

When a session has several outcomes, the most trusted source wins (user over check over agent) and, within
one source, the latest: a user can correct a label by labelling again.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

OUTCOMES_FILE = "outcomes.jsonl"
OUTCOMES = ("success", "failure")
SOURCES = ("agent", "check", "user")  # in increasing trust
Outcome = Literal["success", "failure"]


class OutcomeError(ValueError):
    """An outcome that cannot be recorded or read; the message names the field or file:line."""


def outcome_record(
    session_id: str, outcome: str, source: str, *, note: str | None = None, task_id: str | None = None
) -> dict[str, Any]:
    """A checked outcome line; OutcomeError naming the field at fault."""
    if not isinstance(session_id, str) or not session_id.strip():
        raise OutcomeError("session: must be a non-empty string (the X-Flywheel-Session of the episode)")
    if outcome not in OUTCOMES:
        raise OutcomeError(f"outcome: must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    if source not in SOURCES:
        raise OutcomeError(f"source: must be one of {', '.join(SOURCES)}, not {source!r}")
    if note is not None and not isinstance(note, str):
        raise OutcomeError("note: must be a string")
    return {
        "session_id": session_id.strip(),
        "outcome": outcome,
        "source": source,
        "note": note,
        "task_id": task_id,
        "recorded_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def append_outcomes(traces_dir: Path | str, records: Iterable[dict[str, Any]]) -> Path:
    """Append outcome lines to `traces_dir/outcomes.jsonl` in one write (O_APPEND: whole lines, even from
    several writers at once)."""
    path = Path(traces_dir) / OUTCOMES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)
    if data:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(descriptor, data.encode())
        finally:
            os.close(descriptor)
    return path


def record_outcome(traces_dir: Path | str, session_id: str, outcome: str, source: str, **fields: Any) -> dict:
    record = outcome_record(session_id, outcome, source, **fields)
    append_outcomes(traces_dir, [record])
    return record


def outcome_files(paths: Iterable[Path | str]) -> list[Path]:
    """The outcomes files in `paths` (directories searched recursively, or the files themselves)."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(path.rglob(OUTCOMES_FILE)))
        elif path.name == OUTCOMES_FILE and path.is_file():
            found.append(path)
    return found


def read_outcomes(paths: Iterable[Path | str]) -> dict[str, dict[str, Any]]:
    """session_id → the outcome that stands (most trusted source, then latest); OutcomeError names file:line."""
    standing: dict[str, dict[str, Any]] = {}
    for path in outcome_files(paths):
        for line_no, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text)
                record = outcome_record(
                    data["session_id"], data["outcome"], data["source"], note=data.get("note")
                )
            except (json.JSONDecodeError, KeyError, TypeError, OutcomeError) as error:
                raise OutcomeError(f"{path}:{line_no}: not an outcome line ({error})") from None
            record.update(recorded_at=data.get("recorded_at", ""), task_id=data.get("task_id"))
            current = standing.get(record["session_id"])
            if current is None or _rank(record) >= _rank(current):
                standing[record["session_id"]] = record
    return standing


def _rank(record: dict[str, Any]) -> tuple[int, str]:
    return SOURCES.index(record["source"]), record["recorded_at"]
