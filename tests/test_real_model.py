"""bench/real_model.py: the real-model experiment (issue #7) end to end at smoke size, and its input checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.real_model import spread
from models.fetch import cached_model_dir

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "real_model.py"


def test_spread_keeps_order_and_covers_the_file():
    items = list(range(10))
    assert spread(items, 0) == items
    assert spread(items, 20) == items
    assert spread(items, 5) == [0, 2, 4, 6, 8]


def test_missing_model_fails_with_the_fetch_command(tmp_path):
    env = dict(os.environ, FLYWHEEL_CACHE=str(tmp_path / "empty-cache"))
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--no-report", "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]  # (a BLAS note may precede it on machines without OpenBLAS)
    assert last.startswith("error: ") and "qwen2.5-coder-0.5b" in last, done.stderr
    assert "uv run python -m models fetch qwen2.5-coder-0.5b" in last
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_run_on_qwen(tmp_path):
    model = cached_model_dir("qwen2.5-coder-0.5b")
    if model is None:
        pytest.skip(
            "Qwen2.5-Coder-0.5B is not cached: uv run python -m models fetch qwen2.5-coder-0.5b"
        )
    benchmarks = ROOT / "docs" / "BENCHMARKS.md"
    before = benchmarks.read_text() if benchmarks.exists() else None
    workdir = tmp_path / "run"
    command = [sys.executable, str(SCRIPT), "--iters", "2", "--turn-limit", "4", "--agent-tasks", "2"]
    command += ["--val-batches", "1", "--seed", "1", "--no-report", "--workdir", str(workdir)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=1400, env=dict(os.environ, COLUMNS="200")
    )
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((workdir / "summary.json").read_text())
    for key in ("command", "settings", "data", "tokens", "train", "turns", "agent", "stage_seconds", "load"):
        assert key in summary
    collection = summary["data"]["collection"]
    assert collection["train"]["recorded"] == collection["train"]["agent_requests"] > 0
    assert collection["held_out"]["episodes"] == summary["data"]["held_out_tasks"]
    assert summary["tokens"]["shared_prompt_prefix"] > 100  # Qwen's tool listing, shared by every prompt
    assert summary["train"]["final_train_loss"] is not None
    assert summary["settings"]["seed"] == 1
    assert "blocks 1-16 (frozen) run once" in summary["train"]["loss"]  # train.loss's cheapest, checked
    assert (Path(summary["adapter"]) / "adapters.safetensors").is_file()
    assert set(summary["turns"]) == {"test split", "held-out tasks"}
    for turn_set in summary["turns"].values():
        assert turn_set["n"] == 4 <= turn_set["available"]
        for side in ("base", "adapter"):
            assert set(turn_set[side]) >= {"parsed_call_rate", "name_accuracy", "exact_call_accuracy"}
        assert "exact_call_accuracy" in turn_set["paired"] or turn_set["n_call_cases"] == 0
    assert summary["agent"]["n"] == 2
    assert 0 <= summary["agent"]["paired"]["mcnemar_p"] <= 1
    assert set(summary["targets"]) == {
        "exact_calls_test_split",
        "exact_calls_held_out_tasks",
        "agent_gain",
        "time",
    }
    assert {"collect", "curate", "train", "turns base (test split)", "agent adapter"} <= set(
        summary["stage_seconds"]
    )
    assert all(Path(p).is_file() for paths in summary["reports"].values() for p in paths)
    assert (benchmarks.read_text() if benchmarks.exists() else None) == before  # --no-report
