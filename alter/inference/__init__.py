"""Inference: the ALTER checkpoint format, routed execution and the shared sampler."""
