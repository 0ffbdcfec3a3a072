"""Checkpoints that resume exactly: weights, optimizer state, iteration and the run's bookkeeping.

    adapters/NAME/checkpoints/0000100/
        adapters.safetensors   trainable weights (a loadable adapter: `--adapter-path` this directory)
        adapter_config.json
        optimizer.safetensors  `tree_flatten(optimizer.state)` incl. step and learning rate (latest checkpoint only)
        state.json             iteration, trained tokens, selection state

Each checkpoint is written to a temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint that --resume would pick. The data order needs no saved state: batch i of a run
is a pure function of (seed, i) (see loop.iterate_batches).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

CHECKPOINTS = "checkpoints"
WEIGHTS = "adapters.safetensors"
OPTIMIZER = "optimizer.safetensors"
STATE = "state.json"


def checkpoint_dir(adapter_dir: Path, iteration: int) -> Path:
    return Path(adapter_dir) / CHECKPOINTS / f"{iteration:07d}"


def save(
    adapter_dir: Path, iteration: int, model, optimizer, adapter_config: dict, state: dict[str, Any]
) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten

    final = checkpoint_dir(adapter_dir, iteration)
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mx.save_safetensors(str(tmp / WEIGHTS), dict(tree_flatten(model.trainable_parameters())))
    mx.save_safetensors(str(tmp / OPTIMIZER), dict(tree_flatten(optimizer.state)))
    (tmp / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
    (tmp / STATE).write_text(json.dumps({**state, "iteration": iteration}, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    # Only the newest checkpoint keeps optimizer state (resume needs no more; it is 2x the weights).
    for older in list_checkpoints(adapter_dir):
        if older["iteration"] < iteration:
            (older["path"] / OPTIMIZER).unlink(missing_ok=True)
    return final


def list_checkpoints(adapter_dir: Path) -> list[dict[str, Any]]:
    """Complete checkpoints, oldest first: {"iteration", "path", "state", "resumable"}."""
    root = Path(adapter_dir) / CHECKPOINTS
    found = []
    if not root.is_dir():
        return found
    for path in sorted(root.iterdir()):
        if path.name.startswith(".") or not (path / STATE).is_file() or not (path / WEIGHTS).is_file():
            continue
        state = json.loads((path / STATE).read_text())
        found.append(
            {
                "iteration": state["iteration"],
                "path": path,
                "state": state,
                "resumable": (path / OPTIMIZER).is_file(),
            }
        )
    return sorted(found, key=lambda c: c["iteration"])


def latest(adapter_dir: Path) -> dict[str, Any] | None:
    resumable = [c for c in list_checkpoints(adapter_dir) if c["resumable"]]
    return resumable[-1] if resumable else None


def drop_after(adapter_dir: Path, iteration: int) -> None:
    """Remove checkpoints past `iteration` (left by a run that crashed before finishing its own bookkeeping)."""
    for c in list_checkpoints(adapter_dir):
        if c["iteration"] > iteration:
            shutil.rmtree(c["path"])


def restore(checkpoint: dict[str, Any], model, optimizer) -> None:
    """Load weights into `model` and the saved state into `optimizer` (which must be for the same parameters)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map_with_path

    path = checkpoint["path"]
    model.load_weights(str(path / WEIGHTS), strict=False)
    saved = mx.load(str(path / OPTIMIZER))
    optimizer.init(model.trainable_parameters())
    expected = {name for name, _ in tree_flatten(optimizer.state)}
    if expected != set(saved):
        missing = sorted(expected - set(saved))[:3]
        extra = sorted(set(saved) - expected)[:3]
        raise ValueError(
            f"{path / OPTIMIZER}: optimizer state does not match the trainable parameters "
            f"(missing {missing}, unexpected {extra}); was the checkpoint made with another setup?"
        )
    optimizer.state = tree_map_with_path(lambda name, _: saved[name], optimizer.state)
    optimizer.init(model.trainable_parameters())  # marks it initialised; keeps the restored values
    mx.eval(model.parameters(), optimizer.state)
