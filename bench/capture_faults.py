"""Capture faults: does the recording proxy lose an exchange when things go wrong?

Each case runs the real `python -m proxy` in a process group of its own (as a terminal runs it) in front of
the scripted upstream (core/scripted.py, in this process, so it tells which requests reached it) or a real
`mlx_lm server`, sends traffic with one session id per request, does its fault, and accounts for every
request it sent:

    sent     requests the client started
    seen     of which the proxy certainly saw: the client got an answer, or the upstream got the request
    records  of which are records in the trace file
    losses   of which are counted losses in the side file beside it (id, time, reason)
    unseen   started, never answered, never at the upstream, neither recorded nor counted: they came
             while the proxy was stopping, which refuses them (the connection closes, nothing is
             forwarded) or no longer reads them

Every case must hold: every seen request is a record or a counted loss (records + losses = sent - unseen),
none twice, every line of the trace file parses, and the proxy's stop summary equals its files.

    uv run python bench/capture_faults.py                   # every case, writes docs/RELIABILITY.md
    uv run python bench/capture_faults.py --repeats 1 --ctrl-c-repeats 2 --no-write

tests/test_capture_faults.py runs each case once and asserts the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

from bench.capture_harness import ROOT, GroupProxy, Outcome, Traffic, account  # noqa: E402
from bench.capture_traffic import TRAFFIC_CASES, traffic_faults  # noqa: E402
from proxy.scripted_upstream import ScriptedUpstream  # noqa: E402

RELIABILITY_MD = ROOT / "docs" / "RELIABILITY.md"


# ------------------------------------------------------------------------------------------- the cases


def stop_during_traffic(
    name: str, upstream: ScriptedUpstream, work: Path, stop, workers: int = 16
) -> Outcome:
    """Mixed traffic from `workers` clients (plain, streamed, parallel tool calls, slow streams); `stop(proxy)`
    once 20 records are written; then account."""
    started = time.monotonic()
    with GroupProxy(upstream.url, work) as proxy:
        traffic = Traffic(proxy.url, name)
        traffic.start(workers)
        proxy.wait_for_records(20)
        notes = stop(proxy) or []
        summary = proxy.finish()
        traffic.join()
    outcome = account(name, traffic, proxy.trace_file, summary, upstream)
    outcome.notes += notes
    if proxy.process.returncode not in (0, 130):
        outcome.failures.append(f"exit code {proxy.process.returncode}: {proxy.stderr()[-500:]}")
    outcome.seconds = time.monotonic() - started
    return outcome


def ctrl_c(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """A terminal's Ctrl-C: SIGINT to the proxy's whole process group (its recorder too) mid-traffic."""
    return stop_during_traffic("ctrl-c", upstream, work, lambda p: os.killpg(p.pid, signal.SIGINT))


def sigterm(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """SIGTERM to the proxy alone (a service manager, or RecordingProxy.stop) mid-traffic."""
    return stop_during_traffic("sigterm", upstream, work, lambda p: os.kill(p.pid, signal.SIGTERM))


def sighup(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """A closed terminal: SIGHUP to the whole process group mid-traffic."""
    return stop_during_traffic("sighup", upstream, work, lambda p: os.killpg(p.pid, signal.SIGHUP))


def second_ctrl_c(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """Ctrl-C twice: the recorder is held (SIGSTOP, a stalled disk) so the first Ctrl-C has a backlog to
    drain; the second must exit at once and count what it abandoned."""
    waited: list[float] = []

    def twice(proxy: GroupProxy) -> list[str]:
        os.kill(proxy.recorder(), signal.SIGSTOP)
        time.sleep(1.0)  # exchanges pile up, unwritten
        os.killpg(proxy.pid, signal.SIGINT)
        time.sleep(0.5)
        os.killpg(proxy.pid, signal.SIGINT)
        asked = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.wait(30)
        waited.append(time.monotonic() - asked)
        return [f"exited {waited[0]:.1f}s after the second Ctrl-C"]

    outcome = stop_during_traffic("second-ctrl-c", upstream, work, twice)
    if not (outcome.summary or {}).get("abandoned"):
        outcome.failures.append("the summary names no abandoned exchange")
    if waited[0] > 5:
        outcome.failures.append(f"it took {waited[0]:.1f}s to exit after the second Ctrl-C")
    return outcome


def recorder_killed(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """SIGKILL the recorder process twice mid-traffic, once while it held a backlog it had not acknowledged
    (stopped first, so exchanges queued to it); then stop the proxy with SIGTERM."""
    growth: list[int] = []

    def kill_recorder(proxy: GroupProxy) -> list[str]:
        first = proxy.recorder()
        os.kill(first, signal.SIGSTOP)
        time.sleep(0.5)
        os.kill(first, signal.SIGKILL)
        for _ in range(2):
            before = proxy.records()
            proxy.wait_for_records(before + 10, timeout=30)
            growth.append(proxy.records() - before)
        os.kill(proxy.recorder(), signal.SIGKILL)
        before = proxy.records()
        proxy.wait_for_records(before + 10, timeout=30)
        growth.append(proxy.records() - before)
        os.kill(proxy.pid, signal.SIGTERM)
        return [f"records after each kill: {growth}"]

    outcome = stop_during_traffic("recorder-sigkill", upstream, work, kill_recorder)
    if min(growth) < 10:
        outcome.failures.append(f"recording did not resume after a kill: {growth} new records")
    return outcome


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` at `path`; None, or why it cannot be done here."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True
        )
    except OSError as error:
        return f"mount: {error}"
    return None if result.returncode == 0 else f"mount -t tmpfs not permitted: {result.stderr.strip()}"


def disk_full(upstream: ScriptedUpstream, work: Path) -> Outcome:
    """The trace file on a small tmpfs that fills up mid-line (a filler takes the rest), then gets space
    again (the filler removed). No line may be torn or merged; every failed write is a counted loss."""
    mount = work / "tmpfs"
    if reason := mount_tmpfs(mount, "256k"):
        return Outcome("disk-full", skipped=reason)
    started = time.monotonic()
    try:
        filler = mount / "filler"
        filler.write_bytes(b"\0" * (256 * 1024 - 60 * 1024))
        with GroupProxy(upstream.url, work / "run", trace_file=mount / "trace.jsonl") as proxy:
            traffic = Traffic(proxy.url, "disk-full")
            with httpx.Client(timeout=30) as client:
                for n in range(24):
                    traffic.send(client, "echo", n % 2 == 1, f"{n} " + "x" * 6000)
                    time.sleep(0.02)  # one at a time: each record meets the disk as it is
                time.sleep(0.5)
                filler.unlink()
                for n in range(8):
                    traffic.send(client, "echo", n % 2 == 1, f"after {n} " + "y" * 6000)
            time.sleep(0.5)
            os.kill(proxy.pid, signal.SIGTERM)
            summary = proxy.finish()
        outcome = account("disk-full", traffic, proxy.trace_file, summary, upstream)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    if not outcome.losses:
        outcome.failures.append("no write failed: the disk never filled")
    outcome.seconds = time.monotonic() - started
    return outcome


# --------------------------------------------------------------------------------------------- the table

SIGNAL_CASES = {
    "ctrl-c": ctrl_c,
    "sigterm": sigterm,
    "sighup": sighup,
    "second-ctrl-c": second_ctrl_c,
    "recorder-sigkill": recorder_killed,
    "disk-full": disk_full,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each case (default 3)")
    parser.add_argument("--ctrl-c-repeats", type=int, default=10, help="runs of the Ctrl-C case (default 10)")
    parser.add_argument("--no-mlx", action="store_true", help="byte-at-a-time from the scripted upstream")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/RELIABILITY.md")
    args = parser.parse_args()
    from rich.progress import Progress

    runs: dict[str, list[Outcome]] = {}
    with tempfile.TemporaryDirectory(prefix="capture-faults-") as scratch, ScriptedUpstream() as upstream:
        mlx = start_mlx(args.no_mlx)
        try:
            plan = [
                (name, args.ctrl_c_repeats if name == "ctrl-c" else args.repeats) for name in SIGNAL_CASES
            ]
            plan.append(("traffic", args.repeats))
            with Progress() as progress:
                task = progress.add_task("capture faults", total=sum(n for _, n in plan))
                for name, repeats in plan:
                    for run in range(repeats):
                        work = Path(scratch) / f"{name}-{run}"
                        if name == "traffic":
                            outcomes = traffic_faults(upstream, work, mlx.url if mlx else None)
                        else:
                            outcomes = [SIGNAL_CASES[name](upstream, work)]
                        for outcome in outcomes:
                            runs.setdefault(outcome.case, []).append(outcome)
                            status = "held" if outcome.held() else outcome.problems() + outcome.failures
                            progress.console.print(f"{outcome.case} #{run + 1}: {status} {outcome.notes}")
                        progress.advance(task)
        finally:
            if mlx:
                mlx.stop()
    table = report(runs, mlx is not None)
    print(table)
    if not args.no_write:
        write_report(table)


def start_mlx(disabled: bool):
    if disabled:
        return None
    from core.process import MlxServer
    from models.tiny import cached_model

    return MlxServer(cached_model("tool-calling"), max_tokens=48).start()


def report(runs: dict[str, list[Outcome]], real_mlx: bool) -> str:
    lines = [
        "| case | runs | sent | seen | records | counted losses (reason) | unseen | held | summary = file | "
        "max s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, outcomes in runs.items():
        if all(o.skipped for o in outcomes):
            lines.append(f"| {case} | 0 | skipped: {outcomes[0].skipped} |||||||")
            continue
        reasons = Counter()
        for o in outcomes:
            reasons.update(o.loss_reasons)
        held = sum(o.held() for o in outcomes)
        lines.append(
            f"| {case} | {len(outcomes)} | {sum(o.sent for o in outcomes)} | {sum(o.seen for o in outcomes)} | "
            f"{sum(o.records for o in outcomes)} | {sum(o.losses for o in outcomes)}"
            + (f" ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})" if reasons else "")
            + f" | {sum(o.unseen for o in outcomes)} | {held}/{len(outcomes)} | "
            f"{sum(o.summary_matches for o in outcomes)}/{len(outcomes)} | {max(o.seconds for o in outcomes):.1f} |"
        )
    upstream = "a real `mlx_lm server` (tiny tool model)" if real_mlx else "the scripted upstream"
    cases = {**SIGNAL_CASES, **TRAFFIC_CASES}
    lines += ["", "What each case does:", ""]
    lines += [f"- {name}: {' '.join(run.__doc__.split())}" for name, run in cases.items() if name in runs]
    lines += [
        "",
        "_sent_: requests the client started; _seen_: of which the client got an answer or the upstream got "
        "the request (the proxy certainly saw them); _records_, _counted losses_: of the case's requests, "
        "lines in the trace file and in the side file of losses; _unseen_: started but never answered, never "
        "at the upstream, neither recorded nor counted (they came while the proxy was stopping: refused, nothing "
        "forwarded, or not read at all); _held_: "
        "runs where every seen request is a record or a counted loss, none twice, no unreadable line, and "
        "the case's own checks passed; _summary = file_: runs whose stop summary equals the trace file and "
        f"the side file. Byte-at-a-time reads a stream from {upstream}; the other cases use the scripted "
        "upstream (it tells which requests reached it).",
    ]
    return "\n".join(lines)


def write_report(table: str) -> None:
    from bench._report import write_section

    if not RELIABILITY_MD.exists():
        RELIABILITY_MD.write_text(
            "# Reliability\n\nEvery table below was written by the script named in its section; re-run it to "
            "refresh.\n"
        )
    write_section(
        "capture_faults", "Capture faults: every exchange a record or a counted loss", table, RELIABILITY_MD
    )


if __name__ == "__main__":
    main()
