"""Evaluate a model or adapter by what the agent will actually get: structured tool calls and finished tasks.

    from evaluate import EvalConfig, run
    report = run(EvalConfig(adapter=Path("adapters/demo")))      # base vs adapter, turn and agent level

`evaluate.config` holds the settings (TOML + flags) and the sides they name; `evaluate.run` assembles the
report from the turn level (`evaluate.turnlevel` over `core.turns`), the agent level (`evaluate.agentlevel`
over `agent.episodes`) and the gate (`evaluate.gate`); `evaluate.stats` compares, `evaluate.report` renders.
Importing this package does not import mlx.
"""

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
from evaluate.config import EvalConfig, EvalError, read_manifest_model
from evaluate.run import run

__all__ = ["EvalConfig", "EvalError", "read_manifest_model", "run"]
