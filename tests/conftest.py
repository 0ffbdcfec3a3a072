"""Session fixtures shared by every test: the tiny models (built once, cached) and a served tool model."""

from __future__ import annotations

import os

import pytest

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Child processes (mlx_lm server, proxy, CLIs) would otherwise recompile every import each time (~4 s each).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model():
    """Directory of the random-weight tiny Qwen2-style model (no tool skill)."""
    from models.tiny import cached_model

    return cached_model("random")


@pytest.fixture(scope="session")
def tool_model():
    """Directory of the tiny model trained to emit <tool_call> blocks for the agent tools."""
    from models.tiny import cached_model

    return cached_model("tool-calling")


@pytest.fixture(scope="session")
def tool_server(tool_model):
    """A real `mlx_lm server` serving the tool-calling tiny model, for the whole session."""
    from core.process import MlxServer

    with MlxServer(tool_model) as server:
        yield server
