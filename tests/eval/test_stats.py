"""hopekit.eval.stats against independent references: a numerical integral of the Student-t density,
the standard library's statistics module, and the normal approximation of the bootstrap."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from hopekit.eval.stats import bootstrap_ppl, paired_ratio, summarize, t_quantile


def _t_cdf(x: float, df: int, steps: int = 20000) -> float:
    """P(T <= x) for x > 0 by Simpson's rule on the t density from 0 to x (plus 1/2)."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    f = lambda t: c * (1 + t * t / df) ** (-(df + 1) / 2)  # noqa: E731
    h = x / steps
    s = f(0) + f(x) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return 0.5 + s * h / 3


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 7, 10, 15, 20, 29, 30, 31, 40, 60, 120])
def test_t_quantiles_are_the_975_point_of_the_t_distribution(df):
    assert _t_cdf(t_quantile(df), df) == pytest.approx(0.975, abs=2e-5)


def test_t_quantile_refuses_what_it_cannot_give():
    with pytest.raises(ValueError, match="confidence=0.9"):
        t_quantile(3, 0.9)
    with pytest.raises(ValueError, match="df=0"):
        t_quantile(0)


def test_summarize_matches_the_statistics_module():
    xs = [7.1, 7.9, 6.8, 7.35]
    s = summarize(xs)
    assert s.n == 4 and s.mean == pytest.approx(statistics.fmean(xs)) and s.sd == pytest.approx(statistics.stdev(xs))
    half = t_quantile(3) * statistics.stdev(xs) / 2
    assert (s.low, s.high) == pytest.approx((s.mean - half, s.mean + half))
    one = summarize([3.0])
    assert (one.n, one.mean, one.sd, one.low, one.high) == (1, 3.0, None, None, None) and not one.separated()
    with pytest.raises(ValueError, match="not finite"):
        summarize([1.0, float("nan")])
    with pytest.raises(ValueError, match="at least one"):
        summarize([])


def test_paired_ratio_is_the_mean_log_ratio_by_seed():
    base = [2.0, 2.1, 1.9]
    nll = [2.05, 2.12, 1.96]
    r = paired_ratio(nll, base)
    d = [a - b for a, b in zip(nll, base)]
    assert r.mean == pytest.approx(100 * (math.exp(statistics.fmean(d)) - 1))
    assert r.sd == pytest.approx(statistics.stdev(d))
    assert r.low < r.mean < r.high and r.separated() == (r.low > 0)
    # identical methods are never separated; a constant shift with no spread is
    same = paired_ratio(base, base)
    assert same.mean == 0 and not same.separated()
    with pytest.raises(ValueError, match="pair them by seed"):
        paired_ratio([1.0], base)


def test_bootstrap_of_identical_windows_collapses_and_noisy_windows_follow_the_normal_approximation():
    low, high = bootstrap_ppl([2.0] * 50, [10] * 50)
    assert low == pytest.approx(math.exp(0.2)) and high == pytest.approx(math.exp(0.2))
    g = torch.Generator().manual_seed(1)
    per = 2.0 + 0.3 * torch.randn(800, generator=g, dtype=torch.float64)   # mean NLL per 64-token window
    low, high = bootstrap_ppl((per * 64).tolist(), [64] * 800, resamples=4000)
    se = float(per.std()) / math.sqrt(800)
    centre = math.exp(float(per.mean()))
    assert low < centre < high
    assert math.log(high / low) == pytest.approx(2 * 1.96 * se, rel=0.1)
    assert all(math.isnan(x) for x in bootstrap_ppl([], []))           # nothing scored
    with pytest.raises(ValueError, match="3 window NLLs against 2"):
        bootstrap_ppl([1.0, 2.0, 3.0], [1, 1])
