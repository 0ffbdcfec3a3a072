"""The baseline's scores taken from an earlier report, where the same weights were the candidate.

    python -m evaluate --adapter adapters/new --baseline-adapter adapters/old --baseline-report reports/old.json

The flywheel compares each new adapter with the one in use on the same held-out turns and tasks every round;
the adapter in use was already scored on exactly those cases when it was the candidate, and greedy decoding
gives it the same verdicts again (docs/BENCHMARKS.md), so its scores are read back instead of regenerated.
Reuse is refused, with the reason, unless the earlier report's candidate has the baseline's weights and
adapter (sha256, `evaluate.served.identity`), was scored with the same settings (SAME_SETTINGS) and on the same
cases: every held-out turn's prompt and reference, every held-out task's id, in order; and unless its verdicts
are what its recorded outputs earn: every turn's output parsed and scored again now (an edited verdict, or one
a changed scorer would not give, is refused), every episode's success what its checks and error say, and each
summary what its cases add up to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evaluate.config import EvalConfig, EvalError

# the settings that decide which cases are scored and how a verdict is reached (a level evaluated now must have
# been evaluated then; one left out now may have been)
SAME_SETTINGS = (
    "limit",
    "tasks",
    "max_tokens",
    "temperature",
    "normalize_strings",
    "seed",
    "batch_size",
    "agent_max_steps",
)
SAME_WEIGHTS = ("weights_sha256", "adapter_sha256")


def read_report(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EvalError(f"{path}: --baseline-report not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvalError(f"{path}: --baseline-report is not valid JSON ({error})") from None
    if not isinstance(report, dict) or not isinstance((report.get("identity") or {}).get("candidate"), dict):
        raise EvalError(f"{path}: not an evaluation report (no identity.candidate)")
    return report


def reused_baseline(config: EvalConfig, baseline_identity: dict) -> dict[str, Any]:
    """{"report", "turns", "agent", "identity"}: the earlier report's candidate, checked to be this baseline
    scored the same way (EvalError naming the report and what differs)."""
    path = Path(config.baseline_report)
    report = read_report(path)
    theirs = report["identity"]["candidate"]
    for key in SAME_WEIGHTS:
        if theirs.get(key) != baseline_identity.get(key):
            raise EvalError(
                f"{path}: its candidate is not this baseline ({key} {str(theirs.get(key))[:12]}, "
                f"baseline {str(baseline_identity.get(key))[:12]}); drop --baseline-report to score it"
            )
    before, now = report.get("config") or {}, config.to_dict()
    differ = [key for key in SAME_SETTINGS if before.get(key) != now.get(key)]
    if differ:
        changes = ", ".join(f"{key} {before.get(key)!r} then, {now.get(key)!r} now" for key in differ)
        raise EvalError(f"{path}: scored with other settings ({changes}); drop --baseline-report to score it")
    blocks = {level: (report.get(level) or {}).get("candidate") for level in ("turns", "agent")}
    for level, block in blocks.items():
        if now[level] and not block:
            raise EvalError(f"{path}: has no {level}-level scores of its candidate")
    reused = {"report": str(path), **blocks, "identity": theirs}
    if now["agent"]:
        check_episode_verdicts(reused)
    return reused


def check_same_turns(reused: dict, samples: list[dict]) -> None:
    """The reused turn cases are these samples: each prompt and reference, in order."""
    from core.turns import split_sample

    cases = reused["turns"]["cases"]
    if len(cases) != len(samples):
        raise EvalError(
            f"{reused['report']}: scored {len(cases)} held-out turns, this evaluation {len(samples)}"
        )
    for case, sample in zip(cases, samples, strict=True):
        prompt, _, reference = split_sample(sample, sample.get("where"))
        if json.loads(json.dumps([prompt, reference])) != [case["messages"], case["reference"]]:
            raise EvalError(
                f"{reused['report']}: held-out turn {case['index']} differs from {sample.get('where')}"
            )


def check_same_tasks(reused: dict, tasks: list) -> None:
    """The reused episodes are of these tasks, in order."""
    done = [episode["task_id"] for episode in reused["agent"]["episodes"]]
    wanted = [task.id for task in tasks]
    if done != wanted:
        scored, now = sorted(set(done) - set(wanted)), sorted(set(wanted) - set(done))
        raise EvalError(
            f"{reused['report']}: held-out tasks differ ({len(done)} scored, {len(wanted)} now; "
            f"scored then only: {scored[:3]}, now only: {now[:3]})"
        )


def check_turn_verdicts(reused: dict, samples: list[dict], model: str, normalize) -> None:
    """Each reused turn's recorded output, parsed as its path parsed it (the model's own tool parser in-process,
    the returned message from a server) and scored now, earns the verdict the report gives it, and the rates
    are what those verdicts add up to. Call after `check_same_turns`."""
    from core.toolcalls import load_tokenizer, parse_completion
    from core.turns import compute_rates, score_case, split_sample, turn_from_message

    block = reused["turns"]
    path = (block.get("settings") or {}).get("path")
    if path not in ("in-process", "server"):
        raise EvalError(
            f"{reused['report']}: its turns do not say how they were generated (settings.path {path!r}), so "
            "their outputs cannot be scored again; drop --baseline-report to score it"
        )
    tokenizer = load_tokenizer(model) if path == "in-process" else None
    scored = []
    for case, sample in zip(block["cases"], samples, strict=True):
        _, tools, _ = split_sample(sample, sample.get("where"))
        if tokenizer is not None:
            turn = parse_completion(tokenizer, case["raw"], tools)
        else:
            try:  # {"finish_reason", "message"}: what the server returned (core.turns.evaluate_turns_server)
                returned = json.loads(case["raw"])
                turn = turn_from_message(returned["message"], returned["finish_reason"])
            except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
                raise EvalError(
                    f"{reused['report']}: held-out turn {case['index']}'s output is not the message a server "
                    "returned; drop --baseline-report to score it"
                ) from None
        again = score_case(
            int(case["index"]), sample, case["raw"], turn, normalize, case.get("finish_reason")
        )
        if again.verdict.code != case["code"]:
            raise EvalError(
                f"{reused['report']}: held-out turn {case['index']} is recorded as {case['code']!r}, but its "
                f"output scores {again.verdict.code!r} now; drop --baseline-report to score it"
            )
        scored.append(again)
    if compute_rates(scored) != block.get("rates"):
        raise EvalError(
            f"{reused['report']}: its turn-level rates are not what its {len(scored)} verdicts add up to; "
            "drop --baseline-report to score it"
        )


def check_episode_verdicts(reused: dict) -> None:
    """Each reused episode succeeded exactly when no check failed and no error ended it, and the summary is
    what the episodes add up to."""
    from agent.episodes import summarize

    block = reused["agent"]
    for episode in block["episodes"]:
        earned = episode.get("error") is None and not episode.get("failed_checks")
        if bool(episode.get("success")) != earned:
            raise EvalError(
                f"{reused['report']}: held-out task {episode.get('task_id')} is recorded as "
                f"{'solved' if episode.get('success') else 'failed'}, but its checks and error say otherwise; "
                "drop --baseline-report to score it"
            )
    if summarize(block["episodes"]) != block.get("summary"):
        raise EvalError(
            f"{reused['report']}: its agent-level summary is not what its {len(block['episodes'])} episodes "
            "add up to; drop --baseline-report to score it"
        )
