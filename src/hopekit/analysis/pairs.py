"""A trained rotary model's logits, pair by pair: which frequencies carry what, against distance.

A rotary logit is a sum over the half-split pairs i = (x_i, x_{i+r/2}) of the rotary slice::

    logit(m, n) = scale · Σ_i  q_rot^(i)(m) · k_rot^(i)(n)   (+ scale · q_rest · k_rest, partial rotary)

:func:`pair_logits` returns every term ``c_i(m, n)`` (their sum is the layer's logits, tested in
float64). For aligned, position-independent content a pair contributes ``|q̂_i||k̂_i| cos(θ_iΔ − φ_i)``
(papers/hope_highfreq.md "Activated components"); a pair whose period ``P_i = 2π/θ_i`` exceeds the
training length ``L`` never completes a turn inside the window and can be tuned to a phase that is high
at Δ ≈ 0 and at Δ ≈ L and low in between — the global **U-shape** hope_highfreq attributes to these
"activated" pairs.

:func:`pair_profiles` runs a model over token windows and keeps, per layer, head and pair:

* ``profile[Δ]``: the mean ``c_i(m, m − Δ)`` over queries ``m ≥ Δ`` and windows (causal only);
* ``magnitude``: the mean ``|c_i(m, n)|`` over causal ``(m, n)``, and the mean ``|logit|`` per head;
* ``last_query[n]``: the mean over windows of ``c_i(T − 1, n)``, against the key position ``n``: the
  position-dependent view (the paper's U over key positions, high on the initial and the nearest keys).

**Bands** (:func:`period_bands`): ``"within"`` P ≤ L (at least one full turn inside the window),
``"activated"`` L < P ≤ 2L (more than half a turn: a phase can make both ends as high as the peak),
``"beyond"`` P > 2L (less than half a turn: a phase centred on the trough still gives a shallower U, of
depth (1 − cos(θL/2)) × amplitude; the slowest pairs are near-constant over the window). hope_highfreq removes both
of the latter two; a zero frequency (an unrotated pair) has P = ∞ and is ``"beyond"``.

**U-score** (:func:`u_score`), of a profile p(Δ), Δ = 0 … n − 1, with ends of width ``w = max(1, n // 8)``::

    near = mean p[0 : w],   far = mean p[n − w : n],   mid = mean p[w : n − w]
    u_depth = min(near, far) − mid             (logit units: how far *both* ends rise above the middle)
    u_score = u_depth / (max p − min p)         ∈ [−1, 1]; 0 for a flat profile

It mirrors a U-shape index: 1 for a step profile high at both ends and flat in between, 0 for a
one-sided step (local decay alone, or a sink alone), about −1/2 for a half cosine cos(πΔ/n), negative
for anything whose middle sits above one of its ends. It is symmetric in the two ends, so it reads
``last_query`` (indexed by key position n) and ``profile`` (indexed by Δ) alike. ``near``, ``far``
and ``mid`` are linear in the profile, so the profile of a band (the sum of its pairs) has its own
``u_depth``: how much of the head's U that band carries.

Transformers Llama-family models are read with :func:`hf_capture_qk`: forward hooks on ``q_proj`` /
``k_proj`` and the model's rope rebuilt as a hopekit encoding (:func:`hf_rope_encoding`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .capture import LayerQK, capture_qk

__all__ = ["BANDS", "pair_periods", "period_bands", "component_names", "pair_logits", "u_parts", "u_score",
           "PairProfiles", "pair_profiles", "hf_rope_encoding", "hf_capture_qk", "GROUPS", "pair_records",
           "plot_pair_heatmaps"]

#: the period bands, in order: P ≤ L, L < P ≤ 2L, P > 2L
BANDS = ("within", "activated", "beyond")


# --------------------------------------------------------------------------------------------------
# Periods and bands
# --------------------------------------------------------------------------------------------------


def _inv_freq(enc: Any) -> torch.Tensor:
    if not getattr(enc, "uses_rotate", False) or not hasattr(enc, "spectrum"):
        raise ValueError(f"enc: a per-pair decomposition needs a rotary encoding, got {type(enc).__name__}"
                         f"{'(' + type(enc.params).__name__ + ')' if hasattr(enc, 'params') else ''}")
    if getattr(enc.params, "length_dependent", False):
        raise ValueError(f"enc: {type(enc.params).__name__} has a length-dependent spectrum; pair periods "
                         f"need a fixed one")
    return enc.spectrum().inv_freq.double()


def pair_periods(inv_freq: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """P_i = 2π/θ_i in tokens (float64); ``inf`` for a zero frequency (an unrotated pair)."""
    f = torch.as_tensor(inv_freq, dtype=torch.float64)
    if f.dim() != 1 or (f < 0).any() or not torch.isfinite(f).all():
        raise ValueError(f"inv_freq: expected a 1-D tensor of finite frequencies >= 0, got {f.tolist()}")
    return torch.where(f > 0, 2 * math.pi / f.clamp(min=1e-300), torch.full_like(f, math.inf))


def period_bands(inv_freq: torch.Tensor | Sequence[float], train_len: int) -> list[str]:
    """Each pair's band (:data:`BANDS`): ``"within"`` P ≤ L, ``"activated"`` L < P ≤ 2L, ``"beyond"`` P > 2L."""
    if isinstance(train_len, bool) or not isinstance(train_len, int) or train_len < 1:
        raise ValueError(f"train_len: expected an int >= 1, got {train_len!r}")
    return [BANDS[0] if p <= train_len else BANDS[1] if p <= 2 * train_len else BANDS[2]
            for p in pair_periods(inv_freq).tolist()]


