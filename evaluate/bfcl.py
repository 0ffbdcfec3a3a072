"""Berkeley Function Calling Leaderboard (BFCL) cases as turn samples, and BFCL's own AST checker, offline.

    samples = load_samples("simple_python:100,multiple:50,irrelevance:50")   # from the cached wheel
    checker = load_checker()                                                # bfcl_eval's ast_checker module
    ok, error_type = checker_verdict(checker, samples[0], [{"name": ..., "arguments": {...}}])

Source: the `bfcl-eval` wheel on PyPI, pinned with its sha256 (`models.fetch.DATASETS`, Apache-2.0), fetched
once by `python -m models fetch bfcl-eval` and read as a zip: its declared dependencies pin numpy 1.26 and
pull torch, so it is never installed. A directory with the wheel's layout (`bfcl_eval/data/...`) reads the
same way; the tests' fixture is one.

A case becomes an mlx-lm chat sample: the question's messages, the function docs as OpenAI tools (BFCL's own
type mapping, read from the wheel: `dict` → object, `float` → number, `tuple` → array, `any` → string, ...),
and a reference assistant turn. Each reference call carries every acceptable value BFCL lists for an argument
(`alternatives`, nested alternatives of dict arguments expanded) and the arguments it may omit (`may_omit`,
BFCL's `""`); `irrelevance` cases reference no call. Every sample carries `core.samples.BENCHMARK_KEY`: it is
for evaluation only, and curate and train refuse it.

Our scorer (`core.scoring`, with BFCL's string normaliser) and BFCL's checker agree on every right answer and
every kind of mistake tests/test_bfcl.py writes, except where we differ on purpose: `5.0` for an integer
argument is right for us (an integer in JSON Schema, and to pydantic), a type error for BFCL; so is an int in
a list of floats (BFCL accepts an int for a float at the top level only); parallel calls are paired by the best
matching, where BFCL's greedy pass can miss one; a malformed call block on `irrelevance` is a call for us
(over-calling), while BFCL's decoder never sees it and counts no call; and an empty answer there is
`empty_answer` for us (silence is not an answer), no call and so right for BFCL.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import json
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

from core.samples import BENCHMARK_KEY

DATASET = "bfcl-eval"
FETCH_COMMAND = f"python -m models fetch {DATASET}"
DATA = "bfcl_eval/data"
# Single-turn categories that BFCL scores with its AST checker (Python types), and the ones whose right answer
# is no call. Java/JavaScript cases type their values as strings in those languages; multi-turn and agentic
# categories need BFCL's executable environments.
CALL_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
    "live_parallel",
    "live_parallel_multiple",
)
NO_CALL_CATEGORIES = ("irrelevance", "live_irrelevance")
CATEGORIES = CALL_CATEGORIES + NO_CALL_CATEGORIES
DEFAULT_SPEC = "simple_python:100,multiple:50,irrelevance:50"
MAX_ALTERNATIVES = 4096


class BFCLError(ValueError):
    """BFCL data missing or a bad category spec; the message says what to do."""


def source_version() -> str:
    from models.fetch import DATASETS

    part = DATASETS[DATASET].wheel
    return f"{part.package}=={part.version}"


def default_source() -> Path:
    """The cached, hash-checked wheel; BFCLError naming the fetch command when it is not there."""
    from models.fetch import cached_data_wheel, data_wheel_path

    wheel = cached_data_wheel(DATASET)
    if wheel is None:
        path = data_wheel_path(DATASET)
        why = "its sha256 differs from the pinned one" if path.exists() else "BFCL data not fetched"
        raise BFCLError(f"{path}: {why}; run `{FETCH_COMMAND}`")
    return wheel


def read_member(source: Path, member: str) -> str:
    """A file of the wheel (zip) or of a directory with the wheel's layout."""
    source = Path(source)
    if source.is_dir():
        path = source / member
        if not path.is_file():
            raise BFCLError(f"{path}: no such file")
        return path.read_text(encoding="utf-8")
    with zipfile.ZipFile(source) as archive:
        try:
            return archive.read(member).decode("utf-8")
        except KeyError:
            raise BFCLError(f"{source}: has no member {member}") from None


def read_category(source: Path, category: str) -> list[tuple[dict, dict | None]]:
    """(case, possible answer or None) pairs of a category, matched by id, in file order."""
    text = read_member(source, f"{DATA}/BFCL_v4_{category}.json")
    cases = [json.loads(line) for line in text.splitlines() if line.strip()]
    if category in NO_CALL_CATEGORIES:
        return [(case, None) for case in cases]
    text = read_member(source, f"{DATA}/possible_answer/BFCL_v4_{category}.json")
    answers = {a["id"]: a for a in (json.loads(line) for line in text.splitlines() if line.strip())}
    missing = [case["id"] for case in cases if case["id"] not in answers]
    if missing:
        raise BFCLError(f"{source}: {category}: no possible answer for {missing[0]}")
    return [(case, answers[case["id"]]) for case in cases]


