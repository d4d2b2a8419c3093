"""hope_hyperbolic: stable form vs float64 oracles (closed form, literal paper algorithm, dense decay
masks), causality, precision, learnable penalty."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe
from hopekit.pe.hope_hyperbolic import HyperbolicParams

# ---------------------------------------------------------------------------------------------------
# Oracles (float64, test-side only)
# ---------------------------------------------------------------------------------------------------


def omega64(head_dim, base, omega_scale):
    return omega_scale / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def literal_paper_scores(q, k, m, n, omega, lam):
    """Algorithm 1 of Dai et al., literally, in float64: absolute cosh/sinh/exp, interleaved pairs
    (x_{2i}, x_{2i+1}); the key gets the inverse boost (Eq. 6). Only exact at small positions."""
    q, k = q.double(), k.double()
    qa, qb = q[..., 0::2], q[..., 1::2]
    ka, kb = k[..., 0::2], k[..., 1::2]
    cm, sm = torch.cosh(m * omega), torch.sinh(m * omega)
    cn, sn = torch.cosh(n * omega), torch.sinh(n * omega)
    q1, q2 = (cm * qa + sm * qb) * math.exp(-m * lam), (sm * qa + cm * qb) * math.exp(-m * lam)
    k1, k2 = (cn * ka - sn * kb) * math.exp(n * lam), (-sn * ka + cn * kb) * math.exp(n * lam)
    return (q1 * k1 + q2 * k2).sum(-1)


def closed_form_pair(a, b, delta, omega, lam):
    """e^{−λΔ}(cosh(ωΔ)·a + sinh(ωΔ)·b) written with decaying exponentials only (float64)."""
    up, down = torch.exp(delta * (omega - lam)), torch.exp(-delta * (omega + lam))
    return 0.5 * (up + down) * a + 0.5 * (up - down) * b


def dense_oracle(q, k, q_pos, k_pos, omega, lam):
    """Relative decay-mask form in float64: Σ_i e^{−λΔ}[(q·k)_i cosh(ωΔ) + ⟨q,k⟩⁺_i sinh(ωΔ)], half-split."""
    q, k = q.double(), k.double()
    h = q.shape[-1] // 2
    qa, qb, ka, kb = q[..., :h], q[..., h:], k[..., :h], k[..., h:]
    dot = qa[..., :, None, :] * ka[..., None, :, :] + qb[..., :, None, :] * kb[..., None, :, :]
    cross = qa[..., :, None, :] * kb[..., None, :, :] + qb[..., :, None, :] * ka[..., None, :, :]
    delta = (q_pos[:, None] - k_pos[None, :]).double()[..., None]
    out = closed_form_pair(dot, cross, delta.clamp(min=0), omega, lam).sum(-1)
    return out.masked_fill(delta[..., 0] < 0, float("-inf"))


def hyper(head_dim=16, num_heads=2, **kw):
    return pe.build("hope_hyperbolic", head_dim=head_dim, num_heads=num_heads, **kw)


# ---------------------------------------------------------------------------------------------------


def test_equals_literal_paper_algorithm_at_small_positions():
    d, lam, base, scale = 16, 1.05, 10000.0, 1.0   # RoPE's own frequencies: the paper's natural reading
    enc = hyper(d, 1, base=base, omega_scale=scale, penalty=lam)
    omega = omega64(d, base, scale)
    q = torch.randn(1, 1, 8, d, dtype=torch.float64)
    k = torch.randn(1, 1, 8, d, dtype=torch.float64)
    pos = torch.arange(8)  # m, n ≤ 7: the literal algorithm is still exact in float64 here
    ours = enc.scores(pe.interleaved_to_half(q.float()), pe.interleaved_to_half(k.float()), pos, pos)[0, 0]
    for m in range(8):
        for n in range(m + 1):
            ref = literal_paper_scores(q[0, 0, m], k[0, 0, n], m, n, omega, lam)
            assert ours[m, n].item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-5)
        assert torch.isinf(ours[m, m + 1:]).all() and (ours[m, m + 1:] < 0).all()


def test_naive_float32_defect_is_real():
    """The reason for the stable form: the literal algorithm in float32 is wrong by m ≈ 12 (spec table; the exact onset depends on q, k)."""
    d, lam = 64, 1.05
    omega = omega64(d, 10000.0, 1.0)
    q, k = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)

    def naive32(m, n):
        o = omega.float()
        qa, qb, ka, kb = q.float()[0::2], q.float()[1::2], k.float()[0::2], k.float()[1::2]
        cm, sm, cn, sn = torch.cosh(m * o), torch.sinh(m * o), torch.cosh(n * o), torch.sinh(n * o)
        em, en = torch.exp(torch.tensor(-m * lam)), torch.exp(torch.tensor(n * lam))
        return (((cm * qa + sm * qb) * em) * ((cn * ka - sn * kb) * en)
                + ((sm * qa + cm * qb) * em) * ((-sn * ka + cn * kb) * en)).sum()

    enc = hyper(d, 1, omega_scale=1.0, penalty=lam)
    qh, kh = pe.interleaved_to_half(q).view(1, 1, 1, d), pe.interleaved_to_half(k).view(1, 1, 1, d)
    for m, wrong in ((8, False), (16, True), (80, True)):
        n = m - 3
        exact = dense_oracle(qh, kh, torch.tensor([m]), torch.tensor([n]), omega, lam).item()
        ours = enc.scores(qh.float(), kh.float(), torch.tensor([m]), torch.tensor([n])).item()
        naive = naive32(m, n).item()
        assert ours == pytest.approx(exact, rel=1e-5, abs=1e-6)
        bad = not math.isfinite(naive) or abs(naive - exact) > 1e-2 * max(1.0, abs(exact))
        assert bad == wrong, (m, naive, exact)


@pytest.mark.parametrize("omega_scale,penalty", [
    (1.0, 1.05),          # RoPE frequencies (very local; values underflow fast)
    (0.2, 0.21),          # our default
    (0.01, 0.0105),       # slow decay: contributions significant out to Δ ≈ 10^4
    (1e-5, 1.000001e-5),  # tiny rates: contributions still significant at Δ = 2^20
])
@pytest.mark.parametrize("offset", [0, 1_000_000])
def test_matches_closed_form_per_pair_float32(omega_scale, penalty, offset):
    d = 16
    enc = hyper(d, 1, omega_scale=omega_scale, penalty=penalty)
    omega = omega64(d, 10000.0, omega_scale)
    deltas = torch.cat([torch.arange(0, 64), torch.logspace(6, 20, 60, base=2).long()]).unique()
    m = offset + int(deltas.max())
    q_pos, k_pos = torch.tensor([m]), m - deltas
    worst = 0.0
    for i in range(d // 2):
        for a, b in ((1.0, 0.0), (0.0, 1.0), (0.7, 0.3)):
            # q = e_i (first member of pair i), k chosen so that (q·k)_i = a and ⟨q,k⟩⁺_i = b
            q = torch.zeros(1, 1, 1, d)
            k = torch.zeros(1, 1, len(deltas), d)
            q[..., i] = 1.0
            k[..., i], k[..., i + d // 2] = a, b
            ours = enc.scores(q, k, q_pos, k_pos)[0, 0, 0].double()
            ref = closed_form_pair(a, b, deltas.double(), omega[i], penalty)
            # Error scale: the sum of the magnitudes of the two eigen-channel terms, ½(up·|a+b| + down·|a−b|).
            # For a = 1, b = 0 this is exactly |ref| (plain relative error). For the sinh term (b ≠ 0)
            # the closed form itself is a difference of the two channels, so its relative error is
            # bounded by the channel magnitudes, not by |ref| (which → 0 at Δ = 0).
            delta = deltas.double()
            up, down = torch.exp(delta * (omega[i] - penalty)), torch.exp(-delta * (omega[i] + penalty))
            magnitude = 0.5 * (up * abs(a + b) + down * abs(a - b))
            assert torch.isfinite(ours).all()
            big = magnitude > 1e-30
            rel = ((ours - ref).abs() / magnitude)[big]
            worst = max(worst, rel.max().item() if rel.numel() else 0.0)
            assert ((ours - ref).abs()[~big] <= 1e-30).all()
    assert worst <= 1e-5, worst


def test_random_inputs_match_dense_oracle_and_block_sizes_agree():
    d, H, T = 32, 3, 300
    q, k = torch.randn(2, H, T, d), torch.randn(2, H, T, d)
    pos = torch.arange(T) * 2 + 5
    for omega_scale, penalty in ((1.0, 1.05), (0.05, 0.06), (0.01, 0.0105)):
        omega = omega64(d, 10000.0, omega_scale)
        ref = dense_oracle(q, k, pos, pos, omega, penalty)
        finite = torch.isfinite(ref)
        scale = ref[finite].abs().max()
        for max_block in (1, 16, 64, 128, 256):
            out = hyper(d, H, omega_scale=omega_scale, penalty=penalty, max_block=max_block).scores(q, k, pos, pos)
            assert torch.equal(torch.isfinite(out), finite)
            assert ((out.double() - ref)[finite].abs().max() / scale) < 1e-5


def test_batched_positions_and_kv_cache_style_call():
    """Positions per batch row (B, T), and a single query against cached keys at positions ≥ 10k."""
    d, H = 16, 2
    enc = hyper(d, H, omega_scale=0.05, penalty=0.06)
    omega = omega64(d, 10000.0, 0.05)
    k = torch.randn(2, H, 40, d)
    k_pos = torch.stack([torch.arange(40) + 10_000, torch.arange(40) + 77_777])
    q = torch.randn(2, H, 1, d)
    q_pos = k_pos[:, -1:]
    out = enc.scores(q, k, q_pos, k_pos)
    for b in range(2):
        ref = dense_oracle(q[b:b + 1], k[b:b + 1], q_pos[b], k_pos[b], omega, 0.06)
        torch.testing.assert_close(out[b:b + 1].double(), ref, rtol=1e-5, atol=1e-6)


def test_finite_under_bf16_autocast_and_bf16_inputs():
    enc = hyper(32, 2, omega_scale=1.0, penalty=1.05)
    q, k = torch.randn(1, 2, 200, 32), torch.randn(1, 2, 200, 32)
    pos = torch.arange(200) + 1_000_000
    ref = enc.scores(q, k, pos, pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc.scores(q, k, pos, pos)
    out_bf16 = enc.scores(q.bfloat16(), k.bfloat16(), pos, pos)
    for o in (out, out_bf16):
        mask = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(o), mask)
        assert (o.float()[mask] - ref[mask]).abs().max() < 0.1  # bf16 rounding of O(10) logits


def test_causal_only_and_no_overflow_from_future_keys():
    enc = hyper(16, 1, omega_scale=1.0, penalty=1.05)
    q, k = torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 16)
    out = enc.scores(q, k, torch.arange(4), torch.arange(4) + 10_000)  # every key in the future
    assert torch.isneginf(out).all()
    assert enc.causal_only and enc.uses_scores and not enc.uses_rotate


def test_decay_values_from_the_spec():
    """papers/hope_hyperbolic.md, Properties: λ = 1.05 with RoPE frequencies (d = 64)."""
    d, lam = 64, 1.05
    enc = hyper(d, 1, omega_scale=1.0, penalty=lam)
    rates = enc.rates()[0].double()
    slowest_low_freq = rates[d // 2 - 1]          # u channel of the lowest-frequency pair: λ − ω_31
    assert math.exp(-8 * slowest_low_freq) == pytest.approx(2.2e-4, rel=0.05)
    assert math.exp(-16 * slowest_low_freq) == pytest.approx(5.0e-8, rel=0.05)
    assert math.exp(-128 * rates[0]) == pytest.approx(1.7e-3, rel=0.05)  # pair 0's u channel
    # λ = ω gives the no-decay limit ½ for e^{−λΔ}cosh(ωΔ) (why the appendix penalty cannot be right)
    assert closed_form_pair(1.0, 0.0, torch.tensor(1e4, dtype=torch.float64), 1.0, 1.0).item() == pytest.approx(0.5)


def test_learnable_penalty_stays_above_max_omega_with_finite_grads():
    enc = hyper(16, 4, omega_scale=0.05, penalty=0.06, learnable=True, per_head=True)
    assert enc.penalty().shape == (4,)
    torch.testing.assert_close(enc.penalty(), torch.full((4,), 0.06), rtol=1e-5, atol=0)
    q = torch.randn(1, 4, 50, 16, requires_grad=True)
    k = torch.randn(1, 4, 50, 16, requires_grad=True)
    pos = torch.arange(50)
    s = enc.scores(q, k, pos, pos)
    s.masked_fill(torch.isinf(s), 0).sum().backward()
    assert torch.isfinite(enc.penalty_raw.grad).all() and enc.penalty_raw.grad.abs().sum() > 0
    with torch.no_grad():
        enc.penalty_raw.fill_(-1e4)  # any raw value keeps λ > max ω
    assert (enc.penalty() > 0.05).all()


def test_default_penalty_and_validation():
    p = HyperbolicParams()
    assert p.resolved_penalty == pytest.approx(1.05 * p.omega_scale)
    with pytest.raises(ValueError, match="penalty"):
        HyperbolicParams(omega_scale=0.1, penalty=0.1)


# ---------------------------------------------------------------------------------------------------
# Learnable λ: as exact as a fixed λ (issue 13, item 2.9)
# ---------------------------------------------------------------------------------------------------

U32 = 2.0 ** -24  # float32 unit roundoff
#: Relative error of one channel term Q_c K_c e^{−r_c Δ} of ``scores`` (float32), in units of U32:
#: * the rate r̃_c = r_c(1 + ε_r): |ε_r| ≤ RATE_ROUNDINGS·U32, which shifts the exponent by r_cΔ·ε_r.
#:   Fixed λ: 1 (the float64 rate cast once). Learnable λ: 4 (the cast of the float64 offset
#:   (ω_max ∓ ω_i) + ω_max·margin, float32 softplus = exp then log1p (2), the sum);
#: * the two block exponents x_q = r̃·dq, x_k = r̃·dk are rounded products: |x_q| ≤ 20 (the block rule)
#:   and |x_k| ≤ r_cΔ + 20, so they are off by U32·(r_cΔ + 40) in all;
#: * a fixed count of further roundings: exp twice, the two scalings, the eigenbasis change
#:   ((a ± b)·(1/√2) on each side, and 1/√2 itself), the matmul's addition of the u and v terms.
FURTHER_ROUNDINGS = 12


def channel_error_bound(up, down, a, b, rate_u, rate_v, delta, rate_roundings):
    """Σ_c |term_c| · U32 · (r_cΔ·(rate_roundings + 1) + 40 + FURTHER_ROUNDINGS) over the u and v channel."""
    def per_term(rate):
        return U32 * (rate * delta * (rate_roundings + 1) + 40 + FURTHER_ROUNDINGS)
    return 0.5 * (up * abs(a + b) * per_term(rate_u) + down * abs(a - b) * per_term(rate_v))


def learned_rates64(enc, omega):
    """The rates a learnable encoding's parameter denotes, in float64: λ = ω_max(1 + margin) + softplus(p)
    (the module docstring's definition), λ − ω_i and λ + ω_i."""
    lam = float(omega.max()) * (1 + 1e-6) + torch.nn.functional.softplus(enc.penalty_raw.detach().double())
    return lam - omega, lam + omega


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("omega_scale", [1.0, 0.01, 1e-3])
def test_learnable_penalty_as_exact_as_fixed_near_max_omega(omega_scale, learnable):
    """λ = ω(1 + 1e-5): the slowest rate λ − ω_max is 1e-5·ω. A float32 difference λ − ω loses ~ulp(ω)/2
    of it (relative 6e-3), i.e. a relative score error of 6e-3·(λ − ω)Δ — up to 3e-2 at Δ = 5.7e5. Both
    paths must stay within the float32 rounding bound of ``channel_error_bound``."""
    d = 16
    lam_cfg = omega_scale * (1 + 1e-5)
    enc = hyper(d, 1, omega_scale=omega_scale, penalty=lam_cfg, learnable=learnable)
    omega = omega64(d, 10000.0, omega_scale)
    if learnable:
        rate_u, rate_v = learned_rates64(enc, omega)
        # the parameter denotes the configured λ: p is float32, so softplus(p) is off by ≤ |p|·U32 relative
        p = enc.penalty_raw.detach()[0].item()
        excess = lam_cfg - omega_scale * (1 + 1e-6)
        assert abs((rate_u[0] - (lam_cfg - omega_scale)).item()) <= (abs(p) + 2) * U32 * excess
        rate_roundings = 4
    else:
        rate_u, rate_v = lam_cfg - omega, lam_cfg + omega
        rate_roundings = 1
    deltas = torch.cat([torch.arange(0, 64), torch.logspace(6, math.log2(5.7e5), 40, base=2).long(),
                        torch.tensor([570_000])]).unique()
    delta = deltas.double()
    m = 1_000_000 + int(deltas.max())
    worst = 0.0
    for i in range(d // 2):
        for a, b in ((1.0, 0.0), (0.0, 1.0), (0.75, 0.25), (0.5, 0.5)):  # exact in float32
            q, k = torch.zeros(1, 1, 1, d), torch.zeros(1, 1, len(deltas), d)
            q[..., i] = 1.0
            k[..., i], k[..., i + d // 2] = a, b
            with torch.no_grad():
                ours = enc.scores(q, k, torch.tensor([m]), m - deltas)[0, 0, 0].double()
            up, down = torch.exp(-delta * rate_u[i]), torch.exp(-delta * rate_v[i])
            ref = 0.5 * (up + down) * a + 0.5 * (up - down) * b
            bound = channel_error_bound(up, down, a, b, rate_u[i], rate_v[i], delta, rate_roundings)
            magnitude = 0.5 * (up * abs(a + b) + down * abs(a - b))
            big = magnitude > 1e-30  # below: near float32's underflow, compared absolutely
            assert torch.isfinite(ours).all()
            err = (ours - ref).abs()
            assert (err[~big] <= 1e-30).all()
            worst = max(worst, (err[big] / bound[big]).max().item())
    assert worst <= 1.0, worst


def test_learnable_penalty_gradient_matches_float64_closed_form():
    """d/dp of Σ_n e^{−(λ−ω_0)Δ_n} (u channel of pair 0) = −σ(p) Σ_n Δ_n e^{−(λ−ω_0)Δ_n}, at λ near ω."""
    d, omega_scale = 16, 1.0
    enc = hyper(d, 1, omega_scale=omega_scale, penalty=omega_scale * (1 + 1e-5), learnable=True)
    omega = omega64(d, 10000.0, omega_scale)
    deltas = torch.tensor([0, 1, 1000, 100_000, 570_000])
    m = 1_000_000
    q, k = torch.zeros(1, 1, 1, d), torch.zeros(1, 1, len(deltas), d)
    q[..., 0] = 1.0
    k[..., 0], k[..., d // 2] = 1.0, 1.0  # a = b = 1: only the u channel, term = e^{−(λ−ω_0)Δ}
    enc.scores(q, k, torch.tensor([m]), m - deltas).sum().backward()
    rate_u, rate_v = learned_rates64(enc, omega)
    delta = deltas.double()
    terms = torch.exp(-delta * rate_u[0])
    sigma = torch.sigmoid(enc.penalty_raw.detach().double())
    ref = -(sigma * (delta * terms).sum()).item()
    # each term's relative error as in channel_error_bound (learnable: 4 rate roundings), plus the
    # product with Δ, σ(p) (2), and the sum of same-sign terms (len − 1)
    rel = max(U32 * (rate_u[0].item() * dl * 5 + 40 + FURTHER_ROUNDINGS) for dl in deltas.tolist())
    rel += U32 * (3 + len(deltas))
    grad = enc.penalty_raw.grad.double().item()
    assert grad < 0 and abs(grad - ref) <= rel * abs(ref), (grad, ref, abs(grad / ref - 1), rel)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool], ids=str)
@pytest.mark.parametrize("which", ["q", "k"])
def test_scores_refuse_non_floating_q_or_k(which, dtype):
    enc = hyper(16, 2)
    t = {"q": torch.ones(1, 2, 3, 16), "k": torch.ones(1, 2, 3, 16)}
    t[which] = t[which].to(dtype)
    pos = torch.arange(3)
    with pytest.raises(TypeError, match=rf"^{which}: .*{dtype}"):
        enc.scores(t["q"], t["k"], pos, pos)
