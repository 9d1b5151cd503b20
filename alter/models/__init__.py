"""Models: the backbone builder, hypernetwork parts and the ALTER algorithm."""
from alter.models import unet  # noqa: F401
from alter.models import experts, hypernet, regularizers, routers, unet_steps  # noqa: F401
from alter.models import alter, diffusion  # noqa: F401
from alter.models import conditioning  # noqa: F401
