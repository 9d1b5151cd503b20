"""Datasets and transforms."""
from alter.datasets import class_images  # noqa: F401
from alter.datasets import generation_prompts  # noqa: F401
from alter.datasets import latent_cache  # noqa: F401
from alter.datasets import random_latents  # noqa: F401
from alter.datasets import shapes  # noqa: F401
from alter.datasets import sd_transforms  # noqa: F401
from alter.datasets import text_image  # noqa: F401
