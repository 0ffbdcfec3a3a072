"""`python -m flywheel label SESSION success|failure`: the user's verdict on an agent session.

    python -m flywheel label --list                       # recent sessions in traces/, with their outcomes
    python -m flywheel label last success                 # the most recent session
    python -m flywheel label 3f2a… failure --note "wrote the wrong file"

The verdict is appended to traces/outcomes.jsonl (`core.outcomes`, source "user", which outranks a task's own
check); `python -m curate traces/ data/ --require-outcome success` then trains only on successful sessions.
The same verdict can come over HTTP while the agent works: `POST /flywheel/feedback` on the proxy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.outcomes import OUTCOMES, OutcomeError, read_outcomes, record_outcome
from core.trace import read_trace_lines


def sessions(traces: Path) -> dict[str, dict]:
    """session_id → {"started": first record time, "last": last record time, "records", "prompt"}, from every
    readable record under `traces` (unreadable lines are curate's business, not a reason to refuse a label)."""
    found: dict[str, dict] = {}
    for line in read_trace_lines([traces]):
        record = line.record
        if line.error or not isinstance(record, dict) or not record.get("session_id"):
            continue
        entry = found.setdefault(
            record["session_id"], {"started": record.get("started_at", ""), "records": 0, "prompt": ""}
        )
        entry["records"] += 1
        entry["last"] = max(entry.get("last", ""), record.get("started_at", ""))
        if not entry["prompt"]:
            entry["prompt"] = first_user_text(record)
    return found


def first_user_text(record: dict) -> str:
    messages = ((record.get("request") or {}).get("messages")) or []
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            return content if isinstance(content, str) else str(content)
    return ""


def resolve_session(traces: Path, session: str) -> str:
    known = sessions(traces)
    if not known:
        raise OutcomeError(f"{traces}: no recorded session with a session id (is this the proxy's --traces?)")
    if session == "last":
        return max(known, key=lambda s: known[s]["last"])
    if session not in known:
        recent = sorted(known, key=lambda s: known[s]["last"], reverse=True)[:5]
        raise OutcomeError(f"{traces}: no session {session!r} (most recent: {', '.join(recent)})")
    return session


def list_sessions(traces: Path, limit: int = 20) -> list[str]:
    known, outcomes = sessions(traces), read_outcomes([traces])
    rows = []
    for session in sorted(known, key=lambda s: known[s]["last"], reverse=True)[:limit]:
        entry, outcome = known[session], outcomes.get(session)
        verdict = f"{outcome['outcome']} ({outcome['source']})" if outcome else "unlabelled"
        prompt = " ".join(entry["prompt"].split())[:60]
        rows.append(
            f"{session}  {entry['last'][:19]}  {entry['records']:>3} requests  {verdict:<18} {prompt}"
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flywheel label",
        description="Record whether an agent session succeeded; curate --require-outcome success keeps only those.",
    )
    parser.add_argument("session", nargs="?", help="a session id from the traces, or 'last'")
    parser.add_argument("outcome", nargs="?", choices=OUTCOMES)
    parser.add_argument("--note", help="why (kept with the outcome)")
    parser.add_argument("--traces", type=Path, default=Path("traces"), help="the proxy's traces directory")
    parser.add_argument("--list", action="store_true", help="list recent sessions and their outcomes")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list:
            print("\n".join(list_sessions(args.traces)) or f"{args.traces}: no sessions")
            return 0
        if args.session is None or args.outcome is None:
            parser.error("give SESSION and success|failure (or --list)")
        session = resolve_session(args.traces, args.session)
        record_outcome(args.traces, session, args.outcome, "user", note=args.note)
    except (OutcomeError, FileNotFoundError) as error:
        print(f"python -m flywheel label: error: {error}", file=sys.stderr)
        return 2
    print(f"{session}: {args.outcome} (recorded in {args.traces / 'outcomes.jsonl'})")
    return 0
