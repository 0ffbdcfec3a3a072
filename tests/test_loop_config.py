"""The loop's settings: `python -m flywheel --config FILE` with a [train] table, flags over the file, mistakes
refused before any work starts with one line naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import ConfigError, flag_overrides, load
from flywheel.loop import QUICK_ITERS, STUDENT_RECIPE, LoopConfig
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def flywheel(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flywheel", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[train]\nitters = 5\n", "train: unknown key 'itters'"),
        ("[train]\nlora_rank = 0\n", "train: lora_rank: input should be greater than or equal to 1"),
        ("[train]\nmodel = 'x'\n", "train: cannot set ['model']"),
        ('seed = "1"\n', "seed: input should be a valid integer"),
        ("suite = 'demo'\nteachr = 'x'\n", "unknown key 'teachr'"),
    ],
)
def test_bad_settings_stop_before_any_work(tmp_path, text, message):
    config = tmp_path / "flywheel.toml"
    config.write_text(text)
    result = flywheel("--config", str(config), "--root", str(tmp_path / "run"))
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"flywheel: {config}: ") and message in line
    assert not (tmp_path / "run").exists()


def test_a_flag_that_breaks_the_recipe_is_refused(tmp_path):
    result = flywheel("--iters", "0", "--root", str(tmp_path))
    assert (
        result.returncode == 2 and "train: iters: input should be greater than or equal to 1" in result.stderr
    )
    assert not any(tmp_path.iterdir())


def test_file_then_flags_then_quick(tmp_path):
    path = tmp_path / "flywheel.toml"
    path.write_text("seed = 3\nsuite = 'default'\n[train]\niters = 400\nlora_rank = 8\n")
    config = load(LoopConfig, path, overrides={"seed": 5})
    assert (config.seed, config.suite, config.train) == (5, "default", {"iters": 400, "lora_rank": 8})
    settings = config.train_settings(Path("student"), Path("d"), Path("a"))
    trained = TrainConfig(**settings)
    assert (trained.iters, trained.lora_rank, trained.seed, trained.model) == (400, 8, 5, "student")
    assert trained.lr_warmup == 40 and trained.steps_per_eval == 100  # derived from the file's iters
    assert trained.learning_rate == STUDENT_RECIPE["learning_rate"]
    quick = config.replace(quick=True).effective()
    assert quick.train["iters"] == QUICK_ITERS and quick.eval_limit
    assert config.fingerprint() != quick.fingerprint()


def test_per_turn_data_is_a_setting_with_a_run_of_its_own(tmp_path):
    """`sessions = false`: curate writes one sample per turn (what plain `mlx_lm lora` trains on); the run name
    differs, so a per-turn run never reuses a session run's data or adapter."""
    path = tmp_path / "flywheel.toml"
    path.write_text("sessions = false\n")
    per_turn, default = load(LoopConfig, path), LoopConfig()
    assert (per_turn.sessions, default.sessions) == (False, True)
    assert per_turn.fingerprint() != default.fingerprint()


def test_the_resolved_settings_reload_the_same(tmp_path):
    from core.config import save

    config = LoopConfig(seed=2, train={"iters": 50}, root=tmp_path)
    assert load(LoopConfig, save(config, tmp_path / "resolved.toml")) == config
    with pytest.raises(ConfigError, match="valid integer"):
        config.replace(seed="x")


def test_the_teacher_model_is_chosen_never_guessed():
    """A teacher URL listing several models is refused without --teacher-model (what /v1/models[0] would pick
    is not a choice); a named model must be listed."""
    from agent.teacher import MODEL_NAME, Teacher
    from flywheel.collect import CollectError, teacher_model_name

    with Teacher("demo") as teacher:
        with pytest.raises(CollectError, match="name the teacher with --teacher-model"):
            teacher_model_name(teacher.base_url, "x", None)
        assert teacher_model_name(teacher.base_url, "x", MODEL_NAME) == MODEL_NAME
        with pytest.raises(CollectError, match="lists no model 'gpt-9'"):
            teacher_model_name(teacher.base_url, "x", "gpt-9")


def test_a_single_local_model_server_needs_no_name(tool_server):
    from flywheel.collect import teacher_model_name

    assert teacher_model_name(tool_server.base_url, "x", None) in ("default_model", str(tool_server.model))


def test_the_bundled_qwen_rounds_config_is_valid_and_is_the_real_model_recipe():
    """bench/qwen_rounds.toml (the README's Qwen rounds command) loads, and its [train] table is
    bench/real_model.py's recipe (rank 8 on the last 8 blocks + lm_head, 250 iterations, lr 1e-4)."""
    config = load(LoopConfig, ROOT / "bench" / "qwen_rounds.toml")
    trained = TrainConfig(**config.train_settings(Path("qwen"), Path("d"), Path("a")))
    assert (config.rounds, config.eval_limit) == (2, 24)
    assert (trained.num_layers, trained.lora_rank, trained.lora_lm_head, trained.iters) == (8, 8, True, 250)
    assert (trained.learning_rate, trained.batch_size) == (1e-4, 1)


