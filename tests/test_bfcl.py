"""The general check's data and scorer: BFCL cases converted to turn samples, scored by our scorer and by BFCL's own
AST checker on the same outputs, and never trained on.

Offline: `tests/fixtures/bfcl` holds real BFCL lines and BFCL's checker files in the wheel's layout (NOTICE.md);
the slow test fetches the pinned wheel and checks the fixture against it.
"""

from __future__ import annotations

import copy
import json
import zipfile
from collections import Counter
from pathlib import Path

import jsonschema
import pytest

from core.samples import BENCHMARK_KEY, BENCHMARK_SESSION, read_samples
from core.scoring import normalize_text, score_turn
from core.toolcalls import ParsedTurn, ToolCall, message_tool_calls
from evaluate import bfcl

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "bfcl"
ALL = ",".join(bfcl.CATEGORIES)


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return bfcl.load_samples(ALL, source=FIXTURE)


@pytest.fixture(scope="module")
def checker():
    return bfcl.load_checker(FIXTURE)


def by_id(samples: list[dict], case_id: str) -> dict:
    return next(s for s in samples if s["bfcl"]["id"] == case_id)


ANSWER = "None of these functions can do that."


def ours(
    sample: dict, calls: list[tuple[str, object]], unparsed: tuple[str, ...] = (), content: str | None = None
) -> str:
    """Our verdict on a model turn making `calls`; without calls the model answers in words (ANSWER)."""
    content = ("" if calls or unparsed else ANSWER) if content is None else content
    turn = ParsedTurn(content=content, tool_calls=[ToolCall(n, a) for n, a in calls], unparsed=list(unparsed))
    return score_turn(sample["messages"][-1], turn, sample["tools"], normalize=normalize_text).code


def theirs(checker, sample: dict, calls: list[tuple[str, object]]) -> bool:
    return bfcl.checker_verdict(checker, sample, [{"name": n, "arguments": a} for n, a in calls])[0]


# ---------------------------------------------------------------------------------------------- conversion


def test_every_fixture_case_converts_to_a_valid_sample(samples, tmp_path):
    counts = Counter(s["bfcl"]["category"] for s in samples)
    assert set(counts) == set(bfcl.CATEGORIES) and min(counts.values()) >= 3
    path = tmp_path / "general.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    read = read_samples(path)  # the one chat-sample reader accepts them
    assert len(read) == len(samples)
    for sample in samples:
        assert sample[BENCHMARK_KEY] == "bfcl-eval==2026.3.23"
        for tool in sample["tools"]:
            jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
        reference = sample["messages"][-1]
        no_call = sample["bfcl"]["category"] in bfcl.NO_CALL_CATEGORIES
        assert reference["role"] == "assistant" and bool(reference.get("tool_calls")) != no_call


def test_bfcl_types_become_json_schema_as_bfcl_maps_them(samples):
    def parameters(case_id: str) -> dict:
        return by_id(samples, case_id)["tools"][0]["function"]["parameters"]

    assert parameters("simple_python_0")["type"] == "object"  # BFCL's "dict"
    conditions = parameters("simple_python_89")["properties"]["conditions"]
    assert conditions["type"] == "object"
    assert {p["type"] for p in conditions["properties"].values()} == {"string"}
    coordinate = parameters("simple_python_83")["properties"]["coord1"]  # "tuple" of "float"
    assert coordinate["type"] == "array" and coordinate["items"] == {"type": "number"}
    assert parameters("simple_python_109")["properties"]["data"]["type"] == "string"  # "any", as BFCL maps it
    alpha = parameters("simple_python_118")["properties"]["alpha"]
    assert alpha["type"] == "number" and alpha["format"] == "float"
    assert alpha["description"] == "Significance level for hypothesis testing. This is a float type value."
    # the BFCL docs themselves are kept for BFCL's checker
    assert by_id(samples, "simple_python_0")["bfcl"]["function"][0]["parameters"]["type"] == "dict"


