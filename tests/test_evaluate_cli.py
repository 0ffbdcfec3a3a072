"""`python -m evaluate` end to end on the tiny models: reports, paired statistics, the gate, headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.tiny import tool_call_samples

HELD_OUT_SEED = 4242  # the tiny tool model is trained on seed 0
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)"
)


def run_cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The CLI in a fresh process (as a user runs it)."""
    return subprocess.run(
        [sys.executable, "-m", "evaluate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parent.parent,
    )


def main_in_process(capsys, *args) -> subprocess.CompletedProcess:
    """The same CLI entry point in this process (mlx is already imported: saves its start-up)."""
    from evaluate.__main__ import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "test.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in tool_call_samples(20, HELD_OUT_SEED)))
    return path


@pytest.fixture(scope="module")
def suite_teacher():
    from agent.tasks import load_suite
    from agent.teacher import Teacher

    suite = load_suite("default")
    with Teacher(suite) as teacher:
        yield suite, teacher


@pytest.fixture(scope="module")
def full_adapter(tmp_path_factory, tiny_model, tool_model) -> Path:
    """An mlx-lm full fine-tune "adapter" of the random tiny model whose weights are the tool-calling model's
    (what `mlx_lm lora --fine-tune-type full` writes), with the manifest naming its base model."""
    adapter = tmp_path_factory.mktemp("adapters") / "tool-ft"
    adapter.mkdir()
    shutil.copy(tool_model / "model.safetensors", adapter / "adapters.safetensors")
    (adapter / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "full", "num_layers": 2}))
    (adapter / "manifest.json").write_text(
        json.dumps({"base_model_path": str(tiny_model), "base_model": "tiny"})
    )
    return adapter


def render_in_chromium(html_path: Path, tmp_path: Path) -> str:
    """The DOM headless Chromium built from the page (after parsing), and a screenshot proving it painted."""
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
    dom = subprocess.run(
        [*common, "--dump-dom", html_path.resolve().as_uri()], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = tmp_path / "report.png"
    subprocess.run(
        [*common, "--window-size=1280,1600", f"--screenshot={shot}", html_path.resolve().as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and shot.stat().st_size > 20_000, "Chromium painted nothing"
    return dom.stdout


def test_help_explains_with_an_example():
    result = run_cli("--help", timeout=60)
    assert result.returncode == 0
    assert "python -m evaluate --adapter adapters/" in result.stdout
    assert "--fail-under" in result.stdout and "exact-call accuracy" in result.stdout


def test_model_only_report(tmp_path, tiny_model, data_file, capsys):
    result = main_in_process(capsys, "--model", tiny_model, "--data", data_file, "--no-agent", "--out", tmp_path, "--name", "rand",
                     "--max-tokens", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "rand.json").read_text())
    turns = report["turns"]
    assert turns["baseline"] is None and turns["comparison"] is None
    assert turns["candidate"]["n_cases"] == 20
    assert turns["candidate"]["rates"]["exact_call_accuracy"] == 0.0  # random weights make no calls
    assert report["gate"] is None and report["agent"] is None
    html = (tmp_path / "rand.html").read_text()
    assert 'id="headline"' in html and "Exact-call accuracy" in html
    assert "Exact-call accuracy" in result.stdout  # the console table


@needs_chromium
def test_adapter_vs_base_report(tmp_path, full_adapter, tiny_model, data_file):
    result = run_cli("--adapter", full_adapter, "--data", data_file, "--no-agent", "--out", tmp_path,
                     "--max-tokens", "64", "--fail-under", "0.0")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "tool-ft.json").read_text())
    assert report["model"] == str(tiny_model)  # from the adapter's manifest
    assert report["adapter"] == str(full_adapter) and report["baseline_model"] == str(tiny_model)
    turns = report["turns"]
    base, adapter = turns["baseline"]["rates"], turns["candidate"]["rates"]
    assert base["parsed_call_rate"] == 0.0 and adapter["parsed_call_rate"] >= 0.6
    parsed = turns["comparison"]["paired"]["parsed_call_rate"]
    n_calls = turns["candidate"]["n_call_cases"]
    assert parsed["adapter_only"] >= max(6, 0.6 * n_calls) and parsed["base_only"] == 0
    assert parsed["mcnemar_p"] < 0.05 and parsed["ci_low"] > 0
    assert set(turns["comparison"]["paired"]) >= {
        "exact_call_accuracy",
        "abstention_accuracy",
        "turn_success_rate",
    }
    assert turns["comparison"]["codes"]["no_call"]["delta"] < 0
    assert report["gate"]["passed"] is True
    assert len(turns["candidate"]["cases"]) == len(turns["baseline"]["cases"]) == 20

    html_path = tmp_path / "tool-ft.html"
    html = html_path.read_text()
    assert "<script" not in html and not re.search(
        r"""(src|href)=["']?(https?:|//)""", html
    )  # self-contained
    assert html.count("data:image/png;base64,") >= 2  # plots are inline
    dom = render_in_chromium(html_path, tmp_path)
    headline = re.search(r'<table id="headline">.*?</table>', dom, re.S)
    assert headline, "no headline table in the rendered page"
    rows = re.findall(r"<tr>", headline.group(0))
    assert len(rows) == 1 + 7  # header + the seven turn-level rates (over-calling next to the headline)
    assert "Parsed-call rate" in headline.group(0) and "McNemar p" in headline.group(0)
    assert "Gate passed" in dom
    assert dom.count('<tr><td class="num">') >= 20  # every case has its row


