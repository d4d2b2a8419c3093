"""Pre-softmax score as a function of query–key distance, for any registered encoding.

The probe is the one used in the papers' figures (RoFormer §3.4.3, papers/hope_highfreq.md "Score vs
distance", Dai et al. Figs. 4–5): q and k are equal and "aligned" — every pair holds (1, 0), i.e.
q̂_i = k̂_i = 1 — so a rotary pair contributes cos(θ_iΔ), a hope_hyperbolic pair e^{−λΔ}cosh(ω_iΔ),
ALiBi adds −m_h·Δ to a constant, and absolute encodings contribute PE(m)·PE(n). Head 0 is reported.
For BiPE, Δ is a distance in segments (its inter-segment encoding).
For random zero-mean q, k the expected score is 0 for every method; decay appears only for aligned
vectors.
"""

from __future__ import annotations

import torch

from hopekit import pe

@torch.no_grad()
def score_vs_distance(enc: pe.PositionalEncoding, distances: torch.Tensor, *, query_pos: int | None = None,
                      seq_len: int | None = None) -> torch.Tensor:
    """Score s(Δ) of the aligned probe for each Δ in ``distances`` (float64 result, head 0)."""
    if enc.uses_tokens:  # BiPE: the distance that matters in attention is between *segments*
        enc = enc.inter
    distances = distances.long()
    m = int(distances.max()) if query_pos is None else query_pos
    q_pos, k_pos = torch.tensor([m]), m - distances
    d, h = enc.head_dim, enc.num_heads
    probe = torch.zeros(d)
    probe[: d // 2] = 1.0                                   # pair i = (1, 0): q̂_i = k̂_i = 1
    q = probe.expand(1, h, 1, d).contiguous()
    k = probe.expand(1, h, len(distances), d).contiguous()
    if enc.uses_embed:  # absolute: the positional part of the input-level dot product, PE(m)·PE(n)
        zeros = torch.zeros(1, 1, enc.d_model)
        pm = enc.embed(zeros, q_pos)[0, 0]
        pn = enc.embed(torch.zeros(1, len(k_pos), enc.d_model), k_pos)[0]
        return (pn @ pm).double()
    if enc.uses_scores:
        return enc.scores(q, k, q_pos, k_pos)[0, 0, 0].double()
    if enc.uses_rotate:
        q, k = enc.rotate(q, k, q_pos, k_pos, seq_len=seq_len)
    s = (q @ k.transpose(-1, -2))[0, 0, 0].double()
    if enc.uses_bias:
        s = s + enc.bias(q_pos, k_pos)[0, 0].double()
    return s
