"""Flywheel's shared core, the ground floor every other package stands on; it imports no sibling package.

    core.trace      the trace record: one recorded chat-completions exchange (schema in core/schemas/)
    core.toolcalls  tool calls as a model writes them, parsed with the model's own mlx-lm parser
    core.scoring    the verdict on one generated turn against its reference (the table of verdict codes)
    core.turns      generate held-out turns (in-process or through a server) and score them
    core.process    the managed subprocess: every server child (mlx_lm server, the proxy, module servers)
    core.scripted   the scripted OpenAI-compatible server (teacher policies, proxy fault scripts plug in)
    core.blas       the fast BLAS for MLX on a Linux CPU
    core.cli        what the `python -m` commands share: --help layout, one-line errors with an exit code

Importing `core` arranges for `core.blas.ensure_fast_blas()` to run just before the first `import mlx` of the
process, because MLX binds its BLAS when it loads and cannot change it afterwards: no entry point has to
remember it, and processes that never load MLX (the proxy) never pay for it.
"""

from __future__ import annotations

import sys


class _BindBlasBeforeMlx:
    """A meta-path finder that finds nothing: it only notices the first `import mlx` and binds BLAS first."""

    def find_spec(self, name, path=None, target=None):
        if name == "mlx" or name.startswith("mlx."):
            sys.meta_path.remove(self)
            from core.blas import ensure_fast_blas

            ensure_fast_blas()
        return None


if "mlx" not in sys.modules and not any(type(f).__name__ == "_BindBlasBeforeMlx" for f in sys.meta_path):
    sys.meta_path.insert(0, _BindBlasBeforeMlx())
