"""Curate: recorded agent traces → mlx-lm chat JSONL ({"messages", "tools"}), every record accounted for.

from curate import run, load_config
report = run(["traces/"], "data/", load_config(seed=1))
"""

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
from curate.config import Config, load_config
from curate.pipeline import run
from curate.report import Report
from curate.verify import AccountingError

__all__ = ["AccountingError", "Config", "Report", "load_config", "run"]
