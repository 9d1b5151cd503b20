"""Models: the backbone builder, hypernetwork parts and the ALTER algorithm."""
from alter.models import unet  # noqa: F401
