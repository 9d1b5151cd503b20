"""Runner parts: optimiser construction, hooks, checkpoint loading, data parallelism, the runner."""
from alter.engine import hooks, optim, parallel, runner  # noqa: F401
