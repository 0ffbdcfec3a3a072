"""python -m train on the tiny random model: real mlx-lm training, real files, real `mlx_lm server`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train.config import ConfigError, TrainConfig, read_toml, resolve, to_toml

REPO = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Read src/app.py."}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def model_dir(tiny_model) -> Path:
    """The tiny random model (conftest's session fixture; Qwen2-style with tied embeddings)."""
    return Path(tiny_model)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from models.tiny import tool_call_samples

    data = tmp_path_factory.mktemp("data")
    write_jsonl(data / "train.jsonl", tool_call_samples(48, 1))
    write_jsonl(data / "valid.jsonl", tool_call_samples(12, 2))
    write_jsonl(data / "test.jsonl", tool_call_samples(8, 3))
    (data / "report.json").write_text(json.dumps({"kept": 68, "source": "test fixture"}))
    return data


def child_env() -> dict[str, str]:
    from core.process import server_environment

    env = server_environment()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=cwd,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# 16 LoRA steps on every layer with everything a resume must restore: cosine schedule with warm-up, dropout.
SHORT_RUN = dict(
    iters=16,
    batch_size=4,
    num_layers=-1,
    learning_rate=2e-4,
    lr_schedule="cosine",
    lr_warmup=3,
    lora_dropout=0.1,
    save_every=8,
    steps_per_report=1,
    steps_per_eval=100,
    val_batches=1,
    timing_steps=0,
    seed=7,
)


def read_metrics(adapter: Path) -> list[dict]:
    return [json.loads(line) for line in (adapter / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, model_dir, data_dir) -> Path:
    """`python -m train --iters 30 --seed 3` in a directory whose train.toml sets everything else: LoRA with
    the head (tied embedding) adapted, checkpoints every 10, the fused model written too."""
    work = tmp_path_factory.mktemp("work")
    (work / "data").symlink_to(data_dir)
    (work / "train.toml").write_text(
        f'model = "{model_dir}"\n'
        'adapter = "adapters/lora"\n'
        "iters = 80\n"  # overridden by --iters
        "seed = 11\n"  # overridden by --seed
        "num-layers = -1\n"
        "lora_rank = 16\n"
        "lora_lm_head = true\n"
        "learning_rate = 2e-4\n"
        "save_every = 10\n"
        "steps_per_report = 5\n"
        "steps_per_eval = 10\n"
        "timing_steps = 1\n"
        'fuse = "fused"\n'
    )
    done = run_cli(["--iters", "30", "--seed", "3"], cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return work / "adapters" / "lora"


def test_config_precedence_defaults_file_flags(tmp_path):
    (tmp_path / "train.toml").write_text('model = "m"\niters = 7\nbatch-size = 2\nlearning_rate = 3e-4\n')
    config = resolve({"iters": 9, "batch_size": None}, cwd=tmp_path)
    assert (config.model, config.iters, config.batch_size, config.learning_rate) == ("m", 9, 2, 3e-4)
    assert config.max_seq_length == TrainConfig().max_seq_length and config.mask_prompt is True
    assert config.adapter.startswith("adapters/") and config.extra["config_file"] == str(
        tmp_path / "train.toml"
    )

    other = tmp_path / "other.toml"
    other.write_text('model = "x"\n[train]\nseed = 5\n')
    assert resolve({}, other, cwd=tmp_path).seed == 5  # --config replaces ./train.toml
    assert read_toml(other)["model"] == "x"

    round_trip = tmp_path / "round.toml"
    round_trip.write_text(to_toml(config))
    assert resolve({}, round_trip, cwd=tmp_path).to_dict() == config.to_dict()

    (tmp_path / "bad.toml").write_text("iters = 5\nlearning_rat = 1e-4\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key 'learning_rat'"):
        resolve({}, tmp_path / "bad.toml", cwd=tmp_path)
    (tmp_path / "bad.toml").write_text('iters = "many"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: iters: input should be a valid integer"):
        resolve({}, tmp_path / "bad.toml", cwd=tmp_path)
    with pytest.raises(ConfigError, match="select_by"):
        resolve({"select_by": "loss"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="patience"):
        resolve({"patience": 2}, cwd=tmp_path)
    aligned = resolve({"save_every": 25, "steps_per_report": 10}, cwd=tmp_path)
    assert aligned.steps_per_report == 5 and aligned.extra["steps_per_report_adjusted_from"] == 10


def test_config_is_core_settings_with_one_line_errors(tmp_path):
    from core.config import Settings

    assert issubclass(TrainConfig, Settings)
    table = tmp_path / "table.toml"
    table.write_text('model = "m"\n[train]\nbatch-size = "4"\n')
    with pytest.raises(ConfigError) as error:
        resolve({}, table, cwd=tmp_path)
    assert str(error.value).startswith(f"{table}: batch_size: input should be a valid integer")
    (tmp_path / "train.toml").write_text("num_layers = 0\n")
    with pytest.raises(ConfigError, match=r"train\.toml: num_layers: .*must be -1 \(all\) or a positive"):
        resolve({}, cwd=tmp_path)
    (tmp_path / "train.toml").write_text('lora_keys = "q_proj, v_proj"\n')  # comma list, as the flag takes it
    assert resolve({}, cwd=tmp_path).lora_keys == ["q_proj", "v_proj"]
    with pytest.raises(ConfigError, match=r"^flags: iters: input should be a valid integer"):
        resolve({"iters": "many"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="not a setting"):
        resolve({"iterations": 3}, cwd=tmp_path)
    # Library callers (flywheel's loop) build it from a dict of settings; paths may be Path objects.
    built = TrainConfig(**{"model": tmp_path, "data": tmp_path / "d", "iters": 5, "learning_rate": 1})
    assert built.model == str(tmp_path) and built.data == str(tmp_path / "d") and built.learning_rate == 1.0
    with pytest.raises(ValueError, match="select_by"):
        TrainConfig(select_by="loss")


def test_cli_without_model_says_how_to_set_one(tmp_path):
    done = run_cli([], cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "no model configured" in done.stderr
    assert "python -m train --model" in done.stderr and 'model = "' in done.stderr
    (tmp_path / "train.toml").write_text("iters = 10\n")  # a train.toml without a model: same message
    done = run_cli(["--iters", "3"], cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "no model configured" in done.stderr


def test_length_report_counts_truncation():
    from train.preflight import Sample, Tokenized, length_report

    def item(n, offset, line):
        return Tokenized(Sample(f"d/train.jsonl:{line}", {}), list(range(n)), offset)

    report = length_report([item(20, 10, 1), item(70, 30, 2), item(90, 80, 3)], 64, "d/train.jsonl")
    assert report.over_max_seq_length == 2 and report.truncated_supervision == 1
    assert report.dropped == ["d/train.jsonl:3"]  # its whole assistant turn lies beyond max_seq_length
    assert report.histogram == [(0, 32, 1), (32, 64, 0), (64, 90, 2)]
    assert report.supervised_tokens == {"min": 10, "median": 10, "max": 40, "total": 60}


def test_batches_are_a_function_of_seed_and_iteration():
    import mlx.core as mx

    from train.batches import make_iterate_batches

    class Data:
        items = [(list(range(1, 3 + (i * 7) % 40)), 1) for i in range(22)]

        def __getitem__(self, i):
            return self.items[i]

        def __len__(self):
            return len(self.items)

        def itemlen(self, i):
            return len(self.items[i][0])

    def take(start, n, seed=0):
        it = make_iterate_batches(seed, start)(Data(), 4, 128, loop=True)
        return [mx.array(next(it)[0]).tolist() for _ in range(n)]

    full = take(0, 14)  # 5 batches per epoch: crosses two epoch boundaries
    assert take(7, 7) == full[7:]
    assert take(0, 14, seed=1) != full
    widths = {len(b[0]) for b in full}
    assert widths <= {33, 65} and len(widths) > 1  # padded to 1 + 32k, length-sorted groups


def test_preflight_names_file_and_line(tmp_path, model_dir):
    from models.tiny import tool_call_samples
    from train.loop import run
    from train.preflight import PreflightError

    data = tmp_path / "data"
    data.mkdir()
    samples = tool_call_samples(6, 5)
    broken = {
        "messages": samples[0]["messages"][:2]
        + [
            {
                "role": "assistant",
                "content": '<tool_call>\n{"name": "read_file", "arguments": {"path": \n</tool_call>',
            }
        ],
        "tools": samples[0]["tools"],
    }
    write_jsonl(data / "train.jsonl", samples[:2] + [broken] + samples[2:])
    write_jsonl(data / "valid.jsonl", samples[:4])
    config = TrainConfig(
        model=str(model_dir), data=str(data), adapter=str(tmp_path / "a"), iters=2, timing_steps=0
    )
    with pytest.raises(PreflightError) as error:
        run(config)
    message = str(error.value)
    assert (
        message.startswith(f"{data / 'train.jsonl'}:3: tool call does not round-trip") and "\n" not in message
    )
    assert not (tmp_path / "a").exists()  # nothing written before preflight passes

    (data / "train.jsonl").write_text(json.dumps(samples[0]) + "\n{oops\n")
    with pytest.raises(PreflightError, match=r"train\.jsonl:2: invalid JSON"):
        run(config)
    write_jsonl(data / "train.jsonl", [{"messages": samples[0]["messages"][:2]}])
    with pytest.raises(PreflightError, match=r"train\.jsonl:1: the last message has role 'user'"):
        run(config)
    (data / "train.jsonl").write_text("")
    with pytest.raises(PreflightError, match=r"train\.jsonl: file is empty"):
        run(config)
    (data / "train.jsonl").unlink()
    with pytest.raises(PreflightError, match=r"train\.jsonl: file not found"):
        run(config)


def test_lora_run_learns_and_writes_everything(lora_run, model_dir, data_dir):
    from core.digest import sha256_file
    from train.manifest import data_files, directory_digest

    saved = read_toml(lora_run / "train.toml")  # flags > train.toml > defaults, saved with the adapter
    assert saved["iters"] == 30 and saved["seed"] == 3 and saved["learning_rate"] == 2e-4
    assert saved["max_seq_length"] == 2048 and saved["lora_lm_head"] is True

    metrics = read_metrics(lora_run)
    train = [m for m in metrics if m["kind"] == "train"]
    assert [m["iteration"] for m in train] == [5, 10, 15, 20, 25, 30]
    assert train[-1]["train_loss"] < 0.7 * train[0]["train_loss"]
    for m in train:
        assert (
            m["tokens_per_second"] > 0
            and m["peak_memory_gb"] > 0
            and m["learning_rate"] == pytest.approx(2e-4)
        )
    val = [m for m in metrics if m["kind"] == "val"]
    assert val[0]["iteration"] == 0 and val[-1]["val_loss"] < val[0]["val_loss"]
    assert [m["iteration"] for m in metrics if m["kind"] == "checkpoint"] == [10, 20, 30]
    assert (lora_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    config = json.loads((lora_run / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["num_layers"] == -1
    assert (
        "model.embed_tokens" in config["lora_parameters"]["keys"]
    )  # tied head: LoRA on the shared embedding
    assert "self_attn.q_proj" in config["lora_parameters"]["keys"]

    manifest = json.loads((lora_run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["seed"] == 3
    assert manifest["base_model"]["path"] == str(Path(model_dir).resolve())
    assert manifest["base_model"]["sha256"] == directory_digest(model_dir)["sha256"]
    assert manifest["data"]["files"] == data_files(data_dir)
    assert manifest["data"]["files"]["train.jsonl"]["sha256"] == sha256_file(data_dir / "train.jsonl")
    assert manifest["data"]["curate_report"] == {"kept": 68, "source": "test fixture"}
    assert manifest["config"]["iters"] == 30 and manifest["config"]["lora_rank"] == 16
    assert manifest["versions"]["mlx"] and manifest["versions"]["mlx-lm"]
    assert len(manifest["git"]["commit"]) == 40
    assert manifest["wall_time_s"] > 0 and manifest["final"]["iteration"] == 30
    assert manifest["final"]["train_loss"] == pytest.approx(train[-1]["train_loss"])
    assert manifest["final"]["val_loss"] == pytest.approx(val[-1]["val_loss"])
    assert manifest["distributed"]["world_size"] == 1
    assert manifest["preflight"]["lengths"]["train"]["samples"] == 48
    assert manifest["preflight"]["warmup"]["seconds_per_iteration"] > 0
    assert "blas" in manifest
    for name, digest in manifest["outputs"].items():
        assert sha256_file(lora_run / name) == digest
    assert manifest["fused"]["sha256"] == directory_digest(lora_run.parent.parent / "fused")["sha256"]

    # The last checkpoint is itself a loadable adapter, equal to the final weights.
    last = lora_run / "checkpoints" / "0000030"
    assert sha256_file(last / "adapters.safetensors") == sha256_file(lora_run / "adapters.safetensors")
    assert (last / "optimizer.safetensors").exists()
    assert not (lora_run / "checkpoints" / "0000010" / "optimizer.safetensors").exists()


def test_adapter_and_fused_model_serve_changed_output(lora_run, model_dir):
    import mlx.core as mx
    import openai
    from mlx_lm import generate, load

    from agent.tools import AGENT_TOOLS
    from core.process import MlxServer

    base, tokenizer = load(str(model_dir))
    tuned, _ = load(str(model_dir), adapter_path=str(lora_run))
    fused, _ = load(str(lora_run.parent.parent / "fused"))
    prompt = tokenizer.apply_chat_template(PROMPT, tools=AGENT_TOOLS, add_generation_prompt=True)
    tokens = mx.array([prompt])
    assert not mx.allclose(base(tokens), tuned(tokens), atol=1e-3).item()
    assert mx.allclose(tuned(tokens), fused(tokens), atol=1e-4).item()  # fusing keeps the function
    base_text = generate(base, tokenizer, prompt, max_tokens=16)

    def ask(server) -> str:
        client = openai.OpenAI(base_url=server.base_url, api_key="x")
        reply = client.chat.completions.create(
            model="default_model", messages=PROMPT, tools=AGENT_TOOLS, max_tokens=16, temperature=0.0
        )
        message = reply.choices[0].message
        return (message.content or "") + json.dumps([c.model_dump() for c in message.tool_calls or []])

    with MlxServer(model_dir, adapter_path=lora_run) as server:
        adapted = ask(server)
    with MlxServer(lora_run.parent.parent / "fused") as server:
        assert ask(server) == adapted
    assert adapted and adapted != base_text


def test_resume_matches_uninterrupted_run(tmp_path, model_dir, data_dir):
    """Stopped at iteration 8 and resumed (weights, Adam moments, lr-schedule position, data order, dropout
    RNG) vs one uninterrupted run with the same seed: the same loss curve (rtol 1e-5) and weights."""
    import mlx.core as mx

    from train.loop import run

    common = dict(model=str(model_dir), data=str(data_dir), **SHORT_RUN)
    whole = run(TrainConfig(adapter=str(tmp_path / "whole"), **common))
    run(TrainConfig(adapter=str(tmp_path / "split"), stop_after=8, **common))
    stopped = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert stopped["final"]["iteration"] == 8 and "stop_after" in stopped["status"]
    split = run(TrainConfig(adapter=str(tmp_path / "split"), resume=True, **common))

    def curve(adapter):
        return [
            (m["iteration"], m["train_loss"], m["learning_rate"])
            for m in read_metrics(adapter)
            if m["kind"] == "train"
        ]

    a, b = curve(whole), curve(split)
    assert [i for i, _, _ in a] == [i for i, _, _ in b] == list(range(1, 17))
    for (_, loss_a, lr_a), (_, loss_b, lr_b) in zip(a, b, strict=True):
        assert loss_b == pytest.approx(loss_a, rel=1e-5)
        assert lr_b == pytest.approx(lr_a, rel=1e-6)
    wa, wb = mx.load(str(whole / "adapters.safetensors")), mx.load(str(split / "adapters.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(mx.allclose(wa[k], wb[k], atol=1e-6).item() for k in wa)
    manifest = json.loads((split / "manifest.json").read_text())
    assert [s["from_iteration"] for s in manifest["segments"]] == [0, 8] and manifest["status"] == "finished"

    # A different seed changes the curve: the comparison above can fail.
    other = run(TrainConfig(adapter=str(tmp_path / "other"), stop_after=3, **{**common, "seed": 8}))
    assert [loss for _, loss, _ in curve(other)] != [loss for _, loss, _ in a[:3]]


def test_same_seed_same_numbers_bitwise_whatever_the_line_order(tmp_path, model_dir, data_dir):
    """Two runs with the same settings and seed: every logged loss and every weight equal bit for bit (same
    BLAS and thread count). Shuffling train.jsonl's lines changes nothing either: batches are built from the
    samples (length, then tokens), not from the file's order."""
    import random

    from core.samples import read_samples
    from core.toolcalls import load_tokenizer
    from train.loop import run
    from train.preflight import tokenize

    tokenizer = load_tokenizer(model_dir)
    items = [tokenize(tokenizer, s) for s in read_samples(data_dir / "train.jsonl")]
    by_length: dict[int, set] = {}
    for item in items:
        by_length.setdefault(len(item.tokens), set()).add(tuple(item.tokens))
    assert any(len(different) > 1 for different in by_length.values())  # ties the order must break

    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    lines = (data_dir / "train.jsonl").read_text().splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    (shuffled / "train.jsonl").write_text("".join(lines))
    assert (shuffled / "train.jsonl").read_text() != (data_dir / "train.jsonl").read_text()
    (shuffled / "valid.jsonl").write_text((data_dir / "valid.jsonl").read_text())
    common = dict(model=str(model_dir), **SHORT_RUN)
    runs = [
        run(TrainConfig(data=str(data), adapter=str(tmp_path / name), **common))
        for name, data in (("a", data_dir), ("b", data_dir), ("shuffled", shuffled))
    ]

    def numbers(adapter: Path):
        logged = [
            (m["kind"], m["iteration"], m.get("train_loss"), m.get("val_loss")) for m in read_metrics(adapter)
        ]
        return [row for row in logged if row[0] in ("train", "val")], (
            adapter / "adapters.safetensors"
        ).read_bytes()

    first = numbers(runs[0])
    assert len(first[0]) == 16 + 2  # 16 train reports, val at 0 and 16
    for other in runs[1:]:
        assert numbers(other) == first


def train_tiny(model_dir: Path, data_dir: Path, adapter: Path, **settings) -> Path:
    """`train.loop.run` in this process: the tiny model on the test data into `adapter`, no timing steps."""
    from train.loop import run

    return run(
        TrainConfig(
            model=str(model_dir), data=str(data_dir), adapter=str(adapter), timing_steps=0, **settings
        )
    )


def test_full_fine_tune_loads_as_adapter(tmp_path, model_dir, data_dir):
    import mlx.core as mx
    from mlx_lm import load

    adapter = train_tiny(
        model_dir,
        data_dir,
        tmp_path / "full",
        fine_tune_type="full",
        num_layers=-1,
        iters=6,
        learning_rate=1e-3,
        save_every=6,
    )
    weights = mx.load(str(adapter / "adapters.safetensors"))
    assert "model.embed_tokens.weight" in weights and "model.norm.weight" in weights  # everything trained
    base, tokenizer = load(str(model_dir))
    tuned, _ = load(str(model_dir), adapter_path=str(adapter))
    tokens = mx.array([tokenizer.encode("hello world")])
    assert not mx.allclose(base(tokens), tuned(tokens), atol=1e-3).item()


def test_select_by_tool_success_with_patience(tmp_path, model_dir, data_dir):
    from core.digest import sha256_file

    adapter = train_tiny(
        model_dir,
        data_dir,
        tmp_path / "sel",
        iters=40,
        learning_rate=2e-4,
        save_every=5,
        select_by="tool-success",
        patience=2,
        select_samples=4,
        steps_per_eval=100,
    )
    manifest = json.loads((adapter / "manifest.json").read_text())
    selection = manifest["selection"]
    assert selection["by"] == "tool-success"
    curve = selection["curve"]
    assert [c["iteration"] for c in curve][:1] == [5] and all("rates" in c for c in curve)
    best = selection["best_iteration"]
    assert selection["best_score"] == max(c["score"] for c in curve)
    assert sha256_file(adapter / "adapters.safetensors") == sha256_file(
        adapter / "checkpoints" / f"{best:07d}" / "adapters.safetensors"
    )
    scores = [c["score"] for c in curve]
    if manifest["status"].startswith(
        "early stop"
    ):  # stopped: the last `patience` scores did not beat the best
        assert all(s <= max(scores[:-2]) for s in scores[-2:])
        assert manifest["final"]["iteration"] < 40
    else:
        assert manifest["final"]["iteration"] == 40
    checkpointed = [m for m in read_metrics(adapter) if m["kind"] == "checkpoint"]
    assert [m["tool_success"] for m in checkpointed] == scores


@pytest.mark.slow
def test_two_process_ring_training_averages_gradients(tmp_path, model_dir, data_dir):
    """mlx.launch starts 2 local ranks (ring backend over 127.0.0.1); mlx-lm's trainer all-sums gradients, so
    ranks that saw different halves of every batch end with identical weights (checked across ranks)."""
    from core.net import free_port

    launcher = Path(sys.executable).parent / "mlx.launch"
    cmd = [str(launcher), "-n", "2", "--backend", "ring", "--starting-port", str(free_port())]
    cmd += ["--env", "OPENBLAS_NUM_THREADS=1", "--", sys.executable, "-m", "train", "--model", str(model_dir)]
    cmd += ["--data", str(data_dir), "--adapter", "adapters/ring", "--iters", "6", "--num-layers", "-1"]
    cmd += ["--learning-rate", "2e-4", "--save-every", "6", "--steps-per-report", "3", "--timing-steps", "0"]
    cmd += ["--val-batches", "1"]
    done = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    manifest = json.loads((tmp_path / "adapters" / "ring" / "manifest.json").read_text())
    assert manifest["distributed"]["world_size"] == 2
    assert manifest["distributed"]["replicas_identical"] is True
    assert manifest["status"] == "finished" and manifest["final"]["iteration"] == 6


def test_init_adapter_starts_from_its_weights_and_refuses_another_shape(
    tmp_path, lora_run, model_dir, data_dir
):
    """`--init-adapter DIR` starts the trainable layers at DIR's weights (at a vanishing learning rate they end
    there, where a fresh run's do not), records its sha256, and refuses an adapter of another rank in one line."""
    import hashlib

    import mlx.core as mx

    flags = ["--model", str(model_dir), "--data", str(data_dir), "--num-layers", "-1", "--lora-lm-head"]
    flags += ["--iters", "2", "--learning-rate", "1e-30", "--save-every", "2", "--timing-steps", "0"]
    start = mx.load(str(lora_run / "adapters.safetensors"))
    ends = {}
    for name, extra in (("fresh", []), ("continued", ["--init-adapter", str(lora_run)])):
        done = run_cli([*flags, "--lora-rank", "16", "--adapter", str(tmp_path / name), *extra], cwd=tmp_path)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        ends[name] = mx.load(str(tmp_path / name / "adapters.safetensors"))
    assert set(ends["continued"]) == set(start)
    assert all(mx.array_equal(ends["continued"][k], start[k]).item() for k in start)
    assert not all(mx.array_equal(ends["fresh"][k], start[k]).item() for k in start)
    manifest = json.loads((tmp_path / "continued" / "manifest.json").read_text())
    sha256 = hashlib.sha256((lora_run / "adapters.safetensors").read_bytes()).hexdigest()
    assert manifest["config"]["init_adapter"] == str(lora_run)
    assert manifest["config_notes"]["init_adapter_sha256"] == sha256

    other = run_cli(
        [*flags, "--lora-rank", "8", "--adapter", str(tmp_path / "other"), "--init-adapter", str(lora_run)],
        cwd=tmp_path,
    )
    assert other.returncode == 1 and not (tmp_path / "other" / "adapters.safetensors").exists()
    (line,) = [x for x in other.stderr.splitlines() if "init_adapter" in x]
    assert str(lora_run / "adapter_config.json") in line and "lora_parameters" in line
