"""The loop on top: `python -m flywheel` collects traces through the proxy, curates, trains and evaluates
(`flywheel.loop`, `flywheel.collect`). It imports every other package; none imports it."""

import core  # noqa: F401  (binds the fast BLAS before anything imports mlx)
