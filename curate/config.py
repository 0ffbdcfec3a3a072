"""Curate's settings: a `core.config.Settings` class read from curate.toml (keys as the field names) and
overridden by flags; the resolved settings are saved beside the output as curate.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationInfo, field_validator

from core.config import ConfigError, Settings, load, save
from curate.markers import DEFAULT_MARKERS, check_patterns

RETRY_PROMPT = r"Fix the errors and try again\.?\s*$"  # pydantic-ai RetryPromptPart.model_response()
TOOL_ERROR = r"(?i)^\s*(?:error\b|traceback \(most recent call last\)|exception\b|\{\s*\x22error\x22\s*:)"
SAVED_AS = "curate.toml"


class Config(Settings):
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # stage 1b: learn only from the traffic of one policy (core.trace.policy_name), and only from sessions
    # whose recorded outcome (core.outcomes, beside the traces) is this one
    answered_by: str | None = None
    require_outcome: Literal["success", "failure"] | None = None
    # stage 3: also make a sample of each final answer (assistant text without tool calls)
    include_final_answers: bool = True
    # stage 4: named regexes stripped from user/system text; extra_markers are added to these
    markers: dict[str, str] = dict(DEFAULT_MARKERS)
    extra_markers: dict[str, str] = {}
    # stage 5: "convert" text-about-tools calls that parse unambiguously (else reject), or "reject" all
    text_tool_calls: Literal["convert", "reject"] = "convert"
    # stage 6: keep samples whose call failed (a retry prompt or a tool error followed); HTTP-error exchanges
    keep_failed: bool = False
    keep_http_errors: bool = False
    retry_prompt_pattern: str = RETRY_PROMPT
    tool_error_pattern: str = TOOL_ERROR
    # stage 7: trajectories whose samples are kept per near-duplicate cluster (0 = keep all, still split
    # together); a cluster is one tool set + normalised last user intent + the same call(s)
    near_duplicates_keep: int = 1
    # stage 8: also keep samples with the same tool set and last user intent in one split (trajectories
    # with the same task, first user message + tool set, always share one)
    split_by_intent: bool = False
    # stage 9 (with a model): drop round-trip failures; drop samples longer than max_seq_length tokens
    model: Path | None = None
    max_seq_length: int = 2048
    drop_too_long: bool = True
    # train and valid: one sample per trajectory supervising the turns kept of it (core.samples' session
    # sample); false: one sample per turn, as plain `mlx_lm lora` trains. The test split is always per-turn.
    sessions: bool = True
    # memory: bytes of trace lines parsed per batch (pass 1: all lines; pass 2: trajectory heads)
    batch_bytes: int = 16 * 1024 * 1024
    # pass-1 processes (spawned; a script calling curate.run with workers > 1 needs the usual
    # `if __name__ == "__main__":` guard); 0 = one per core (up to 4) for inputs over 64 MB
    workers: int = 1
    progress: bool = True
    examples: int = 3  # duplicate clusters shown in the report

    @field_validator("split")
    @classmethod
    def _fractions(cls, split: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in split) or abs(sum(split) - 1) > 1e-6:
            raise ValueError(f"split must be three fractions summing to 1, got {split}")
        if split[0] <= 0:
            raise ValueError("split: the train fraction must be > 0")
        return split

    @field_validator("model")
    @classmethod
    def _model_directory(cls, model: Path | None) -> Path | None:
        # a path that is not a directory would make mlx-lm try the model hub
        if model is not None and not model.expanduser().is_dir():
            raise ValueError(f"{model} is not a model directory")
        return model.expanduser() if model is not None else None

    @field_validator("markers", "extra_markers")
    @classmethod
    def _markers_compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        check_patterns(patterns)
        return patterns

    @field_validator("retry_prompt_pattern", "tool_error_pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str, info: ValidationInfo) -> str:
        check_patterns({info.field_name: pattern})
        return pattern

    def all_markers(self) -> dict[str, str]:
        return {**self.markers, **self.extra_markers}

    def check(self) -> Config:
        """Validated again (a dict field changed in place is not checked on assignment)."""
        return type(self).model_validate(self.model_dump())


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """Config from a TOML file, then `overrides` (flags; None means "not given"). A key the class does not
    know, or a value of the wrong type, is a ConfigError naming the file (or flag) and the key."""
    try:
        return load(Config, path, overrides={k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        # curate's messages have always called its keys "settings"; scripts match on that word
        raise ConfigError(str(error).replace("unknown key", "unknown setting", 1)) from None


def save_config(config: Config, out_dir: Path) -> Path:
    """The resolved settings beside the output: `python -m curate ... --config OUT/curate.toml` repeats the run."""
    return save(
        config, Path(out_dir) / SAVED_AS, header="curate settings of this run (python -m curate --config)"
    )
