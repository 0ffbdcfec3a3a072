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
            raise ValueError(f"marker pattern {name!r} ({pattern!r}) is not a valid regex: {error}") from None


def load_markers_file(path: str | Path) -> dict[str, str]:
    """One regex per line (blank lines and lines starting with '#' ignored); named `file:LINE`."""
    path = Path(path)
    patterns = {}
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            patterns[f"{path.name}:{line_no}"] = line.strip()
    check_patterns(patterns)
    return patterns
