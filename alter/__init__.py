"""ALTER: All-in-One Layer Pruning and Temporal Expert Routing for diffusion UNets.

Importing the package registers its components; it loads no weights and
downloads nothing.
"""
from alter import datasets, engine, evaluation, models, registry, units  # noqa: F401

__version__ = '0.1.0'
