"""Figures of score and attention against distance, drawn from records or saved curves (never from a
live model). Figures are made on a ``matplotlib.figure.Figure`` with the Agg canvas, so the caller's
backend and pyplot's figure list are never touched.

A **curve** (what :func:`plot_score_curves` draws) is a dict::

    {"label": "rope", "distances": [...], "score": [...],            # required
     "score_lo": [...], "score_hi": [...],   # optional band (e.g. the min/max of a binned curve)
     "spread": [...],                         # optional ± band around 0 (e.g. the sd over random q, k)
     "weight": [...],                         # optional post-softmax weight per key
     "bound": [...],                          # optional ± envelope (RoPE's long-term-decay bound)
     "train_len": 128}

A **record** (``make_record`` row) with ``value`` = the score and the same optional fields is read as
the curve labelled by its ``method`` (and ``source``). Long dense curves are stored binned:
:func:`log_bins` and :func:`bin_curve` make the per-bin mean, min and max, so an oscillation too fast
to draw still shows as a filled band instead of aliasing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

__all__ = ["plot_score_curves", "log_bins", "bin_curve"]

_OPTIONAL = ("score_lo", "score_hi", "spread", "weight", "bound")


def log_bins(max_distance: int, *, dense: int = 64, per_decade: int = 48) -> list[int]:
    """Bin edges (ints, increasing, starting at 0 and ending at ``max_distance`` + 1): one bin per
    distance below ``dense``, then about ``per_decade`` log-spaced bins per decade. Bin j holds the
    distances edges[j] ≤ Δ < edges[j+1]."""
    for name, v in (("max_distance", max_distance), ("dense", dense), ("per_decade", per_decade)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "max_distance" else 1):
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    edges = list(range(min(dense, max_distance + 1)))
    x = float(max(dense, 1))
    while edges and edges[-1] < max_distance + 1:
        nxt = max(edges[-1] + 1, int(round(x)))
        edges.append(min(nxt, max_distance + 1))
        x *= 10 ** (1 / per_decade)
    return edges


def bin_curve(values: Any, distances: Any, edges: list[int]) -> dict[str, list[float]]:
    """Per-bin ``distances`` (each bin's first distance), ``mean``, ``min`` and ``max`` of a curve
    sampled at integer ``distances`` (1-D, any order); empty bins are dropped."""
    v = torch.as_tensor(values, dtype=torch.float64)
    d = torch.as_tensor(distances).long()
    if v.dim() != 1 or d.dim() != 1 or v.numel() != d.numel():
        raise ValueError(f"values, distances: expected two 1-D sequences of one length, got {tuple(v.shape)} "
                         f"and {tuple(d.shape)}")
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError("edges: expected at least two strictly increasing bin edges")
    out: dict[str, list[float]] = {"distances": [], "mean": [], "min": [], "max": []}
    for lo, hi in zip(edges, edges[1:]):
        sel = v[(d >= lo) & (d < hi)]
        if sel.numel():
            out["distances"].append(lo)
            out["mean"].append(float(sel.mean()))
            out["min"].append(float(sel.min()))
            out["max"].append(float(sel.max()))
    return out


def _as_curve(item: Mapping[str, Any], i: int) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise TypeError(f"curves[{i}]: expected a curve or record dict, got {type(item).__name__}")
    if "score" in item:
        curve = dict(item)
        curve.setdefault("label", f"curve {i}")
    elif "value" in item and "metric" in item:
        label = str(item.get("method", f"curve {i}"))
        if item.get("source"):
            label += f" ({item['source']})"
        curve = {"label": item.get("label", label), "score": item["value"], "distances": item.get("distances"),
                 "train_len": item.get("train_len"), **{k: item[k] for k in _OPTIONAL if item.get(k) is not None}}
    else:
        raise ValueError(f"curves[{i}]: needs 'score' (a curve) or 'metric' and 'value' (a record)")
    n = len(curve["score"]) if isinstance(curve["score"], (list, tuple)) else -1
    if n < 1 or not isinstance(curve.get("distances"), (list, tuple)) or len(curve["distances"]) != n:
        raise ValueError(f"curves[{i}] ({curve['label']}): 'score' and 'distances' must be lists of one length")
    for k in _OPTIONAL:
        if curve.get(k) is not None and (not isinstance(curve[k], (list, tuple)) or len(curve[k]) != n):
            raise ValueError(f"curves[{i}] ({curve['label']}): '{k}' must be a list as long as 'score' ({n})")
    return curve


def plot_score_curves(curves_or_records: Iterable[Mapping[str, Any]], path: str | Path, *, title: str | None = None,
                      weight_panel: bool = True, yscale: str = "symlog", linthresh: float = 1.0,
                      max_distance: float | None = None) -> Path:
    """Pre-softmax score (left) and post-softmax weight per key (right, log scale) against distance
    (log scale; Δ = 0 is not drawn on it), one colour per curve: a line, its ``score_lo``–``score_hi``
    band, a dotted ± ``spread`` band, RoPE's ± decay ``bound`` dashed, and a grey line at ``train_len``.
    Returns the PNG's path. Curves without ``weight`` are left out of the right panel (which is
    dropped when none has one, or with ``weight_panel=False``).

    ``yscale`` of the score panel: "symlog" (default: linear within ± ``linthresh``, logarithmic
    beyond, so a ±5 oscillation, a decay to 10⁻³ and ALiBi's −500 share one panel; the map is
    monotone, so it keeps every sign change and every monotone stretch as it is) or "linear".
    ``max_distance``: right end of the distance axis (default: the curves' own)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if yscale not in ("symlog", "linear"):
        raise ValueError(f"yscale: expected 'symlog' or 'linear', got {yscale!r}")
    if isinstance(linthresh, bool) or not isinstance(linthresh, (int, float)) or not linthresh > 0:
        raise ValueError(f"linthresh: expected a number > 0, got {linthresh!r}")
    curves = [_as_curve(c, i) for i, c in enumerate(curves_or_records)]
    if not curves:
        raise ValueError("curves_or_records: nothing to plot")
    panels = 2 if weight_panel and any(c.get("weight") is not None for c in curves) else 1
    fig = Figure(figsize=(6.2 * panels, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(curves))]
    train_lens = {int(c["train_len"]) for c in curves if c.get("train_len")}
    top = 0.0  # the largest weight drawn: the weight axis spans 12 decades below it
    for c, color in zip(curves, colors):
        d = torch.tensor(c["distances"], dtype=torch.float64)
        keep = d > 0
        x = d[keep].tolist()

        def sel(key: str) -> list[float]:
            return torch.tensor(c[key], dtype=torch.float64)[keep].tolist()

        ax = axes[0]
        ax.plot(x, sel("score"), color=color, lw=1.0, label=c["label"])
        if c.get("score_lo") is not None and c.get("score_hi") is not None:
            ax.fill_between(x, sel("score_lo"), sel("score_hi"), color=color, alpha=0.18, lw=0)
        if c.get("spread") is not None:
            s = sel("spread")
            ax.plot(x, s, color=color, lw=0.8, ls=":")
            ax.plot(x, [-v for v in s], color=color, lw=0.8, ls=":")
        if c.get("bound") is not None:
            b = sel("bound")
            ax.plot(x, b, color=color, lw=0.9, ls="--", label=f"{c['label']}: ± Su et al. decay bound")
            ax.plot(x, [-v for v in b], color=color, lw=0.9, ls="--")
        if panels == 2 and c.get("weight") is not None:
            w = [v if v > 0 else math.nan for v in sel("weight")]
            top = max([top, *[v for v in w if v == v]])
            axes[1].plot(x, w, color=color, lw=1.0, label=c["label"])
    axes[0].axhline(0.0, color="black", lw=0.5)
    if yscale == "symlog":
        axes[0].set_yscale("symlog", linthresh=linthresh)
        axes[0].set_ylabel(f"pre-softmax score q̃·k̃ (unscaled; symlog, linear within ±{linthresh:g})")
    else:
        axes[0].set_ylabel("pre-softmax score q̃·k̃ (unscaled)")
    if panels == 2:
        ax = axes[1]
        ax.set_yscale("log")
        if top > 0:
            ax.set_ylim(top * 1e-12, top * 2)
        ax.set_ylabel("post-softmax weight per key")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("distance Δ = m − n (tokens)")
        if max_distance is not None:
            ax.set_xlim(right=max_distance)
        for t in train_lens:
            ax.axvline(t, color="grey", lw=0.8, ls=":")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