def test_alternatives_and_omissible_arguments(samples):
    sample = by_id(samples, "multiple_0")  # get_area / get_perimeter / get_angles: ["", true]
    (call,) = sample["messages"][-1]["tool_calls"]
    assert sorted(call["may_omit"]) == ["get_angles", "get_area", "get_perimeter"]
    name = call["function"]["name"]
    sides = {"side1": 5, "side2": 4, "side3": 3}
    assert ours(sample, [(name, sides)]) == "ok"  # optional arguments left out
    assert ours(sample, [(name, {**sides, "get_area": True})]) == "ok"
    assert ours(sample, [(name, {**sides, "get_area": False})]) == "wrong_value"
    assert ours(sample, [(name, {**sides, "side1": 6})]) == "wrong_value"
    several = by_id(samples, "simple_python_14")["messages"][-1]["tool_calls"][0]
    assert any(len(values) > 1 for values in several["alternatives"].values())
    # nested alternatives of a dict argument are expanded into whole values
    conditions = by_id(samples, "simple_python_89")["messages"][-1]["tool_calls"][0]["alternatives"][
        "conditions"
    ]
    assert {"department": "Science", "school": "Bluebird HS"} in conditions and len(conditions) == 2


def test_bfcl_string_comparison(samples):
    sample = by_id(samples, "simple_python_33")
    call = message_tool_calls(sample["messages"][-1])[0]
    shouted = {k: v.upper() if isinstance(v, str) else v for k, v in call.arguments.items()}
    assert ours(sample, [(call.name, shouted)]) == "ok"  # as BFCL: case and ,./-_*^ do not count
    assert normalize_text("Bluebird High-School, N.Y.") == normalize_text("bluebird highschool ny")
    assert normalize_text("it's") == 'it"s'


def test_irrelevance_is_right_without_a_call(samples, checker):
    sample = by_id(samples, "irrelevance_0")
    function = sample["tools"][0]["function"]["name"]
    assert ours(sample, []) == "ok" and theirs(checker, sample, [])
    assert ours(sample, [(function, {})]) == "unexpected_call"
    assert not theirs(checker, sample, [(function, {})])
    # a malformed call block: a call for us (over-calling), no call for BFCL (its decoder never sees it)
    assert ours(sample, [], unparsed=('{"name": "x", "arguments": ',)) == "unexpected_call"
    assert theirs(checker, sample, [])
    # an empty answer: silence is not an answer for us (abstention credits a real answer), no call for BFCL
    assert ours(sample, [], content="  ") == "empty_answer" and theirs(checker, sample, [])


# ---------------------------------------------------------------------------------------------- BFCL's checker


def variants(sample: dict) -> dict[str, list[tuple[str, object]]]:
    """Model outputs for a case: right ones written several ways, and typical mistakes."""
    calls = sample["messages"][-1].get("tool_calls") or []
    first = [(c["function"]["name"], dict(c["function"]["arguments"])) for c in calls]

    def each(change):
        return [(name, {k: change(v) for k, v in args.items()}) for name, args in first]

    def integral(v):
        return isinstance(v, float) and v.is_integer()

    out = {
        "first": first,
        "omit_optional": [
            (n, {k: v for k, v in a.items() if k not in c.get("may_omit", [])})
            for (n, a), c in zip(first, calls, strict=True)
        ],
        "last_alternative": [
            (n, {k: c.get("alternatives", {}).get(k, [v])[-1] for k, v in a.items()})
            for (n, a), c in zip(first, calls, strict=True)
        ],
        "int_for_float": each(lambda v: int(v) if integral(v) else v),
        "upper_case": each(lambda v: v.upper() if isinstance(v, str) else v),
        "numbers_as_strings": each(lambda v: str(v) if type(v) in (int, float) else v),
        "booleans_as_strings": each(lambda v: str(v).lower() if isinstance(v, bool) else v),
        "float_for_int": each(lambda v: float(v) if type(v) is int else v),
        "ints_in_float_list": each(
            lambda v: [int(x) if integral(x) else x for x in v] if isinstance(v, list) else v
        ),
        "wrong_name": [(n + "_v2", a) for n, a in first],
        "extra_argument": [(n, {**a, "verbose": True}) for n, a in first],
        "first_argument_missing": [(n, dict(list(a.items())[1:])) for n, a in first],
        "no_call": [],
        "reversed": first[::-1],
        "arguments_not_an_object": [(n, json.dumps(a)) for n, a in first],
    }
    if not calls and sample["bfcl"]["function"]:
        out["irrelevant_call"] = [(sample["bfcl"]["function"][0]["name"], {})]
    return out


