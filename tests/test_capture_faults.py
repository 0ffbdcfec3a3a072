"""Capture loses nothing (issue #14): the fault suite, against the real `python -m proxy` run in a process
group of its own as a terminal runs it. The cases live in bench/capture_faults.py (the traffic faults in
bench/capture_traffic.py), which also runs them repeatedly and writes docs/RELIABILITY.md; here each runs
once.

Every case asserts that each request the proxy certainly saw (the client got an answer, or the upstream
got it) is a record or a counted loss (records + losses = sent - unseen, where unseen requests never
reached the proxy before it stopped), none twice, every trace line parses, and the proxy's stop summary
equals the trace file and the side file of losses. The upstream is the scripted one (in this process, so
it tells which requests reached it) except for the slow client, which reads a real `mlx_lm server`.
"""

from __future__ import annotations

import sys

import pytest

from bench.capture_faults import SIGNAL_CASES, disk_full
from bench.capture_harness import Outcome
from bench.capture_traffic import TRAFFIC_CASES, traffic_faults
from proxy.scripted_upstream import ScriptedUpstream

needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the recorder via /proc")


@pytest.fixture(scope="module")
def upstream():
    with ScriptedUpstream() as running:
        yield running


def assert_held(outcome: Outcome) -> None:
    assert outcome.sent > 0 and outcome.seen > 0, outcome
    assert outcome.problems() == [], outcome
    assert outcome.failures == [], outcome
    assert outcome.records + outcome.losses == outcome.sent - outcome.unseen


@pytest.mark.parametrize("case", ["ctrl-c", "sigterm", pytest.param("sighup", marks=pytest.mark.slow)])
def test_stopping_mid_traffic_writes_every_exchange(case, upstream, tmp_path):
    """SIGINT to the whole group (a terminal's Ctrl-C), SIGTERM to the proxy, SIGHUP to the group (a closed
    terminal), each while 16 clients send plain, streamed, parallel-tool-call and slow requests: every
    exchange the proxy saw is in the file, nothing is lost, and the summary counts what the file holds."""
    outcome = SIGNAL_CASES[case](upstream, tmp_path)
    assert_held(outcome)
    assert outcome.losses == 0 and outcome.records >= 20
    assert outcome.summary["recorded"] == outcome.records  # only this case's traffic went through


@pytest.mark.slow
@needs_proc
def test_a_second_ctrl_c_exits_at_once_and_counts_what_it_abandoned(upstream, tmp_path):
    outcome = SIGNAL_CASES["second-ctrl-c"](upstream, tmp_path)
    assert_held(outcome)
    assert outcome.losses == outcome.summary["abandoned"] > 0
    assert set(outcome.loss_reasons) == {"abandoned"}


@pytest.mark.slow
@needs_proc
def test_a_killed_recorder_is_replaced_and_its_backlog_written(upstream, tmp_path):
    """SIGKILL the recorder while it held exchanges it had not acknowledged (stopped first), and again
    later: a new one takes over, the backlog is re-submitted, nothing is lost or written twice."""
    outcome = SIGNAL_CASES["recorder-sigkill"](upstream, tmp_path)
    assert_held(outcome)
    assert outcome.losses == 0


def test_disk_full_mid_line_then_space_again(upstream, tmp_path):
    """A 256 KiB tmpfs fills while a record is being written: the failed writes are counted losses, no line
    is torn or merged with the next, and once there is space again records are written again."""
    outcome = disk_full(upstream, tmp_path)
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    assert_held(outcome)
    assert outcome.losses > 0 and set(outcome.loss_reasons) == {"write_failed"}
    assert outcome.records > 8  # some before the disk filled, and the 8 sent after it had space again


@pytest.fixture(scope="module")
def traffic(upstream, tool_server, tmp_path_factory) -> dict[str, Outcome]:
    outcomes = traffic_faults(upstream, tmp_path_factory.mktemp("traffic-faults"), tool_server.url)
    return {outcome.case: outcome for outcome in outcomes}


@pytest.mark.parametrize("case", list(TRAFFIC_CASES))
def test_traffic_faults(case, traffic):
    """Upstream reset mid-stream, client disconnect mid-stream, a client reading one byte at a time (from a
    real mlx_lm server), 64 concurrent streams, a 10 MB request, non-UTF-8 and invalid-JSON bodies (passed
    to the upstream unchanged, recorded with an error): each a record saying what happened."""
    outcome = traffic[case]
    assert_held(outcome)
    assert outcome.losses == 0 and outcome.records == outcome.sent
