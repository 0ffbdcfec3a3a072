"""Agent task suites: templates with seeded parameters in a JSON data file, expanded into concrete tasks.

A suite file (see `suites/default.json`) holds a `seed`, named `pools` of values (a list, or
{"train": [...], "held_out": [...]} so held-out tasks draw new names), and `templates`, each with:
- `name`, `count` {"train": n, "held_out": m} (a template missing from train is one the student never saw),
- `params` in order, each one of {"pool": name} | {"choice": [...]} | {"int": [lo, hi]} | {"sum": [p, q]} |
  {"lines": p, "pool": name} (p random pool values, one a line), optionally with "distinct_from": [params],
- `prompt`, `files` {path: content} and `checks`, where `{param}` is replaced by its value (`{{` for `{`).
`"extends": "demo"` builds on a bundled suite: its pools and templates first (its tasks are drawn unchanged),
then this file's pools and templates (`suites/demo_mixed.json`).
`"demonstrated": {template: n}` shows the teacher only a template's first n train tasks (0: none); a deployed
student still meets it as fresh work in rounds >= 2 (`fresh_train_tasks`; `suites/demo_rare_work.json`).

Checks are declarative tests of the end state and of the episode's tool calls, all of which must pass:
  answer_value {"value"}              the final answer names `value` as a value (a number as a whole number,
                                      a word or file name as a whole word) and no competing candidate: no
                                      other number (for a number), no other file of the task (for a word)
  answer_contains / answer_not_contains {"value"}           substring of the final answer (case-sensitive)
  file_value {"path", "value"}        the file's text names `value` as a value, as answer_value
  file_equals {"path", "value"}       file text, ignoring trailing newlines
  file_contains / file_not_contains {"path", "value"}
  tool_result {"tool"?, "path"?, "contains"?}   evidence of tool use: a call that succeeded (no tool error,
                                      exit code 0) of `tool` (one name or several as "a|b"), naming `path` as
                                      its path or one of its arguments, whose result (a command's output)
                                      contains `contains`: "the file was read", "the script was run"
A task needs tools unless all its checks are answer checks (`say_word`): only real tool use can pass it.

    suite = load_suite("default")            # or a path to a .json file
    suite.train, suite.held_out              # lists of Task
    results = run_checks(task, workspace_dir, answer, calls)   # calls: the episode's ToolUse list
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SUITES_DIR = Path(__file__).parent / "suites"
SPLITS = ("train", "held_out")
CHECK_TYPES = {  # check type -> its required string fields
    "answer_value": ("value",),
    "answer_contains": ("value",),
    "answer_not_contains": ("value",),
    "file_value": ("path", "value"),
    "file_equals": ("path", "value"),
    "file_contains": ("path", "value"),
    "file_not_contains": ("path", "value"),
    "tool_result": (),
}
EVIDENCE_FIELDS = ("tool", "path", "contains")  # tool_result's optional fields, at least one given
PARAM_KINDS = ("pool", "choice", "int", "sum", "lines")
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(\w+)\}")
MAX_ATTEMPTS = 2000
# A number as a whole token: not part of a word, a file name or a longer number ("file2.txt", "5970", "1.5").
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?!\w|\.\d)")


class SuiteError(ValueError):
    """A suite file that cannot be expanded; the message names the file and field."""


@dataclass
class Task:
    id: str
    template: str
    prompt: str
    files: dict[str, str]
    checks: list[dict]
    split: str
    params: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def needs_tools(self) -> bool:
        """Whether only tool use can pass the task (some check looks at files or at tool calls)."""
        return any(not check["type"].startswith("answer_") for check in self.checks)


@dataclass
class ToolUse:
    """One tool call of an episode: its name and arguments, whether it ran without error (None when it was
    never answered), and what it returned (for run_command, the command's output)."""

    name: str
    arguments: Any
    ok: bool | None
    result: str = ""


@dataclass
class Suite:
    name: str
    train: list[Task]
    held_out: list[Task]
    path: Path | None = None
    # template -> how many of its train tasks the teacher demonstrates (the rest are met only after deployment)
    demonstrated: dict[str, int] = field(default_factory=dict)

    @property
    def tasks(self) -> list[Task]:
        return self.train + self.held_out

    def split(self, name: str) -> list[Task]:
        if name in ("all", "both"):
            return self.tasks
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use train, held_out or all")
        return getattr(self, name)

    def by_prompt(self) -> dict[str, Task]:
        return {task.prompt: task for task in self.tasks}

    def templates(self, split: str = "all") -> list[str]:
        return sorted({task.template for task in self.split(split)})

    def attempted_templates(self) -> list[str]:
        """The templates a deployed student meets as fresh work: those the teacher showed, and those it showed
        few or none of (`demonstrated`)."""
        return sorted(set(self.templates("train")) | set(self.demonstrated))


@dataclass
class CheckResult:
    check: dict
    passed: bool
    detail: str


def substitute(text: str, params: dict[str, str], where: str) -> str:
    def replace(match: re.Match) -> str:
        if match.group(0) == "{{":
            return "{"
        if match.group(0) == "}}":
            return "}"
        name = match.group(1)
        if name not in params:
            raise SuiteError(f"{where}: unknown parameter {{{name}}}")
        return params[name]

    return PLACEHOLDER.sub(replace, text)


def pool_values(pools: dict, name: str, split: str, where: str) -> list[str]:
    if name not in pools:
        raise SuiteError(f"{where}: unknown pool {name!r}")
    pool = pools[name]
    if isinstance(pool, dict):
        if split not in pool:
            raise SuiteError(f"{where}: pool {name!r} has no {split!r} list")
        pool = pool[split]
    if not isinstance(pool, list) or not pool:
        raise SuiteError(f"{where}: pool {name!r} must be a non-empty list")
    return [str(value) for value in pool]


def draw_params(specs: dict, pools: dict, split: str, rng: random.Random, where: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, spec in specs.items():
        here = f"{where}.params.{name}"
        if not isinstance(spec, dict):
            raise SuiteError(f"{here}: must be an object")
        kinds = [kind for kind in PARAM_KINDS if kind in spec and not (kind == "pool" and "lines" in spec)]
        if len(kinds) != 1:
            raise SuiteError(f"{here}: needs exactly one of {', '.join(PARAM_KINDS)}")
        kind = kinds[0]
        avoid = set()
        for other in spec.get("distinct_from", []):
            if other not in params:
                raise SuiteError(f"{here}.distinct_from: {other!r} is not an earlier parameter")
            avoid.add(params[other])
        if kind == "sum":
            names = spec["sum"]
            try:
                params[name] = str(sum(int(params[n]) for n in names))
            except (KeyError, ValueError, TypeError) as error:
                raise SuiteError(f"{here}.sum: needs earlier integer parameters ({error})") from error
            continue
        if kind == "lines":
            count_name = spec["lines"]
            if count_name not in params or not params[count_name].isdigit():
                raise SuiteError(f"{here}.lines: {count_name!r} must be an earlier integer parameter")
            values = pool_values(pools, spec.get("pool", ""), split, f"{here}.pool")
            params[name] = "".join(rng.choice(values) + "\n" for _ in range(int(params[count_name])))
            continue
        if kind == "int":
            bounds = spec["int"]
            if not (
                isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int) for b in bounds)
            ):
                raise SuiteError(f"{here}.int: must be [low, high] integers")
            candidates = None
        elif kind == "pool":
            candidates = pool_values(pools, spec["pool"], split, f"{here}.pool")
        else:
            candidates = [str(value) for value in spec["choice"]]
        for _ in range(MAX_ATTEMPTS):
            value = str(rng.randint(*bounds)) if candidates is None else rng.choice(candidates)
            if value not in avoid:
                break
        else:
            raise SuiteError(f"{here}: no value distinct from {sorted(avoid)}")
        params[name] = value
    return params


