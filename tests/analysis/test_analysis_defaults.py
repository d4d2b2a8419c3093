"""describe(): the numbers in tokens against float64 closed forms and brute-force searches of the
encodings' own outputs (ALiBi's bias, hope_hyperbolic's scores on aligned probes)."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe
from hopekit.analysis import describe, in_tokens
from hopekit.analysis.defaults import NEGLIGIBLE

LN2 = math.log(2.0)


def crossing(values: list[float], level: float) -> float:
    """First Δ where a decreasing sampled curve (values[Δ] at integer Δ) reaches ``level``, interpolated
    log-linearly between the two integer samples around it (exact for an exponential)."""
    k = next(i for i, v in enumerate(values) if v <= level)
    a, b = values[k - 1], values[k]
    return (k - 1) + math.log(a / level) / math.log(a / b)


# ----- ALiBi -------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads, max_bias, slopes", [
    (4, 8.0, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]),
    # 6 heads: the 4-head sequence, then every other slope of the 8-head one (2^-1, 2^-3)
    (6, 8.0, [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]),
    (3, 4.0, [2.0 ** -2, 2.0 ** -4, 2.0 ** -1]),
])
def test_alibi_half_life_is_ln2_over_the_known_slopes(heads, max_bias, slopes):
    d = describe({"kind": "alibi", "max_bias": max_bias}, head_dim=8, num_heads=heads, train_len=100)
    assert d["slopes"] == pytest.approx(slopes, rel=1e-12)
    assert d["half_life"] == pytest.approx([LN2 / m for m in slopes], rel=1e-12)
    assert d["bias_at_train_len"] == pytest.approx([-100 * m for m in slopes], rel=1e-12)


def test_alibi_half_life_is_where_its_own_bias_removes_ln2():
    enc = pe.build("alibi", head_dim=8, num_heads=5)
    d = describe(enc, train_len=64)
    dist = torch.arange(0, 1000)
    bias = enc.bias(torch.tensor([999]), 999 - dist).double()          # (H, 1, Δ)
    for h in range(5):
        weight = torch.exp(bias[h, 0]).tolist()                          # unnormalised weight vs Δ = 0
        assert crossing(weight, 0.5) == pytest.approx(d["half_life"][h], rel=1e-5)


# ----- rotary ------------------------------------------------------------------------------------


def kept_pairs(d: int, base: float, L: int) -> int:
    """Pairs with period 2π·base^(2i/d) ≤ L: K = min(d/2, ⌊(d/2)·ln(L/2π)/ln b⌋ + 1) (papers/hope_highfreq.md)."""
    return min(d // 2, math.floor((d / 2) * math.log(L / (2 * math.pi)) / math.log(base)) + 1)


@pytest.mark.parametrize("d, base, L, K", [
    (32, 1e4, 128, 6),                       # the default bench
    (64, 1e4, 512, 16), (64, 1e4, 2048, 21), (64, 1e4, 4096, 23),
    (128, 1e4, 512, 31), (128, 1e4, 2048, 41), (128, 1e4, 4096, 46),
    (128, 5e5, 4096, 32), (128, 5e5, 8192, 35),   # the table in papers/hope_highfreq.md
])
def test_rope_rotating_pairs_match_the_closed_form(d, base, L, K):
    assert kept_pairs(d, base, L) == K
    rope = describe({"kind": "rope", "base": base}, head_dim=d, train_len=L)
    assert rope["rotating_pairs"] == K and rope["position_free_pairs"] == 0
    assert rope["period"] == pytest.approx([2 * math.pi * base ** (2 * i / d) for i in range(d // 2)], rel=1e-12)
    assert rope["in_distribution_pairs"] == d // 2          # at eval_len = train_len nothing is new
    assert describe({"kind": "rope", "base": base}, head_dim=d, train_len=L, eval_len=4 * L)["in_distribution_pairs"] == K
    high = describe({"kind": "hope_highfreq", "base": base}, head_dim=d, train_len=L)
    assert (high["rotating_pairs"], high["position_free_pairs"]) == (K, d // 2 - K)
    assert high["longest_period"] == pytest.approx(2 * math.pi * base ** (2 * (K - 1) / d), rel=1e-12)


def test_partial_rotary_counts_pairs_of_the_rotary_dim():
    d = describe({"kind": "rope", "rotary_fraction": 0.5}, head_dim=64, train_len=512)
    assert d["pairs"] == 16 and d["rotating_pairs"] == kept_pairs(32, 1e4, 512)


@pytest.mark.parametrize("s", [4.0, 16.0])
def test_linear_and_ntk_stretch_match_their_closed_forms(s):
    d, L = 32, 128
    lin = describe("linear", head_dim=d, train_len=L, factor=s)
    assert lin["eval_len"] == round(s * L) and lin["stretch"] == pytest.approx([s] * (d // 2), rel=1e-12)
    assert lin["in_distribution_pairs"] == d // 2 and lin["unchanged_pairs"] == 0
    ntk = describe("ntk", head_dim=d, train_len=L, factor=s)
    want = [s ** (2 * i / (d - 2)) for i in range(d // 2)]     # λ_i = s^(2i/(r−2)): λ_0 = 1, λ_last = s
    assert ntk["stretch"] == pytest.approx(want, rel=1e-12)
    inside = sum(1 for i in range(d // 2)
                 if 2 * math.pi * 1e4 ** (2 * i / d) <= L or want[i] >= s * (1 - 1e-12))
    assert ntk["in_distribution_pairs"] == inside and ntk["unchanged_pairs"] == 1


def test_dynamic_ntk_at_s_times_train_len_interpolates_by_s_squared_minus_s_plus_1():
    s = 4.0
    d = describe("dynamic_ntk", head_dim=64, train_len=256, factor=s)
    assert d["max_stretch"] == pytest.approx(s * s - s + 1, rel=1e-12)
    assert describe("dynamic_ntk", head_dim=64, train_len=256, factor=s, eval_len=256)["max_stretch"] == pytest.approx(1.0)


def test_yarn_ramp_pairs_and_temperature_match_the_spec():
    # papers/longrope.md: d 128, b 1e4, L 4096 -> ramp over pairs 20..46; attention factor 0.1 ln s + 1
    s = 16.0
    d = describe("yarn", head_dim=128, train_len=4096, factor=s)
    stretch = d["stretch"]
    assert all(x == pytest.approx(1.0, rel=1e-12) for x in stretch[:21])
    assert all(x == pytest.approx(s, rel=1e-12) for x in stretch[46:])
    assert all(1.0 < x < s for x in stretch[21:46])
    assert d["attn_scale"] == pytest.approx(0.1 * math.log(s) + 1, rel=1e-12)
    assert d["in_distribution_pairs"] == 64


def test_llama3_bands_match_llama_3_1():
    cfg = {"kind": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "base": 500000.0}
    d = describe(cfg, head_dim=128, train_len=8192)
    for i, x in enumerate(d["stretch"]):
        wavelength = 2 * math.pi * 500000.0 ** (2 * i / 128)
        if wavelength < 8192 / 4:
            assert x == pytest.approx(1.0, rel=1e-12)
        elif wavelength > 8192:
            assert x == pytest.approx(8.0, rel=1e-12)
        else:
            assert 1.0 <= x <= 8.0


# ----- hope_hyperbolic ---------------------------------------------------------------------------


def hyperbolic_closed_form(head_dim: int, omega_scale: float, penalty: float, base: float = 1e4) -> list[float]:
    omega = [omega_scale * base ** (-2 * i / head_dim) for i in range(head_dim // 2)]
    return [LN2 / (penalty - w) for w in omega] + [LN2 / (penalty + w) for w in omega]


@pytest.mark.parametrize("cfg", [{}, {"omega_scale": 1.0}, {"omega_scale": 0.01, "penalty": 0.02},
                                 {"omega_scale": 0.05, "learnable": True}])
def test_hope_hyperbolic_half_lives_are_ln2_over_its_decay_rates(cfg):
    d = describe({"kind": "hope_hyperbolic", **cfg}, head_dim=32, num_heads=4, train_len=128)
    params = pe.parse({"kind": "hope_hyperbolic", **cfg})
    want = hyperbolic_closed_form(32, params.omega_scale, params.resolved_penalty)
    assert len(d["half_life"]) == 1 and d["half_life"][0] == pytest.approx(want, rel=1e-6)
    slowest = LN2 / (params.resolved_penalty - params.omega_scale)
    assert d["slowest_half_life"] == pytest.approx(slowest, rel=1e-6)
    assert d["negligible_beyond"] == pytest.approx(slowest * math.log(1 / NEGLIGIBLE) / LN2, rel=1e-6)
    assert d["penalty"] == pytest.approx([params.resolved_penalty], rel=1e-6)


def test_hope_hyperbolic_per_head_penalty_gives_per_head_half_lives():
    enc = pe.build("hope_hyperbolic", head_dim=16, num_heads=3, learnable=True, per_head=True)
    with torch.no_grad():
        enc.penalty_raw.copy_(torch.tensor([0.1, 0.5, 2.0]))
    d = describe(enc, train_len=64)
    lam = enc.penalty().double().tolist()
    assert len(d["half_life"]) == 3
    for h in range(3):
        assert d["half_life"][h] == pytest.approx(hyperbolic_closed_form(16, 0.2, lam[h]), rel=1e-5)


def test_hope_hyperbolic_half_lives_agree_with_a_search_of_its_own_scores():
    """Probes aligned with one eigen-channel (u_i: pair i = (1, 1)/√2, v_i: (1, −1)/√2) score e^{−r_cΔ}
    through ``enc.scores``; the aligned pair probe (1, 0) of analysis.distance scores e^{−λΔ}cosh(ω_iΔ)."""
    D = 16
    enc = pe.build("hope_hyperbolic", head_dim=D, num_heads=1)
    d = describe(enc, train_len=128)
    dist = torch.arange(0, 400)
    m = int(dist.max())
    q_pos, k_pos = torch.tensor([m]), m - dist

    def curve(probe: torch.Tensor) -> list[float]:
        q = probe.view(1, 1, 1, D)
        k = probe.expand(1, 1, len(dist), D).contiguous()
        s = enc.scores(q, k, q_pos, k_pos)[0, 0, 0].double()
        return (s / s[0]).tolist()

    half = D // 2
    for i in range(half):
        u, v, pair = torch.zeros(D), torch.zeros(D), torch.zeros(D)
        u[i], u[i + half] = 2 ** -0.5, 2 ** -0.5
        v[i], v[i + half] = 2 ** -0.5, -2 ** -0.5
        pair[i] = 1.0
        assert crossing(curve(u), 0.5) == pytest.approx(d["half_life"][0][i], rel=1e-4)
        assert crossing(curve(v), 0.5) == pytest.approx(d["half_life"][0][half + i], rel=1e-4)
        # the pair kernel is a sum of two exponentials: the first integer distance at which it is ≤ ½
        first = next(n for n, x in enumerate(curve(pair)) if x <= 0.5)
        assert first == math.ceil(d["pair_half_life"][0][i])


# ----- absolute, none, composite -----------------------------------------------------------------


def test_sinusoidal_wavelengths_are_read_off_its_table():
    d = describe({"kind": "sinusoidal", "base": 1000.0, "scale": 0.5}, head_dim=16, num_heads=4, train_len=100)
    want = [2 * math.pi * 1000.0 ** (2 * i / 64) for i in range(32)]
    assert d["frequencies"] == 32 and d["wavelength"] == pytest.approx(want, rel=1e-5)
    assert d["amplitude"] == pytest.approx(0.5, rel=1e-6)
    assert d["full_cycle_frequencies"] == sum(1 for w in want if w <= 100)


def test_learned_table_rows_against_train_len():
    d = describe({"kind": "learned", "max_len": 300}, head_dim=8, train_len=128)
    assert (d["table_rows"], d["trained_rows"], d["untrained_rows"]) == (300, 128, 172)
    d = describe({"kind": "learned", "max_len": 64}, head_dim=8, train_len=128)
    assert (d["trained_rows"], d["untrained_rows"]) == (64, 0)


def test_nope_has_only_the_common_keys_and_bipe_describes_both_parts():
    nope = describe("nope", head_dim=8, train_len=64)
    assert set(nope) == {"kind", "config", "head_dim", "num_heads", "d_model", "train_len", "eval_len", "capabilities"}
    assert in_tokens(nope) == "no positional parameters"
    bipe = describe({"kind": "bipe", "inter": {"kind": "alibi"}}, head_dim=8, num_heads=2, train_len=64)
    assert bipe["inter"]["half_life"] == pytest.approx([LN2 / 2 ** -4, LN2 / 2 ** -8])
    assert bipe["intra"]["table_rows"] == 1024 and bipe["inter_unit"] == "segments"


def test_train_len_reaches_methods_that_take_it():
    d = describe("hope_highfreq", head_dim=32, train_len=128)
    assert d["config"]["train_len"] == 128 and d["rotating_pairs"] == 6


def test_in_tokens_names_the_numbers():
    line = in_tokens(describe("alibi", head_dim=32, num_heads=4, train_len=128))
    assert line == "head half-lives " + ", ".join(f"{LN2 / 2.0 ** -k:.3g}" for k in (2, 4, 6, 8)) + " tokens"
    assert in_tokens(describe("rope", head_dim=32, train_len=128)).startswith("6 of 16 pairs turn fully within 128")


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="train_len=0"):
        describe("rope", head_dim=8, train_len=0)
    with pytest.raises(ValueError, match="factor=0.5"):
        describe("linear", head_dim=8, train_len=8, factor=0.5)
    with pytest.raises(ValueError, match="eval_len=-1"):
        describe("rope", head_dim=8, train_len=8, eval_len=-1)
    with pytest.raises(TypeError, match="head_dim"):
        describe("rope", train_len=8)
    with pytest.raises(TypeError, match="pe.factor"):
        describe("linear", head_dim=8, train_len=8)
    with pytest.raises(ValueError, match="unknown positional encoding"):
        describe("nonesuch", head_dim=8, train_len=8)
