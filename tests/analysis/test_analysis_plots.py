"""Score-curve figures are written, non-empty and readable; the binning helpers against a naive loop."""

from __future__ import annotations

import math

import matplotlib.image
import pytest
import torch

from hopekit.analysis.plots import bin_curve, log_bins, plot_score_curves


def curve(label: str, n: int = 300, **extra) -> dict:
    d = list(range(n))
    return {"label": label, "distances": d, "score": [math.cos(0.3 * x) * math.exp(-x / 200) for x in d], **extra}


def test_curves_with_every_optional_band_make_a_readable_png(tmp_path):
    d = list(range(300))
    rope = curve("rope", score_lo=[-1.0] * 300, score_hi=[1.0] * 300, bound=[2.0 / (1 + x) for x in d],
                 weight=[1 / 300] * 300, train_len=128)
    hyp = curve("hope_hyperbolic", spread=[math.exp(-x / 50) for x in d], weight=[math.exp(-x / 50) for x in d])
    path = plot_score_curves([rope, hyp], tmp_path / "sub" / "curves.png", title="test", yscale="linear")
    assert path.exists() and path.stat().st_size > 0
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[1] > image.shape[0]          # two panels side by side


def test_records_are_read_as_curves(tmp_path):
    rows = [{"metric": "score_curve", "method": m, "source": "aligned", "value": curve(m)["score"],
             "distances": list(range(300)), "train_len": 128} for m in ("rope", "alibi")]
    path = plot_score_curves(rows, tmp_path / "records.png")
    image = matplotlib.image.imread(path)
    assert image.shape[1] < 1.6 * image.shape[0]                          # no weights: one panel
    assert path.stat().st_size > 0


@pytest.mark.parametrize("items, match, kwargs", [
    ([], r"^curves_or_records: nothing to plot", {}),
    ([{"label": "x", "score": [1.0, 2.0], "distances": [0]}], r"^curves\[0\] \(x\): 'score' and 'distances'", {}),
    ([{"label": "x", "score": [1.0], "distances": [0], "weight": [1.0, 2.0]}], r"^curves\[0\] \(x\): 'weight' must", {}),
    ([{"metric": "ppl"}], r"^curves\[0\]: needs 'score'", {}),
    ([curve("x")], r"^yscale: ", {"yscale": "log"}),
    ([curve("x")], r"^linthresh: ", {"linthresh": 0}),
])
def test_bad_curves_are_refused_naming_them(tmp_path, items, match, kwargs):
    with pytest.raises(ValueError, match=match):
        plot_score_curves(items, tmp_path / "x.png", **kwargs)


def test_log_bins_cover_every_distance_once():
    edges = log_bins(16384, dense=64, per_decade=48)
    assert edges[:65] == list(range(65)) and edges[-1] == 16385
    assert all(b > a for a, b in zip(edges, edges[1:]))
    assert len(edges) < 64 + 48 * 3
    assert log_bins(10) == list(range(12))


def test_bin_curve_matches_a_naive_loop():
    values = torch.randn(1000, dtype=torch.float64)
    distances = torch.arange(1000)
    edges = log_bins(999, dense=8, per_decade=10)
    got = bin_curve(values, distances, edges)
    for j, (lo, hi) in enumerate(zip(edges, edges[1:])):
        chunk = values[lo:hi].tolist()
        assert got["distances"][j] == lo
        assert got["mean"][j] == pytest.approx(sum(chunk) / len(chunk), rel=1e-12, abs=1e-15)
        assert got["min"][j] == min(chunk) and got["max"][j] == max(chunk)
