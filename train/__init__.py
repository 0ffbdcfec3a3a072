"""Fine-tune a model on curated tool-call data with mlx-lm, in-process: `python -m train` or `train.run(config)`.

    from train import TrainConfig, run
    adapter_dir = run(TrainConfig(model="path/to/model", data="data", adapter="adapters/tools"))

Importing this package does not import MLX.
"""

from __future__ import annotations

from pathlib import Path

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
from train.config import ConfigError, TrainConfig, resolve
from train.preflight import PreflightError

__all__ = ["ConfigError", "PreflightError", "TrainConfig", "resolve", "run", "fuse"]


def run(config: TrainConfig, console=None) -> Path:
    """Train as configured and return the adapter directory."""
    from train.loop import run as _run

    return _run(config, console=console)


def fuse(model_path: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base model + adapter as one model directory that `mlx_lm server --model OUT` serves."""
    from train.adapters import fuse as _fuse

    return _fuse(model_path, adapter_dir, out_dir)
