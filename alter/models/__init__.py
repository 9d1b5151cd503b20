"""Models: the backbone builder, hypernetwork parts and the ALTER algorithm."""
