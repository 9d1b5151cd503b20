"""Bootstrap intervals against closed forms and their defining properties."""
import numpy as np
import pytest

from alter.evaluation.intervals import (bootstrap_indices, mean_interval, paired_difference,
                                        seed_interval, statistic_interval, student_t_quantile,
                                        summary)


def test_mean_interval_matches_the_normal_approximation():
    # 0/1 scores with p = 0.3: the 95 % interval of the mean is p -+ 1.96 sqrt(p (1 - p) / n).
    values = (np.random.default_rng(0).random(4000) < 0.3).astype(float)
    p, n = values.mean(), len(values)
    low, high = mean_interval(values, resamples=2000)
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    assert low == pytest.approx(p - half, abs=0.15 * half)
    assert high == pytest.approx(p + half, abs=0.15 * half)


def test_nan_marks_images_a_score_does_not_apply_to():
    values = np.array([1.0, np.nan, 0.0, 1.0, np.nan, 1.0])
    stats = summary(values)
    assert stats['mean'] == pytest.approx(0.75)
    assert 0 <= stats['ci_low'] <= 0.75 <= stats['ci_high'] <= 1
    assert np.isnan(summary(np.full(3, np.nan))['mean'])


def test_paired_difference_removes_the_prompt_to_prompt_spread():
    rng = np.random.default_rng(1)
    prompt_effect = rng.normal(0, 5, 1000)  # shared by both methods
    a = prompt_effect + rng.normal(0, 0.1, 1000) + 0.2
    b = prompt_effect + rng.normal(0, 0.1, 1000)
    paired = paired_difference(a, b)
    assert paired['num'] == 1000
    assert paired['ci_low'] > 0.18 and paired['ci_high'] < 0.22  # resolves the 0.2 shift
    a_low, a_high = mean_interval(a)
    b_low, b_high = mean_interval(b)
    assert a_low < b_high and b_low < a_high  # separate intervals overlap: not resolved
    same = paired_difference(b, b)
    assert same['mean'] == same['ci_low'] == same['ci_high'] == 0
    with pytest.raises(ValueError, match='one length'):
        paired_difference(a, b[:10])


def test_statistic_interval_resamples_whole_sets():
    values = np.arange(100, dtype=float)
    low, high = statistic_interval(lambda idx: values[idx].max(), 100, resamples=200)
    assert low >= 95 and high == 99  # the max of a draw is rarely far below the true max
    draws = bootstrap_indices(5, 3, seed=7)
    assert draws.shape == (3, 5) and np.array_equal(draws, bootstrap_indices(5, 3, seed=7))
    with pytest.raises(ValueError, match='resamples'):
        bootstrap_indices(5, 0)


@pytest.mark.parametrize('dof, expected', [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)])
def test_student_t_quantiles_match_the_tables(dof, expected):
    assert student_t_quantile(0.975, dof) == pytest.approx(expected, abs=1e-4)


def test_seed_interval_is_the_t_interval_over_runs():
    means = np.array([-0.302, 0.168, 0.230])
    low, high = seed_interval(means)
    half = 4.3027 * means.std(ddof=1) / np.sqrt(3)
    assert (low, high) == pytest.approx((means.mean() - half, means.mean() + half), abs=1e-4)
    assert low < 0 < high  # three runs this far apart resolve nothing
    with pytest.raises(ValueError, match='at least two runs'):
        seed_interval(np.array([0.1]))