# Where BFCL's checker and ours differ on purpose: (variant, BFCL's error type) → why we keep ours.
KEPT_DIFFERENCES = {
    (
        "float_for_int",
        "type_error:simple",
    ): "5.0 is an integer in JSON Schema (and to pydantic); BFCL wants a Python int",
    (
        "float_for_int",
        "parallel_function_checker_no_order:cannot_find_match",
    ): "the same, inside parallel calls",
    ("ints_in_float_list", "type_error:nested"): "BFCL accepts an int for a float at the top level only",
    (
        "reversed",
        "parallel_function_checker_no_order:cannot_find_match",
    ): "BFCL pairs parallel calls greedily; "
    "we find the best pairing, so an order BFCL's first pick blocks still passes",
}


def test_our_verdicts_agree_with_bfcls_checker(samples, checker, capsys):
    agree, differences = 0, Counter()
    for sample in samples:
        for name, calls in variants(sample).items():
            ok = ours(sample, calls) == "ok"
            valid, error_type = bfcl.checker_verdict(
                checker, sample, [{"name": n, "arguments": a} for n, a in calls]
            )
            if ok == valid:
                agree += 1
                continue
            assert ok and not valid, (sample["where"], name, error_type)  # we are never the more lenient...
            differences[(name, error_type)] += 1  # ...except where we mean to be:
    assert set(differences) <= set(KEPT_DIFFERENCES), differences
    assert set(differences) == set(KEPT_DIFFERENCES)  # the fixture shows each kind
    total = agree + sum(differences.values())
    assert agree / total > 0.9
    with capsys.disabled():
        print(f"\nBFCL checker agreement on {total} outputs: {agree}; kept differences {dict(differences)}")


def test_each_reference_passes_both_checkers_except_bfcls_unpassable_answers(samples, checker):
    """A reference written out passes our scorer and BFCL's; BFCL's own answers for two cases name an argument
    their function does not declare (BFCL calls it unexpected), which the conversion carries over."""
    failing = []
    for sample in samples:
        calls = [(c.name, c.arguments) for c in message_tool_calls(sample["messages"][-1])]
        if ours(sample, calls) != "ok" or not theirs(checker, sample, calls):
            failing.append(sample["bfcl"]["id"])
    assert failing == [
        "live_multiple_862-181-3"
    ]  # requires `journey_start_time`, undeclared: no output passes
    twelve = by_id(
        samples, "parallel_multiple_12"
    )  # `permeability` undeclared but omissible: omitting passes
    assert "permeability" in twelve["messages"][-1]["tool_calls"][1]["may_omit"]


def test_a_checker_loaded_from_another_source_replaces_the_first(tmp_path):
    copy_dir = tmp_path / "bfcl"
    import shutil

    shutil.copytree(FIXTURE, copy_dir)
    module = bfcl.load_checker(copy_dir)
    assert Path(module.__file__).is_relative_to(copy_dir)
    assert Path(bfcl.load_checker(FIXTURE).__file__).is_relative_to(FIXTURE)


# ---------------------------------------------------------------------------------------------- spec, errors


def test_category_spec_and_clear_errors(tmp_path, monkeypatch):
    assert bfcl.parse_spec(None) == [("simple_python", 0, 100), ("multiple", 0, 50), ("irrelevance", 0, 50)]
    assert bfcl.parse_spec("irrelevance, multiple:2,parallel:1-3") == [
        ("irrelevance", 0, None),
        ("multiple", 0, 2),
        ("parallel", 1, 3),
    ]
    with pytest.raises(bfcl.BFCLError, match="unknown category 'simple_java'"):
        bfcl.parse_spec("simple_java")
    for bad in ("multiple:0", "multiple:3-3", "multiple:x", "multiple:-2"):
        with pytest.raises(bfcl.BFCLError, match="CATEGORY:A-B with A < B"):
            bfcl.parse_spec(bad)
    first = bfcl.load_samples("multiple:2", source=FIXTURE)
    assert [s["bfcl"]["id"] for s in first] == ["multiple_0", "multiple_1"]
    held_out = bfcl.load_samples("multiple:2-4", source=FIXTURE)  # a slice disjoint from the first two
    assert [s["bfcl"]["id"] for s in held_out] == ["multiple_2", "multiple_3"]
    monkeypatch.setenv("FLYWHEEL_CACHE", str(tmp_path))
    with pytest.raises(bfcl.BFCLError, match="python -m models fetch bfcl-eval"):
        bfcl.load_samples("multiple")
    # a wheel with the right name but other bytes is not trusted
    wheel = tmp_path / "models" / "wheels" / "bfcl_eval-2026.3.23-py3-none-any.whl"
    wheel.parent.mkdir(parents=True)
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("bfcl_eval/data/BFCL_v4_multiple.json", "{}\n")
    with pytest.raises(bfcl.BFCLError, match="sha256 differs"):
        bfcl.load_samples("multiple")


