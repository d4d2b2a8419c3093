"""Pre-softmax score, and post-softmax weight, as functions of query–key distance, for any registered
encoding.

**Where q and k come from** (``source``):

* ``"aligned"`` (default): the probe of the papers' figures (RoFormer §3.4.3, papers/hope_highfreq.md
  "Score vs distance", Dai et al. Fig. 4): q and k are equal and "aligned" — every pair holds (1, 0),
  i.e. q̂_i = k̂_i = 1 — so a rotary pair contributes cos(θ_iΔ), a hope_hyperbolic pair
  e^{−λΔ}cosh(ω_iΔ) = ½(e^{−(λ−ω_i)Δ} + e^{−(λ+ω_i)Δ}), ALiBi adds −m_h·Δ to a constant (d/2), and
  absolute encodings contribute PE(m)·PE(n). |q| = |k| = √(d/2).
* ``"gaussian"``: q, k i.i.d. N(0, 1) per coordinate, ``samples`` pairs drawn from ``seed`` (Dai et
  al. Fig. 5's setting). Each pair is one curve: the same q at the query and the same k at every key,
  so only the encoding changes with Δ. For zero-mean q, k the *expected* score is 0 for every
  relative method (rotations and boosts are linear in k); what decays is the spread (for rope the
  variance is d at every Δ; for hope_hyperbolic it is Σ_c e^{−2r_cΔ}).
* ``"explicit"``: the caller's own ``q``, ``k`` (e.g. one layer and head of a trained model), of shape
  (head_dim,) or (samples, head_dim).

Every source is scored through the encoding's own hooks (``rotate`` + dot product, ``bias``,
``scores``), at one query position m (default: the largest distance) and keys at m − Δ, for the
heads' own parameters (``head``, default 0). For BiPE, Δ is a distance in segments (its inter-segment
encoding). Absolute encodings only have the aligned probe's PE(m)·PE(n).

:func:`attention_weight_vs_distance` turns a score curve into the softmax weights of that query;
:func:`rope_decay_bound` is RoFormer's long-term-decay bound, the overlay of RoPE's curves.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from hopekit import pe

__all__ = ["score_vs_distance", "gaussian_qk", "attention_weight_vs_distance", "rope_decay_bound", "SOURCES"]

#: the sources of q and k :func:`score_vs_distance` knows
SOURCES = ("aligned", "gaussian", "explicit")

_CHUNK_ELEMENTS = 1 << 23  # keys × heads × head_dim × samples scored at once (≈ 32 MB of float32)


def _qk(name: str, x: Any, head_dim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape (head_dim,) or (samples, head_dim), "
                        f"got {type(x).__name__}")
    if x.dim() not in (1, 2) or x.shape[-1] != head_dim or x.numel() == 0:
        raise ValueError(f"{name}: expected shape (head_dim,) or (samples, head_dim) with head_dim={head_dim}, "
                         f"got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x.detach().float().reshape(-1, head_dim)


@torch.no_grad()
def score_vs_distance(enc: pe.PositionalEncoding, distances: torch.Tensor, *, query_pos: int | None = None,
                      seq_len: int | None = None, source: str = "aligned", q: torch.Tensor | None = None,
                      k: torch.Tensor | None = None, samples: int = 64, seed: int = 0, head: int = 0) -> torch.Tensor:
    """Score s(Δ) for each Δ in ``distances`` (float64; head ``head``, default 0).

    Shape: ``(len(distances),)`` for one q/k pair (``"aligned"``, or ``"explicit"`` with 1-D q and k);
    ``(samples, len(distances))`` for several (``"gaussian"``: always; ``"explicit"``: one row per row
    of q and k, a 1-D one broadcast against the other). ``query_pos``: the query's position m (default
    max Δ, so the keys run from m − max Δ = 0); ``seq_len``: the length a length-dependent method
    (dynamic NTK, LongRoPE) is evaluated at.
    """
    if source not in SOURCES:
        raise ValueError(f"source: expected one of {SOURCES}, got {source!r}")
    if (q is not None or k is not None) and source != "explicit":
        raise ValueError(f"q, k: are read only with source='explicit' (got source={source!r})")
    if enc.uses_tokens:  # BiPE: the distance that matters in attention is between *segments*
        enc = enc.inter
    if not isinstance(distances, torch.Tensor) or distances.dim() != 1 or distances.numel() == 0:
        raise ValueError(f"distances: expected a non-empty 1-D tensor, got "
                         f"{tuple(distances.shape) if isinstance(distances, torch.Tensor) else type(distances).__name__}")
    distances = distances.long()
    if int(distances.min()) < 0:
        raise ValueError(f"distances: must be ≥ 0 (Δ = m − n, query m, key n), got min {int(distances.min())}")
    m = int(distances.max()) if query_pos is None else query_pos
    if isinstance(m, bool) or not isinstance(m, int) or m < int(distances.max()):
        raise ValueError(f"query_pos: expected an int ≥ max distance {int(distances.max())}, got {query_pos!r}")
    d, h = enc.head_dim, enc.num_heads
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < h:
        raise ValueError(f"head: expected an int in [0, {h}), got {head!r}")
    q_pos, k_pos = torch.tensor([m]), m - distances
    if enc.uses_embed:  # absolute: the positional part of the input-level dot product, PE(m)·PE(n)
        if source != "aligned":
            raise ValueError(f"source={source!r}: {enc.kind} adds to the input, not to q and k; only the aligned "
                             f"probe's PE(m)·PE(n) is defined")
        pm = enc.embed(torch.zeros(1, 1, enc.d_model), q_pos)[0, 0]
        pn = enc.embed(torch.zeros(1, len(k_pos), enc.d_model), k_pos)[0]
        return (pn @ pm).double()

    single = False
    if source == "aligned":
        probe = torch.zeros(1, d)
        probe[:, : d // 2] = 1.0                                       # pair i = (1, 0): q̂_i = k̂_i = 1
        qs = ks = probe
        single = True
    elif source == "gaussian":
        qs, ks = gaussian_qk(d, samples=samples, seed=seed)
    else:
        if q is None or k is None:
            raise ValueError("q, k: source='explicit' needs both")
        qs, ks = _qk("q", q, d), _qk("k", k, d)
        if qs.shape[0] != ks.shape[0] and 1 not in (qs.shape[0], ks.shape[0]):
            raise ValueError(f"q, k: sample counts differ ({qs.shape[0]} vs {ks.shape[0]})")
        single = q.dim() == 1 and k.dim() == 1
        n = max(qs.shape[0], ks.shape[0])
        qs, ks = qs.expand(n, d), ks.expand(n, d)

    bias = enc.bias(q_pos, k_pos)[head, 0].double() if enc.uses_bias else None
    rows = []
    chunk = max(1, _CHUNK_ELEMENTS // max(1, len(distances) * h * d))
    for start in range(0, qs.shape[0], chunk):
        qc = qs[start:start + chunk, None, None, :].expand(-1, h, 1, d).contiguous()           # (S, H, 1, D)
        kc = ks[start:start + chunk, None, None, :].expand(-1, h, len(distances), d).contiguous()  # (S, H, N, D)
        if enc.uses_scores:
            s = enc.scores(qc, kc, q_pos, k_pos)[:, head, 0].double()
        else:
            if enc.uses_rotate:
                qc, kc = enc.rotate(qc, kc, q_pos, k_pos, seq_len=seq_len)
            s = (qc[:, head] @ kc[:, head].transpose(-1, -2))[:, 0].double()
            if bias is not None:
                s = s + bias
        rows.append(s)
    out = torch.cat(rows)
    return out[0] if single else out


def gaussian_qk(head_dim: int, *, samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The q and k of ``source="gaussian"``: two (samples, head_dim) float32 tensors of i.i.d. N(0, 1)
    values (drawn in float64 from a generator seeded with ``seed``, q first), the same on every machine."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples: expected an int ≥ 1, got {samples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: expected an int, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(samples, head_dim, generator=gen, dtype=torch.float64).float()
    k = torch.randn(samples, head_dim, generator=gen, dtype=torch.float64).float()
    return q, k


def attention_weight_vs_distance(scores: torch.Tensor, *, scale: float) -> torch.Tensor:
    """Post-softmax weights softmax(scale · s) over the last dim of ``scores`` (float64, same shape).

    With a score curve over **every** distance 0 … m (one key per position), this is the attention row
    of a query at m = max Δ whose keys are at every earlier position: entry Δ is the weight on the key Δ
    back. (Over a subsample of distances it is the softmax over those keys only.) Attention uses
    ``scale`` = 1/√head_dim.

    The absolute size of the scores matters: softmax is not scale-invariant. The aligned probe has
    |q| = |k| = √(d/2), so its logit at Δ = 0 is (d/2)/√d = √d/2 (2.8 at head_dim 32); Gaussian q, k
    give logits of typical size 1 (standard deviation √d/√d). A trained model's own vectors carry its
    own scale. We do not rescale: the weights are those of vectors of exactly that size.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() < 1 or scores.shape[-1] == 0:
        raise ValueError("scores: expected a tensor (..., distances) with at least one distance")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale: expected a finite number > 0 (attention uses 1/√head_dim), got {scale!r}")
    return torch.softmax(scores.detach().double() * float(scale), dim=-1)


