"""Synthetic variation markers ("(Example 12)", "request 234", ...) that generated data leaves in prompts.

A model trained on them learns the markers, not the task. Patterns are Rust-regex syntax (Polars runs
them: no look-around, no back-references) and are matched case-insensitively against user and system text.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

_WORDS = r"(?:example|request|sample|variation)"

DEFAULT_MARKERS: dict[str, str] = {
    # "(Example 12)", "(request 234)", "[Sample #3]"
    "parenthesised": rf"(?i)\s*[(\[]\s*{_WORDS}\s*(?:number|no\.?|#)?\s*\d+\s*[)\]]",
    # "This is example number 12."
    "this_is_example": rf"(?i)\s*\bthis is (?:the )?{_WORDS}\s*(?:number|no\.?|#)?\s*\d+\s*[.!]?",
    # "Sample #3:" / "Variation 4 -" at the start of the text
    "leading_label": rf"(?i)^\s*{_WORDS}\s*(?:number|no\.?|#)?\s*\d+\s*[:.\-–—)]\s*",
    # "... example 12" / "..., request 12." at the end of the text
    "trailing_label": rf"(?i)[\s,;:\-–—]*\b{_WORDS}\s*(?:number|no\.?|#)?\s*\d+\s*[.!]?\s*$",
    # "Sample #3" / "variation 4" anywhere else
    "inline_label": r"(?i)\s*\b(?:sample\s*#\s*\d+|variation\s*#?\s*\d+)\b",
}


def check_patterns(patterns: dict[str, str]) -> None:
    """Raise ValueError naming the first pattern Polars' regex engine cannot compile."""
    for name, pattern in patterns.items():
        try:
            pl.select(pl.lit("x").str.contains(pattern)).item()
        except Exception as error:  # polars raises ComputeError with the regex error text
            reason = _regex_error(str(error))
            raise ValueError(
                f"marker pattern {name!r} ({pattern!r}) is not a valid regex: {reason}"
            ) from None


def _regex_error(text: str) -> str:
    """The regex crate's own one-line verdict ("error: unclosed group") out of Polars' multi-line message."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next(
        (line[len("error: ") :] for line in lines if line.startswith("error: ")), lines[0] if lines else text
    )


def load_markers_file(path: str | Path) -> dict[str, str]:
    """One regex per line (blank lines and lines starting with '#' ignored); named `file:LINE`."""
    path = Path(path)
    patterns = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            patterns[f"{path.name}:{line_no}"] = line.strip()
    check_patterns(patterns)
    return patterns


def strip_markers(messages: pl.DataFrame, patterns: dict[str, str]) -> tuple[pl.DataFrame, dict[str, int]]:
    """Stage 4: remove marker patterns from user/system content (each pattern in turn, counting its
    matches). Adds `emptied` (the text was non-empty and nothing but markers) and `marker_changed`."""
    target = pl.col("role").is_in(["user", "system"])
    frame = messages.lazy().with_columns(_text=pl.when(target).then(pl.col("content")).otherwise(pl.lit("")))
    matches = [f"_m{index}" for index in range(len(patterns))]
    for column, pattern in zip(matches, patterns.values(), strict=True):
        frame = frame.with_columns(pl.col("_text").str.count_matches(pattern).alias(column)).with_columns(
            pl.col("_text").str.replace_all(pattern, "")
        )
    changed = target & (pl.sum_horizontal(matches) > 0 if matches else pl.lit(False))
    cleaned = pl.col("_text").str.replace_all(r"[ \t]{2,}", " ").str.strip_chars()
    frame = (
        frame.with_columns(marker_changed=changed)
        .with_columns(
            emptied=pl.col("marker_changed") & (cleaned == "") & (pl.col("content").str.strip_chars() != ""),
            content=pl.when(pl.col("marker_changed")).then(cleaned).otherwise(pl.col("content")),
        )
        .collect()
    )
    counts = frame.select(pl.col(matches).sum()).row(0) if matches else ()
    counted = {name: int(count or 0) for name, count in zip(patterns, counts, strict=True)}
    return frame.drop("_text", *matches), counted
