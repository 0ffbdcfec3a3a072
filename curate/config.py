"""Curate's settings: a dataclass, optionally read from a TOML file (keys as the field names)."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from curate.markers import DEFAULT_MARKERS, check_patterns

RETRY_PROMPT = r"Fix the errors and try again\.?\s*$"  # pydantic-ai RetryPromptPart.model_response()
TOOL_ERROR = r"(?i)^\s*(?:error\b|traceback \(most recent call last\)|exception\b|\{\s*\x22error\x22\s*:)"


@dataclass
class Config:
    seed: int = 0
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # stage 3: also make a sample of each final answer (assistant text without tool calls)
    include_final_answers: bool = True
    # stage 4: named regexes stripped from user/system text; extra_markers are added to these
    markers: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MARKERS))
    extra_markers: dict[str, str] = field(default_factory=dict)
    # stage 5: "convert" text-about-tools calls that parse unambiguously (else reject), or "reject" all
    text_tool_calls: str = "convert"
    # stage 6: keep samples whose call failed (a retry prompt or a tool error followed); HTTP-error exchanges
    keep_failed: bool = False
    keep_http_errors: bool = False
    retry_prompt_pattern: str = RETRY_PROMPT
    tool_error_pattern: str = TOOL_ERROR
    # stage 7: trajectories whose samples are kept per near-duplicate cluster (0 = keep all, still split
    # together); a cluster is one tool set + normalised last user intent + the same call(s)
    near_duplicates_keep: int = 1
    # stage 8: also keep samples with the same tool set and user intent in one split
    split_by_intent: bool = False
    # stage 9 (with a model): drop round-trip failures; drop samples longer than max_seq_length tokens
    model: str | None = None
    max_seq_length: int = 2048
    drop_too_long: bool = True
    # memory: bytes of trace lines parsed per batch (pass 1: all lines; pass 2: trajectory heads)
    batch_bytes: int = 16 * 1024 * 1024
    # pass-1 processes (spawned; a script calling curate.run with workers > 1 needs the usual
    # `if __name__ == "__main__":` guard); 0 = one per core (up to 4) for inputs over 64 MB
    workers: int = 1
    progress: bool = True
    examples: int = 3  # duplicate clusters shown in the report

    def all_markers(self) -> dict[str, str]:
        return {**self.markers, **self.extra_markers}

    def check(self) -> Config:
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6:
            raise ValueError(f"split must be three fractions summing to 1, got {self.split}")
        if self.split[0] <= 0:
            raise ValueError("split: the train fraction must be > 0")
        if self.text_tool_calls not in ("convert", "reject"):
            raise ValueError(f"text_tool_calls must be 'convert' or 'reject', got {self.text_tool_calls!r}")
        check_patterns(self.all_markers())
        check_patterns(
            {"retry_prompt_pattern": self.retry_prompt_pattern, "tool_error_pattern": self.tool_error_pattern}
        )
        return self


def load_config(path: str | Path | None = None, **overrides) -> Config:
    """Config from a TOML file (unknown keys are an error naming the key), then `overrides` (None ignored)."""
    values = {}
    if path is not None:
        path = Path(path)
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: not valid TOML: {error}") from None
        names = {f.name for f in dataclasses.fields(Config)}
        if unknown := sorted(set(values) - names):
            raise ValueError(f"{path}: unknown setting {unknown[0]!r} (known: {', '.join(sorted(names))})")
        if "split" in values:
            values["split"] = tuple(values["split"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values).check()
