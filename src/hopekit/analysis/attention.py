"""Where a trained model's attention goes on real text: the U-shape index per layer and head, the mean
weight against key position and against distance, and the far-token mass against length.

::

    from hopekit.analysis.attention import attention_profile, far_mass_vs_length, text_windows

    windows = text_windows(test_documents, length=128, count=64)           # (64, 128) token ids
    prof = attention_profile(model, windows, first=4, near=16)             # a Decoder or a transformers LM
    prof.u_index.mean(0)                                                   # (layers, heads)
    far = far_mass_vs_length(model, test_documents, [128, 256, 512], beyond=128, windows=4)
    far[512].mass.mean(0)                                                  # (layers, heads)

**The last queries.** Every number here is taken over the *last queries* of a window: its last
``last`` rows (default a quarter of the window, ``T // 4``), the queries that see the most context.
For a query at m the keys are n = 0 … m (causal).

**U-shape index** (:func:`hopekit.analysis.metrics.u_shape_index`): the keys of a query fall into
*first* (n < ``first``), *near* (Δ = m − n < ``near``) and *middle* (the rest); a group's density is its
post-softmax mass per key. The index is ln(min(first, near) / middle), averaged densities over the
last queries of one window; positive iff both ends are denser than the middle (a U), 0 for uniform
attention, negative for purely local attention. It is computed per window and reported as mean ± sd
over windows (:class:`AttentionProfile`).

**Curves.** ``by_key[l, h, n]``: the mean weight on key n over the last queries that can see it
(m ≥ n) and the windows; ``by_distance[l, h, Δ]``: the mean weight at distance Δ over the last queries
with m ≥ Δ and the windows; ``last_query[l, h, n]``: the last row's weights, mean over windows.

**Far-token mass** (:func:`hopekit.analysis.metrics.far_token_mass`): the weight a query puts on keys
more than ``beyond`` back (Δ > ``beyond``), mean over the last queries of a window. Uniform attention
over the m + 1 causal keys gives (m − beyond) / (m + 1).

**Models.** A hopekit :class:`~hopekit.model.Decoder` (weights recomputed per layer,
:func:`hopekit.analysis.capture.iter_attention`) or a transformers causal LM loaded with eager attention
(its own weights, :func:`hopekit.analysis.capture.hf_attention`, all layers of a window at once: a
30-layer, 9-head model at 2,048 tokens holds 4.5 GB of float32 weights, so pass ``batch=1``).

**Records and plots.** :func:`profile_records` and :func:`far_mass_records` turn results into record
rows (:func:`hopekit.eval.records.make_record`; metrics ``u_shape_index``,
``attention_density_first`` / ``_middle`` / ``_near``, ``far_token_mass``, and the curves
``attention_by_key_last``, ``attention_by_distance``: per layer, mean over heads). The plots
(:func:`plot_u_heatmap`, :func:`plot_attention_by_key`, :func:`plot_far_mass`) read records only.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from .capture import hf_attention, iter_attention
from .metrics import far_token_mass, u_shape_index

__all__ = ["AttentionProfile", "FarMass", "text_windows", "layer_attention", "attention_profile", "attention_profiles",
           "far_mass_vs_length", "uniform_far_mass", "profile_records", "far_mass_records", "plot_u_heatmap",
           "plot_attention_by_key", "plot_far_mass", "DENSITY_METRICS"]

#: record metric names of the three group densities, in the order first, middle, near
DENSITY_METRICS = ("attention_density_first", "attention_density_middle", "attention_density_near")


# --------------------------------------------------------------------------------------------------
# Text windows and the weights of each layer
# --------------------------------------------------------------------------------------------------


def text_windows(documents: Sequence[torch.Tensor] | torch.Tensor, length: int, count: int) -> torch.Tensor:
    """``(k, length)`` int64 windows of real text: the non-overlapping ``length``-token windows of each
    document (none crosses a document boundary), ``k = min(count, available)`` of them taken at evenly
    spaced indices ``floor((j + ½) · n / k)`` of the list in document order (the rule of the perplexity
    evaluation's ``"spread"`` sampling), so they cover the whole split. Deterministic."""
    for name, v in (("length", length), ("count", count)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    docs = [documents] if isinstance(documents, torch.Tensor) else list(documents)
    if not docs:
        raise ValueError("documents: expected at least one token tensor, got none")
    starts: list[tuple[int, int]] = []
    for i, d in enumerate(docs):
        d = torch.as_tensor(d)
        if d.dim() != 1:
            raise ValueError(f"documents[{i}]: expected a 1-D token tensor, got shape {tuple(d.shape)}")
        starts += [(i, s) for s in range(0, d.numel() - length + 1, length)]
    n = len(starts)
    if n == 0:
        longest = max(torch.as_tensor(d).numel() for d in docs)
        raise ValueError(f"length={length}: no document holds a window of that many tokens (longest {longest})")
    k = min(count, n)
    chosen = [starts[((2 * j + 1) * n) // (2 * k)] for j in range(k)]
    return torch.stack([torch.as_tensor(docs[i])[s:s + length].long() for i, s in chosen])


def _is_decoder(model: Any) -> bool:
    from hopekit.model import Decoder

    return isinstance(model, Decoder)


@torch.no_grad()
def layer_attention(model: Any, idx: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """``(layer, weights (B, H, T, T) float32)`` for each layer of a hopekit Decoder (recomputed one layer
    at a time) or a transformers causal LM with eager attention (its own weights)."""
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx: expected (B, T) int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
    if _is_decoder(model):
        for qk, w in iter_attention(model, idx):
            yield qk.layer, w
        return
    if not hasattr(model, "config"):
        raise TypeError(f"model: expected a hopekit Decoder or a transformers causal LM, got {type(model).__name__}")
    was_training = model.training
    model.eval()
    try:
        weights = hf_attention(model, idx)
    finally:
        model.train(was_training)
    for layer in range(weights.shape[0]):
        yield layer, weights[layer]


def _last(last: int | None, T: int) -> int:
    if last is None:
        return max(1, T // 4)
    if isinstance(last, bool) or not isinstance(last, int) or not 1 <= last <= T:
        raise ValueError(f"last: expected an int in [1, {T}] (rows of a {T}-token window), got {last!r}")
    return last


def _batches(windows: torch.Tensor, batch: int) -> Iterator[torch.Tensor]:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected an int >= 1, got {batch!r}")
    for s in range(0, windows.shape[0], batch):
        yield windows[s:s + batch]


def _check_windows(windows: torch.Tensor) -> torch.Tensor:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise ValueError(f"windows: expected (count >= 1, length >= 2) token ids, got {shape}")
    if windows.dtype != torch.long:
        raise ValueError(f"windows: expected int64 token ids, got {windows.dtype}")
    return windows


# --------------------------------------------------------------------------------------------------
# The profile at one length
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class AttentionProfile:
    """Attention of one model on ``windows`` windows of ``length`` tokens (module docstring).

    Per window (``W``), layer (``L``) and head (``H``): ``u_index`` and the group densities
    ``density_first`` / ``density_middle`` / ``density_near`` ``(W, L, H)`` float64. Curves ``(L, H, T)``
    float64: ``by_key``, ``by_distance``, ``last_query``. ``first`` / ``near``: the group sizes; ``last``:
    the query rows used (the last ``last`` of each window)."""

    length: int
    windows: int
    first: int
    near: int
    last: int
    u_index: torch.Tensor
    density_first: torch.Tensor
    density_middle: torch.Tensor
    density_near: torch.Tensor
    by_key: torch.Tensor
    by_distance: torch.Tensor
    last_query: torch.Tensor

    @property
    def layers(self) -> int:
        return self.u_index.shape[1]

    @property
    def heads(self) -> int:
        return self.u_index.shape[2]


def _distance_index(q0: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows m = q0 … T−1 and Δ = 0 … T−1: the key index m − Δ (clamped) and whether it exists."""
    m = torch.arange(q0, T)[:, None]
    key = m - torch.arange(T)[None, :]
    return key.clamp_min(0), key >= 0


@torch.no_grad()
def attention_profile(model: Any, windows: torch.Tensor, *, first: int = 4, near: int = 16,
                      last: int | None = None, batch: int = 8) -> AttentionProfile:
    """The :class:`AttentionProfile` of ``model`` (a hopekit Decoder or a transformers causal LM with eager
    attention) on ``windows`` ``(W, T)`` token ids, ``batch`` windows per forward. ``first`` / ``near``:
    the U-shape groups (keys n < first; Δ < near); ``last``: how many final rows of each window are the
    queries (default ``T // 4``); each needs three non-empty groups (m ≥ first + near)."""
    return attention_profiles(model, windows, [(first, near)], last=last, batch=batch)[0]


@torch.no_grad()
def attention_profiles(model: Any, windows: torch.Tensor, groups: Sequence[tuple[int, int]], *,
                       last: int | None = None, batch: int = 8) -> list[AttentionProfile]:
    """:func:`attention_profile` for several ``(first, near)`` group sizes from the same forwards (one
    profile per entry of ``groups``; the curves are shared)."""
    windows = _check_windows(windows)
    W, T = windows.shape
    last = _last(last, T)
    q0 = T - last
    groups = [tuple(g) for g in groups]
    if not groups or any(len(g) != 2 for g in groups):
        raise ValueError(f"groups: expected a non-empty list of (first, near) pairs, got {groups!r}")
    for first, near in groups:
        if q0 < first + near:
            raise ValueError(f"last={last}: the first query row {q0} of a {T}-token window has no middle keys with "
                             f"first={first}, near={near} (needs T − last ≥ first + near = {first + near})")
    q_pos, k_pos = torch.arange(q0, T), torch.arange(T)
    d_key, d_ok = _distance_index(q0, T)                                  # (Q, T)
    key_rows = (q_pos[:, None] >= k_pos[None, :]).sum(0).double()        # rows that see key n
    dist_rows = d_ok.sum(0).double()                                      # rows with m ≥ Δ
    names = ("index", "first", "middle", "near")
    per_window: list[dict[str, list[torch.Tensor]]] = [defaultdict(list) for _ in groups]
    sums: dict[str, torch.Tensor] = {}
    for idx in _batches(windows, batch):
        rows: list[dict[str, list[torch.Tensor]]] = [defaultdict(list) for _ in groups]
        curves: dict[str, list[torch.Tensor]] = defaultdict(list)
        for _, w in layer_attention(model, idx):
            sel = w[:, :, q0:, :].double()                                # (B, H, Q, T)
            for g, (first, near) in enumerate(groups):
                u = u_shape_index(sel, q_pos, k_pos, first=first, near=near)   # each (B, H)
                for name in names:
                    rows[g][name].append(u[name])
            curves["by_key"].append(sel.sum(2).sum(0))                                  # (H, T)
            curves["by_distance"].append(
                (sel.gather(-1, d_key.expand(*sel.shape[:2], -1, -1)) * d_ok).sum(2).sum(0))
            curves["last_query"].append(sel[:, :, -1, :].sum(0))
        for g in range(len(groups)):
            for name in names:
                per_window[g][name].append(torch.stack(rows[g][name], dim=1))   # (B, L, H)
        for name, c in curves.items():
            c = torch.stack(c)                                                   # (L, H, T)
            sums[name] = c if name not in sums else sums[name] + c
    shared = dict(by_key=sums["by_key"] / (W * key_rows.clamp_min(1)), by_distance=sums["by_distance"] / (W * dist_rows),
                  last_query=sums["last_query"] / W)
    out = []
    for (first, near), pw in zip(groups, per_window):
        cat = {k: torch.cat(v) for k, v in pw.items()}
        out.append(AttentionProfile(length=T, windows=W, first=first, near=near, last=last, u_index=cat["index"],
                                    density_first=cat["first"], density_middle=cat["middle"],
                                    density_near=cat["near"], **shared))
    return out


# --------------------------------------------------------------------------------------------------
# Far-token mass against length
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class FarMass:
    """Far-token mass at one length: ``mass`` ``(W, L, H)`` float64, the weight on keys more than
    ``beyond`` back, mean over the last ``last`` queries of each of ``windows`` windows."""

    length: int
    windows: int
    beyond: int
    last: int
    mass: torch.Tensor


def uniform_far_mass(length: int, beyond: int, last: int | None = None) -> float:
    """The far-token mass of uniform causal attention, mean over the last ``last`` queries of a window of
    ``length`` tokens (default ``length // 4``): mean over m of max(0, m − beyond) / (m + 1)."""
    last = _last(last, length)
    ms = range(length - last, length)
    return math.fsum(max(0, m - beyond) / (m + 1) for m in ms) / last


@torch.no_grad()
def far_mass_vs_length(model: Any, text_ids: Sequence[torch.Tensor] | torch.Tensor, lengths: Sequence[int], *,
                       beyond: int = 128, windows: int = 4, last: int | None = None,
                       batch: int = 1) -> dict[int, FarMass]:
    """The far-token mass of ``model``'s last queries at each of ``lengths``: :func:`text_windows` of
    ``text_ids`` (documents, or one 1-D stream), ``windows`` of them per length, ``last`` final rows of
    each (default a quarter of the length). Returns ``{length: FarMass}``."""
    if isinstance(lengths, (str, bytes)) or not lengths:
        raise ValueError(f"lengths: expected a non-empty list of ints >= 2, got {lengths!r}")
    bad = [L for L in lengths if isinstance(L, bool) or not isinstance(L, int) or L < 2]
    if bad:
        raise ValueError(f"lengths: {bad[0]!r} is not an int >= 2 (got {list(lengths)})")
    if isinstance(beyond, bool) or not isinstance(beyond, int) or beyond < 0:
        raise ValueError(f"beyond: expected an int >= 0, got {beyond!r}")
    out: dict[int, FarMass] = {}
    for L in lengths:
        wins = text_windows(text_ids, L, windows)
        n_last = _last(last if last is None else min(last, L), L)
        q_pos, k_pos = torch.arange(L - n_last, L), torch.arange(L)
        per: list[torch.Tensor] = []
        for idx in _batches(wins, batch):
            layers = [far_token_mass(w[:, :, L - n_last:, :], q_pos, k_pos, beyond).mean(-1)   # (B, H)
                      for _, w in layer_attention(model, idx)]
            per.append(torch.stack(layers, dim=1))                                           # (B, L, H)
        out[L] = FarMass(length=L, windows=wins.shape[0], beyond=beyond, last=n_last, mass=torch.cat(per))
    return out


# --------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------


def _sd(x: torch.Tensor) -> float | None:
    return float(x.std(unbiased=True)) if x.numel() > 1 else None


def _curve(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.5g}") for v in values.tolist()]


def profile_records(profile: AttentionProfile, *, curves: bool = True, **fields: Any) -> list[dict[str, Any]]:
    """Record rows of a profile. ``fields``: the required record fields the profile does not know
    (``method``, ``params``, ``train_len``, ``seed``, ``model``, ``corpus``) and any extra ones.

    Per (layer, head): ``u_shape_index`` and the three densities (:data:`DENSITY_METRICS`), ``value`` the
    mean over windows, ``sd_windows`` their sd. Per layer (``head`` None, mean over heads): the curves
    ``attention_by_key_last`` (``value`` over key positions 0 … T−1) and ``attention_by_distance``
    (over Δ = 0 … T−1); ``curves=False`` leaves them out (a second group rule on the same forwards)."""
    from hopekit.eval.records import make_record

    common = dict(fields, eval_len=profile.length, task="attention", windows=profile.windows,
                  first=profile.first, near=profile.near, last_queries=profile.last)
    rows = []
    per = {"u_shape_index": profile.u_index, DENSITY_METRICS[0]: profile.density_first,
           DENSITY_METRICS[1]: profile.density_middle, DENSITY_METRICS[2]: profile.density_near}
    for layer in range(profile.layers):
        for head in range(profile.heads):
            for metric, t in per.items():
                x = t[:, layer, head]
                rows.append(make_record(**common, metric=metric, layer=layer, head=head, value=float(x.mean()),
                                        sd_windows=_sd(x)))
    for layer in range(profile.layers if curves else 0):
        rows.append(make_record(**common, metric="attention_by_key_last", layer=layer, head=None,
                                value=_curve(profile.last_query[layer].mean(0))))
        rows.append(make_record(**common, metric="attention_by_distance", layer=layer, head=None,
                                value=_curve(profile.by_distance[layer].mean(0))))
    return rows


def far_mass_records(result: dict[int, FarMass], **fields: Any) -> list[dict[str, Any]]:
    """``far_token_mass`` rows, one per length, layer and head: ``value`` the mean over windows,
    ``sd_windows``, ``beyond``, ``last_queries``, ``windows``, and ``uniform`` (what uniform attention
    would give, :func:`uniform_far_mass`)."""
    from hopekit.eval.records import make_record

    rows = []
    for L, fm in result.items():
        uniform = uniform_far_mass(L, fm.beyond, fm.last)
        for layer in range(fm.mass.shape[1]):
            for head in range(fm.mass.shape[2]):
                x = fm.mass[:, layer, head]
                rows.append(make_record(**fields, eval_len=L, task="attention", metric="far_token_mass",
                                        layer=layer, head=head, value=float(x.mean()), sd_windows=_sd(x),
                                        beyond=fm.beyond, last_queries=fm.last, windows=fm.windows,
                                        uniform=uniform))
    return rows


# --------------------------------------------------------------------------------------------------
# Plots (from records)
# --------------------------------------------------------------------------------------------------


def _by_method(records: list[dict[str, Any]], metric: str, eval_len: int | None = None) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in records:
        if r.get("metric") == metric and r.get("value") is not None and (eval_len is None or r["eval_len"] == eval_len):
            out.setdefault(r["method"], []).append(r)
    return out


def _grid(rows: list[dict[str, Any]]) -> tuple[torch.Tensor, int]:
    """(layers, heads) mean over seeds of per-(layer, head) values; and the seed count."""
    cells: dict[tuple[int, int], list[float]] = defaultdict(list)
    for r in rows:
        cells[(r["layer"], r["head"])].append(float(r["value"]))
    L = 1 + max(k[0] for k in cells)
    H = 1 + max(k[1] for k in cells)
    g = torch.full((L, H), float("nan"), dtype=torch.float64)
    for (l, h), v in cells.items():
        g[l, h] = sum(v) / len(v)
    return g, len({r.get("seed") for r in rows})


def _panels(n: int, w: float, h: float):
    from hopekit.eval.report import _figure

    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = _figure(nrows, cols, size=(w * cols, h * nrows + 0.6))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat


def plot_u_heatmap(records: list[dict[str, Any]], path: str | Path, *, methods: Sequence[str] | None = None,
                   eval_len: int | None = None, clip: float = 2.0) -> Path | None:
    """One panel per method: the U-shape index per layer (rows) and head (columns), mean over seeds;
    red = U (ends denser than the middle), blue = not; colours clipped at ±``clip`` (a strongly local
    head reaches −20), the values written in the cells of small grids. None without ``u_shape_index``
    records."""
    rows = _by_method(records, "u_shape_index", eval_len)
    names = [m for m in (methods or list(rows)) if m in rows]
    if not names:
        return None
    grids = {m: _grid(rows[m]) for m in names}
    vmax = min(clip, max(float(g.abs().nan_to_num(0).max()) for g, _ in grids.values()) or 1.0)
    big = max(g.shape[0] for g, _ in grids.values()) > 8
    fig, flat = _panels(len(names), 3.4 if not big else 6.0, 3.3 if not big else 7.0)
    im = None
    for ax, m in zip(flat, names):
        g, seeds = grids[m]
        im = ax.imshow(g.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        ax.set_title(f"{m} ({seeds} seed{'s' if seeds > 1 else ''})", fontsize=9)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
        ax.set_xticks(range(g.shape[1]))
        ax.set_yticks(range(0, g.shape[0], 1 if g.shape[0] <= 8 else 5))
        ax.tick_params(labelsize=7)
        if g.numel() <= 64:
            for l in range(g.shape[0]):
                for h in range(g.shape[1]):
                    v = float(g[l, h])
                    ax.text(h, l, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(v) > 0.6 * vmax else "black")
    fig.suptitle(f"U-shape index ln(min(first, near) / middle) per layer and head at "
                 f"{next(iter(rows[names[0]]))['eval_len']} tokens\n(> 0: a U; colours clipped at ±{vmax:g})",
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    cax = fig.add_axes((0.92, 0.15, 0.015, 0.7))
    fig.colorbar(im, cax=cax)
    path = Path(path)
    fig.savefig(path)
    return path


def _mean_curves(rows: list[dict[str, Any]]) -> dict[int, list[float]]:
    """Per layer: the curve averaged over seeds (element-wise)."""
    acc: dict[int, list[list[float]]] = defaultdict(list)
    for r in rows:
        acc[r["layer"]].append(r["value"])
    return {l: [sum(c) / len(c) for c in zip(*cs)] for l, cs in sorted(acc.items())}


def plot_attention_by_key(records: list[dict[str, Any]], path: str | Path, *, methods: Sequence[str] | None = None,
                          metric: str = "attention_by_key_last") -> Path | None:
    """One panel per method: the last query's post-softmax weight against key position (mean over heads,
    windows and seeds), one line per layer (five spread layers of a deeper model), log y axis; the
    uniform weight 1/T dotted. ``metric=
    "attention_by_distance"``: against distance instead (the last quarter of queries)."""
    rows = _by_method(records, metric)
    names = [m for m in (methods or list(rows)) if m in rows]
    if not names:
        return None
    single = len(names) == 1
    fig, flat = _panels(len(names), 7.5 if single else 3.6, 4.0 if single else 2.8)
    for ax, m in zip(flat, names):
        curves = _mean_curves(rows[m])
        L = len(curves)
        shown = sorted(curves) if L <= 8 else sorted({round(i * (L - 1) / 4) for i in range(5)})
        for layer in shown:
            c = curves[layer]
            ax.plot(range(len(c)), [max(v, 1e-12) for v in c], lw=0.7, label=f"layer {layer}")
        T = len(next(iter(curves.values())))
        ax.axhline(1.0 / T, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
    what = "key position" if metric == "attention_by_key_last" else "distance Δ"
    who = "the last query" if metric == "attention_by_key_last" else "the last quarter of queries"
    fig.suptitle(f"Post-softmax weight of {who} vs {what}\n(mean over heads, windows, seeds); dotted: 1/T",
                 fontsize=9)
    fig.supxlabel(what, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_far_mass(records: list[dict[str, Any]], path: str | Path, *, methods: Sequence[str] | None = None) -> Path | None:
    """Far-token mass of the last queries against length, one line per method: per seed the mean over
    layers and heads, then mean ± sd over seeds (error bars); uniform attention dashed."""
    from hopekit.eval.report import _figure, _plain_ticks

    rows = _by_method(records, "far_token_mass")
    names = [m for m in (methods or list(rows)) if m in rows]
    if not names:
        return None
    fig, ax = _figure(size=(7.0, 4.4))
    uniform: dict[int, float] = {}
    for m in names:
        per: dict[int, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in rows[m]:
            per[r["eval_len"]][r.get("seed")].append(float(r["value"]))
            uniform[r["eval_len"]] = r.get("uniform", float("nan"))
        Ls = sorted(per)
        means, sds = [], []
        for L in Ls:
            seed_means = torch.tensor([sum(v) / len(v) for v in per[L].values()], dtype=torch.float64)
            means.append(float(seed_means.mean()))
            sds.append(float(seed_means.std()) if seed_means.numel() > 1 else 0.0)
        ax.errorbar(Ls, means, yerr=sds, marker="o", ms=3, lw=1.0, capsize=2, label=m)
    Ls = sorted(uniform)
    ax.plot(Ls, [uniform[L] for L in Ls], color="grey", ls="--", lw=0.9, label="uniform attention")
    ax.set_xscale("log", base=2)
    _plain_ticks(ax.xaxis)
    ax.set_xlabel("window length (tokens)")
    beyond = next(iter(rows[names[0]]))["beyond"]
    ax.set_ylabel(f"weight on keys > {beyond} back")
    ax.set_title("Far-token mass of the last quarter of queries (mean over layers and heads; ± sd over seeds)",
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