def test_gate_fails_and_output_is_escaped(tmp_path, tiny_model, data_file, capsys):
    sample = tool_call_samples(1, HELD_OUT_SEED)[0]
    sample["messages"][-2]["content"] = "<script>alert('x')</script> Read </tool_call> please"
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text(json.dumps(sample) + "\n")
    result = main_in_process(capsys, "--model", tiny_model, "--data", hostile, "--no-agent", "--out", tmp_path, "--name", "g",
                     "--max-tokens", "8", "--fail-under", "0.5")  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "gate failed" in result.stdout
    report = json.loads((tmp_path / "g.json").read_text())
    assert report["gate"]["passed"] is False
    html = (tmp_path / "g.html").read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html


def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, tiny_model, data_file, capsys):
    no_manifest = tmp_path / "adapter"
    no_manifest.mkdir()
    (no_manifest / "adapters.safetensors").write_bytes(b"")
    result = main_in_process(
        capsys, "--adapter", no_manifest, "--data", data_file, "--no-agent", "--out", tmp_path
    )
    assert result.returncode == 2
    assert "no base model recorded" in result.stderr and "--model" in result.stderr

    bad = tmp_path / "bad.jsonl"
    bad.write_text(data_file.read_text().splitlines()[0] + "\n" + '{"messages": []}\n')
    result = main_in_process(capsys, "--model", tiny_model, "--data", bad, "--no-agent", "--out", tmp_path)
    assert result.returncode == 2
    assert f"{bad}:2:" in result.stderr

    result = main_in_process(capsys, "--model", tiny_model, "--no-agent", "--no-turns")
    assert result.returncode == 2 and "nothing to evaluate" in result.stderr


def test_every_flag_is_a_setting():
    """Each flag sets the field of the same name, so a --config file can say everything a command line can."""
    from evaluate import EvalConfig
    from evaluate.__main__ import build_parser

    dests = {a.dest for a in build_parser()._actions} - {"help", "config"}
    assert dests == set(EvalConfig.model_fields)


def test_config_file_flags_override_and_the_resolved_settings_are_saved(
    tmp_path, tiny_model, data_file, capsys
):
    from core.config import load
    from evaluate import EvalConfig

    config = tmp_path / "eval.toml"
    config.write_text(
        f'model = "{tiny_model}"\ndata = "{data_file}"\nagent = false\nlimit = 3\nmax_tokens = 16\n'
        f'out_dir = "{tmp_path}"\nname = "cfg"\n'
    )
    result = main_in_process(capsys, "--config", config, "--max-tokens", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "cfg.json").read_text())
    assert report["config"]["max_tokens"] == 4 and report["config"]["limit"] == 3  # the flag wins
    assert report["turns"]["candidate"]["n_cases"] == 3
    saved = load(EvalConfig, tmp_path / "cfg.toml")  # the resolved configuration, beside the report
    assert saved.max_tokens == 4 and saved.model == str(tiny_model) and saved.agent is False
    assert saved.to_dict() == report["config"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_token = 8\n", "unknown key 'max_token'"),
        ('max_tokens = "8"\n', "max_tokens: input should be a valid integer"),
        ("fail_under = 80\n", "fail_under: input should be less than or equal to 1"),
        ("agent = 0\n", "agent: input should be a valid boolean"),
    ],
)
def test_bad_config_files_name_the_file_and_key(tmp_path, capsys, text, message):
    config = tmp_path / "eval.toml"
    config.write_text(text)
    result = main_in_process(capsys, "--config", config, "--model", "m", "--out", tmp_path)
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith(f"error: {config}") and message in line and "\n" not in line
    assert list(tmp_path.iterdir()) == [config]  # nothing written


