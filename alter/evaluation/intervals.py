"""Bootstrap confidence intervals for evaluation results.

Every method of a study is sampled for the same prompts from the same initial noise,
so per-image scores of two methods are *paired*: the interval of their difference
resamples prompts once for both (``paired_difference``), which removes the
prompt-to-prompt spread that two separate intervals would carry.

All intervals are percentile bootstraps over images (Efron & Tibshirani 1993, §13):
``resamples`` draws of N indices with replacement from ``np.random.default_rng(seed)``,
the statistic on each draw, and the (2.5, 97.5) percentiles for a 95 % interval.
NaN marks an image a score does not apply to (e.g. the relation of a one-object
prompt); means ignore it.

Images are not the only source of spread: a training run is one draw of its seed.
``seed_interval`` gives the Student-t interval of a mean over independent runs
(e.g. one paired difference per training seed), the interval a claim about the
method, not about the trained checkpoints, needs.
"""
import math
import warnings
from typing import Callable, Dict, Tuple

import numpy as np

LEVEL = 0.95


def bootstrap_indices(num: int, resamples: int, seed: int = 0) -> np.ndarray:
    """(resamples, num) indices drawn with replacement from range(num)."""
    if num < 1 or resamples < 1:
        raise ValueError(f'a bootstrap needs num >= 1 values and resamples >= 1, got num={num}, '
                         f'resamples={resamples}')
    return np.random.default_rng(seed).integers(0, num, size=(resamples, num))


def _percentiles(draws: np.ndarray, level: float) -> Tuple[float, float]:
    tail = 100 * (1 - level) / 2
    # 'nearest': a bound is one of the draws, so infinite draws (PSNR of identical
    # images) give an infinite bound instead of inf - inf = NaN from interpolating.
    low, high = np.nanpercentile(draws, [tail, 100 - tail], method='nearest')
    return float(low), float(high)


def statistic_interval(statistic: Callable[[np.ndarray], float], num: int,
                       resamples: int = 200, seed: int = 0,
                       level: float = LEVEL) -> Tuple[float, float]:
    """Interval of ``statistic(indices)`` over bootstrap draws of ``num`` items (for
    statistics of a whole set, such as FID of the features ``features[indices]``)."""
    draws = np.array([statistic(idx) for idx in bootstrap_indices(num, resamples, seed)])
    return _percentiles(draws, level)


def mean_interval(values: np.ndarray, resamples: int = 1000, seed: int = 0,
                  level: float = LEVEL) -> Tuple[float, float]:
    """Interval of the mean of per-image ``values`` (N,), NaN ignored."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f'expected per-image values (N,), got shape {values.shape}')
    if np.isnan(values).all():
        return float('nan'), float('nan')
    draws = values[bootstrap_indices(len(values), resamples, seed)]  # (resamples, N)
    with warnings.catch_warnings():  # a draw of NaN only has no mean: it stays NaN, ignored
        warnings.simplefilter('ignore', RuntimeWarning)
        means = np.nanmean(draws, axis=1)
    return _percentiles(means, level)


def summary(values: np.ndarray, resamples: int = 1000, seed: int = 0) -> Dict[str, float]:
    """``mean``, ``ci_low``, ``ci_high`` of per-image ``values`` (N,)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = mean_interval(values, resamples, seed)
    mean = float(np.nanmean(values)) if not np.isnan(values).all() else float('nan')
    return dict(mean=mean, ci_low=low, ci_high=high)


def paired_difference(a: np.ndarray, b: np.ndarray, resamples: int = 1000,
                      seed: int = 0) -> Dict[str, float]:
    """Mean of ``a - b`` over images scored in both, with its paired bootstrap interval.

    Args:
        a, b: (N,) per-image scores of two methods on the same prompts and noise.
    Returns:
        ``mean``, ``ci_low``, ``ci_high`` of the difference, and ``num`` images used.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f'paired scores must be two (N,) arrays of one length, got shapes '
                         f'{a.shape} and {b.shape}')
    difference = (a - b)[~(np.isnan(a) | np.isnan(b))]
    if len(difference) == 0:
        return dict(mean=float('nan'), ci_low=float('nan'), ci_high=float('nan'), num=0)
    return dict(summary(difference, resamples, seed), num=len(difference))


def student_t_quantile(probability: float, dof: int) -> float:
    """Quantile of Student's t with ``dof`` degrees of freedom, for probability in (0.5, 1):
    bisection on the CDF, whose density is integrated with Simpson's rule (error < 1e-7)."""
    log_norm = (math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2)
                - 0.5 * math.log(dof * math.pi))

    def cdf(x: float) -> float:  # x >= 0
        t = np.linspace(0.0, x, 4001)
        density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(t * t / dof))
        weights = np.ones_like(t)
        weights[1:-1:2], weights[2:-1:2] = 4, 2
        return 0.5 + float((weights * density).sum() * (x / 4000) / 3)

    low, high = 0.0, 1.0
    while cdf(high) < probability:
        high *= 2
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < probability else (low, mid)
    return (low + high) / 2


def seed_interval(means: np.ndarray, level: float = LEVEL) -> Tuple[float, float]:
    """Student-t ``level`` interval of the mean of independent runs' ``means`` (S,), S >= 2:
    mean +- t_{(1 + level) / 2, S - 1} * sd / sqrt(S)."""
    means = np.asarray(means, dtype=np.float64)
    if means.ndim != 1 or len(means) < 2:
        raise ValueError(f'a between-run interval needs the means of at least two runs, got '
                         f'shape {means.shape}')
    half = (student_t_quantile((1 + level) / 2, len(means) - 1)
            * means.std(ddof=1) / math.sqrt(len(means)))
    return float(means.mean() - half), float(means.mean() + half)
