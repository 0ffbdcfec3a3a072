"""The main job, `python -m flywheel --quick`, end to end on the tiny student, every artifact checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.trace import read_trace_lines, validation_errors

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_run(quick_demo):
    """The README's `--quick` run, fresh and then again (conftest: tests/test_rounds.py extends it later)."""
    return quick_demo


@pytest.mark.timeout(1200)
def test_quick_demo_produces_every_artifact(quick_run):
    root, run, first, _ = quick_run
    traces, data, adapter = root / "traces" / run, root / "data" / run, root / "adapters" / run

    # Traces: every line a valid record; the proxy recorded exactly the agent's requests.
    lines = list(read_trace_lines([traces]))
    assert lines and all(line.error is None and not validation_errors(line.record) for line in lines)
    collection = json.loads((traces / "collection.json").read_text())
    assert collection["teacher"] == "scripted demonstrator"
    assert (
        collection["recorded"] == len(lines) == collection["agent_requests"] == collection["teacher_requests"]
    )
    from agent.tasks import load_suite

    # the teacher solves every train task of the demo (tests/test_teacher.py: every held-out one)
    assert collection["solved"] == collection["episodes"] == len(load_suite("demo").train)
    assert all(line.record["session_id"] for line in lines)

    # Curate: the accounting identity holds and there is data to train on.
    report = json.loads((data / "report.json").read_text())
    for unit in ("exchanges", "samples"):
        counts = report[unit]
        assert counts["in"] == counts["kept"] + counts["rejected"] + counts["deduplicated"]
    assert report["exchanges"]["in"] == len(lines)
    assert sum(1 for _ in (data / "train.jsonl").open()) > 0

    # Train: the adapter loads with mlx-lm.
    from mlx_lm import load

    manifest = json.loads((adapter / "manifest.json").read_text())
    assert manifest["base_model"]["sha256"]
    model, _ = load(manifest["base_model"]["path"], adapter_path=str(adapter))
    assert model is not None

    # Evaluate: base and adapter scores plus paired statistics, JSON and HTML.
    result = json.loads((root / "reports" / f"{run}.json").read_text())
    success = result["agent"]["comparison"]["success"]
    assert {"base_rate", "adapter_rate", "mcnemar_p", "ci_low", "ci_high"} <= set(success)
    assert result["turns"]["baseline"]["rates"] and result["turns"]["candidate"]["rates"]
    html = (root / "reports" / f"{run}.html").read_text()
    assert "<table" in html and run in html
    assert "McNemar p" in first.stdout and "held-out tasks solved by the agent" in first.stdout


def test_rerun_reuses_every_stage_and_overwrites_nothing(quick_run):
    root, run, first, again = quick_run
    assert again.stderr.count("reused: complete from an earlier run") == 4
    assert "total" in again.stdout
    assert not list(root.rglob("*.incomplete-*"))


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_full_demo_gives_a_significant_held_out_gain(tmp_path):
    """`python -m flywheel` with no flags (the README's first command): the trained student solves
    significantly more *held-out* tasks than the base, measured by the real agent in the sandbox."""
    command = [sys.executable, "-m", "flywheel", "--root", str(tmp_path)]
    env = dict(os.environ, COLUMNS="400")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1100, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = [p.name for p in (tmp_path / "traces").iterdir()]
    report = json.loads((tmp_path / "reports" / f"{run}.json").read_text())
    success = report["agent"]["comparison"]["success"]
    assert success["n"] >= 40 and success["base_rate"] == 0.0
    assert success["adapter_rate"] >= 0.15 and success["mcnemar_p"] < 0.05, success
    exact = report["turns"]["comparison"]["paired"]["exact_call_accuracy"]
    assert exact["adapter_rate"] > exact["base_rate"] and exact["mcnemar_p"] < 0.05, exact