def test_server_path(tmp_path, tool_server, data_file, capsys, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_TEST_API_KEY", "sekrit-key")  # sent as a bearer token, never written down
    result = main_in_process(capsys, "--server", tool_server.base_url, "--data", data_file, "--no-agent",
                             "--out", tmp_path, "--name", "srv", "--max-tokens", "64", "--concurrency", "2",
                             "--api-key-env", "FLYWHEEL_TEST_API_KEY")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "srv.json").read_text())
    candidate = report["turns"]["candidate"]
    assert candidate["settings"]["path"] == "server"
    assert candidate["rates"]["parsed_call_rate"] >= 0.6
    raw = json.loads(candidate["cases"][0]["raw"])
    assert raw["message"]["role"] == "assistant"
    assert "sekrit-key" not in (tmp_path / "srv.json").read_text() + (tmp_path / "srv.html").read_text()


def test_the_served_model_is_verified_and_recorded(tmp_path, tool_server, tool_model, data_file, capsys):
    from evaluate.served import weights_sha256

    result = main_in_process(capsys, "--server", tool_server.base_url, "--model", tool_model, "--data", data_file,
                             "--no-agent", "--limit", "2", "--out", tmp_path, "--name", "ok")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    identity = json.loads((tmp_path / "ok.json").read_text())["identity"]["candidate"]
    assert identity["served_model"] == identity["model_path"] == str(Path(tool_model).resolve())
    assert identity["weights_sha256"] == weights_sha256(Path(tool_model)) and identity["adapter_sha256"] is None
    assert identity["response_models"] == sorted({"default_model", identity["served_model"]})
    assert "weights_sha256" in (tmp_path / "ok.html").read_text()


def test_a_server_serving_another_model_is_refused(tmp_path, tool_server, tiny_model, data_file, capsys):
    result = main_in_process(capsys, "--server", tool_server.base_url, "--model", tiny_model, "--data", data_file,
                             "--no-agent", "--out", tmp_path, "--name", "wrong")  # fmt: skip
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line and f"serves {Path(tool_server.model).resolve()}, not {tiny_model}" in line
    assert not list(tmp_path.iterdir())  # refused before anything was scored or written


