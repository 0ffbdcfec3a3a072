"""The reference agent: the tools it offers a model (`agent.tools`), its sandbox (`agent.sandbox`), task suites
with end-state checks (`agent.tasks`, `agent/suites/`), the pydantic-ai agent that runs them (`agent.episodes`)
and the scripted teacher that solves them (`agent.teacher`). Built on `core`; used by evaluate and the loop.
"""

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
