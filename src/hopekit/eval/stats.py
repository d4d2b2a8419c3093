"""The statistics every report uses: mean ± sd and a Student-t interval over seeds, paired differences
between methods trained with the same seeds, and a bootstrap over evaluation windows.

Two sources of variation, kept apart:

* **Seeds** (training): each method is trained with seeds s = 0 … n−1. A cell of a report is the mean
  over seeds, its sample standard deviation (ddof 1) and the two-sided Student-t interval
  ``mean ± t(n−1) · sd / √n``. With 3 seeds t(2) = 4.30, so an interval is about ±2.5 sd: honest, wide.
* **Windows** (evaluation): the perplexity of one model is a token-weighted mean over windows;
  :func:`bootstrap_ppl` resamples those windows (percentile bootstrap, fixed generator seed) to say how
  much the number would move with other windows of the same split. It treats windows as independent;
  windows of one document are correlated, so it understates the spread across documents. It is recorded
  with each measurement; when it is not well below the seed spread, the evaluation budget is too small
  for the absolute numbers (comparisons share the windows: every method and seed is scored on the same).

Methods are compared **paired by seed** (the same seed gives the same initialisation stream and the same
training batches): :func:`paired_ratio` is the mean over seeds of the log-perplexity difference, reported
as a relative change in perplexity with its t interval. Two methods are *separated at 95 %* when that
interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Summary", "summarize", "t_quantile", "paired_ratio", "bootstrap_ppl"]

#: two-sided 95 % Student-t quantiles t_{0.975}(df) for df = 1 … 30 (tests check them against a numerical
#: integral of the t density)
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
         2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
         2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t_quantile(df: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t quantile ``t_{(1+confidence)/2}(df)``. Only ``confidence=0.95`` is
    supported (a table for df ≤ 30, Cornish–Fisher's expansion of the normal quantile above, within
    1e-4 there)."""
    if confidence != 0.95:
        raise ValueError(f"confidence={confidence!r}: only 0.95 is supported")
    if isinstance(df, bool) or not isinstance(df, int) or df < 1:
        raise ValueError(f"df={df!r}: expected an int >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959963984540054
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


@dataclass(frozen=True)
class Summary:
    """``n`` values: their mean, sample sd (None for n = 1) and t interval ``(low, high)`` (None for n = 1)."""

    n: int
    mean: float
    sd: float | None
    low: float | None
    high: float | None

    def separated(self, value: float = 0.0) -> bool:
        """Whether the interval excludes ``value`` (False without an interval)."""
        return self.low is not None and (self.low > value or self.high < value)


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean, sd (ddof 1) and the Student-t interval of ``values`` (finite numbers; at least one)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("values: expected at least one number")
    bad = [v for v in xs if not math.isfinite(v)]
    if bad:
        raise ValueError(f"values: {bad[0]!r} is not finite (got {xs})")
    n = len(xs)
    mean = math.fsum(xs) / n
    if n == 1:
        return Summary(1, mean, None, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
    return Summary(n, mean, sd, mean - half, mean + half)


def paired_ratio(nll: Sequence[float], baseline_nll: Sequence[float], confidence: float = 0.95) -> Summary:
    """The relative change in perplexity of a method against a baseline, paired by seed, in percent:
    ``100 · (exp(d) − 1)`` of the mean per-seed log-perplexity difference ``d = nll − baseline_nll``, with
    the t interval of ``d`` mapped the same way (the map is monotone, so "excludes 0" is preserved).
    ``sd`` is that of ``d`` (nats)."""
    if len(nll) != len(baseline_nll):
        raise ValueError(f"paired_ratio: {len(nll)} values against {len(baseline_nll)} baseline values "
                         f"(pair them by seed)")
    d = summarize([a - b for a, b in zip(nll, baseline_nll)], confidence)
    pct = lambda x: None if x is None else 100.0 * math.expm1(x)  # noqa: E731
    return Summary(d.n, pct(d.mean), d.sd, pct(d.low), pct(d.high))


def bootstrap_ppl(window_nll: Sequence[float], window_tokens: Sequence[int], *, confidence: float = 0.95,
                  resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``exp(Σ nll / Σ tokens)`` resampling windows with replacement
    (a ``torch.Generator`` seeded with ``seed``: the same inputs give the same interval). ``(nan, nan)``
    for no windows."""
    import torch

    if len(window_nll) != len(window_tokens):
        raise ValueError(f"bootstrap_ppl: {len(window_nll)} window NLLs against {len(window_tokens)} token counts")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r}: expected a number in (0, 1)")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples={resamples!r}: expected an int >= 1")
    n = len(window_nll)
    if n == 0:
        return math.nan, math.nan
    nll = torch.tensor(window_nll, dtype=torch.float64)
    tok = torch.tensor(window_tokens, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(resamples, dtype=torch.float64)
    per_chunk = max(1, (1 << 22) // n)                     # bound the index matrix to ~4M entries
    for s in range(0, resamples, per_chunk):
        e = min(s + per_chunk, resamples)
        idx = torch.randint(0, n, (e - s, n), generator=g)
        out[s:e] = torch.exp(nll[idx].sum(1) / tok[idx].sum(1).clamp_min(1))
    alpha = (1 - confidence) / 2
    q = torch.quantile(out, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])
