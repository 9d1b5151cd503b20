"""The prunable-unit engine: pruning spaces, gated execution, MAC accounting."""
