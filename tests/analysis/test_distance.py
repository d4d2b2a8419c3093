"""score_vs_distance against float64 closed forms of the aligned probe (q̂ = k̂ = 1 per pair)."""

from __future__ import annotations

import math

import torch

from hopekit import pe
from hopekit.analysis import score_vs_distance

D, H = 16, 2


def test_rope_score_is_the_sum_of_pair_cosines():
    enc = pe.build("rope", head_dim=D, num_heads=H, base=100.0)
    distances = torch.arange(0, 3000, 7)
    got = score_vs_distance(enc, distances)
    inv_freq = [100.0 ** (-2 * i / D) for i in range(D // 2)]
    want = torch.tensor([sum(math.cos(t * int(n)) for t in inv_freq) for n in distances], dtype=torch.float64)
    torch.testing.assert_close(got, want, atol=2e-5 * D, rtol=0)


def test_alibi_score_is_the_probe_norm_minus_the_slope_times_distance():
    enc = pe.build("alibi", head_dim=D, num_heads=H)
    distances = torch.arange(0, 500)
    slope = float(pe.alibi_slopes(H)[0])
    want = (D // 2) - slope * distances.double()
    torch.testing.assert_close(score_vs_distance(enc, distances), want, atol=1e-4, rtol=1e-6)


def test_hope_hyperbolic_score_decays_like_its_closed_form():
    params = pe.parse(pe.example_config("hope_hyperbolic", head_dim=D))
    enc = pe.build(params, head_dim=D, num_heads=H)
    distances = torch.arange(0, 400)
    omega = [params.omega_scale * params.base ** (-2 * i / D) for i in range(D // 2)]
    lam = params.resolved_penalty
    # pair (1, 0) = (u, v) = (1/√2, 1/√2): e^{−(λ−ω)Δ}/2 + e^{−(λ+ω)Δ}/2 = e^{−λΔ} cosh(ωΔ)
    want = torch.tensor([sum(math.exp(-lam * n) * math.cosh(w * n) for w in omega) for n in distances.tolist()],
                        dtype=torch.float64)
    torch.testing.assert_close(score_vs_distance(enc, distances), want, atol=1e-6, rtol=1e-5)
    assert (score_vs_distance(enc, distances).diff() <= 0).all()  # monotone decay
