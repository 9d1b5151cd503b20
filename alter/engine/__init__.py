"""Runner parts: optimiser construction, hooks, checkpoint loading, data parallelism, the runner,
the validation loop."""
from alter.engine import hooks, optim, parallel, runner, validation  # noqa: F401
