"""The embedded benchmark's evaluators: proxy FID/KID, attribute accuracy, alignment score.

Importing registers the feature extractors (``MODELS``) and metrics (``METRICS``);
it loads no weights. Proxy numbers are named after their feature space or model
(``fid_efficientnet_lite0``, ``alignment_lit_minilm_effnet``), never "FID" or
"CLIP score" alone.
"""
from alter.evaluation import alignment, attributes, distances, features, metrics  # noqa: F401
