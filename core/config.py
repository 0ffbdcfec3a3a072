"""One way to configure every command: a typed settings class, a TOML file, and flags that override it.

    class CurateSettings(Settings):
        seed: int = 0
        split: tuple[float, float, float] = (0.8, 0.1, 0.1)

    settings = load(CurateSettings, "curate.toml", overrides=flag_overrides(args))
    save(settings, out_dir / "curate.toml")            # the resolved configuration, beside the output

A settings class is a pydantic model with `extra="forbid"` and strict types: an unknown key, or a value of
the wrong type ("5" for an integer, 1.5 for an integer, "yes" for a boolean), is refused with one line that
names the file and the key (or the flag). What TOML cannot spell is converted first: a string for a Path
field becomes a Path, an array for a tuple field a tuple.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator


class ConfigError(ValueError):
    """A configuration file or flag the settings class refuses; the message names the file and key."""


class Settings(BaseModel):
    """Base of every command's settings: unknown keys and mistyped values are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _from_toml(cls, value: Any, info: ValidationInfo) -> Any:
        kinds = _kinds(cls.model_fields[info.field_name].annotation)
        if isinstance(value, str) and Path in kinds:
            return Path(value)
        if isinstance(value, list) and tuple in kinds:
            return tuple(value)
        return value

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json())

    def replace(self, **changes: Any) -> Self:
        """A copy with `changes` applied and validated (unlike `model_copy(update=...)`, which skips checks)."""
        return validate(type(self), {**self.model_dump(), **changes}, "settings")


def _kinds(annotation: Any) -> set[Any]:
    """The plain classes an annotation admits (`Path | None` → {Path, NoneType}; `tuple[int, int]` → {tuple})."""
    if get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_kinds(arg) for arg in get_args(annotation)))
    return {get_origin(annotation) or annotation}


def read_toml(path: Path | str, section: str | None = None) -> dict[str, Any]:
    """The table of a TOML file (or its `[section]`); ConfigError naming the file when it cannot be read."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    if section is not None:
        data = data.get(section, {})
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
    return data


def validate[S: Settings](cls: type[S], values: Mapping[str, Any], source: str) -> S:
    """`cls(**values)`, or ConfigError naming `source` and the first key it refuses."""
    try:
        return cls.model_validate(dict(values))
    except ValidationError as error:
        raise ConfigError(f"{source}: {describe(error, cls)}") from None


def describe(error: ValidationError, cls: type[Settings]) -> str:
    """The first problem of a pydantic error as one line: key, what is wrong, what was given."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(settings)"
    if first["type"] == "value_error":  # a validator's own message says what is wrong
        return f"{key}: {first['ctx']['error']}"
    if first["type"] == "extra_forbidden":
        known = ", ".join(sorted(cls.model_fields))
        return f"unknown key {key!r} (known: {known})"
    return f"{key}: {first['msg'].lower()} (got {first.get('input')!r})"


def load[S: Settings](
    cls: type[S],
    path: Path | str | None = None,
    *,
    section: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> S:
    """Settings from `base` (a caller's defaults), then the TOML file, then `overrides` (flags), each checked."""
    values: dict[str, Any] = dict(base or {})
    if path is not None:
        from_file = read_toml(path, section)
        where = f"{path}" + (f" [{section}]" if section else "")
        validate_keys(cls, from_file, where)
        values.update(from_file)
        validate(cls, values, where)
    for key, value in (overrides or {}).items():
        if key not in cls.model_fields:
            raise ConfigError(f"--{key.replace('_', '-')}: not a setting of {cls.__name__}")
        values[key] = value
    return validate(cls, values, "flags" if overrides else "settings")


def validate_keys(cls: type[Settings], values: Mapping[str, Any], where: str) -> None:
    for key in values:
        if key not in cls.model_fields:
            known = ", ".join(sorted(cls.model_fields))
            raise ConfigError(f"{where}: unknown key {key!r} (known: {known})")


def flag_overrides(args: argparse.Namespace, cls: type[Settings]) -> dict[str, Any]:
    """The settings a command line set: every attribute of `args` named like a field and not None.

    Give each such flag `default=None` so that an absent flag leaves the file's value in place."""
    return {key: value for key, value in vars(args).items() if key in cls.model_fields and value is not None}


def to_toml(settings: Settings | Mapping[str, Any], header: str = "") -> str:
    """TOML text of resolved settings (None values left out, nested settings as tables)."""
    values = settings.to_dict() if isinstance(settings, Settings) else dict(settings)
    lines = [f"# {line}" for line in header.splitlines()]
    tables = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for name, table in tables:
        lines += ["", f"[{name}]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


def _toml_key(key: str) -> str:
    """A bare key when TOML allows one, else quoted (e.g. a marker named "markers.txt:2")."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{ "
            + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items() if v is not None)
            + " }"
        )
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def save(settings: Settings, path: Path | str, header: str = "") -> Path:
    """Write the resolved settings as TOML (what `load(cls, path)` reads back to the same settings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(settings, header), encoding="utf-8")
    return path
