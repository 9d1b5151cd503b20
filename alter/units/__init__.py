"""The prunable-unit engine: backbone adapters, pruning spaces, gated execution, MAC accounting."""
from alter.units import backbones, spaces  # noqa: F401
