"""The prunable-unit engine: backbone adapters, pruning spaces, gated execution, MAC and
latency costs."""
from alter.units import backbones, costs, spaces  # noqa: F401