def expand_template(
    template: dict, pools: dict, split: str, count: int, rng, where: str, seen: set, *, exact: bool = True
) -> list:
    """`count` tasks with prompts not in `seen`; fewer only when not `exact` and the pools run out."""
    for key in ("name", "prompt", "checks"):
        if key not in template:
            raise SuiteError(f"{where}.{key}: missing")
    checks = template["checks"]
    if not isinstance(checks, list) or not checks:
        raise SuiteError(f"{where}.checks: must be a non-empty list")
    for i, check in enumerate(checks):
        kind = check.get("type") if isinstance(check, dict) else None
        if kind not in CHECK_TYPES:
            raise SuiteError(f"{where}.checks[{i}].type: {kind!r} is not one of {', '.join(CHECK_TYPES)}")
        for key in CHECK_TYPES[kind]:
            if not isinstance(check.get(key), str):
                raise SuiteError(f"{where}.checks[{i}].{key}: missing or not a string")
        if kind == "tool_result" and not any(isinstance(check.get(k), str) for k in EVIDENCE_FIELDS):
            raise SuiteError(f"{where}.checks[{i}]: tool_result needs one of {', '.join(EVIDENCE_FIELDS)}")
    tasks = []
    for _ in range(MAX_ATTEMPTS):
        if len(tasks) == count:
            break
        params = draw_params(template.get("params", {}), pools, split, rng, where)
        prompt = substitute(template["prompt"], params, f"{where}.prompt")
        if prompt in seen:
            continue
        seen.add(prompt)
        files = {
            substitute(path, params, f"{where}.files"): substitute(
                content, params, f"{where}.files[{path!r}]"
            )
            for path, content in template.get("files", {}).items()
        }
        task_checks = [
            {key: substitute(value, params, f"{where}.checks[{i}].{key}") for key, value in check.items()}
            for i, check in enumerate(checks)
        ]
        task_id = f"{template['name']}-{split}-{len(tasks):02d}"
        tasks.append(Task(task_id, template["name"], prompt, files, task_checks, split, params))
    else:
        if exact:
            raise SuiteError(f"{where}: could not draw {count} distinct {split} prompts; widen its pools")
    return tasks


