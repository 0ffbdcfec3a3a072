"""curate's split, tried as a skeptical user would: no prompt in two splits, the same split on a re-collection
and on any Polars version, and a split pinned for a committed trace file.

    uv run python tests/test_curate_split.py     # prints how many prompts of the 30-pair set straddle splits

(with PYTHONPATH=/path/to/another/checkout it measures that checkout's curate on the same traces)."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from test_curate import accounted, agent_loop, assistant, call, read_jsonl, write_lines

import curate
from core.trace import new_record, validation_errors
from curate import Config

FIXTURES = Path(__file__).resolve().parent / "data"
GOLDEN = FIXTURES / "curate-golden-traces.jsonl"
PAIRS = 30


def prompt(i: int) -> str:
    return f"Find why test_{i} fails in src/mod{i}.py and fix it."


def session_pair(i: int) -> list[dict]:
    """Two sessions of one task: the same prompt and first call, then different steps and answers."""
    first = lambda s: call("read_file", {"path": f"src/mod{i}.py"}, f"r-{s}")  # noqa: E731
    a = agent_loop(
        prompt(i),
        [
            assistant(first("a")),
            assistant(call("run_command", {"command": "pytest", "args": [f"tests/test_{i}.py"]}, f"t-{i}a")),
            assistant(content=f"test_{i} fails on an off-by-one; fixed."),
        ],
        f"a{i}",
    )
    b = agent_loop(
        prompt(i),
        [
            assistant(first("b")),
            assistant(call("write_file", {"path": f"src/mod{i}.py", "content": f"x = {i}\n"}, f"w-{i}b")),
            assistant(content=f"Rewrote src/mod{i}.py."),
        ],
        f"b{i}",
    )
    return a + b


def recollected(records: list[dict], tag: str) -> list[dict]:
    """The same sessions recorded again: same content, new record ids, timestamps and session ids."""
    out = []
    for record in records:
        again = {**json.loads(json.dumps(record)), "session_id": f"{tag}-{record['session_id']}"}
        fresh = new_record()
        again["id"], again["started_at"] = fresh["id"], fresh["started_at"]
        out.append(again)
    return out


def near_twin(i: int) -> list[dict]:
    """The task again with the prompt differing only in case and whitespace, another path after the first call."""
    twin = "  " + prompt(i).upper().replace(" ", "   ") + "\n"
    return agent_loop(
        twin,
        [
            assistant(call("read_file", {"path": f"src/mod{i}.py"}, f"r-c{i}")),
            assistant(call("list_files", {"path": "tests"}, f"l-c{i}")),
            assistant(content=f"tests/test_{i}.py is the one."),
        ],
        f"c{i}",
    )


def task_set() -> list[dict]:
    """30 prompt pairs sharing their first turns, every third pair re-collected, every fifth with a near twin."""
    records = []
    for i in range(PAIRS):
        pair = session_pair(i)
        records += pair
        if i % 3 == 0:
            records += recollected(pair, "again")
        if i % 5 == 0:
            records += near_twin(i)
    return records


def normalised(text: str) -> str:
    return " ".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def splits_by_prompt(out: Path) -> dict[str, set[str]]:
    """Normalised first user message → the splits holding samples of it."""
    found = defaultdict(set)
    for split in ("train", "valid", "test"):
        for sample in read_jsonl(out / f"{split}.jsonl"):
            user = next(m["content"] for m in sample["messages"] if m["role"] == "user")
            found[normalised(user)].add(split)
    return found


def straddling(out: Path) -> list[str]:
    return sorted(p for p, splits in splits_by_prompt(out).items() if len(splits) > 1)


def run(traces: Path, out: Path, **settings) -> curate.Report:
    return curate.run([traces], out, Config(progress=False, **settings))


# ------------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sessions_sharing_first_turns_never_straddle_splits(tmp_path, seed):
    write_lines(tmp_path / "traces" / "a.jsonl", task_set())
    report = run(tmp_path / "traces", tmp_path / "out", seed=seed)
    accounted(report)
    by_prompt = splits_by_prompt(tmp_path / "out")
    assert len(by_prompt) == PAIRS and straddling(tmp_path / "out") == []
    assert (
        report.data["samples"]["deduplicated_by_reason"]["exact_duplicate"] >= PAIRS
    )  # the shared first turns
    assert {s for splits in by_prompt.values() for s in splits} == {"train", "valid", "test"}


def test_near_duplicates_kept_or_not_stay_with_their_task(tmp_path):
    write_lines(tmp_path / "traces" / "a.jsonl", task_set())
    for keep in (0, 1, 2):
        out = tmp_path / f"out{keep}"
        accounted(run(tmp_path / "traces", out, near_duplicates_keep=keep, seed=7))
        assert straddling(out) == []


def prompt_splits(out: Path) -> dict[str, str]:
    return {p: next(iter(s)) for p, s in splits_by_prompt(out).items()}


def test_a_recollection_gets_the_same_split(tmp_path):
    """Re-recorded sessions (new ids, timestamps, session ids; another file, reversed order) split the same."""
    records = [r for i in range(PAIRS) for r in session_pair(i)]
    write_lines(tmp_path / "first" / "a.jsonl", records)
    write_lines(tmp_path / "second" / "z.jsonl", recollected(records, "later")[::-1])
    run(tmp_path / "first", tmp_path / "out1", seed=4)
    run(tmp_path / "second", tmp_path / "out2", seed=4)
    assert prompt_splits(tmp_path / "out1") == prompt_splits(tmp_path / "out2")
    assert len(set(prompt_splits(tmp_path / "out1").values())) == 3


def test_the_split_does_not_depend_on_polars_hash_values(tmp_path, monkeypatch):
    """A Polars version whose Expr.hash gives other values (documented as possible) gives the same split."""
    write_lines(tmp_path / "traces" / "a.jsonl", task_set())
    run(tmp_path / "traces", tmp_path / "out1", seed=1)
    original = pl.Expr.hash

    def other_version(self, seed=0):
        return original(self, seed + 7919)

    monkeypatch.setattr(pl.Expr, "hash", other_version)
    run(tmp_path / "traces", tmp_path / "out2", seed=1)
    assert prompt_splits(tmp_path / "out1") == prompt_splits(tmp_path / "out2")
    for split in ("train", "valid", "test"):
        assert (tmp_path / "out1" / f"{split}.jsonl").read_text() == (
            tmp_path / "out2" / f"{split}.jsonl"
        ).read_text()


def measure(directory: Path) -> list[str]:
    """Curate the 30-pair set with default settings; the prompts landing in two splits."""
    write_lines(directory / "traces" / "a.jsonl", task_set())
    curate.run([directory / "traces"], directory / "out", curate.load_config(progress=False))
    return straddling(directory / "out")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="curate-split-") as tmp:
        found = measure(Path(tmp))
    print(f"{curate.__file__}: {len(found)} of {PAIRS} prompts in two splits")
    for text in found:
        print("  ", text)
    sys.exit(0)


# ------------------------------------------------------------------------------------------------ golden

GOLDEN_SPLITS = {
    0: {
        "find why test 100 fails in src mod100 py and fix it": "train",
        "find why test 101 fails in src mod101 py and fix it": "train",
        "find why test 102 fails in src mod102 py and fix it": "valid",
        "find why test 103 fails in src mod103 py and fix it": "train",
        "find why test 104 fails in src mod104 py and fix it": "train",
        "find why test 105 fails in src mod105 py and fix it": "train",
        "find why test 106 fails in src mod106 py and fix it": "train",
        "find why test 107 fails in src mod107 py and fix it": "train",
        "list lib": "test",
        "list the files in src": "train",
        "say hello": "train",
        "show me the tests folder": "train",
        "what is in docs": "train",
    },
    1: {
        "find why test 100 fails in src mod100 py and fix it": "test",
        "find why test 101 fails in src mod101 py and fix it": "valid",
        "find why test 102 fails in src mod102 py and fix it": "train",
        "find why test 103 fails in src mod103 py and fix it": "train",
        "find why test 104 fails in src mod104 py and fix it": "train",
        "find why test 105 fails in src mod105 py and fix it": "train",
        "find why test 106 fails in src mod106 py and fix it": "train",
        "find why test 107 fails in src mod107 py and fix it": "train",
        "list lib": "train",
        "list the files in src": "train",
        "say hello": "train",
        "show me the tests folder": "train",
        "what is in docs": "train",
    },
}
GOLDEN_COUNTS = {0: {"train": 42, "valid": 7, "test": 2}, 1: {"train": 41, "valid": 5, "test": 5}}


@pytest.mark.parametrize("seed", [0, 1])
def test_golden_split_of_a_committed_trace_file(tmp_path, seed):
    """tests/data/curate-golden-traces.jsonl (committed; 8 task pairs sharing first turns, a re-collection, a
    near twin, session-less runs) splits exactly like this on every platform and Polars version. A change
    here changes which prompts every user trains and evaluates on: say so in the README."""
    report = curate.run([GOLDEN], tmp_path / "out", Config(progress=False, seed=seed))
    accounted(report)
    assert prompt_splits(tmp_path / "out") == GOLDEN_SPLITS[seed]
    assert report.split_counts == GOLDEN_COUNTS[seed]


def test_a_trace_file_written_before_this_change_still_reads(tmp_path):
    """The golden file's records are in the current trace schema (v1), as committed: every line reads."""
    lines = GOLDEN.read_text().splitlines()
    assert all(not validation_errors(json.loads(line)) for line in lines)
    assert {json.loads(line)["schema_version"] for line in lines} == {1}
    report = curate.run([GOLDEN], tmp_path / "out", Config(progress=False))
    ex = accounted(report)["exchanges"]
    assert ex["in"] == len(lines) == 66 and ex["rejected"] == 0 and report.kept == 51
