"""Replace secrets in recorded text by `[REDACTED:<kind>]`, counting them per kind.

Headers are never stored (the proxy keeps only X-Flywheel-Session), so Authorization, api-key,
x-api-key and cookie headers never reach a trace. What remains are secrets the agent itself read or
wrote: API keys in files, `.env` lines, PEM private keys, tokens in shell output or in tool-call
arguments. Every string of a recorded request and response goes through `redact_text` (`redact_tree`).

Rules are deliberately specific, so ordinary code and paths come through unchanged:
- provider key formats (sk-..., sk-ant-..., ghp_/github_pat_..., AKIA..., xox?-..., AIza..., JWTs),
  `Bearer <token>`, `Authorization: Basic ...`, passwords in URLs, PEM private keys;
- secret-named assignments (a name ending in PASSWORD, SECRET, TOKEN, API_KEY, ...): `.env`/shell lines
  `NAME=value`, UPPER_CASE YAML `NAME: value`, and quoted literals of 8+ characters anywhere
  (`password = "..."`, `"api_key": "..."`); not `max_tokens=512`, `api_key=os.environ[...]`,
  `TOKEN_URL=...`, `password: str`, `api_key="x"`, `TOKEN=${TOKEN}`;
- api-key / x-api-key / cookie header lines.
Known blind spots: a bare random string with no recognisable format and no secret-ish name next to it.

Speed: each format rule is a regex that starts with a literal (so `re` scans for it at memory speed);
secret-ish names are found with `str.find` on a lower-cased copy, and checked only where they are
followed by `=` or `:`. Results are cached by text, because an agent resends its whole history each turn.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict
from typing import Any


def _rule(kind: str, gate: tuple[str, ...], pattern: str, *, keep_prefix: bool = False, flags: int = 0):
    """(kind, gate, pattern, replacement): the regex runs only when one of the gate strings occurs; the match
    becomes [REDACTED:kind], after its first group (`Bearer `, `://user:`) when `keep_prefix`."""
    replacement = (r"\g<1>" if keep_prefix else "") + f"[REDACTED:{kind}]"
    return kind, gate, re.compile(pattern, flags), replacement


# Specific formats come first, so a key inside an assignment is counted by its format.
_RULES: list[tuple[str, tuple[str, ...], re.Pattern[str], str]] = [
    _rule(
        "private_key",
        ("PRIVATE KEY",),
        r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?"
        r"(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
        flags=re.S,
    ),
    _rule("anthropic_api_key", ("sk-ant-",), r"sk-ant-(?<![A-Za-z0-9_-]sk-ant-)[A-Za-z0-9_-]{20,}"),
    # sk-, sk-proj-, sk-svcacct-...: 20+ key characters including a digit (not "sk-learn-...")
    _rule("openai_api_key", ("sk-",), r"sk-(?<![A-Za-z0-9_-]sk-)(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}"),
    _rule("stripe_key", ("k_live_", "k_test_"), r"(?<![A-Za-z0-9_])[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"),
    _rule("github_token", ("gh",), r"gh(?<![A-Za-z0-9_]gh)[pousr]_[A-Za-z0-9]{36,}"),
    _rule("github_token", ("github_pat_",), r"github_pat_(?<![A-Za-z0-9_]github_pat_)[A-Za-z0-9_]{22,}"),
    _rule(
        "aws_access_key_id",
        ("AKIA", "ASIA"),
        r"(?:AKIA|ASIA)(?<![A-Z0-9]AKIA)(?<![A-Z0-9]ASIA)[A-Z0-9]{16}(?![A-Z0-9])",
    ),
    _rule("slack_token", ("xox",), r"xox(?<![A-Za-z0-9]xox)[abposr]-[A-Za-z0-9-]{10,}"),
    _rule("google_api_key", ("AIza",), r"AIza(?<![A-Za-z0-9_-]AIza)[0-9A-Za-z_-]{35}"),
    _rule(
        "jwt",
        ("eyJ",),
        r"eyJ(?<![A-Za-z0-9_-]eyJ)[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
    ),
    _rule(
        "bearer_token",
        ("earer", "EARER"),
        r"(?i)(?<![A-Za-z])(bearer\s+)[A-Za-z0-9._~+/-]{16,}=*",
        keep_prefix=True,
    ),
    _rule(
        "basic_auth",
        ("uthorization", "UTHORIZATION"),
        r"(?i)(authorization\\?[\"']?\s*[:=]\s*\\?[\"']?basic\s+)[A-Za-z0-9+/]{8,}=*",
        keep_prefix=True,
    ),
    # the user part: not a [REDACTED:..]
    _rule("url_password", ("://",), r"(://[^\s:/@\"'<>\\\[\]]+:)[^\s/@\"'<>\\]+(?=@)", keep_prefix=True),
]

# Secret-ish names: words containing one of these roots in the lower-cased text and followed by what can
# start an assignment; the whole name and the separator are then checked by `_named_secret`.
_NAME_CANDIDATES = [
    re.compile(root + r"[a-z0-9_-]*(?=[\\\"' \t:=])")
    for root in ("pass", "secret", "token", "key", "credential", "cookie")
]
_NAME_HEAD = re.compile(r"[a-z0-9_-]*\Z")
_SECRET_NAME = re.compile(
    r"(?:password|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|"
    r"secret[_-]?key|auth[_-]?key|signing[_-]?key|encryption[_-]?key|credentials?)\Z"
)
_HEADER_NAMES = {"x-api-key", "api-key", "x-auth-token", "x-access-token", "cookie", "set-cookie"}
# After the name: an optional closing quote of a quoted key, the separator, spaces.
_SEPARATOR = re.compile(r"(\\?[\"']?)([ \t]*)(:|=>|=)([ \t]*)")
_QUOTED_VALUE = re.compile(r"(\\?[\"'])((?:\\.|[^\\\n])*?)\1")
_BARE_VALUE = re.compile(r"[^\s\"'#\\]+")
_HEADER_VALUE = re.compile(r"[^\r\n\"'\\]+")
# A line boundary before the name / after the value: newline (also JSON-escaped: \n), or the quote that
# opens or closes the JSON string holding the text (a `.env` file inside tool-call arguments).
_LINE_START = re.compile(r"(?:\n|\r|\\+[nrt]|[\"'])[ \t]*(?:-[ \t]*)?(?:export[ \t]+)?\Z")
_LINE_END = re.compile(r"[ \t]*(?:#[^\n\r\"]*)?(?:\Z|\n|\r|\\+[nrt]|[\"'])")
_NOT_SECRETS = {"null", "none", "true", "false", "~", "str", "int", "bytes", "bool", "secretstr", "any"}
_MIN_QUOTED_SECRET = 8  # shorter quoted literals (api_key="x", token="test") are placeholders


def _is_reference(value: str) -> bool:
    """A variable or template reference, not a value: $X, ${X}, {{ x }}, <your-key>, or already redacted."""
    return value.startswith(("$", "{{", "<")) or "[REDACTED:" in value


def _looks_like_code(value: str) -> bool:
    """A call, subscript or trailing comma: `token=get_token()`, `api_key=api_key,` in a multi-line call."""
    return value.endswith(",") or "(" in value or "[" in value


def _named_secret(text: str, lowered: str, name_end: int) -> tuple[int, int, str] | None:
    """The (start, end, kind) of the value assigned to the secret-ish name ending at `name_end`, if any."""
    separator = _SEPARATOR.match(text, name_end)
    if separator is None:
        return None
    window = max(0, name_end - 128)
    name_start = _NAME_HEAD.search(lowered, window, name_end).start()
    if name_start > 0 and text[name_start - 1] == "\\" and lowered[name_start] in "nrt":
        name_start += 1  # the name follows an escaped newline (\nDB_PASSWORD=...), not "nDB_PASSWORD"
    name = lowered[name_start:name_end].lstrip("-")
    quoted_key, space_before, sep, space_after = separator.groups()
    value_start = separator.end()
    if name in _HEADER_NAMES and sep == ":" and not quoted_key:
        value = _HEADER_VALUE.match(text, value_start)
        if value is None or not value.group().strip() or _is_reference(value.group()):
            return None
        return value_start, value_start + len(value.group().rstrip()), "header_secret"
    if not _SECRET_NAME.search(name):
        return None
    before = text[max(0, name_start - 64) : name_start]
    at_line_start = bool(_LINE_START.search(("\n" if name_start <= 64 else "") + before))
    env_style = at_line_start and sep == "=" and not (quoted_key or space_before or space_after)
    quoted = _QUOTED_VALUE.match(text, value_start)
    if quoted is not None:
        inner = quoted.group(2)
        line_ends = _LINE_END.match(text, quoted.end()) is not None
        if not inner or _is_reference(inner):
            return None
        if not (env_style and line_ends) and len(inner) < _MIN_QUOTED_SECRET:
            return None
        return quoted.start(2), quoted.end(2), "env_secret"
    bare = _BARE_VALUE.match(text, value_start)
    if bare is None or not at_line_start or _LINE_END.match(text, bare.end()) is None:
        return None
    value = bare.group()
    if _is_reference(value) or _looks_like_code(value):
        return None
    yaml_style = (
        sep == ":" and space_after and not quoted_key and text[name_start:name_end].isupper()
    )  # POSTGRES_PASSWORD: example (compose files); lower-case `password: str` is usually code
    if env_style or (yaml_style and value.lower() not in _NOT_SECRETS):
        return value_start, bare.end(), "env_secret"
    return None


def _redact_named(text: str, counts: Counter[str]) -> str:
    lowered = text.lower() if text.isascii() else text.encode("ascii", "replace").decode("ascii").lower()
    spans: dict[int, tuple[int, int, str]] = {}
    for candidates in _NAME_CANDIDATES:
        for candidate in candidates.finditer(lowered):
            name_end = candidate.end()
            if name_end not in spans and (span := _named_secret(text, lowered, name_end)) is not None:
                spans[name_end] = span
    if not spans:
        return text
    pieces, position = [], 0
    for start, end, kind in sorted(spans.values()):
        if start < position:
            continue
        pieces += [text[position:start], f"[REDACTED:{kind}]"]
        counts[kind] += 1
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _redact(text: str) -> tuple[str, Counter[str]]:
    counts: Counter[str] = Counter()
    for kind, gate, pattern, replacement in _RULES:
        if any(literal in text for literal in gate):
            text, n = pattern.subn(replacement, text)
            if n:
                counts[kind] += n
    return _redact_named(text, counts), counts


class _Cache:
    """LRU of redaction results by text, bounded in characters: an agent resends its whole history on
    every turn, so most strings of a request were already redacted for the previous one."""

    def __init__(self, budget_chars: int = 32_000_000):
        self.budget = budget_chars
        self.size = 0
        self.items: OrderedDict[str, tuple[str, tuple[tuple[str, int], ...]]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, text: str):
        with self.lock:
            hit = self.items.get(text)
            if hit is not None:
                self.items.move_to_end(text)
            return hit

    def put(self, text: str, value) -> None:
        if len(text) > self.budget // 8:
            return
        with self.lock:
            if text in self.items:
                return
            self.items[text] = value
            self.size += len(text)
            while self.size > self.budget:
                old, _ = self.items.popitem(last=False)
                self.size -= len(old)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.size = 0


_cache = _Cache()
_CACHE_MIN_CHARS = 64


def redact_text(text: str, counts: Counter[str] | None = None) -> str:
    """`text` with secrets replaced by [REDACTED:<kind>]; adds how many of each kind to `counts`."""
    if len(text) < 8:
        return text
    cached = _cache.get(text) if len(text) >= _CACHE_MIN_CHARS else None
    if cached is None:
        redacted, found = _redact(text)
        cached = (redacted, tuple(found.items()))
        if len(text) >= _CACHE_MIN_CHARS:
            _cache.put(text, cached)
    redacted, found = cached
    if counts is not None:
        for kind, n in found:
            counts[kind] += n
    return redacted


def redact_tree(value: Any, counts: Counter[str]) -> Any:
    """A copy of a JSON value with every string (not dict keys) passed through `redact_text`."""
    if isinstance(value, str):
        return redact_text(value, counts)
    if isinstance(value, dict):
        return {key: redact_tree(item, counts) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_tree(item, counts) for item in value]
    return value
