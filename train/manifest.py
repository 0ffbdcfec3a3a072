"""manifest.json: what went into an adapter (model, data, config, code, machine) and what came out."""

from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.digest import combined_sha256, sha256_file

if TYPE_CHECKING:
    from train.state import Run

MANIFEST = "manifest.json"
FORMAT = "flywheel-train-manifest/1"
OUTPUTS = ("adapters.safetensors", "adapter_config.json", "metrics.jsonl")


def build(run: Run, previous: dict | None = None) -> dict[str, Any]:
    """The manifest of a finished (or stopped) run; `previous` is the manifest of the run it resumed."""
    config, adapter_dir = run.config, run.adapter_dir
    segments = list((previous or {}).get("segments", []))
    segments.append(
        {
            "started": iso(run.segment_start),
            "wall_time_s": round(run.wall_time, 3),
            "from_iteration": run.start,
            "to_iteration": run.final_iteration,
            "status": run.status,
        }
    )
    return {
        "format": FORMAT,
        "adapter_dir": str(adapter_dir.resolve()),
        "status": run.status,
        "base_model": {"name": config.model, "path": str(run.model_path), **directory_digest(run.model_path)},
        "data": {
            "dir": str(Path(config.data).resolve()),
            "files": data_files(Path(config.data)),
            "curate_report": curate_report(Path(config.data)),
        },
        "config": config.to_dict(),
        "config_notes": {k: v for k, v in config.extra.items() if k not in ("adapter_defaulted",)},
        "adapter_config": run.adapter_config,
        "seed": config.seed,
        "versions": versions(),
        "git": git_state(),
        "command": command_line(),
        "blas": blas(),
        "loss": run.loss_note,
        "distributed": {
            "world_size": run.world.size(),
            "gradient_averaging": "mlx_lm.tuner.trainer: average_gradients (all_sum / world size) every update",
            "replicas_identical": run.replicas,
        },
        "trainable": run.trainable,
        "preflight": {
            "warnings": run.warnings,
            "lengths": {k: asdict(v) for k, v in run.lengths.items()},
            "warmup": run.timing,
        },
        "final": {
            "iteration": run.final_iteration,
            "train_loss": run.last_train_loss,
            "val_loss": run.last_val_loss,
            "trained_tokens": run.trained_tokens,
        },
        "selection": run.selection if config.select_by == "tool-success" else {"by": "last"},
        "started": iso(run.started),
        "finished": iso(time.time()),
        "wall_time_s": round(sum(s["wall_time_s"] for s in segments), 3),
        "segments": segments,
        "outputs": {
            name: sha256_file(adapter_dir / name) for name in OUTPUTS if (adapter_dir / name).exists()
        },
    }


def read(adapter_dir: Path) -> dict | None:
    """The manifest in `adapter_dir`, or None when there is none (or it cannot be read)."""
    try:
        return json.loads((Path(adapter_dir) / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def directory_digest(directory: Path) -> dict[str, Any]:
    """sha256 of every file under `directory` and one digest over (relative path, file digest) pairs."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    }
    return {"sha256": combined_sha256(files.items()), "files": files}


def data_files(data_dir: Path) -> dict[str, Any]:
    """Hash, size and line count of each split file present in `data_dir`."""
    out = {}
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        path = Path(data_dir) / name
        if path.is_file():
            with open(path, "rb") as file:
                lines = sum(1 for line in file if line.strip())
            out[name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "lines": lines}
    return out


def curate_report(data_dir: Path) -> Any:
    path = Path(data_dir) / "report.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        return {"error": f"{path}: invalid JSON: {error}"}


def git_state(directory: Path | None = None) -> dict[str, Any]:
    """The commit of the code that trained (the repository this package lives in) and whether it was dirty."""
    directory = directory or Path(__file__).resolve().parent

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(dirty)}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": f"{platform.system()} {platform.machine()}"}
    for package in ("mlx", "mlx-lm", "mlx-metal", "mlx-cpu", "transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    return out


def blas() -> Any:
    try:
        from core.blas import blas_status
    except ImportError:
        return None
    try:
        return blas_status()
    except Exception as error:  # the manifest records the failure instead of losing the run
        return {"error": str(error)}


def write(adapter_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(adapter_dir) / MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def command_line() -> list[str]:
    return [sys.executable, *sys.argv]