def parse_spec(spec: str | None) -> list[tuple[str, int, int | None]]:
    """Comma-separated CATEGORY (every case), CATEGORY:N (the first N) or CATEGORY:A-B (cases A to B-1, counted
    from 0: a slice held out from the first N) → [(category, start, stop)]; None → DEFAULT_SPEC."""
    parsed = []
    for item in filter(None, (part.strip() for part in (spec or DEFAULT_SPEC).split(","))):
        name, _, span = item.partition(":")
        if name not in CATEGORIES:
            raise BFCLError(f"--general {item}: unknown category {name!r} (known: {', '.join(CATEGORIES)})")
        first, dash, last = span.partition("-")
        numbers = [first, last] if dash else [first] if span else []
        if not all(n.isdigit() for n in numbers) or (dash and int(first) >= int(last)) or span == "0":
            raise BFCLError(f"--general {item}: expected CATEGORY, CATEGORY:N or CATEGORY:A-B with A < B")
        start, stop = (int(first), int(last)) if dash else (0, int(first) if span else None)
        parsed.append((name, start, stop))
    if not parsed:
        raise BFCLError("--general: no category given")
    return parsed


# ---------------------------------------------------------------------------------------------- conversion


def to_schema(node: dict, types: dict[str, str], *, describe_float: bool = True) -> dict:
    """A BFCL parameter doc as JSON Schema, converted as BFCL's `_cast_to_openai_type` does with `types` (its
    GORILLA_TO_OPENAPI; other types become "string"): key order kept, a float property gains `format: float`
    and BFCL's description note."""
    schema = dict(node)
    kind = node.get("type")
    schema["type"] = types.get(kind, "string") if isinstance(kind, str) else "string"
    if kind == "float" and describe_float:
        schema["format"] = "float"
        schema["description"] = schema.get("description", "") + " This is a float type value."
    if isinstance(node.get("properties"), dict):
        schema["properties"] = {k: to_schema(v, types) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        schema["items"] = to_schema(node["items"], types, describe_float=False)
    return schema


def to_tool(function: dict, types: dict[str, str]) -> dict:
    """A BFCL function doc as an OpenAI tool (the name kept as written, dots included)."""
    function = copy.deepcopy(function)
    parameters = function.get("parameters") or {}
    function["parameters"] = {
        **parameters,
        "type": "object",
        "properties": {k: to_schema(v, types) for k, v in (parameters.get("properties") or {}).items()},
    }
    return {"type": "function", "function": function}


_OMITTED = object()


def expand(candidate: Any) -> list[Any]:
    """One value of a BFCL answer list as the plain values it accepts. A dict there (or each dict of a list) maps
    its keys to lists of acceptable values, `""` meaning the key may be left out; BFCL's dict checker goes one
    level deep, so those values are plain."""
    if isinstance(candidate, dict):
        keys = list(candidate)
        options = [[_OMITTED if v == "" else v for v in _as_list(candidate[key])] for key in keys]
        return [
            {k: v for k, v in zip(keys, combo, strict=True) if v is not _OMITTED}
            for combo in _product(options)
        ]
    if isinstance(candidate, list) and candidate and all(isinstance(item, dict) for item in candidate):
        return [list(combo) for combo in _product([expand(item) for item in candidate])]
    return [candidate]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _product(options: list[list[Any]]) -> list[tuple]:
    if _count(options) > MAX_ALTERNATIVES:
        raise BFCLError(f"more than {MAX_ALTERNATIVES} acceptable values for one argument")
    return list(itertools.product(*options))


def _count(options: list[list[Any]]) -> int:
    total = 1
    for option in options:
        total *= len(option)
    return total


def _unique(values: list[Any]) -> list[Any]:
    seen, out = set(), []
    for value in values:
        key = json.dumps(value, sort_keys=True)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def reference_call(name: str, answer: dict[str, list], declared: set[str] | None = None) -> dict:
    """An OpenAI tool call for one BFCL ground-truth entry: the first acceptable value of each argument as
    `arguments`; every acceptable value in `alternatives` when there is not exactly one; `""` → `may_omit`.
    An argument the function does not `declared` has no acceptable value (BFCL's checker calls it unexpected)."""
    arguments, alternatives, may_omit = {}, {}, []
    for param, values in answer.items():
        accepted = _unique([plain for value in values if value != "" for plain in expand(value)])
        if declared is not None and param not in declared:
            accepted = []
        if "" in values:
            may_omit.append(param)
        if accepted:
            arguments[param] = accepted[0]
        if len(accepted) > 1 or (not accepted and "" not in values):
            alternatives[param] = accepted
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if alternatives:
        call["alternatives"] = alternatives
    if may_omit:
        call["may_omit"] = may_omit
    return call


def to_sample(case: dict, answer: dict | None, category: str, types: dict[str, str]) -> dict:
    """A BFCL case as a chat sample; the BFCL originals ride along (`bfcl`) for BFCL's own checker."""
    messages = copy.deepcopy(case["question"][0])
    truth = (answer or {}).get("ground_truth", [])
    declared = {f["name"]: set((f.get("parameters") or {}).get("properties") or {}) for f in case["function"]}
    calls = [
        reference_call(name, params, declared.get(name)) for entry in truth for name, params in entry.items()
    ]
    reference: dict[str, Any] = {"role": "assistant", "content": ""}
    if calls:
        reference = {"role": "assistant", "content": None, "tool_calls": calls}
    return {
        "messages": [*messages, reference],
        "tools": [to_tool(function, types) for function in case["function"]],
        BENCHMARK_KEY: source_version(),
        "where": f"{DATASET}:{case['id']}",
        "bfcl": {
            "id": case["id"],
            "category": category,
            "function": case["function"],
            "ground_truth": truth,
        },
    }


def load_samples(spec: str | None = None, source: Path | None = None) -> list[dict]:
    """The cases `spec` names (see parse_spec) as samples, in spec order."""
    categories = parse_spec(spec)
    source = default_source() if source is None else Path(source)
    types = import_from(source, "bfcl_eval.constants.type_mappings").GORILLA_TO_OPENAPI
    samples = []
    for category, start, stop in categories:
        pairs = read_category(source, category)
        samples += [to_sample(case, answer, category, types) for case, answer in pairs[start:stop]]
    return samples


# ---------------------------------------------------------------------------------------------- BFCL's checker


class _ModelConfig:
    underscore_to_dot = False  # the model is given (and calls) the function names as BFCL writes them


class _AnyModel(dict):
    def __missing__(self, key):
        return _ModelConfig()


def import_from(source: Path, module: str) -> types.ModuleType:
    """A module of bfcl_eval imported from the wheel (zip import) or a directory of its layout, with
    `bfcl_eval.constants.model_config` replaced by a stub: the real one imports every provider's SDK, and the
    checker only asks it whether a model's names turn dots into underscores."""
    for name in [n for n in sys.modules if n == "bfcl_eval" or n.startswith("bfcl_eval.")]:
        del sys.modules[name]  # loaded from another source
    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = _AnyModel()
    sys.modules[stub.__name__] = stub
    sys.path.insert(0, str(source))
    try:
        return importlib.import_module(module)
    finally:
        sys.path.remove(str(source))


def load_checker(source: Path | None = None) -> types.ModuleType:
    """BFCL's `bfcl_eval.eval_checker.ast_eval.ast_checker` module (default source: the cached wheel)."""
    source = default_source() if source is None else Path(source)
    return import_from(source, "bfcl_eval.eval_checker.ast_eval.ast_checker")


def checker_verdict(checker: types.ModuleType, sample: dict, tool_calls: list[dict]) -> tuple[bool, str]:
    """BFCL's verdict on a model's structured calls ({"name", "arguments"} each) for a converted sample:
    (valid, BFCL's error type). `irrelevance` follows BFCL's runner: valid when nothing decodes to a call (a
    call block the server dropped never reaches it, so a malformed call counts as no call there)."""
    bfcl = sample["bfcl"]
    decoded = [{c["name"]: copy.deepcopy(c["arguments"])} for c in tool_calls]
    if any(not isinstance(c["arguments"], dict) for c in tool_calls):
        decoded = None  # BFCL's decoder fails on arguments that are not a JSON object
    if bfcl["category"] in NO_CALL_CATEGORIES:
        return (True, "") if not decoded else (False, "irrelevance_error:decoder_success")
    if decoded is None:
        return False, "ast_decoder:decoder_failed"
    enums = sys.modules["bfcl_eval.constants.enums"]
    result = checker.ast_checker(
        copy.deepcopy(bfcl["function"]),
        decoded,
        copy.deepcopy(bfcl["ground_truth"]),
        enums.Language.PYTHON,
        bfcl["category"],
        "flywheel",
    )
    valid = bool(result["valid"])  # BFCL leaves "…:unclear" in error_type on valid answers too
    return valid, "" if valid else result.get("error_type", "")