def build_suite(data: dict, name: str, path: Path | None = None) -> Suite:
    source = str(path) if path else name
    if not isinstance(data, dict) or not isinstance(data.get("templates"), list):
        raise SuiteError(f"{source}: templates: missing or not a list")
    rng = random.Random(data.get("seed", 0))
    pools = data.get("pools", {})
    split_tasks: dict[str, list[Task]] = {split: [] for split in SPLITS}
    seen: set[str] = set()
    names = set()
    demonstrated = read_demonstrated(data, source)
    for index, template in enumerate(data["templates"]):
        where = f"{source}: templates[{index}]"
        if not isinstance(template, dict):
            raise SuiteError(f"{where}: must be an object")
        if template.get("name") in names:
            raise SuiteError(f"{where}.name: duplicate template {template.get('name')!r}")
        names.add(template.get("name"))
        counts = template.get("count", {})
        for split in counts:
            if split not in SPLITS:
                raise SuiteError(f"{where}.count.{split}: unknown split (use train, held_out)")
        for split in SPLITS:
            count = counts.get(split, 0)
            if not isinstance(count, int) or count < 0:
                raise SuiteError(f"{where}.count.{split}: must be a non-negative integer")
            drawn = expand_template(template, pools, split, count, rng, where, seen)
            # all are drawn, so that a limit changes no other task; the teacher is shown the first n
            shown = demonstrated.get(template.get("name"), count) if split == "train" else count
            split_tasks[split] += drawn[:shown]
    return Suite(data.get("name", name), split_tasks["train"], split_tasks["held_out"], path, demonstrated)


def read_demonstrated(data: dict, source: str) -> dict[str, int]:
    demonstrated = data.get("demonstrated", {})
    if not isinstance(demonstrated, dict):
        raise SuiteError(f"{source}: demonstrated: must be an object of template: count")
    names = {template.get("name") for template in data["templates"] if isinstance(template, dict)}
    for name, count in demonstrated.items():
        if name not in names:
            raise SuiteError(f"{source}: demonstrated.{name}: not a template of this suite")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise SuiteError(f"{source}: demonstrated.{name}: must be a non-negative integer")
    return demonstrated


def round_robin(tasks: list[Task], n: int | None = None) -> list[Task]:
    """The first `n` tasks (all with None) taking one of each template in turn, so that a limited evaluation
    still meets every template instead of the first few."""
    groups: dict[str, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.template, []).append(task)
    picked = []
    for rank in range(max((len(g) for g in groups.values()), default=0)):
        picked += [group[rank] for group in groups.values() if rank < len(group)]
    return picked[:n] if n else picked