def test_the_readme_sweep_command_runs_one_round_of_the_mixed_suite():
    """`python -m flywheel --config bench/qwen_rounds.toml --rounds 1 --suite demo_mixed` (README, issue #17's
    sweep): the flags override the file and the suite loads."""
    from agent.tasks import load_suite
    from flywheel.__main__ import build_parser

    args = build_parser().parse_args(
        ["--config", str(ROOT / "bench" / "qwen_rounds.toml"), "--rounds", "1", "--suite", "demo_mixed"]
    )
    config = load(LoopConfig, args.config, overrides=flag_overrides(args, LoopConfig))
    assert (config.rounds, config.suite, config.train["lora_lm_head"]) == (1, "demo_mixed", True)
    assert len(load_suite(config.suite).train) == 340


def test_the_readme_rare_work_commands_load_their_suites():
    """`python -m flywheel --config bench/qwen_rare_work.toml [--suite demo_new_work]` (README, issue #15): the
    real-model recipe at 150 iterations on the suite where the teacher shows 4 (or none) of three templates'
    40 train tasks, every held-out task scored, 8 episodes in flight; round 2 tops adapter 1 up."""
    from agent.tasks import load_suite
    from flywheel.__main__ import build_parser

    for extra, suite, teacher_tasks in (
        ([], "demo_rare_work", 172),
        (["--suite", "demo_new_work"], "demo_new_work", 160),
    ):
        args = build_parser().parse_args(["--config", str(ROOT / "bench" / "qwen_rare_work.toml"), *extra])
        config = load(LoopConfig, args.config, overrides=flag_overrides(args, LoopConfig))
        trained = TrainConfig(**config.train_settings(Path("qwen"), Path("d"), Path("a")))
        assert (config.rounds, config.eval_limit, config.suite) == (2, 48, suite)
        assert (trained.num_layers, trained.lora_rank, trained.lora_lm_head, trained.iters) == (
            8,
            8,
            True,
            150,
        )
        assert len(load_suite(config.suite).train) == teacher_tasks
        # round 2 tops up adapter 1 from its weights: one pass over its 45 lines, the warm-up shortened to fit
        topped = TrainConfig(
            **config.train_settings(Path("qwen"), Path("d"), Path("a2"), Path("a1"), lines=45)
        )
        assert (topped.iters, topped.lr_warmup, topped.init_adapter, topped.lora_rank) == (45, 4, "a1", 8)
        assert (config.eval_concurrency, config.attempt_concurrency) == (8, 8)
        assert (config.attempt_focus, config.focus_on, config.focus_give_up_after) == (64, "optimistic", 15)
        assert config.eval_max_tokens == 128
        assert (config.attempt_tasks, config.attempt_max_tokens, config.top_up_replay) == (21, 128, 2)


def test_the_evaluation_token_limit_is_a_loop_setting_that_reaches_evaluate(monkeypatch, tmp_path):
    """`--eval-max-tokens N` (the Qwen config: 128) is what every side of a round's evaluation may write per turn
    and agent request; the default stays evaluate's own."""
    import evaluate
    from flywheel.__main__ import build_parser
    from flywheel.steps import evaluate_round, round_paths

    seen = []
    monkeypatch.setattr(evaluate, "run", lambda config, console=None: seen.append(config))
    args = build_parser().parse_args(["--eval-max-tokens", "64"])
    for config, expected in (
        (load(LoopConfig, None, overrides=flag_overrides(args, LoopConfig)), 64),
        (LoopConfig(), evaluate.EvalConfig().max_tokens),
    ):
        paths = round_paths(tmp_path, "run", 2, several=True)
        evaluate_round(config, tmp_path / "student", paths, tmp_path / "test.jsonl", None, None)
        assert seen.pop().max_tokens == expected
    qwen = load(LoopConfig, ROOT / "bench" / "qwen_rare_work.toml")
    assert qwen.eval_max_tokens == 128


def test_a_setting_added_later_at_its_default_keeps_the_run_name():
    """Runs are named by their settings (a re-run reuses the stages it completed): a setting that a later
    version adds, left at its default, must not rename, and so retrain, every existing run."""

    class Later(LoopConfig):
        new_knob: int = 3

    assert Later().fingerprint() == LoopConfig().fingerprint()
    assert Later(quick=True).fingerprint() == LoopConfig(quick=True).fingerprint()
    assert Later(new_knob=4).fingerprint() != LoopConfig().fingerprint()


def test_a_top_up_runs_a_fixed_count_of_iterations_or_passes_over_its_lines():
    """`top_up_iters` N: N iterations whatever the lines; `top_up_passes` P: P passes over the lines (new and
    replayed), so that a rare new line is seen as often however many lines are replayed beside it. A batch
    never outnumbers the lines; setting both is refused, naming both."""
    from train.config import TrainConfig

    def top_up(config: LoopConfig, lines: int) -> TrainConfig:
        return TrainConfig(**config.train_settings(Path("m"), Path("d"), Path("a2"), Path("a1"), lines=lines))

    fixed = LoopConfig(top_up_iters=36, train={"batch_size": 4})
    assert [(t.iters, t.batch_size) for t in (top_up(fixed, 51), top_up(fixed, 3))] == [(36, 4), (36, 3)]
    passes = LoopConfig(top_up_passes=1.5, train={"batch_size": 4})
    assert [(t.iters, t.batch_size) for t in (top_up(passes, 51), top_up(passes, 3))] == [(20, 4), (2, 3)]
    assert top_up(passes, 51).lr_warmup == 2 and fixed.tops_up and passes.tops_up and not LoopConfig().tops_up
    with pytest.raises(ValidationError, match="top_up_iters and top_up_passes both set"):
        LoopConfig(top_up_iters=36, top_up_passes=1)
