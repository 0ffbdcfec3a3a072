"""manifest.json: what went into an adapter (model, data, config, code, machine) and what came out."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def directory_digest(directory: Path) -> dict[str, Any]:
    """sha256 of every file under `directory` and one digest over (relative path, file digest) pairs."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts)
    }
    combined = hashlib.sha256()
    for name, digest in files.items():
        combined.update(f"{name}\0{digest}\n".encode())
    return {"sha256": combined.hexdigest(), "files": files}


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
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=directory,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
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