def rope_decay_bound(inv_freq: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """RoFormer's long-term-decay bound (Su et al. 2021, §3.4.3, Eqs. 35–37), float64, one per Δ:

        B(Δ) = (1/(d/2)) Σ_{j=1}^{d/2} |S_j|,    S_j = Σ_{k=0}^{j−1} e^{iΔθ_k}

    over the d/2 pairs of ``inv_freq`` θ_k. By Abel summation, with h_i = q̂_i·conj(k̂_i) per pair and
    h_{d/2} = 0, the rope score Re Σ_i h_i e^{−iΔθ_i} satisfies

        |s(Δ)| ≤ max_i |h_{i+1} − h_i| · (d/2) · B(Δ),

    the relation the paper states (it plots B, which decays with Δ for θ_k = 10000^{−2k/d}). For the
    aligned probe (h_i = 1 for every pair, so the only non-zero difference is the last one, 1):
    |s(Δ)| ≤ (d/2)·B(Δ); in fact s(Δ) = Re S_{d/2}. Zero frequencies (hope_highfreq's position-free
    pairs) are allowed: they add 1 to every S_j from there on, and the bound does not decay.
    """
    if not isinstance(inv_freq, torch.Tensor) or inv_freq.dim() != 1 or inv_freq.numel() == 0:
        raise ValueError("inv_freq: expected a non-empty 1-D tensor of per-pair frequencies")
    if not isinstance(distances, torch.Tensor) or distances.dim() != 1:
        raise ValueError("distances: expected a 1-D tensor")
    theta = inv_freq.detach().to("cpu", torch.float64)
    dist = distances.detach().to("cpu", torch.float64)
    pairs = theta.numel()
    out = torch.empty(dist.numel(), dtype=torch.float64)
    step = max(1, (1 << 22) // pairs)
    for a in range(0, dist.numel(), step):
        angle = dist[a:a + step, None] * theta[None, :]                    # (n, P), float64
        s = torch.polar(torch.ones_like(angle), angle).cumsum(-1)         # S_1 … S_{d/2}
        out[a:a + step] = s.abs().sum(-1) / pairs
    return out