def fake_hub_cache(root: Path, repo: str) -> Path:
    """A Hugging Face cache holding one mlx-looking model (what `mlx_lm server` lists first on /v1/models)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    (folder / "blobs").mkdir()
    for name in ("config.json", "model.safetensors.index.json", "tokenizer_config.json"):
        (snapshot / name).write_text("{}")
    return snapshot


def test_cached_models_listed_first_do_not_fool_the_check(tmp_path, tool_model, data_file, capsys, monkeypatch):
    """The trap that scored the wrong model: `/v1/models[0]` is a cached hub model, not the one served."""
    import httpx

    from core.process import MlxServer

    repo = "mlx-community/Cached-Base-4bit"
    fake_hub_cache(tmp_path / "hub", repo)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    out = tmp_path / "reports"
    with MlxServer(tool_model, max_tokens=32) as server:
        listed = [m["id"] for m in httpx.get(f"{server.base_url}/models").json()["data"]]
        assert listed == [repo, str(Path(tool_model).resolve())]  # the cached model comes first
        fooled = main_in_process(capsys, "--server", server.base_url, "--model", repo, "--data", data_file,
                                 "--no-agent", "--out", out, "--name", "fooled")  # fmt: skip
        served = main_in_process(capsys, "--server", server.base_url, "--data", data_file, "--limit", "2",
                                 "--no-agent", "--out", out, "--name", "served")  # fmt: skip
    assert fooled.returncode == 2 and f"not {repo}" in fooled.stderr
    assert served.returncode == 0, served.stderr[-3000:]
    report = json.loads((out / "served.json").read_text())
    assert report["identity"]["candidate"]["served_model"] == str(Path(tool_model).resolve())


def test_every_response_must_name_the_verified_model(suite_teacher, data_file):
    from agent.episodes import run_episodes
    from core.turns import ModelMismatch, evaluate_turns_server
    from evaluate import EvalError
    from evaluate.served import check_episode_models, verify_server

    suite, teacher = suite_teacher
    found = verify_server(teacher.base_url, teacher.model_name, None)
    assert found["served_model"] == teacher.model_name
    samples = [json.loads(line) for line in data_file.read_text().splitlines()[:2]]
    with pytest.raises(ModelMismatch, match="names model 'flywheel-scripted-demonstrator'"):
        evaluate_turns_server(teacher.base_url, samples, model_name=teacher.model_name, response_models=["other"])
    episodes = [e.to_dict() for e in run_episodes(suite.held_out[:1], teacher.base_url, teacher.model_name,
                                                  show_progress=False)]  # fmt: skip
    check_episode_models(episodes, found["response_models"], teacher.base_url)
    with pytest.raises(EvalError, match="names model"):
        check_episode_models(episodes, ["other"], teacher.base_url)
    with pytest.raises(EvalError, match="cannot tell which model 'default_model' is"):
        verify_server(teacher.base_url, "default_model", None)


@pytest.mark.slow  # ~80 s: two servers, two proxies and four episodes
def test_agent_level_via_proxy(tmp_path, full_adapter, data_file):
    """Both sides through the real agent and recording proxy against a real `mlx_lm server` each, paired by task."""
    result = run_cli("--adapter", full_adapter, "--no-turns", "--limit", "2", "--out", tmp_path, "--name", "agent",
                     "--via-proxy", "--max-tokens", "96", "--agent-max-steps", "3", "--fail-under-agent", "0.0",
                     timeout=400)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "agent.json").read_text())
    agent = report["agent"]
    assert agent["n_tasks"] == 2 and agent["suite"] == "default"
    for side in ("baseline", "candidate"):
        episodes = agent[side]["episodes"]
        assert len(episodes) == 2
        assert len({e["template"] for e in episodes}) == 2  # a limit takes templates in turn, not the first few
        assert {"task_id", "success", "tool_calls", "invalid_calls", "retries", "steps", "wall_s"} <= set(
            episodes[0]
        )
        trace = Path(agent[side]["proxy"]["trace_file"])
        assert trace.parent.parent == tmp_path / "agent-traces"
        records = [json.loads(line) for line in trace.read_text().splitlines()]
        assert len(records) == sum(e["steps"] for e in episodes)  # one record per model request
    assert [e["task_id"] for e in agent["baseline"]["episodes"]] == [
        e["task_id"] for e in agent["candidate"]["episodes"]
    ]
    assert agent["comparison"]["success"]["n"] == 2
    # the tool-calling weights call tools; the random base never does
    assert (
        agent["candidate"]["summary"]["mean_tool_calls"]
        > 0
        == agent["baseline"]["summary"]["mean_tool_calls"]
    )
    html = (tmp_path / "agent.html").read_text()
    assert "Agent task success" in html and agent["candidate"]["episodes"][0]["task_id"] in html


def test_base_model_from_manifest(tmp_path, tiny_model):
    from evaluate import EvalError, read_manifest_model

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    with pytest.raises(EvalError, match="no base model recorded"):
        read_manifest_model(adapter)
    (adapter / "adapter_config.json").write_text(json.dumps({"model": "org/hub-model"}))
    assert read_manifest_model(adapter) == "org/hub-model"  # a hub name when nothing exists on disk
    # train's manifest: "base_model": {"name", "path", ...}
    manifest = {
        "format": "flywheel-train-manifest/1",
        "base_model": {"name": "tiny", "path": str(tiny_model)},
    }
    (adapter / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest_model(adapter) == str(tiny_model)
    (adapter / "manifest.json").write_text(
        json.dumps({"base_model": "org/other", "base_model_path": str(tiny_model)})
    )
    assert read_manifest_model(adapter) == str(tiny_model)
    (adapter / "manifest.json").write_text("{broken")
    with pytest.raises(EvalError, match=r"manifest\.json: not valid JSON"):
        read_manifest_model(adapter)


@pytest.mark.slow  # ~45 s: a real (short) training run, then base vs adapter
def test_after_a_quick_training_run(tmp_path, tiny_model):
    data = tmp_path / "data"
    data.mkdir()
    for name, n, seed in [("train", 32, 1), ("valid", 4, 2), ("test", 6, HELD_OUT_SEED)]:
        (data / f"{name}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in tool_call_samples(n, seed)))
    trained = subprocess.run(
        [sys.executable, "-m", "train", "--model", str(tiny_model), "--data", str(data),
         "--adapter", str(tmp_path / "adapters" / "quick"), "--iters", "10", "--batch-size", "2"],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    result = run_cli("--adapter", tmp_path / "adapters" / "quick", "--data", data / "test.jsonl", "--no-agent",
                     "--out", tmp_path / "reports", "--max-tokens", "16")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "reports" / "quick.json").read_text())
    assert report["model"] == str(tiny_model)  # from train's manifest
    paired = report["turns"]["comparison"]["paired"]["turn_success_rate"]
    assert paired["n"] == 6 and 0 <= paired["mcnemar_p"] <= 1


def test_general_check_beside_the_users_turns(tmp_path, full_adapter, data_file, monkeypatch, capsys):
    """`--general`: public BFCL cases (here the offline fixture) for base and adapter, paired like the user's
    turns, with over-calling measured where no call is right; the tool-trained model reaches for a tool."""
    from evaluate import bfcl

    fixture = Path(__file__).resolve().parent / "fixtures" / "bfcl"
    monkeypatch.setattr(bfcl, "default_source", lambda: fixture)
    result = main_in_process(capsys, "--adapter", full_adapter, "--data", data_file, "--limit", "4", "--no-agent",
                             "--out", tmp_path, "--max-tokens", "48", "--general", "simple_python:4,irrelevance:5")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "tool-ft.json").read_text())
    assert report["turns"]["candidate"]["n_cases"] == 4  # the user's own turns are still there
    general = report["general"]
    assert (
        general["source"]["dataset"] == "bfcl-eval==2026.3.23"
        and general["source"]["license"] == "Apache-2.0"
    )
    assert general["categories"] == {"simple_python": 4, "irrelevance": 5}
    irrelevance = general["per_category"]["irrelevance"]
    assert irrelevance["baseline"]["rates"]["over_call_rate"] == 0.0  # random weights never call
    assert irrelevance["candidate"]["rates"]["over_call_rate"] > 0.0
    paired = general["comparison"]["paired"]["over_call_rate"]
    assert paired["n"] == 5 and paired["base_only"] == 0
    assert any(f["metric"] == "general irrelevance: over_call_rate" for f in report["regressions"])
    checker = general["bfcl_checker"]["candidate"]
    assert checker["n"] == 9 and checker["agree"] + len(checker["differ"]) == 9
    assert "Over-calling" in result.stdout and "general · irrelevance" in result.stdout
    html = (tmp_path / "tool-ft.html").read_text()
    assert "general · simple_python" in html and "over_call_rate rose" in html


def test_general_check_alone_and_without_its_data(tmp_path, tiny_model, monkeypatch, capsys):
    from evaluate import bfcl

    monkeypatch.setenv("FLYWHEEL_CACHE", str(tmp_path / "empty-cache"))
    result = main_in_process(
        capsys, "--model", tiny_model, "--no-turns", "--no-agent", "--general", "--out", tmp_path
    )
    assert (
        result.returncode == 2 and "run `python -m models fetch bfcl-eval`" in result.stderr
    )  # before any work
    result = main_in_process(capsys, "--model", tiny_model, "--general", "simple_java", "--out", tmp_path)
    assert result.returncode == 2 and "unknown category 'simple_java'" in result.stderr
    monkeypatch.setattr(bfcl, "default_source", lambda: Path(__file__).resolve().parent / "fixtures" / "bfcl")
    result = main_in_process(capsys, "--model", tiny_model, "--no-turns", "--no-agent", "--general", "irrelevance:2",
                             "--out", tmp_path, "--name", "alone", "--max-tokens", "8")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "alone.json").read_text())
    assert report["turns"] is None and report["agent"] is None and report["general"]["baseline"] is None
    assert report["general"]["candidate"]["rates"]["over_call_rate"] == 0.0  # random weights never call
    assert "general · irrelevance" in result.stdout and (tmp_path / "alone.toml").is_file()