# ---------------------------------------------------------------------------------------------- never trained on


def test_train_preflight_refuses_benchmark_samples(samples, tmp_path):
    from train.preflight import PreflightError, load_splits

    good = copy.deepcopy(samples[0])
    del good[BENCHMARK_KEY]  # the same conversation without the mark reads fine
    (tmp_path / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(samples[1]) + "\n")
    with pytest.raises(PreflightError, match=r"train\.jsonl:2: benchmark data \(bfcl-eval==2026\.3\.23\)"):
        load_splits(tmp_path)
    (tmp_path / "train.jsonl").write_text(json.dumps(good) + "\n")
    (tmp_path / "valid.jsonl").write_text(json.dumps(samples[2]) + "\n")
    with pytest.raises(PreflightError, match=r"valid\.jsonl:1: benchmark data"):
        load_splits(tmp_path)


def test_benchmark_requests_through_the_proxy_never_reach_training_data(samples, tool_server, tmp_path):
    """The leak path: the general check run against a recording proxy (`--server` at the proxy's URL). Its
    requests carry the benchmark session id, and curate refuses their records; the agent's own turn, sent
    through the same proxy, is kept."""
    import curate
    from core.turns import evaluate_turns_server
    from models.tiny import tool_call_samples
    from proxy import RecordingProxy

    general = [s for s in samples if s["bfcl"]["category"] in ("simple_python", "irrelevance")][:3]
    own = tool_call_samples(1, 7)
    with RecordingProxy(tool_server.url, tmp_path / "traces") as proxy:
        evaluate_turns_server(proxy.base_url, general + own, max_tokens=96)
        trace_file = proxy.trace_file
    records = [json.loads(line) for line in trace_file.read_text().splitlines()]
    sessions = [r["session_id"] for r in records]
    assert sessions[:3] == [f"{BENCHMARK_SESSION}bfcl-eval==2026.3.23"] * 3 and sessions[3] is None
    report = curate.run(tmp_path / "traces", tmp_path / "data")
    rejects = [json.loads(line) for line in (tmp_path / "data" / "rejects.jsonl").read_text().splitlines()]
    refused = [r for r in rejects if r["reason"] == "benchmark_data"]
    assert len(refused) == 3 and all("never trained on" in r["detail"] for r in refused)
    assert report.data["samples"]["in"] >= 1  # the agent's own exchange went on through the pipeline
    for split in ("train", "valid", "test"):
        path = tmp_path / "data" / f"{split}.jsonl"
        text = path.read_text() if path.exists() else ""
        assert BENCHMARK_SESSION not in text and general[0]["messages"][0]["content"] not in text


# ---------------------------------------------------------------------------------------------- the bench


def own_run(workdir: Path, outcomes: list[bool], solved: list[bool]) -> Path:
    """A bench/real_model.py summary.json of an adapter in `workdir`: its test-split turns and agent tasks."""
    cases = [{"where": f"{workdir}/data-4ba22cec05/test.jsonl:{i + 1}", "code": "ok" if ok else "wrong_value"}
             for i, ok in enumerate(outcomes)]  # fmt: skip
    episodes = [{"task_id": f"task-{i}", "success": ok} for i, ok in enumerate(solved)]
    report = {"turns": {"candidate": {"cases": cases}}, "agent": {"candidate": {"episodes": episodes}}}
    workdir.mkdir(parents=True)
    (workdir / "real-model.json").write_text(json.dumps(report))
    summary = {
        "reports": {"test split": [str(workdir / "real-model.json"), str(workdir / "real-model.html")]}
    }
    (workdir / "summary.json").write_text(json.dumps(summary))
    return workdir / "summary.json"


