"""Text-image alignment scorer: the embedded benchmark's stand-in for CLIP score.

LiT-style ("locked-image tuning", Zhai et al. 2022, here with both towers locked):
frozen EfficientNet-Lite0 image features (``EfficientNetLite0Features``, 1280-d) and
frozen all-MiniLM-L6-v2 sentence embeddings (``SentenceEmbedder``, 384-d) are mapped
by two trained linear projections into a shared space, trained with a symmetric
InfoNCE loss on Shapes-T2I image-caption pairs (``tools/train_alignment_scorer.py``).
The score of an image and a caption is ``100 * cos`` of their projections, as CLIP
score is; it is a *proxy*, on a different scale from CLIP score.
"""
import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from alter.evaluation.features import PathLike
from alter.evaluation.weights import CHECKPOINT_DIR, load_module
from alter.models.conditioning import MiniLMTextEncoder


class SentenceEmbedder(nn.Module):
    """all-MiniLM-L6-v2 sentence embeddings (B, 384) of captions, as sentence-transformers
    computes them for this model: token states averaged over the attention mask,
    then L2-normalised; captions are truncated at 256 tokens (its ``max_seq_length``)."""

    dim = 384

    def __init__(self, max_length: int = 256) -> None:
        super().__init__()
        encoder = MiniLMTextEncoder(cache=False)  # loads the packaged model offline
        self.tokenizer, self.model = encoder.tokenizer, encoder.model
        self.max_length = max_length
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(captions), padding=True, truncation=True,
                                max_length=self.max_length, return_tensors='pt').to(device)
        states = self.model(**tokens).last_hidden_state  # (B, L, 384)
        mask = tokens['attention_mask'].unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        mean = (states * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(mean, dim=-1)


class AlignmentScorer(nn.Module):
    """Linear projections of frozen image (B, 1280) and text (B, 384) features into a
    shared ``dim``-d space; ``forward`` gives the score ``100 * cos`` (B,) of row pairs.

    Image features are standardised first with the training set's per-feature mean
    and std (buffers ``image_mean``, ``image_std``): pooled ReLU6 features are all
    positive, and centring them makes the cosine compare directions, not a shared
    offset.
    """

    def __init__(self, image_dim: int = 1280, text_dim: int = 384, dim: int = 256) -> None:
        super().__init__()
        self.config = dict(image_dim=image_dim, text_dim=text_dim, dim=dim)
        self.register_buffer('image_mean', torch.zeros(image_dim))
        self.register_buffer('image_std', torch.ones(image_dim))
        self.image_proj = nn.Linear(image_dim, dim, bias=False)
        self.text_proj = nn.Linear(text_dim, dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial 1/T

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        """Unit vectors (B, dim) of image features (B, image_dim)."""
        return F.normalize(self.image_proj((features - self.image_mean) / self.image_std), dim=-1)

    def embed_texts(self, features: torch.Tensor) -> torch.Tensor:
        """Unit vectors (B, dim) of sentence embeddings (B, text_dim)."""
        return F.normalize(self.text_proj(features), dim=-1)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return 100 * (self.embed_images(image_features) * self.embed_texts(text_features)).sum(-1)

    def similarity(self, image_features: torch.Tensor, text_features: torch.Tensor
                   ) -> torch.Tensor:
        """All-pairs ``100 * cos`` (N_images, N_texts)."""
        return 100 * self.embed_images(image_features) @ self.embed_texts(text_features).T

    def loss(self, image_features: torch.Tensor, text_features: torch.Tensor,
             caption_ids: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Symmetric InfoNCE over a batch of pairs (B, ...). ``caption_ids`` (B,) names
        each caption; another pair with the same caption is not a negative (masked),
        since templated captions repeat within a batch."""
        images, texts = self.embed_images(image_features), self.embed_texts(text_features)
        scale = self.log_scale.exp().clamp(max=100)  # CLIP's cap on 1/T
        logits = scale * images @ texts.T  # (B, B)
        same = caption_ids[:, None] == caption_ids[None, :]
        logits = logits.masked_fill(same & ~torch.eye(len(same), dtype=torch.bool,
                                                      device=same.device), float('-inf'))
        target = torch.arange(len(logits), device=logits.device)
        return dict(loss_image_to_text=F.cross_entropy(logits, target) / 2,
                    loss_text_to_image=F.cross_entropy(logits.T, target) / 2)


DEFAULT_WEIGHTS = CHECKPOINT_DIR / 'alignment_scorer.safetensors'


def load_alignment_scorer(path: Optional[PathLike] = None) -> AlignmentScorer:
    """The trained scorer of ``tools/train_alignment_scorer.py`` (frozen, eval)."""
    path = Path(path or DEFAULT_WEIGHTS)
    return load_module(AlignmentScorer, path, 'alignment scorer',
                       f'python tools/train_alignment_scorer.py --out {path}  (about 8 min on one CPU core)')


def retrieval_accuracy(similarity: torch.Tensor, captions: List[str]) -> Dict[str, float]:
    """Top-1 retrieval accuracy in both directions of a square ``similarity`` (N, N) of
    images (rows) and their captions (columns); a hit is any item with the query's
    caption, since templated captions can repeat."""
    same = torch.tensor([[a == b for b in captions] for a in captions])
    rows = torch.arange(len(captions))
    return dict(text_to_image=same[similarity.argmax(0), rows].float().mean().item(),
                image_to_text=same[rows, similarity.argmax(1)].float().mean().item())
