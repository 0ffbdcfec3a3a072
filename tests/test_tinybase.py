"""The demo's student base: the shipped tiny model pre-trained on the copy corpus (models/tinybase.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from agent.tools import AGENT_TOOLS
from models import tinybase

ROOT = Path(__file__).resolve().parent.parent


def test_copy_corpus_has_nothing_about_tools_or_the_suites():
    """The base must not be pre-trained on the task: no tool names, tool-call markup or suite pool entries."""
    from agent.tasks import load_suite

    rng = random.Random(0)
    text = "\n".join(tinybase.text_document(rng) for _ in range(3000))
    for marker in [
        "<tool_call>",
        "<tools>",
        "<|im_start|>",
        *(tool["function"]["name"] for tool in AGENT_TOOLS),
    ]:
        assert marker not in text
    suite_file = json.loads((ROOT / "agent" / "suites" / "demo.json").read_text())
    held_out_names = {
        name for pool in suite_file["pools"].values() for name in pool.get("held_out", []) if "." in name
    }
    assert held_out_names and not any(f"`{name}`" in text for name in held_out_names)
    assert load_suite("demo").held_out  # the suite the check above read is the demo's


def test_a_short_build_writes_a_model_mlx_lm_loads(tmp_path):
    out = tmp_path / "base"
    result = subprocess.run(
        [sys.executable, "-m", "models.tinybase", str(out), "--steps", "3"],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 3 and set(summary["probe"]) >= {"backtick_to_json", "key_lookup", "repeat"}
    from mlx_lm import load

    model, tokenizer = load(str(out))
    assert not list(out.glob("partial*"))
    assert tokenizer.encode("`a.txt`")


@pytest.fixture(scope="module")
def shipped_base():
    return tinybase.cached_base()


def test_the_shipped_base_can_copy_spans_it_has_never_seen(shipped_base):
    """What the demo relies on: fresh names (new seed) are copied, as a real base model would."""
    from mlx_lm import load

    model, tokenizer = load(str(shipped_base))
    probe = tinybase.copy_probe(model, tokenizer, seed=12345, count=40)
    info = json.loads((shipped_base / "flywheel-model.json").read_text())
    assert probe["backtick_to_json"] >= 0.6, (probe, info["probe"])


def test_the_shipped_base_makes_no_tool_calls(shipped_base):
    """Before fine-tuning it has never seen the chat template or a tool call: the demo's baseline is honest."""
    from models.tiny import check_tool_calls, tool_call_samples

    counts = check_tool_calls(shipped_base, tool_call_samples(10, seed=777), max_tokens=48)
    assert counts["calls"] == 10 and counts["parsed"] == 0
