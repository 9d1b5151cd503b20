"""The prunable-unit engine: pruning spaces, gated execution, MAC accounting."""
from alter.units import spaces  # noqa: F401
