"""Resumable stages: each writes one artifact and marks it complete; a re-run reuses what is complete and moves
an interrupted attempt aside (renamed, never overwritten)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

STAGE_MARKER = ".flywheel-stage.json"


def _marker(path: Path) -> Path:
    return path / STAGE_MARKER if path.is_dir() else path.with_name(path.name + STAGE_MARKER)


def stage_done(path: Path) -> dict | None:
    marker = _marker(path)
    return json.loads(marker.read_text()) if marker.exists() else None


def mark_done(path: Path, info: dict) -> None:
    _marker(path).write_text(
        json.dumps({**info, "completed": dt.datetime.now(dt.UTC).isoformat()}, indent=2) + "\n"
    )


def move_aside(path: Path) -> Path | None:
    """An interrupted stage's leftovers are kept, renamed, never overwritten."""
    if not path.exists():
        return None
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.incomplete-{stamp}")
    path.rename(target)
    return target


def weights_identity(model_dir: Path) -> str:
    """Cheap identity of a model's weights (sizes plus the first and last MiB of each file): a changed student
    must not reuse the stages trained on the old one."""
    digest = hashlib.sha256()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(size - (1 << 20), 0))
            digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


class Stages:
    """Runs stages in order, printing each, timing it, and reusing the ones an earlier run completed."""

    def __init__(self, console: Console):
        self.console = console
        self.seconds: dict[str, float] = {}
        self.reused: list[str] = []

    def run(self, key: str, title: str, artifact: Path, build: Callable[[], dict]) -> bool:
        """Build `artifact` with `build()` (which returns what the completion marker records) unless it is
        complete already; True when it was reused."""
        started = time.monotonic()
        if stage_done(artifact):
            self.console.print(
                f"[bold]{title}[/] → {artifact} [green](reused: complete from an earlier run)[/]"
            )
            self.reused.append(title)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.monotonic() - started
            return True
        if (aside := move_aside(artifact)) is not None:
            self.console.print(f"  [yellow]kept an interrupted earlier attempt as {aside}[/]")
        self.console.print(f"[bold]{title}[/] → {artifact}")
        info = build()
        mark_done(artifact, {"stage": key, **info})
        self.seconds[key] = self.seconds.get(key, 0.0) + time.monotonic() - started
        return False