def component_names(enc: Any) -> list[str]:
    """``"pair i"`` for each rotary pair, plus ``"rest"`` when channels pass through (partial rotary)."""
    n = len(_inv_freq(enc))
    return [f"pair {i}" for i in range(n)] + (["rest"] if enc.head_dim > 2 * n else [])


# --------------------------------------------------------------------------------------------------
# The decomposition
# --------------------------------------------------------------------------------------------------


def pair_logits(qk: LayerQK, enc: Any, *, queries: slice | None = None,
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per-pair logit terms ``c[b, h, i, m, n] = scale · q_rot^(i)(m) · k_rot^(i)(n)``, ``(B, H, C, Tq, Tk)``.

    ``C`` = the rotary pairs (pair i = channels i and i + r/2 of the rotated q and k), plus one last
    component for the pass-through channels of a partial rotary. Summed over ``C`` they are the layer's
    logits ``q · k · scale`` (no mask applied: future keys are included). ``queries``: a slice of query
    rows (to bound memory); ``dtype``: the arithmetic's precision.
    """
    half = len(_inv_freq(enc))
    q, k = qk.q, qk.k
    if q.dim() != 4 or k.dim() != 4 or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"qk: expected q, k of shape (B, H, T, D) with matching B, H, D, got "
                         f"{tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[-1] != enc.head_dim or 2 * half > q.shape[-1]:
        raise ValueError(f"qk: head dim {q.shape[-1]} does not match the encoding's head_dim {enc.head_dim}")
    if queries is not None:
        if not isinstance(queries, slice):
            raise TypeError(f"queries: expected a slice of query rows, got {type(queries).__name__}")
        q = q[..., queries, :]
    q, k = q.to(dtype), k.to(dtype)
    r = 2 * half
    c = (torch.einsum("bhmp,bhnp->bhpmn", q[..., :half], k[..., :half])
         + torch.einsum("bhmp,bhnp->bhpmn", q[..., half:r], k[..., half:r]))
    if q.shape[-1] > r:
        rest = q[..., r:] @ k[..., r:].transpose(-1, -2)
        c = torch.cat([c, rest.unsqueeze(2)], dim=2)
    return c * qk.scale


# --------------------------------------------------------------------------------------------------
# U-score
# --------------------------------------------------------------------------------------------------


def u_parts(profile: np.ndarray, width: int | None = None) -> dict[str, np.ndarray]:
    """``near``, ``mid``, ``far``, ``spread`` (max − min), ``u_depth`` and ``u_score`` of profiles along the
    last axis (see the module docstring); ``width`` defaults to ``max(1, n // 8)``."""
    p = np.asarray(profile, dtype=np.float64)
    n = p.shape[-1] if p.ndim else 0
    w = max(1, n // 8) if width is None else width
    if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1 or n < 2 * w + 1:
        raise ValueError(f"width: need 1 <= width and 2*width + 1 <= profile length {n}, got {w}")
    if not np.isfinite(p).all():
        raise ValueError("profile: holds non-finite values")
    near, far, mid = p[..., :w].mean(-1), p[..., n - w:].mean(-1), p[..., w:n - w].mean(-1)
    spread = p.max(-1) - p.min(-1)
    depth = np.minimum(near, far) - mid
    tiny = spread <= 1e-12 * np.maximum(1.0, np.abs(p).max(-1))
    score = np.where(tiny, 0.0, depth / np.where(tiny, 1.0, spread))
    return {"near": near, "mid": mid, "far": far, "spread": spread, "u_depth": depth, "u_score": score}


def u_score(profile: np.ndarray, width: int | None = None) -> np.ndarray:
    """The U-score of profiles along the last axis (:func:`u_parts`)."""
    return u_parts(profile, width)["u_score"]


# --------------------------------------------------------------------------------------------------
# Profiles over windows
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PairProfiles:
    """Per layer, head and component (pairs, then ``"rest"`` for partial rotary), averaged over windows.

    Arrays are float64 numpy: ``profile`` ``(layers, H, C, T)`` indexed by Δ; ``last_query``
    ``(layers, H, C, T)`` indexed by key position n; ``magnitude`` ``(layers, H, C)``;
    ``logit_magnitude`` ``(layers, H)`` (mean |logit| over causal entries); ``count`` ``(T,)`` the
    (window, query) pairs behind each Δ.
    """

    inv_freq: np.ndarray
    period: np.ndarray
    band: list[str]
    train_len: int
    length: int
    windows: int
    layers: list[int]
    names: list[str]
    profile: np.ndarray
    last_query: np.ndarray
    magnitude: np.ndarray
    logit_magnitude: np.ndarray
    count: np.ndarray

    @property
    def share(self) -> np.ndarray:
        """Each component's mean |c| over the sum of all components' mean |c|, ``(layers, H, C)``."""
        return self.magnitude / self.magnitude.sum(-1, keepdims=True)

    def band_profile(self, band: str, which: str = "profile") -> np.ndarray:
        """The summed profile (or ``last_query``) of the pairs in ``band``, ``(layers, H, T)``."""
        if band not in BANDS:
            raise ValueError(f"band: expected one of {BANDS}, got {band!r}")
        idx = [i for i, b in enumerate(self.band) if b == band]
        return getattr(self, which)[:, :, idx].sum(2)


def _check_windows(windows: Any) -> torch.Tensor:
    if isinstance(windows, torch.Tensor):
        windows = [windows]
    out = []
    for i, w in enumerate(windows):
        if not isinstance(w, torch.Tensor) or w.dtype != torch.long or w.dim() not in (1, 2):
            raise ValueError(f"windows[{i}]: expected int64 token ids (T,) or (B, T), got "
                             f"{type(w).__name__ if not isinstance(w, torch.Tensor) else (tuple(w.shape), w.dtype)}")
        out.append(w.view(-1, w.shape[-1]))
    if not out:
        raise ValueError("windows: empty")
    if len({w.shape[-1] for w in out}) != 1:
        raise ValueError(f"windows: every window must have the same length, got {sorted({w.shape[-1] for w in out})}")
    return torch.cat(out)


def _diagonal_sums(q: torch.Tensor, k: torch.Tensor, half: int) -> torch.Tensor:
    """``S[h, c, Δ] = Σ_b Σ_{m ≥ Δ} q_c(m) · k_c(m − Δ)`` per component (pairs, then the pass-through
    channels), from float64 FFT cross-correlations of every channel, ``(H, C, T)``."""
    T = q.shape[-2]
    n = 2 * T                                                   # zero padding: no wrap-around for 0 ≤ Δ < T
    fq = torch.fft.rfft(q.double(), n=n, dim=-2)
    fk = torch.fft.rfft(k.double(), n=n, dim=-2)
    corr = torch.fft.irfft(fq * fk.conj(), n=n, dim=-2)[..., :T, :].sum(0)        # (H, T, D)
    r = 2 * half
    parts = [corr[..., :half] + corr[..., half:r]]
    if q.shape[-1] > r:
        parts.append(corr[..., r:].sum(-1, keepdim=True))
    return torch.cat(parts, dim=-1).transpose(-1, -2)          # (H, C, T)


@torch.no_grad()
def pair_profiles(model: Any, windows: Iterable[torch.Tensor] | torch.Tensor, *, train_len: int,
                  enc: Any = None, capture: Callable[[Any, torch.Tensor], list[LayerQK]] | None = None,
                  batch_size: int = 8, query_chunk: int | None = None,
                  magnitude_queries: int | None = None) -> PairProfiles:
    """Run ``model`` on ``windows`` (token ids, all of one length T) and accumulate :class:`PairProfiles`.

    ``capture(model, idx)`` returns every layer's :class:`LayerQK` (default :func:`capture_qk`, a hopekit
    decoder; :func:`hf_capture_qk` for transformers models); ``enc`` the rotary encoding whose pairs
    are decomposed (default ``model.pe``). Queries and keys are the window's positions 0 … T − 1.

    The Δ-profiles are exact sums along the diagonals (FFT cross-correlations per channel, float64,
    O(T log T)); the magnitudes need every term, O(T²) per pair: ``query_chunk`` bounds the memory (query
    rows per pass; default all) and ``magnitude_queries`` (default: every query) takes the mean |term|
    over that many evenly spaced query rows instead (their causal keys, pooled), for long windows.
    """
    ids = _check_windows(windows)
    enc = model.pe if enc is None else enc
    capture = capture_qk if capture is None else capture
    inv = _inv_freq(enc)
    half = len(inv)
    bands = period_bands(inv, train_len)
    names = component_names(enc)
    N, T = ids.shape
    chunk = T if query_chunk is None else query_chunk
    for name, value in (("batch_size", batch_size), ("query_chunk", chunk),
                        ("magnitude_queries", T if magnitude_queries is None else magnitude_queries)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    rows = (torch.arange(T) if magnitude_queries is None or magnitude_queries >= T
            else torch.linspace(0, T - 1, magnitude_queries).round().long().unique())
    n_entries = N * float((rows + 1).sum())                     # causal (query, key) entries behind |term|
    sums: dict[int, dict[str, torch.Tensor]] = {}
    count = torch.arange(T, 0, -1, dtype=torch.float64) * N          # queries m >= Δ, per window
    for start in range(0, N, batch_size):
        layers = capture(model, ids[start:start + batch_size])
        for qk in layers:
            B, H, Tq, _ = qk.q.shape
            if Tq != T or qk.k.shape[-2] != T:
                raise ValueError(f"capture: layer {qk.layer} returned {Tq} queries and {qk.k.shape[-2]} keys for "
                                 f"windows of {T} tokens")
            acc = sums.setdefault(qk.layer, {
                "delta": torch.zeros(H, len(names), T, dtype=torch.float64),
                "abs": torch.zeros(H, len(names), dtype=torch.float64),
                "logit_abs": torch.zeros(H, dtype=torch.float64),
                "last": torch.zeros(H, len(names), T, dtype=torch.float64)})
            acc["delta"] += _diagonal_sums(qk.q, qk.k, half) * qk.scale
            acc["last"] += pair_logits(qk, enc, queries=slice(T - 1, T))[:, :, :, 0, :].sum(0).double()
            for s in range(0, len(rows), chunk):
                sel = rows[s:s + chunk]
                part = dataclasses.replace(qk, q=qk.q[..., sel, :])
                c = pair_logits(part, enc)                                        # (B, H, C, q, T)
                future = torch.arange(T)[None, :] > sel[:, None]
                c.masked_fill_(future, 0.0)
                acc["logit_abs"] += c.sum(2).abs_().sum((0, 2, 3)).double()
                acc["abs"] += c.abs_().sum((0, 3, 4)).double()
    order = sorted(sums)
    stack = lambda key: torch.stack([sums[l][key] for l in order]).numpy()  # noqa: E731
    return PairProfiles(
        inv_freq=inv.numpy(), period=pair_periods(inv).numpy(), band=bands, train_len=train_len, length=T,
        windows=N, layers=order, names=names,
        profile=stack("delta") / count.numpy(), last_query=stack("last") / N,
        magnitude=stack("abs") / n_entries, logit_magnitude=stack("logit_abs") / n_entries, count=count.numpy())


# --------------------------------------------------------------------------------------------------
# Transformers (Llama family)
# --------------------------------------------------------------------------------------------------


def hf_rope_encoding(config: Any) -> Any:
    """The rotary encoding a transformers config describes, as a hopekit encoding (one head)."""
    from hopekit import pe
    from hopekit.integrations.hf.rope import head_dim_of, params_from_config

    return pe.build(params_from_config(config), head_dim=head_dim_of(config),
                    num_heads=config.num_attention_heads)


def _hf_layers(model: Any) -> list[Any]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if layers is None or not all(hasattr(getattr(l, "self_attn", None), "q_proj") for l in layers):
        raise TypeError(f"model: expected a Llama-family transformers model (model.layers[i].self_attn.q_proj), "
                        f"got {type(model).__name__}")
    return list(layers)


@torch.no_grad()
def hf_capture_qk(model: Any, idx: torch.Tensor, enc: Any = None) -> list[LayerQK]:
    """Every layer's :class:`LayerQK` of a transformers Llama-family model on ``idx`` ``(B, T)``.

    ``q_proj`` / ``k_proj`` outputs are caught by forward hooks, split into heads (KV heads repeated
    for GQA) and rotated at positions 0 … T − 1 by ``enc`` (default :func:`hf_rope_encoding` of the
    model's config; the half-split layout is transformers' ``rotate_half``). Models with q/k norms
    after the projection (Qwen3, OLMo2) are refused: the hooks would miss them. ``v`` is left empty.
    """
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx: expected (B, T) int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
    layers = _hf_layers(model)
    for i, layer in enumerate(layers):
        if any(hasattr(layer.self_attn, n) for n in ("q_norm", "k_norm")):
            raise TypeError(f"model: layer {i} normalises q/k after the projection; hf_capture_qk reads the "
                            f"projections only")
    cfg = model.config
    enc = hf_rope_encoding(cfg) if enc is None else enc
    H, Hkv = cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    D = enc.head_dim
    outs: dict[tuple[int, str], torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(layers):
        for name in ("q_proj", "k_proj"):
            hooks.append(getattr(layer.self_attn, name).register_forward_hook(
                lambda m, a, out, key=(i, name): outs.__setitem__(key, out.detach().float())))
    try:
        model(input_ids=idx, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    B, T = idx.shape
    pos = torch.arange(T)
    feats = enc.features(pos)
    result = []
    for i in range(len(layers)):
        q = outs[(i, "q_proj")].view(B, T, H, D).transpose(1, 2)
        k = outs[(i, "k_proj")].view(B, T, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
        result.append(LayerQK(i, enc.apply(q, feats), enc.apply(k, feats), torch.empty(0), q, k, pos, pos,
                              float(getattr(layers[i].self_attn, "scaling", D ** -0.5))))
    return result


# --------------------------------------------------------------------------------------------------
# Records and figures
# --------------------------------------------------------------------------------------------------

#: the band sums in the records: each band's pairs, and "above", every pair with P > L (activated ∪ beyond)
GROUPS = ("within", "activated", "beyond", "above")


def _r(x: float) -> float:
    return float(f"{x:.5g}")


def pair_records(prof: PairProfiles, common: dict[str, Any], *, per_head: bool = True) -> tuple[list[dict], list[dict]]:
    """Record rows of one model's profiles: ``(rows, curves)``. ``rows``: metric ``pair_logit_magnitude``
    (value = mean |term|) per layer, head and component — a pair, a band's pairs summed (:data:`GROUPS`) or
    the whole logit — with ``share`` and the U-score parts over Δ and (``*_last``) over key positions for
    the last query; ``curves``: metric ``pair_profile_delta`` / ``pair_profile_last_query``, each pair's
    curve. ``common``: the record fields the profiles do not know (method, params, seed, model, ...). ``per_head=False``
    (a large model): pair rows are means over a layer's heads (``head`` None, ``u_positive`` the fraction of
    heads with a positive U-score) and no curves are kept; band and total rows stay per head."""
    from hopekit.eval.records import make_record

    L = prof.train_len
    parts = u_parts(prof.profile)             # (layers, H, C)
    # the last query's curve is read by Δ = T − 1 − n, so that "near" is the most recent keys and "far"
    # the initial ones in both views (the U-score itself is symmetric in its ends)
    last = u_parts(prof.last_query[..., ::-1])
    share = prof.share
    rows, curves = [], []
    for li, layer in enumerate(prof.layers):
        if not per_head:
            for c, name in enumerate(prof.names):
                pair = c if name.startswith("pair") else None
                band = prof.band[c] if pair is not None else "rest"
                period = float(prof.period[c]) if pair is not None else math.inf
                rows.append(make_record(
                    metric="pair_logit_magnitude", value=_r(prof.magnitude[li, :, c].mean()), layer=layer, head=None,
                    component="pair" if pair is not None else "rest", pair=pair, band=band,
                    period=None if math.isinf(period) else _r(period), heads=int(prof.profile.shape[1]),
                    share=_r(share[li, :, c].mean()), u_score=_r(parts["u_score"][li, :, c].mean()),
                    u_positive=_r((parts["u_score"][li, :, c] > 0).mean()),
                    u_score_last=_r(last["u_score"][li, :, c].mean()), **common))
        for h in range(prof.profile.shape[1]):
            for c, name in enumerate(prof.names if per_head else ()):
                pair = c if name.startswith("pair") else None
                period = float(prof.period[c]) if pair is not None else None
                band = prof.band[c] if pair is not None else "rest"
                fields = dict(layer=layer, head=h, component="pair" if pair is not None else "rest", pair=pair,
                              period=None if period is None or math.isinf(period) else _r(period), band=band,
                              activated=band == "activated", beyond_2L=band == "beyond", above_L=band in BANDS[1:])
                rows.append(make_record(metric="pair_logit_magnitude", value=_r(prof.magnitude[li, h, c]),
                                        share=_r(share[li, h, c]), **_u_fields(parts, last, li, h, c),
                                        **fields, **common))
                for metric, curve in (("pair_profile_delta", prof.profile), ("pair_profile_last_query", prof.last_query)):
                    curves.append(make_record(metric=metric, value=[float(f"{v:.4g}") for v in curve[li, h, c]], **fields, **common))
            for group in GROUPS:
                idx = [i for i, b in enumerate(prof.band) if (b in BANDS[1:] if group == "above" else b == group)]
                if not idx:
                    continue
                gp = u_parts(prof.profile[li, h, idx].sum(0))
                gl = u_parts(prof.last_query[li, h, idx].sum(0)[::-1])
                rows.append(make_record(metric="pair_logit_magnitude", value=_r(prof.magnitude[li, h, idx].sum()),
                                        share=_r(share[li, h, idx].sum()), layer=layer, head=h, component="band",
                                        band=group, pairs=len(idx), **_u_fields(gp, gl), **common))
            tp, tl = u_parts(prof.profile[li, h].sum(0)), u_parts(prof.last_query[li, h].sum(0)[::-1])
            rows.append(make_record(metric="pair_logit_magnitude", value=_r(prof.logit_magnitude[li, h]), share=1.0,
                                    layer=layer, head=h, component="total", band=None, **_u_fields(tp, tl), **common))
    return rows, curves


def _u_fields(parts: dict, last: dict, *index: int) -> dict[str, float]:
    out = {k: _r(float(parts[k][index])) for k in ("u_score", "u_depth", "near", "mid", "far", "spread")}
    out.update({f"{k}_last": _r(float(last[k][index])) for k in ("u_score", "u_depth", "near", "mid", "far", "spread")})
    return out


def _fig(nrows: int, ncols: int, w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def plot_pair_heatmaps(curves: list[dict], seed: Any, model: str, metric: str, path: Any, title: str) -> None:
    """Per layer (rows) and head (columns): each pair's curve (``metric``, from :func:`pair_records`' curve
    rows) as a heat map, pair × Δ (or key position), pairs ordered by period, each scaled to its own max
    |·|; the period = L (solid) and 2L (dashed) boundaries marked."""
    sel = [c for c in curves if c["seed"] == seed and c["model"] == model and c["metric"] == metric
           and c["component"] == "pair"]
    layers, heads = sorted({c["layer"] for c in sel}), sorted({c["head"] for c in sel})
    fig, axes = _fig(len(layers), len(heads), 3.2 * len(heads), 2.6 * len(layers))
    L = sel[0]["train_len"]
    for i, layer in enumerate(layers):
        for j, h in enumerate(heads):
            cs = sorted((c for c in sel if c["layer"] == layer and c["head"] == h), key=lambda c: c["pair"])
            m = np.array([c["value"] for c in cs])
            m = m / np.maximum(np.abs(m).max(1, keepdims=True), 1e-12)     # each pair scaled to its own max |·|
            ax = axes[i][j]
            ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest",
                      extent=(-0.5, m.shape[1] - 0.5, len(cs) - 0.5, -0.5))
            for k in range(1, len(cs)):   # the period = L and 2L boundaries
                for edge, style in ((L, "-"), (2 * L, "--")):
                    p0, p1 = cs[k - 1]["period"] or math.inf, cs[k]["period"] or math.inf
                    if p0 <= edge < p1:
                        ax.axhline(k - 0.5, color="k", lw=1.2, ls=style)
            ax.set_title(f"layer {layer} head {h}", fontsize=8)
            ax.tick_params(labelsize=6)
            if j == 0:
                ax.set_ylabel("pair (period ↑)", fontsize=7)
            if i == len(layers) - 1:
                ax.set_xlabel("Δ" if metric.endswith("delta") else "key position n (query T−1)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
