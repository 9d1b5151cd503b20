"""Runner parts: optimiser construction, hooks, checkpoint loading."""
from alter.engine import hooks, optim  # noqa: F401
