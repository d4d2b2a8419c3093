"""Numbers for the words the seeds use about attention and distance.

Each function turns one phrase into a measurement (float64 results):

* "the score **oscillates** with distance" — :func:`sign_changes`, :func:`total_variation` and their
  summary :func:`oscillation` (per distance window: sign changes, total variation, net change and their
  ratio TV / |net change|, which is 1 exactly when the curve is monotone in the window);
* "the score **decays monotonically**" — :func:`monotone_fraction` (the share of consecutive steps
  that go the stated way), and for hope_hyperbolic :func:`channel_monotonicity` (per eigenbasis channel,
  where the decay is exact, and per pair, where two channels of opposite-sign weight can make an
  interior extremum: papers/hope_hyperbolic.md, "Monotone per channel only");
* "far tokens share the softmax mass" — :func:`far_token_mass` (attention rows) and
  :func:`curve_far_mass` (one weight curve over distances);
* "attention is **locally decaying and globally U-shaped**" — :func:`u_shape_index` (per-key density
  on the first keys vs the middle vs the nearest keys).

Conventions shared by the curve metrics:

* ``curve`` is 1-D (anything ``torch.as_tensor`` takes); ``distances`` are its query–key distances
  Δ = m − n, 1-D, strictly increasing, one per sample (default: 0, 1, …, len − 1).
* A **window** ``(lo, hi)`` is the *closed* interval lo ≤ Δ ≤ hi. A step (two consecutive samples)
  belongs to a window when both of its ends do, so adjacent windows ``(0, 128), (128, 512)`` share the
  sample at 128 and split the curve's steps between them without overlap: total variations of adjacent
  windows add up to the whole curve's. Every window must hold at least two samples.
* Windowed functions return a **list, one value per window** (one element when ``windows`` is None:
  the whole curve), so the return type never depends on the arguments.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

__all__ = ["sign_changes", "total_variation", "oscillation", "monotone_fraction", "channel_monotonicity",
           "far_token_mass", "curve_far_mass", "u_shape_index"]

Window = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Argument checks (one line naming the argument)
# --------------------------------------------------------------------------------------------------


def _curve(curve: Any, name: str = "curve") -> torch.Tensor:
    try:  # a Python list goes to float64 directly (float32 first would round it)
        c = curve if isinstance(curve, torch.Tensor) else torch.as_tensor(curve, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(f"{name}: expected a 1-D sequence of numbers, got {type(curve).__name__}") from e
    if c.dim() != 1:
        raise ValueError(f"{name}: expected a 1-D curve, got shape {tuple(c.shape)}")
    if c.is_complex() or c.dtype == torch.bool:
        raise TypeError(f"{name}: expected real numbers, got dtype {c.dtype}")
    c = c.detach().to("cpu", torch.float64)
    if c.numel() < 2:
        raise ValueError(f"{name}: needs at least 2 samples, got {c.numel()}")
    if not torch.isfinite(c).all():
        raise ValueError(f"{name}: holds non-finite values (nan/inf) at index {int((~torch.isfinite(c)).nonzero()[0])}")
    return c


def _distances(distances: Any, n: int) -> torch.Tensor:
    if distances is None:
        return torch.arange(n, dtype=torch.float64)
    d = _curve(distances, "distances")
    if d.numel() != n:
        raise ValueError(f"distances: has {d.numel()} values but the curve has {n}")
    if not (d.diff() > 0).all():
        raise ValueError("distances: must be strictly increasing")
    return d


def _windows(windows: Any, d: torch.Tensor) -> list[tuple[Window, torch.Tensor]]:
    """(window, boolean mask of the samples inside it) for each window; None = the whole curve."""
    if windows is None:
        return [((float(d[0]), float(d[-1])), torch.ones_like(d, dtype=torch.bool))]
    if isinstance(windows, (str, bytes)) or not isinstance(windows, Sequence) or not windows:
        raise ValueError(f"windows: expected a non-empty list of (lo, hi) pairs, got {windows!r}")
    out = []
    for i, w in enumerate(windows):
        if (not isinstance(w, Sequence) or len(w) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in w)):
            raise ValueError(f"windows[{i}]: expected a (lo, hi) pair of numbers, got {w!r}")
        lo, hi = float(w[0]), float(w[1])
        if not lo < hi:
            raise ValueError(f"windows[{i}]={w!r}: needs lo < hi")
        mask = (d >= lo) & (d <= hi)
        if int(mask.sum()) < 2:
            raise ValueError(f"windows[{i}]={w!r}: holds {int(mask.sum())} of the curve's distances; needs at least 2")
        out.append(((lo, hi), mask))
    return out


def _nonneg(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number ≥ 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------
# Oscillation
# --------------------------------------------------------------------------------------------------


def _sign_changes_1d(c: torch.Tensor, zero_tol: float) -> int:
    signs = torch.sign(c) * (c.abs() > zero_tol)
    signs = signs[signs != 0]
    return int((signs[1:] != signs[:-1]).sum()) if signs.numel() > 1 else 0


def sign_changes(curve: Any, distances: Any = None, windows: Any = None, *, zero_tol: float = 0.0) -> list[int]:
    """Number of sign changes of ``curve`` in each window (a list, one int per window).

    **Zero rule.** Samples with |value| ≤ ``zero_tol`` (exact zeros by default) are *skipped*: a sign
    change is a pair of consecutive non-zero samples inside the window with opposite signs. So a curve
    that touches 0 and comes back (+, 0, +) has none, and one that passes through an exact zero
    (+, 0, −) has one. A crossing whose two non-zero sides lie in different windows (only possible
    through zeros on the shared boundary) is counted in neither.

    A pure cos(πΔ/P) sampled over N half-periods (0 ≤ Δ ≤ N·P, finer than P) has N: one per zero.
    """
    c = _curve(curve)
    tol = _nonneg(zero_tol, "zero_tol")
    d = _distances(distances, c.numel())
    return [_sign_changes_1d(c[mask], tol) for _, mask in _windows(windows, d)]


def total_variation(curve: Any, distances: Any = None, windows: Any = None) -> list[float]:
    """Total variation Σ |s(Δ_{j+1}) − s(Δ_j)| over the steps inside each window (a list of floats).

    It equals |s(hi) − s(lo)| (the net change) exactly when the curve is monotone in the window, and
    exceeds it by twice the depth of every back-and-forth swing: the sampled curve's "amount of
    oscillation". It depends on the sampling only through the samples (a coarse grid can miss swings).
    """
    c = _curve(curve)
    d = _distances(distances, c.numel())
    return [float(c[mask].diff().abs().sum()) for _, mask in _windows(windows, d)]


def oscillation(curve: Any, distances: Any = None, windows: Any = None, *, zero_tol: float = 0.0) -> list[dict[str, Any]]:
    """"The score oscillates", per window: a list of dicts (one per window) with

    * ``window``: (lo, hi); ``points``: samples inside it;
    * ``sign_changes`` (:func:`sign_changes`, same zero rule) and ``total_variation``;
    * ``net_change``: s(last sample) − s(first sample) of the window;
    * ``tv_ratio``: total_variation / |net_change| ≥ 1; exactly 1 for a monotone window, large when the
      curve swings back and forth while going nowhere; ``inf`` when the net change is 0 and the curve
      moved, 1.0 for a constant window.
    """
    c = _curve(curve)
    tol = _nonneg(zero_tol, "zero_tol")
    d = _distances(distances, c.numel())
    rows = []
    for window, mask in _windows(windows, d):
        w = c[mask]
        tv = float(w.diff().abs().sum())
        net = float(w[-1] - w[0])
        ratio = 1.0 if tv == 0.0 else (math.inf if net == 0.0 else max(1.0, tv / abs(net)))
        rows.append({"window": window, "points": int(w.numel()), "sign_changes": _sign_changes_1d(w, tol),
                     "total_variation": tv, "net_change": net, "tv_ratio": ratio})
    return rows


# --------------------------------------------------------------------------------------------------
# Monotonicity
# --------------------------------------------------------------------------------------------------


def monotone_fraction(curve: Any, direction: str = "decreasing", tol: float = 0.0) -> float:
    """Fraction of consecutive steps that go ``direction`` ("decreasing", "increasing", or "either": the
    larger of the two fractions, i.e. how monotone the curve is whichever way it goes).

    Non-strict: a step s_{j+1} − s_j ≤ ``tol`` counts as decreasing (≥ −tol as increasing), so a flat
    step counts for both and ``tol`` absorbs rounding noise. 1.0 means monotone; a pure exponential
    decay gives 1.0, a decaying cosine about one half.
    """
    c = _curve(curve)
    t = _nonneg(tol, "tol")
    steps = c.diff()
    dec = float((steps <= t).double().mean())
    inc = float((steps >= -t).double().mean())
    if direction == "decreasing":
        return dec
    if direction == "increasing":
        return inc
    if direction == "either":
        return max(dec, inc)
    raise ValueError(f"direction: expected 'decreasing', 'increasing' or 'either', got {direction!r}")


def _qk_vectors(x: Any, name: str, head_dim: int) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if t.dim() not in (1, 2) or t.shape[-1] != head_dim:
        raise ValueError(f"{name}: expected shape (head_dim,) or (samples, head_dim) with head_dim={head_dim}, "
                         f"got {tuple(t.shape)}")
    return t.reshape(-1, head_dim)


def channel_monotonicity(enc: Any, distances: Any, *, q: Any = None, k: Any = None, head: int = 0,
                         tol: float = 0.0) -> dict[str, Any]:
    """hope_hyperbolic's score, split into its eigenbasis channels and pairs, with each part's
    monotonicity (papers/hope_hyperbolic.md: "exactly per-channel real exponential decay";
    "Monotone per channel only").

    The logit is Σ_c w_c e^{−r_c Δ}, with w_c = Q_c K_c (q, k in the eigenbasis u = (a + b)/√2,
    v = (a − b)/√2 of each half-split pair (a, b) = (x_i, x_{i+d/2})) and r_c the encoding's own
    ``rates()`` (u channels λ − ω_i, then v channels λ + ω_i; head ``head`` for a per-head λ). Pair i
    is channels i and i + d/2: w_u e^{−(λ−ω_i)Δ} + w_v e^{−(λ+ω_i)Δ}, which has an interior extremum
    when w_u and w_v have opposite signs and |w_v|(λ+ω_i) > |w_u|(λ−ω_i).

    ``q``, ``k``: (head_dim,) or (samples, head_dim); default the aligned probe (every pair (1, 0), so
    w_c = ½ everywhere). With several samples the curves are per sample.

    Returns a dict of float64 tensors (``S`` = samples, ``C`` = head_dim, ``P`` = head_dim/2, ``N`` =
    len(distances)): ``rates`` (C,), ``weights`` (S, C), ``channel_curves`` (S, C, N),
    ``channel_monotone`` (S, C) and ``pair_curves`` (S, P, N), ``pair_monotone`` (S, P) — monotone
    fractions in whichever direction the part goes (:func:`monotone_fraction` "either", ``tol``);
    ``pair_extremum`` (S, P): the interior extremum Δ* = ln(w_v(λ+ω)/(−w_u(λ−ω)))/(2ω) where one exists
    (Δ* > 0), else nan; ``score`` (S, N): the sum of the channels (the encoding's score, in float64).
    """
    rates_fn = getattr(enc, "rates", None)
    if not callable(rates_fn):
        raise TypeError(f"enc: expected a hope_hyperbolic encoding (with rates()), got {type(enc).__name__}")
    d = _curve(distances, "distances")
    if not (d.diff() > 0).all() or float(d[0]) < 0:
        raise ValueError("distances: must be ≥ 0 and strictly increasing")
    all_rates = rates_fn().detach().to("cpu", torch.float64)
    if isinstance(head, bool) or not isinstance(head, int) or not -enc.num_heads <= head < enc.num_heads:
        raise ValueError(f"head: expected an int in [0, {enc.num_heads}), got {head!r}")
    rates = all_rates[head % all_rates.shape[0]]
    dim = enc.head_dim
    half = dim // 2
    if q is None and k is None:
        probe = torch.zeros(dim, dtype=torch.float64)
        probe[:half] = 1.0
        q = k = probe
    elif q is None or k is None:
        raise ValueError("q, k: pass both or neither (neither = the aligned probe)")
    qv, kv = _qk_vectors(q, "q", dim), _qk_vectors(k, "k", dim)
    if qv.shape[0] != kv.shape[0] and 1 not in (qv.shape[0], kv.shape[0]):
        raise ValueError(f"q, k: sample counts differ ({qv.shape[0]} vs {kv.shape[0]})")

    def eig(x: torch.Tensor) -> torch.Tensor:
        a, b = x[..., :half], x[..., half:]
        return torch.cat([a + b, a - b], dim=-1) / math.sqrt(2.0)

    weights = eig(qv) * eig(kv)                                          # (S, C)
    decay = torch.exp(-rates[:, None] * d[None, :])                      # (C, N)
    channel = weights[:, :, None] * decay[None]                          # (S, C, N)
    pair = channel[:, :half] + channel[:, half:]                         # (S, P, N)

    def frac(curves: torch.Tensor) -> torch.Tensor:
        flat = curves.reshape(-1, curves.shape[-1])
        return torch.tensor([monotone_fraction(row, "either", tol) for row in flat],
                            dtype=torch.float64).reshape(curves.shape[:-1])

    wu, wv = weights[:, :half], weights[:, half:]
    ru, rv = rates[:half], rates[half:]
    ratio = (wv * rv) / (-wu * ru)
    extremum = torch.where((ratio > 1) & (wu * wv < 0), torch.log(ratio.clamp(min=1e-300)) / (rv - ru),
                           torch.full_like(ratio, math.nan))
    return {"rates": rates, "weights": weights, "channel_curves": channel, "channel_monotone": frac(channel),
            "pair_curves": pair, "pair_monotone": frac(pair), "pair_extremum": extremum,
            "score": channel.sum(1)}


# --------------------------------------------------------------------------------------------------
# Post-softmax: far-token mass and the U-shape
# --------------------------------------------------------------------------------------------------


def _probs(probs: Any) -> torch.Tensor:
    if not isinstance(probs, torch.Tensor):
        raise TypeError(f"probs: expected a tensor (..., Tq, Tk), got {type(probs).__name__}")
    if probs.dim() < 2 or probs.shape[-1] == 0 or probs.shape[-2] == 0:
        raise ValueError(f"probs: expected shape (..., Tq, Tk) with Tq, Tk ≥ 1, got {tuple(probs.shape)}")
    if probs.is_complex() or not probs.is_floating_point():
        raise TypeError(f"probs: expected real floating-point weights, got dtype {probs.dtype}")
    return probs.detach().to(torch.float64)


def _positions(pos: Any, name: str, length: int, default: torch.Tensor) -> torch.Tensor:
    if pos is None:
        return default
    p = torch.as_tensor(pos).detach().to("cpu")
    if p.dim() != 1 or p.numel() != length or p.is_floating_point() or p.dtype == torch.bool:
        raise ValueError(f"{name}: expected {length} integer positions (1-D), got shape {tuple(p.shape)} "
                         f"dtype {p.dtype}")
    return p.long()


def _qk_positions(probs: torch.Tensor, q_pos: Any, k_pos: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Default: keys at 0 … Tk − 1 and the queries the *last* Tq of them (the causal layout)."""
    tq, tk = probs.shape[-2], probs.shape[-1]
    k = _positions(k_pos, "k_pos", tk, torch.arange(tk))
    default_q = torch.arange(tk - tq, tk) if tq <= tk else torch.arange(tq)
    return _positions(q_pos, "q_pos", tq, default_q), k


def far_token_mass(probs: torch.Tensor, q_pos: Any = None, k_pos: Any = None, beyond: int = 128) -> torch.Tensor:
    """Post-softmax weight on keys more than ``beyond`` tokens back (Δ = m − n > beyond), per query:
    shape ``probs.shape[:-1]`` = (..., Tq), float64.

    ``probs`` (..., Tq, Tk) are attention weights (rows summing to 1 over keys); ``q_pos`` (Tq,) and
    ``k_pos`` (Tk,) their positions, by default keys 0 … Tk − 1 and queries the last Tq of them. For
    uniform causal attention a query at m has (m − beyond)/(m + 1) beyond ``beyond`` (0 if m ≤ beyond).
    """
    p = _probs(probs)
    qp, kp = _qk_positions(p, q_pos, k_pos)
    if isinstance(beyond, bool) or not isinstance(beyond, int) or beyond < 0:
        raise ValueError(f"beyond: expected an int ≥ 0, got {beyond!r}")
    far = ((qp[:, None] - kp[None, :]) > beyond).to(p.device, torch.float64)    # (Tq, Tk)
    return (p * far).sum(-1)


def curve_far_mass(weights: Any, distances: Any, beyond: float) -> float:
    """The weight of one post-softmax curve (weights over ``distances``, e.g. from
    :func:`hopekit.analysis.distance.attention_weight_vs_distance`) on distances > ``beyond``, as a
    share of the curve's total weight (so a curve over a subsample of keys is renormalised)."""
    w = _curve(weights, "weights")
    d = _distances(distances, w.numel())
    b = _nonneg(beyond, "beyond")
    if (w < 0).any():
        raise ValueError("weights: must be ≥ 0 (post-softmax weights)")
    total = float(w.sum())
    if total <= 0:
        raise ValueError("weights: sum to 0")
    return float(w[d > b].sum()) / total


def u_shape_index(probs: torch.Tensor, q_pos: Any = None, k_pos: Any = None, *, first: int = 4, near: int = 16,
                  queries: Any = None, batch_dims: int = 0) -> dict[str, Any]:
    """"Local decay plus a global U-shape": attention on the first keys vs the middle vs the nearest.

    For each query at m, its causal keys (Δ = m − n ≥ 0) fall into three groups: **first** (n <
    ``first``), **near** (Δ < ``near``) and **middle** (the rest). A group's *density* is its
    post-softmax mass divided by its number of keys (so groups of different sizes compare). A query
    counts only when all three groups are non-empty and disjoint (with default positions: m ≥ first +
    near). The densities are averaged over the selected queries (and over the first ``batch_dims``
    dims, e.g. a batch of texts); the index is

        u = ln( min(density_first, density_near) / density_middle )

    positive iff both ends are denser than the middle (a U), 0 for uniform attention, ≤ 0 for a purely
    local decay (the first keys, being the farthest, get the least); +inf if the middle has no mass.

    ``probs``: (..., Tq, Tk); pass (L, H, Tq, Tk) for per-(layer, head) values, with
    ``batch_dims=1`` for (B, L, H, Tq, Tk). ``queries``: None (every qualifying query), an int n (the
    last n qualifying queries) or a sequence of query indices (each must qualify).

    Returns ``{"index", "first", "middle", "near"}``, float64 tensors of shape
    ``probs.shape[batch_dims:-2]`` (0-d for a single (Tq, Tk) map), and ``"queries"``: how many
    queries were averaged.
    """
    p = _probs(probs)
    if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or not 0 <= batch_dims <= p.dim() - 2:
        raise ValueError(f"batch_dims: expected an int in [0, {p.dim() - 2}] for probs of shape {tuple(p.shape)}, "
                         f"got {batch_dims!r}")
    for name, v in (("first", first), ("near", near)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected an int ≥ 1, got {v!r}")
    qp, kp = _qk_positions(p, q_pos, k_pos)
    delta = qp[:, None] - kp[None, :]                                   # (Tq, Tk)
    causal = delta >= 0
    g_first = causal & (kp[None, :] < first)
    g_near = causal & (delta < near) & ~g_first
    g_mid = causal & ~g_first & ~g_near
    counts = torch.stack([g_first.sum(-1), g_mid.sum(-1), g_near.sum(-1)])   # (3, Tq)
    ok = (counts > 0).all(0) & ~(g_first & (delta < near)).any(-1)
    valid = ok.nonzero().flatten()
    if queries is None:
        chosen = valid
    elif isinstance(queries, int) and not isinstance(queries, bool):
        if queries < 1:
            raise ValueError(f"queries: expected an int ≥ 1, got {queries!r}")
        chosen = valid[-queries:]
    else:
        chosen = torch.as_tensor(queries).long().flatten()
        if chosen.numel() == 0 or (chosen < -p.shape[-2]).any() or (chosen >= p.shape[-2]).any():
            raise ValueError(f"queries: indices must lie in [0, {p.shape[-2]}), got {queries!r}")
        chosen = chosen % p.shape[-2]
        bad = chosen[~ok[chosen]]
        if bad.numel():
            raise ValueError(f"queries: query index {int(bad[0])} (position {int(qp[bad[0]])}) has no three "
                             f"non-empty groups with first={first}, near={near}")
    if chosen.numel() == 0:
        raise ValueError(f"probs: no query has three non-empty groups with first={first}, near={near} "
                         f"(needs a query at m ≥ first + near = {first + near} with default positions)")
    sel = p[..., chosen, :]                                              # (..., Q, Tk)
    out: dict[str, Any] = {}
    for name, g in (("first", g_first), ("middle", g_mid), ("near", g_near)):
        gm = g[chosen].to(p.device, torch.float64)                       # (Q, Tk)
        density = (sel * gm).sum(-1) / gm.sum(-1)                        # (..., Q)
        out[name] = density.mean(-1).mean(dim=tuple(range(batch_dims))) if batch_dims else density.mean(-1)
    ends = torch.minimum(out["first"], out["near"])
    out["index"] = torch.log(ends / out["middle"])
    out["queries"] = int(chosen.numel())
    return {k: out[k] for k in ("index", "first", "middle", "near", "queries")}