def fresh_train_tasks(suite: Suite, per_template: int | dict[str, int], draw: int) -> list[Task]:
    """`per_template` new tasks for each template the suite trains on or limits in `demonstrated`, drawn from
    its *train* pools (never the held-out pools, never a held-out-only template) with prompts no task of the
    suite has: the new work a deployed student meets. `draw` picks the draw (the same draw gives the same tasks); ids are
    `<template>-fresh<draw>-NN`. Given counts by template, only those templates, each with as many new prompts
    as its pools still hold up to its count."""
    if suite.path is None:
        raise SuiteError(f"suite {suite.name!r}: fresh tasks need its file")
    data = read_suite_data(suite.path)
    rng = random.Random(f"{data.get('seed', 0)}:fresh:{draw}")
    seen = {task.prompt for task in suite.tasks}
    trained = set(suite.attempted_templates())
    tasks = []
    for index, template in enumerate(data["templates"]):
        name = template.get("name")
        if name not in trained:
            continue
        where = f"{suite.path}: templates[{index}]"
        count = per_template.get(name, 0) if isinstance(per_template, dict) else per_template
        exact = not isinstance(per_template, dict)
        drawn = expand_template(template, data.get("pools", {}), "train", count, rng, where, seen, exact=exact)
        tasks += [
            dataclasses.replace(task, id=f"{task.template}-fresh{draw}-{i:02d}")
            for i, task in enumerate(drawn)
        ]
    return tasks


def available_suites() -> list[str]:
    return sorted(path.stem for path in SUITES_DIR.glob("*.json"))


def load_suite(name_or_path: str | Path = "default") -> Suite:
    """A suite by name (a file in agent/suites/) or by path to a JSON suite file."""
    path = Path(name_or_path)
    if not path.exists():
        path = SUITES_DIR / f"{name_or_path}.json"
        if not path.exists():
            raise SuiteError(
                f"suite {str(name_or_path)!r} not found: not a file, and not one of {', '.join(available_suites())}"
            )
    return build_suite(read_suite_data(path), path.stem, path)


def read_suite_data(path: Path, depth: int = 0) -> dict:
    """A suite file's data, with `"extends": NAME` resolved: the named suite's pools and templates come first
    (so its tasks are drawn exactly as in that suite), this file's pools are added and its templates appended."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SuiteError(f"{path}:{error.lineno}: invalid JSON ({error.msg})") from error
    base_name = data.get("extends") if isinstance(data, dict) else None
    if base_name is None:
        return data
    base_path = SUITES_DIR / f"{base_name}.json"
    if not isinstance(base_name, str) or not base_path.is_file():
        raise SuiteError(f"{path}: extends: {base_name!r} is not one of {', '.join(available_suites())}")
    if depth > 4:
        raise SuiteError(f"{path}: extends: {base_name!r} goes round in a circle (or more than 4 levels deep)")
    base = read_suite_data(base_path, depth + 1)
    return {
        **base,
        **{k: v for k, v in data.items() if k not in ("extends", "pools", "templates")},
        "pools": {**base.get("pools", {}), **data.get("pools", {})},
        "templates": base.get("templates", []) + data.get("templates", []),
    }


def read_workspace_file(root: Path, path: str) -> str | None:
    root = Path(root).resolve()
    target = (root / path).resolve()
    if not target.is_relative_to(root) or not target.is_file():
        return None
    return target.read_bytes().decode("utf-8", errors="replace")


def as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def whole_token(value: str) -> re.Pattern:
    """`value` standing alone: not inside a longer word, number, file name or path."""
    return re.compile(rf"(?<![\w./-]){re.escape(value)}(?![\w/-]|\.\w)")


def match_value(text: str, value: str, rivals: Iterable[str] = ()) -> tuple[bool, str]:
    """Does `text` name `value` as a value and nothing that competes with it? A number must stand as a whole
    number and be the only number; a word or name must stand as a whole word, with none of `rivals`."""
    number = as_number(value)
    if number is not None:
        numbers = NUMBER.findall(text)
        if not any(as_number(n) == number for n in numbers):
            return False, f"no {value} as a whole number"
        others = sorted({n for n in numbers if as_number(n) != number})
        if others:
            return False, f"{value} with competing numbers {', '.join(others[:5])}"
        return True, f"{value} and no other number"
    if not whole_token(value).search(text):
        return False, f"no {value!r} as a whole word"
    others = sorted({r for r in rivals if r != value and whole_token(r).search(text)})
    if others:
        return False, f"{value!r} with competing candidates {', '.join(others[:5])}"
    return True, f"{value!r} and no competing candidate"


def names_path(arguments: Any, path: str) -> bool:
    """Do a call's arguments name `path` (its `path`, or a whole token of one of its `args`)?"""
    if not isinstance(arguments, dict):
        return False
    wanted = path.removeprefix("./")
    if isinstance(arguments.get("path"), str) and arguments["path"].removeprefix("./") == wanted:
        return True
    args = arguments.get("args") if isinstance(arguments.get("args"), list) else []
    return any(isinstance(arg, str) and whole_token(wanted).search(arg) for arg in args)