def test_the_bench_measures_the_issue_table_offline(tiny_model, tool_model, tmp_path, monkeypatch, capsys):
    """bench/general_check.py: base and adapter on BFCL cases, BFCL's checker and ours side by side on the same
    outputs, over-calling on `irrelevance`, and each adapter's own held-out work from its bench/real_model.py
    run (in another workdir) paired case by case. Here on the fixture, with the tool-calling tiny model as a
    full fine-tune "adapter" of the random one."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("general_check", root / "bench" / "general_check.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bfcl, "default_source", lambda: FIXTURE)
    adapter = tmp_path / "tool-ft"
    adapter.mkdir()
    (adapter / "adapters.safetensors").write_bytes((tool_model / "model.safetensors").read_bytes())
    (adapter / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "full", "num_layers": 2}))
    before = own_run(tmp_path / "qwen-before", [True, True, False, False], [False] * 3)
    after = own_run(tmp_path / "qwen-after", [True, True, True, True], [True, False, True])
    benchmarks = root / "docs" / "BENCHMARKS.md"
    text_before = benchmarks.read_text()
    summary = bench.main(["--model", str(tiny_model), "--adapter", f"tuned={adapter}", "--spec",
                          "simple_python:4,irrelevance:5", "--max-tokens", "48", "--workdir", str(tmp_path / "w"),
                          "--no-report", "--own", f"before={before}", "--own", f"after={after}"])  # fmt: skip
    base, tuned = (summary["sides"][side]["categories"] for side in ("base", "tuned"))
    assert base["irrelevance"] == {
        **base["irrelevance"],
        "n": 5,
        "bfcl": 5,
        "ours": 5,
        "calls": 0,
    }  # never calls
    assert (
        tuned["irrelevance"]["calls"] + tuned["irrelevance"]["malformed"] > 0
    )  # the tool model reaches for one
    assert summary["sides"]["tuned"]["rates"]["over_call_rate"] > 0
    for side in (base, tuned):  # each verdict of ours is either agreed or listed as a difference
        assert all(row["agree"] <= row["n"] for row in side.values())
    differ = sum(summary["sides"]["tuned"]["differ"].values())
    assert sum(row["agree"] for row in tuned.values()) + differ == 9
    own = summary["own"]
    assert (
        own["before"]["test split"]["ok"] == 2 and own["after"]["test split"]["n"] == 4
    )  # paired across workdirs
    assert own["after"]["test split"]["vs_first"]["mcnemar_p"] == 0.5
    assert own["after"]["agent tasks"] == {**own["after"]["agent tasks"], "n": 3, "ok": 2}
    printed = capsys.readouterr().out
    assert (
        "| category | base (BFCL checker) | base (ours) | base text calls (BFCL checker) | tuned (BFCL checker)"
        in printed
    )
    assert "| irrelevance | 5/5 | 5/5 | 5/5 |" in printed and "over-calling" in printed
    assert "| test-split turns with the exact call | 2/4 | 4/4 (McNemar p 0.5 vs before) |" in printed
    assert (
        json.loads((tmp_path / "w" / "general-check.json").read_text())["spec"]
        == "simple_python:4,irrelevance:5"
    )
    assert benchmarks.read_text() == text_before  # --no-report


# ---------------------------------------------------------------------------------------------- the fetch


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fetch_is_pinned_and_the_fixture_is_the_wheels(tmp_path, monkeypatch):
    """`python -m models fetch bfcl-eval` downloads the pinned wheel once (pip checks the hash); every fixture
    line and checker file is the wheel's; the real data converts in full and its references pass BFCL's checker."""
    import subprocess
    import sys

    monkeypatch.setenv("FLYWHEEL_CACHE", str(tmp_path))
    fetch = [sys.executable, "-m", "models", "fetch", "bfcl-eval"]
    first = subprocess.run(fetch, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    wheel = Path(first.stdout.strip())
    assert wheel.is_file() and wheel.is_relative_to(tmp_path)
    again = subprocess.run(fetch, capture_output=True, text=True, timeout=60)
    assert again.stdout == first.stdout and "Downloading" not in again.stderr  # cached, verified, no network
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for path in FIXTURE.rglob("*"):
            member = path.relative_to(FIXTURE).as_posix()
            if path.is_dir() or member == "NOTICE.md":
                continue
            text = archive.read(member).decode()
            if member.endswith(".json"):
                assert set(path.read_text().splitlines()) <= set(text.splitlines()), member
            else:
                assert path.read_text() == text, member
        assert "bfcl_eval/data/BFCL_v4_simple_python.json" in names
    full = bfcl.load_samples(ALL)
    assert Counter(s["bfcl"]["category"] for s in full)["simple_python"] == 400
    checker = bfcl.load_checker()
    default = bfcl.load_samples(None)
    assert len(default) == 200
    passing = sum(
        theirs(checker, s, [(c.name, c.arguments) for c in message_tool_calls(s["messages"][-1])])
        for s in default
    )
    assert passing == 200
