"""score_vs_distance against float64 closed forms, for the aligned probe (q̂ = k̂ = 1 per pair), explicit and
Gaussian q, k; the post-softmax weights; RoFormer's decay bound against a naive loop and the scores."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe
from hopekit.analysis import score_vs_distance
from hopekit.analysis.distance import attention_weight_vs_distance, rope_decay_bound

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


# ----- q and k from three sources ------------------------------------------------------------------


def rope_closed_form(q: torch.Tensor, k: torch.Tensor, inv_freq: list[float], distances) -> torch.Tensor:
    """Σ_i (q_a k_a + q_b k_b) cos(θ_iΔ) + (q_a k_b − q_b k_a) sin(θ_iΔ), half-split pairs (a, b) =
    (x_i, x_{i+d/2}), rotation by +angle: ⟨R(mθ)q, R(nθ)k⟩ = qᵀR(−Δθ)k."""
    half = len(inv_freq)
    q, k = q.double().tolist(), k.double().tolist()
    out = []
    for n in distances.tolist():
        s = 0.0
        for i, t in enumerate(inv_freq):
            qa, qb, ka, kb = q[i], q[i + half], k[i], k[i + half]
            s += (qa * ka + qb * kb) * math.cos(t * n) + (qa * kb - qb * ka) * math.sin(t * n)
        out.append(s)
    return torch.tensor(out, dtype=torch.float64)


def test_explicit_rope_q_k_match_the_closed_form():
    enc = pe.build("rope", head_dim=D, num_heads=H, base=100.0)
    inv_freq = [100.0 ** (-2 * i / D) for i in range(D // 2)]
    q, k = torch.randn(3, D), torch.randn(3, D)
    distances = torch.arange(0, 2000, 13)
    got = score_vs_distance(enc, distances, source="explicit", q=q, k=k)
    assert got.shape == (3, len(distances)) and got.dtype == torch.float64
    for j in range(3):
        torch.testing.assert_close(got[j], rope_closed_form(q[j], k[j], inv_freq, distances), atol=3e-5 * D, rtol=0)
    one = score_vs_distance(enc, distances, source="explicit", q=q[0], k=k[0])
    assert one.shape == (len(distances),)
    torch.testing.assert_close(one, got[0])
    # the aligned probe is the explicit source with every pair (1, 0)
    probe = torch.zeros(D)
    probe[: D // 2] = 1.0
    torch.testing.assert_close(score_vs_distance(enc, distances, source="explicit", q=probe, k=probe),
                               score_vs_distance(enc, distances))


def test_explicit_hope_hyperbolic_q_k_match_the_papers_boost_form():
    enc = pe.build("hope_hyperbolic", head_dim=D, num_heads=H, omega_scale=0.05, penalty=0.06)
    omega = [0.05 * 10000.0 ** (-2 * i / D) for i in range(D // 2)]
    q, k = torch.randn(2, D), torch.randn(2, D)
    distances = torch.arange(0, 1500, 11)
    got = score_vs_distance(enc, distances, source="explicit", q=q, k=k)
    half = D // 2
    for j in range(2):
        qq, kk = q[j].double().tolist(), k[j].double().tolist()
        # paper Eq. 9: e^{−λΔ} Σ_i [(q·k)_i cosh(Δω_i) + ⟨q,k⟩⁺_i sinh(Δω_i)], pairs (x_i, x_{i+d/2})
        want = torch.tensor([sum(math.exp(-0.06 * n) * ((qq[i] * kk[i] + qq[i + half] * kk[i + half]) * math.cosh(w * n)
                                                        + (qq[i] * kk[i + half] + qq[i + half] * kk[i]) * math.sinh(w * n))
                                 for i, w in enumerate(omega)) for n in distances.tolist()], dtype=torch.float64)
        torch.testing.assert_close(got[j], want, atol=1e-5, rtol=1e-4)


def test_alibi_bias_belongs_to_the_chosen_head():
    enc = pe.build("alibi", head_dim=D, num_heads=4)
    distances = torch.arange(0, 300)
    slopes = pe.alibi_slopes(4)
    for h in range(4):
        want = (D // 2) - float(slopes[h]) * distances.double()
        torch.testing.assert_close(score_vs_distance(enc, distances, head=h), want, atol=1e-4, rtol=1e-6)


def test_gaussian_source_has_the_closed_form_mean_and_spread():
    """Zero-mean i.i.d. q, k: E s(Δ) = 0; Var s(Δ) = d for rope (rotations keep norms), Σ_c e^{−2r_cΔ}
    for hope_hyperbolic (its eigenbasis is orthonormal, so Q_c K_c are i.i.d. with variance 1)."""
    distances = torch.arange(0, 600, 7)
    n = 4000
    rope = pe.build("rope", head_dim=D, num_heads=1)
    s = score_vs_distance(rope, distances, source="gaussian", samples=n, seed=3)
    assert s.shape == (n, len(distances))
    sd_of_mean = math.sqrt(D / n)
    assert float(s.mean(0).abs().max()) < 5 * sd_of_mean
    torch.testing.assert_close(s.var(0), torch.full((len(distances),), float(D), dtype=torch.float64), rtol=0.12, atol=0)
    hyp = pe.build("hope_hyperbolic", head_dim=D, num_heads=1, omega_scale=0.05, penalty=0.06)
    s = score_vs_distance(hyp, distances, source="gaussian", samples=n, seed=3)
    rates = hyp.rates()[0].double()
    var = torch.exp(-2 * rates[None, :] * distances.double()[:, None]).sum(-1)
    assert float(((s.mean(0)).abs() / (var / n).sqrt()).max()) < 5
    torch.testing.assert_close(s.var(0), var, rtol=0.12, atol=0)


def test_gaussian_source_is_reproducible_from_its_seed():
    enc = pe.build("rope", head_dim=D, num_heads=H)
    distances = torch.arange(0, 100)
    a = score_vs_distance(enc, distances, source="gaussian", samples=5, seed=1)
    torch.testing.assert_close(a, score_vs_distance(enc, distances, source="gaussian", samples=5, seed=1), rtol=0, atol=0)
    assert not torch.equal(a, score_vs_distance(enc, distances, source="gaussian", samples=5, seed=2))


@pytest.mark.parametrize("kwargs, error, match", [
    ({"source": "random"}, ValueError, r"^source: expected one of"),
    ({"q": torch.ones(D), "k": torch.ones(D)}, ValueError, r"^q, k: are read only with source='explicit'"),
    ({"source": "explicit", "q": torch.ones(D)}, ValueError, r"^q, k: source='explicit' needs both"),
    ({"source": "explicit", "q": torch.ones(D + 1), "k": torch.ones(D)}, ValueError, r"^q: expected shape"),
    ({"source": "explicit", "q": torch.ones(2, D), "k": torch.ones(3, D)}, ValueError, r"^q, k: sample counts differ"),
    ({"source": "explicit", "q": [1.0] * D, "k": torch.ones(D)}, TypeError, r"^q: expected a torch.Tensor"),
    ({"source": "gaussian", "samples": 0}, ValueError, r"^samples: "),
    ({"head": H}, ValueError, r"^head: expected an int in \[0, 2\)"),
    ({"query_pos": 5}, ValueError, r"^query_pos: "),
])
def test_bad_arguments_are_one_line_naming_them(kwargs, error, match):
    enc = pe.build("rope", head_dim=D, num_heads=H)
    with pytest.raises(error, match=match) as info:
        score_vs_distance(enc, torch.arange(0, 10), **kwargs)
    assert "\n" not in str(info.value)


def test_absolute_encodings_have_only_the_aligned_probe():
    enc = pe.build("sinusoidal", head_dim=D, num_heads=H)
    with pytest.raises(ValueError, match=r"^source='gaussian': sinusoidal adds to the input"):
        score_vs_distance(enc, torch.arange(0, 10), source="gaussian")


# ----- post-softmax weights ------------------------------------------------------------------------


def test_attention_weight_is_the_softmax_of_the_scaled_scores():
    scores = torch.tensor([3.0, 1.0, 0.0, -2.0], dtype=torch.float64)
    got = attention_weight_vs_distance(scores, scale=0.5)
    e = [math.exp(0.5 * float(x)) for x in scores]
    torch.testing.assert_close(got, torch.tensor([x / sum(e) for x in e], dtype=torch.float64))
    # with every distance 0…m it is the attention row of a query at m over keys at every position
    enc = pe.build("alibi", head_dim=D, num_heads=H)
    m = 40
    w = attention_weight_vs_distance(score_vs_distance(enc, torch.arange(0, m + 1)), scale=1 / math.sqrt(D))
    probe = torch.zeros(1, H, m + 1, D)
    probe[..., : D // 2] = 1.0
    logits = (probe @ probe.transpose(-1, -2)).double() + enc.bias(torch.arange(m + 1), torch.arange(m + 1)).double()
    row = torch.softmax(logits[0, 0, m] / math.sqrt(D), -1)       # keys n = 0 … m, i.e. Δ = m … 0
    torch.testing.assert_close(w, row.flip(0), rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match=r"^scale: "):
        attention_weight_vs_distance(scores, scale=0.0)


# ----- RoFormer's long-term-decay bound -------------------------------------------------------------


def naive_bound(inv_freq: list[float], n: int) -> float:
    total, partial = 0.0, complex(0.0)
    for t in inv_freq:
        partial += complex(math.cos(n * t), math.sin(n * t))
        total += abs(partial)
    return total / len(inv_freq)


def test_rope_decay_bound_matches_a_naive_loop_and_starts_at_its_maximum():
    inv_freq = [10000.0 ** (-2 * i / D) for i in range(D // 2)]
    distances = torch.arange(0, 5000, 37)
    got = rope_decay_bound(torch.tensor(inv_freq, dtype=torch.float64), distances)
    want = torch.tensor([naive_bound(inv_freq, n) for n in distances.tolist()], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert float(got[0]) == pytest.approx((D // 2 + 1) / 2)          # Σ_{j=1}^{d/2} j / (d/2)
    assert float(got[-20:].mean()) < 0.5 * float(got[0])             # it decays (Su et al. Fig. 2)


def test_rope_scores_respect_the_abel_bound():
    """|s(Δ)| ≤ max_i |h_{i+1} − h_i| · (d/2) · B(Δ) (h_{d/2} = 0), for the aligned probe and for
    Gaussian q, k."""
    enc = pe.build("rope", head_dim=D, num_heads=1)
    inv_freq = enc.spectrum().inv_freq
    distances = torch.arange(0, 4000)
    bound = rope_decay_bound(inv_freq, distances) * (D // 2)
    aligned = score_vs_distance(enc, distances)
    assert (aligned.abs() <= bound + 1e-4).all()
    q, k = torch.randn(8, D), torch.randn(8, D)
    s = score_vs_distance(enc, distances, source="explicit", q=q, k=k)
    half = D // 2
    for j in range(8):
        h = torch.complex(q[j, :half].double(), q[j, half:].double()) * torch.complex(k[j, :half].double(), k[j, half:].double()).conj()
        steps = torch.cat([h[1:], torch.zeros(1, dtype=h.dtype)]) - h
        assert (s[j].abs() <= steps.abs().max() * bound + 1e-4).all()
    assert float(aligned[0]) == pytest.approx(D // 2, rel=1e-6)     # Δ = 0: every pair contributes 1