def evidence(check: dict, calls: list[ToolUse]) -> CheckResult:
    """tool_result: some call that succeeded matches the check's tool, path and result text."""
    tools = check["tool"].split("|") if check.get("tool") else None
    wanted = " ".join(f"{k}={check[k]!r}" for k in EVIDENCE_FIELDS if check.get(k))
    for call in calls:
        if (
            call.ok
            and (tools is None or call.name in tools)
            and (not check.get("path") or names_path(call.arguments, check["path"]))
            and (not check.get("contains") or check["contains"] in call.result)
        ):
            return CheckResult(check, True, f"a successful {call.name} call matches {wanted}")
    made = ", ".join(f"{c.name}{'' if c.ok else ' (failed)'}" for c in calls) or "no tool call"
    return CheckResult(check, False, f"no successful call matches {wanted} (made: {made})")


def run_check(
    check: dict, root: Path, answer: str | None, calls: list[ToolUse] = (), rivals: Iterable[str] = ()
) -> CheckResult:
    kind = check["type"]
    if kind == "tool_result":
        return evidence(check, list(calls))
    value = check["value"]
    if kind == "answer_value":
        ok, detail = match_value(answer or "", value, rivals)
        return CheckResult(check, ok, f"answer: {detail}")
    if kind.startswith("answer_"):
        text = answer or ""
        found = value in text
        ok = found if kind == "answer_contains" else not found
        return CheckResult(check, ok, f"answer {'contains' if found else 'lacks'} {value!r}")
    content = read_workspace_file(root, check["path"])
    if content is None:
        return CheckResult(check, kind == "file_not_contains", f"{check['path']} does not exist")
    if kind == "file_value":
        ok, detail = match_value(content, value, rivals)
        return CheckResult(check, ok, f"{check['path']}: {detail}")
    if kind == "file_equals":
        ok = content.rstrip("\n") == value.rstrip("\n")
        return CheckResult(check, ok, f"{check['path']} {'equals' if ok else 'differs from'} {value!r}")
    found = value in content
    ok = found if kind == "file_contains" else not found
    return CheckResult(check, ok, f"{check['path']} {'contains' if found else 'lacks'} {value!r}")


def run_checks(
    task: Task, root: str | Path, answer: str | None, calls: list[ToolUse] | None = None
) -> list[CheckResult]:
    """Every check of `task` against the workspace directory `root`, the agent's final answer and the tool
    calls it made (`calls`; without them no tool_result check passes). The task's own files are the
    candidates that compete with a word an answer must name."""
    rivals = list(task.files)
    return [run_check(check, Path(root), answer, calls or [], rivals) for check in task.checks]


def task_passed(task: Task, root: str | Path, answer: str | None, calls: list[ToolUse] | None = None) -> bool:
    return all(result.passed for result in run_checks(task, root, answer, calls))


if __name__ == "__main__":
    import sys

    suite = load_suite(sys.argv[1] if len(sys.argv) > 1 else "default")
    print(json.dumps({"name": suite.name, "tasks": [task.to_dict() for task in suite.tasks]}, indent=1))
