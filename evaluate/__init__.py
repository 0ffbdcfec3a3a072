"""Evaluate a model or adapter by what the agent will actually get: structured tool calls and finished tasks.

    from evaluate import EvalConfig, run
    report = run(EvalConfig(adapter=Path("adapters/demo")))      # base vs adapter, turn and agent level

`evaluate.run` orchestrates; turns are generated and scored by `core.turns`, tasks run by `agent.episodes`,
compared by `evaluate.stats`, rendered by `evaluate.report`. Importing this package does not import mlx.
"""

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
from evaluate.run import EvalConfig, EvalError, read_manifest_model, run

__all__ = ["EvalConfig", "EvalError", "read_manifest_model", "run"]
