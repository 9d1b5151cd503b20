"""Distances between feature distributions: Fréchet distance (FID), KID and CMMD.

All take features from one ``FeatureExtractor``; with EfficientNet-Lite0 features
FID / KID are the embedded benchmark's *proxies*, with pytorch-fid's Inception
features the standard ones. numpy only, float64 throughout.

* Fréchet distance (Heusel et al. 2017): ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))``.
* KID (Bińkowski et al. 2018, "Demystifying MMD GANs"): unbiased MMD^2 with the cubic
  polynomial kernel ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets.
* CMMD (Jayasumana et al. 2024, "Rethinking FID"): biased MMD^2 with a Gaussian RBF
  kernel on CLIP embeddings, scaled by 1000.
"""
import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from alter.utils.io import atomic_write

PathLike = Union[str, os.PathLike]


class FeatureStats:
    """Running mean and covariance of features (float64), saved/loaded as ``.npz``.

    Batches are merged with Chan et al.'s pairwise update (no sum of squares that
    cancels catastrophically). ``cov`` is the unbiased sample covariance (``ddof=1``),
    as pytorch-fid's ``np.cov``. Files hold ``mu``, ``sigma`` (pytorch-fid's key names)
    and ``num``.
    """

    def __init__(self, dim: int) -> None:
        self.num = 0
        self.mean = np.zeros(dim)
        self._m2 = np.zeros((dim, dim))  # sum of outer products of deviations from the mean

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def update(self, features: np.ndarray) -> 'FeatureStats':
        """Add features (B, D)."""
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f'expected features (B, {self.dim}), got {features.shape}')
        num = features.shape[0]
        if num == 0:
            return self
        mean = features.mean(axis=0)
        centred = features - mean
        delta = mean - self.mean
        total = self.num + num
        self._m2 += centred.T @ centred + np.outer(delta, delta) * (self.num * num / total)
        self.mean += delta * (num / total)
        self.num = total
        return self

    @classmethod
    def of(cls, features: np.ndarray) -> 'FeatureStats':
        """Statistics of features (N, D)."""
        return cls(np.shape(features)[1]).update(features)

    @property
    def cov(self) -> np.ndarray:
        """(D, D) unbiased covariance; needs at least two samples."""
        if self.num < 2:
            raise ValueError(f'a covariance needs at least 2 samples, got {self.num}')
        return self._m2 / (self.num - 1)

    def save(self, path: PathLike) -> Path:
        """Write ``mu``, ``sigma``, ``num`` to ``path`` (.npz) atomically."""
        def write(tmp: str) -> None:
            with open(tmp, 'wb') as f:  # a file object: np.savez would append '.npz' to a name
                np.savez(f, mu=self.mean, sigma=self.cov, num=self.num)

        return atomic_write(path, write)

    @classmethod
    def load(cls, path: PathLike) -> 'FeatureStats':
        with np.load(path) as data:
            missing = {'mu', 'sigma', 'num'} - set(data.files)
            if missing:
                raise ValueError(f'{path} is not a FeatureStats file: missing {sorted(missing)} '
                                 f'(has {data.files})')
            stats = cls(data['mu'].shape[0])
            stats.num = int(data['num'])
            stats.mean = data['mu'].astype(np.float64)
            stats._m2 = data['sigma'].astype(np.float64) * (stats.num - 1)
        return stats


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix."""
    eigenvalues, eigenvectors = np.linalg.eigh(matrix)
    return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T


class FrechetReference:
    """The Fréchet distance to one fixed Gaussian N(mu, sigma), its matrix square root
    computed once (bootstrap intervals evaluate many generated sets against it).

    ``tr (S1 S2)^(1/2)`` is the sum of square roots of the eigenvalues of
    ``S2^(1/2) S1 S2^(1/2)``, a symmetric PSD matrix similar to ``S1 S2``: a real
    ``eigh`` replaces scipy's complex ``sqrtm`` of the non-symmetric product, and
    rank-deficient covariances (fewer samples than dimensions) need no ``eps`` offset.
    """

    def __init__(self, mu: np.ndarray, sigma: np.ndarray) -> None:
        self.mu, self.sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        if self.sigma.shape != (self.mu.shape[0], self.mu.shape[0]):
            raise ValueError(f'shape mismatch: mu {self.mu.shape}, sigma {self.sigma.shape}')
        self.root = _psd_sqrt(self.sigma)
        self.trace = np.trace(self.sigma)

    def distance(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        """Fréchet distance of N(mu, sigma), mu (D,), sigma (D, D), to the reference."""
        mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        if mu.shape != self.mu.shape or sigma.shape != self.sigma.shape:
            raise ValueError(f'shape mismatch: mu {mu.shape} / {self.mu.shape}, '
                             f'sigma {sigma.shape} / {self.sigma.shape}')
        eigenvalues = np.linalg.eigvalsh(self.root @ sigma @ self.root)
        return self._distance(mu, np.trace(sigma), eigenvalues)

    def feature_distance(self, features: np.ndarray) -> float:
        """Fréchet distance of the Gaussian fitted to ``features`` (N, D) (mean, unbiased
        covariance) to the reference; equal to ``distance(mean, cov)``.

        With centred features X, ``S2^(1/2) S1 S2^(1/2) = B^T B`` for ``B = X S2^(1/2) /
        sqrt(N - 1)``, whose nonzero eigenvalues are those of ``B B^T`` (N x N): with
        fewer samples than dimensions (a bootstrap of 1,000 images in 1,280-d) the
        eigen-decomposition is of the smaller matrix.
        """
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.mu.shape[0] or len(features) < 2:
            raise ValueError(f'expected features (N >= 2, {self.mu.shape[0]}), got '
                             f'{features.shape}')
        mu = features.mean(0)
        centred = (features - mu) / np.sqrt(len(features) - 1)
        b = centred @ self.root
        gram = b @ b.T if len(b) < b.shape[1] else b.T @ b
        return self._distance(mu, np.square(centred).sum(), np.linalg.eigvalsh(gram))

    def _distance(self, mu: np.ndarray, trace: float, eigenvalues: np.ndarray) -> float:
        trace_sqrt = np.sqrt(np.clip(eigenvalues, 0, None)).sum()
        diff = mu - self.mu
        return float(diff @ diff + trace + self.trace - 2 * trace_sqrt)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D)
    (see ``FrechetReference``)."""
    return FrechetReference(mu2, sigma2).distance(mu1, sigma1)


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, m) kernel matrix ``(x y^T / d + 1)^3`` of x (n, d) and y (m, d)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of samples x (m, d) and y (m, d) under the cubic polynomial kernel:
    means of k(x_i, x_j) and k(y_i, y_j) over i != j, minus twice the mean of k(x_i, y_j)."""
    m = x.shape[0]
    kxx, kyy = _polynomial_kernel(x, x), _polynomial_kernel(y, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2 * _polynomial_kernel(x, y).mean())


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000,
                              generator: Optional[np.random.Generator] = None
                              ) -> Tuple[float, float]:
    """KID: mean and standard deviation (``ddof=0``) of the unbiased MMD^2 over ``subsets``
    random subsets; each draws ``subset_size`` rows of ``features1`` and then of
    ``features2`` without replacement (Bińkowski et al.; torch-fidelity's defaults).

    Features (N1, D) and (N2, D); ``generator`` defaults to ``np.random.default_rng(0)``.
    """
    features1 = np.asarray(features1, np.float64)
    features2 = np.asarray(features2, np.float64)
    smallest = min(len(features1), len(features2))
    if not 2 <= subset_size <= smallest:
        raise ValueError(f'KID subset_size must be in [2, {smallest}] (the smaller set has '
                         f'{smallest} samples), got {subset_size}; lower subset_size')
    rng = np.random.default_rng(0) if generator is None else generator
    values = []
    for _ in range(subsets):
        x = features1[rng.choice(len(features1), subset_size, replace=False)]
        y = features2[rng.choice(len(features2), subset_size, replace=False)]
        values.append(mmd2_unbiased(x, y))
    return float(np.mean(values)), float(np.std(values))


def _rbf_kernel_mean(x: np.ndarray, y: np.ndarray, sigma: float, block: int = 2048) -> float:
    """Mean over all (i, j) of ``exp(-|x_i - y_j|^2 / (2 sigma^2))``, x (n, d), y (m, d),
    ``block`` rows of x at a time (30k x 30k float64 kernels would need 7 GB)."""
    y_sqnorms = (y * y).sum(axis=1)
    total = 0.0
    for start in range(0, len(x), block):
        rows = x[start:start + block]
        sqdist = (rows * rows).sum(axis=1)[:, None] + y_sqnorms[None, :] - 2 * rows @ y.T
        # The expansion can go a rounding error below 0 where x_i == y_j.
        total += np.exp(-np.maximum(sqdist, 0) / (2 * sigma ** 2)).sum()
    return total / (len(x) * len(y))


def cmmd(x: np.ndarray, y: np.ndarray, sigma: float = 10.0, scale: float = 1000.0) -> float:
    """CMMD of features x (n, D) and y (m, D): ``scale * MMD^2`` under the Gaussian RBF
    kernel ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))``.

    ``MMD^2 = mean(K_xx) + mean(K_yy) - 2 mean(K_xy)`` over *all* entries, diagonals
    included: the biased V-statistic of the CMMD paper's reference code
    (google-research/google-research ``cmmd/distance.py``, sigma 10, scale 1000, on
    L2-normalised CLIP ViT-L/14-336 embeddings). It is >= 0 up to rounding and 0 for
    identical sets; unlike KID's unbiased estimate it depends on the set sizes.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or not len(x) or not len(y):
        raise ValueError(f'CMMD expects non-empty features (n, D) and (m, D), got {x.shape} '
                         f'and {y.shape}')
    if not sigma > 0:
        raise ValueError(f'CMMD kernel bandwidth sigma must be > 0, got {sigma}')
    return float(scale * (_rbf_kernel_mean(x, x, sigma) + _rbf_kernel_mean(y, y, sigma)
                          - 2 * _rbf_kernel_mean(x, y, sigma)))
