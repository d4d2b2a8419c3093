"""The metric functions on synthetic curves and attention maps with known answers (closed forms, naive
loops), and their one-line errors."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe
from hopekit.analysis.metrics import (channel_monotonicity, curve_far_mass, far_token_mass, monotone_fraction,
                                      oscillation, sign_changes, total_variation, u_shape_index)

P = 50  # half-period of the test cosines, in samples


def cosine(half_periods: int) -> tuple[torch.Tensor, torch.Tensor]:
    d = torch.arange(0, half_periods * P + 1, dtype=torch.float64)
    return torch.cos(math.pi * d / P), d


# ----- oscillation -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 12])
def test_a_cosine_over_n_half_periods_has_n_sign_changes_and_total_variation_2n(n):
    c, d = cosine(n)
    assert sign_changes(c, d) == [n]
    assert sign_changes(c, d, zero_tol=1e-9) == [n]           # near-zeros skipped: same count
    assert total_variation(c, d) == pytest.approx([2.0 * n], rel=1e-12)


def test_zero_rule_touching_zero_is_not_a_sign_change_passing_through_it_is():
    assert sign_changes([1.0, 0.0, 1.0]) == [0]
    assert sign_changes([1.0, 0.0, -1.0]) == [1]
    assert sign_changes([1.0, 0.0, 0.0, -1.0, 0.0, -2.0, 3.0]) == [2]
    assert sign_changes([0.0, 0.0, 0.0]) == [0]
    assert sign_changes([1.0, 1e-12, -1e-12, 1.0]) == [2]
    assert sign_changes([1.0, 1e-12, -1e-12, 1.0], zero_tol=1e-9) == [0]


def test_windows_are_closed_and_split_the_steps_of_adjacent_windows():
    c, d = cosine(8)
    windows = [(0, 2 * P), (2 * P, 3 * P), (3 * P, 8 * P)]
    assert sign_changes(c, d, windows) == [2, 1, 5]
    tv = total_variation(c, d, windows)
    assert tv == pytest.approx([4.0, 2.0, 10.0], rel=1e-12)
    assert sum(tv) == pytest.approx(total_variation(c, d)[0], rel=1e-12)
    # distances need not be the sample indices: the same curve on a stretched axis, windows stretched too
    assert sign_changes(c, 3 * d + 7, [(7 + 3 * lo, 7 + 3 * hi) for lo, hi in windows]) == [2, 1, 5]


def test_oscillation_summarises_each_window():
    c, d = cosine(4)
    expo = torch.exp(-0.05 * d)
    (row,) = oscillation(expo, d)
    assert row["window"] == (0.0, 4.0 * P) and row["points"] == d.numel() and row["sign_changes"] == 0
    assert row["tv_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert row["net_change"] == pytest.approx(float(expo[-1] - expo[0]), abs=1e-15)
    a, b = oscillation(c, d, [(0, P), (0, 4 * P)])
    assert a["sign_changes"] == 1 and a["tv_ratio"] == pytest.approx(1.0) and a["net_change"] == pytest.approx(-2.0)
    assert b["sign_changes"] == 4 and b["total_variation"] == pytest.approx(8.0) and b["tv_ratio"] == math.inf
    assert oscillation([2.0, 2.0, 2.0])[0]["tv_ratio"] == 1.0


# ----- monotonicity ------------------------------------------------------------------------------


def naive_fraction(values: list[float], decreasing: bool, tol: float) -> float:
    steps = [b - a for a, b in zip(values, values[1:])]
    good = [(s <= tol) if decreasing else (s >= -tol) for s in steps]
    return sum(good) / len(good)


def test_a_pure_exponential_is_monotone_an_oscillating_one_is_not():
    d = torch.arange(0, 400, dtype=torch.float64)
    expo = torch.exp(-0.02 * d)
    assert monotone_fraction(expo) == 1.0
    assert monotone_fraction(expo, "increasing") == 0.0
    assert monotone_fraction(-expo, "increasing") == 1.0 and monotone_fraction(-expo, "either") == 1.0
    wobbly = torch.exp(-0.005 * d) * torch.cos(0.3 * d)
    got = monotone_fraction(wobbly)
    assert got == pytest.approx(naive_fraction(wobbly.tolist(), True, 0.0), abs=0)
    assert 0.3 < got < 0.7
    assert monotone_fraction(wobbly, "either") == max(got, monotone_fraction(wobbly, "increasing"))


def test_tol_absorbs_small_rises_and_flat_steps_count_both_ways():
    values = [5.0, 4.0, 4.0 + 1e-9, 3.0, 3.0]
    assert monotone_fraction(values) == pytest.approx(3 / 4)
    assert monotone_fraction(values, tol=1e-6) == 1.0
    assert monotone_fraction(values, "increasing") == pytest.approx(naive_fraction(values, False, 0.0))


def test_channel_monotonicity_of_the_aligned_probe_is_the_closed_form():
    enc = pe.build("hope_hyperbolic", head_dim=16, num_heads=2, omega_scale=0.05, penalty=0.06)
    d = torch.arange(0, 600, 3)
    out = channel_monotonicity(enc, d)
    omega = [0.05 * 10000.0 ** (-2 * i / 16) for i in range(8)]
    want_rates = torch.tensor([0.06 - w for w in omega] + [0.06 + w for w in omega], dtype=torch.float64)
    torch.testing.assert_close(out["rates"], want_rates, rtol=1e-6, atol=0)
    torch.testing.assert_close(out["weights"], torch.full((1, 16), 0.5, dtype=torch.float64))
    want = torch.tensor([sum(0.5 * (math.exp(-n * (0.06 - w)) + math.exp(-n * (0.06 + w))) for w in omega)
                         for n in d.tolist()], dtype=torch.float64)
    torch.testing.assert_close(out["score"][0], want, rtol=1e-5, atol=1e-9)
    assert (out["channel_monotone"] == 1).all() and (out["pair_monotone"] == 1).all()
    assert out["pair_extremum"].isnan().all()


def test_a_pair_with_opposite_sign_channels_has_the_predicted_interior_extremum():
    enc = pe.build("hope_hyperbolic", head_dim=4, num_heads=1, omega_scale=0.05, penalty=0.06)
    # pair 0 = dims (0, 2): q = (a, b) = (1, 0) -> (u, v) = (1, 1)/√2; k = (0, 1) -> (u, v) = (1, −1)/√2
    # so w_u = +½ at rate λ − ω = 0.01 and w_v = −½ at rate λ + ω = 0.11: rises from 0, peaks, decays.
    q = torch.tensor([1.0, 0.0, 0.0, 0.0])
    k = torch.tensor([0.0, 0.0, 1.0, 0.0])
    d = torch.arange(0, 300)
    out = channel_monotonicity(enc, d, q=q, k=k)
    a, b = 0.06 - 0.05, 0.06 + 0.05
    peak = math.log(b / a) / (b - a)                      # d/dΔ [½e^{−aΔ} − ½e^{−bΔ}] = 0
    assert float(out["pair_extremum"][0, 0]) == pytest.approx(peak, rel=1e-5)
    assert abs(int(out["pair_curves"][0, 0].argmax()) - peak) <= 1
    assert out["pair_monotone"][0, 0] < 1 and (out["channel_monotone"] == 1).all()
    assert float(out["pair_curves"][0, 1].abs().max()) == 0.0      # pair 1 has no weight
    # several samples at once: one row each
    two = channel_monotonicity(enc, d, q=torch.stack([q, q]), k=torch.stack([k, q]))
    assert two["pair_monotone"].shape == (2, 2) and two["pair_monotone"][1, 0] == 1.0


# ----- far-token mass ----------------------------------------------------------------------------


def uniform_causal(t: int) -> torch.Tensor:
    mask = torch.tril(torch.ones(t, t, dtype=torch.float64))
    return mask / mask.sum(-1, keepdim=True)


@pytest.mark.parametrize("beyond", [0, 5, 17, 63])
def test_uniform_attention_puts_the_share_of_far_keys_beyond(beyond):
    t = 64
    got = far_token_mass(uniform_causal(t), beyond=beyond)
    want = torch.tensor([max(0, m - beyond) / (m + 1) for m in range(t)], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)


def test_far_token_mass_keeps_leading_dims_and_reads_explicit_positions():
    probs = torch.softmax(torch.randn(2, 3, 5, 40), dim=-1)
    q_pos, k_pos = torch.arange(100, 105), torch.arange(60, 100)
    got = far_token_mass(probs, q_pos, k_pos, beyond=20)
    want = torch.zeros(2, 3, 5, dtype=torch.float64)
    for i in range(5):
        for j in range(40):
            if int(q_pos[i]) - int(k_pos[j]) > 20:
                want[..., i] += probs[..., i, j].double()
    assert got.shape == (2, 3, 5)
    torch.testing.assert_close(got, want)


def test_curve_far_mass_is_the_share_of_weight_beyond():
    d = torch.arange(0, 100)
    assert curve_far_mass(torch.ones(100), d, 39.5) == pytest.approx(60 / 100)
    assert curve_far_mass(torch.ones(100), d, 40) == pytest.approx(59 / 100)
    w = torch.exp(-0.1 * d.double())
    assert curve_far_mass(w, d, 10) == pytest.approx(float(w[11:].sum() / w.sum()), rel=1e-12)


# ----- U-shape index -----------------------------------------------------------------------------


def naive_densities(probs: torch.Tensor, first: int, near: int) -> tuple[float, float, float]:
    """Loop over queries m (default layout: keys 0…T−1, queries the same positions)."""
    t = probs.shape[-1]
    dens = {"first": [], "middle": [], "near": []}
    for m in range(t):
        groups = {"first": [n for n in range(m + 1) if n < first],
                  "near": [n for n in range(m + 1) if m - n < near and n >= first]}
        groups["middle"] = [n for n in range(m + 1) if n not in groups["first"] and n not in groups["near"]]
        if any(m - n < near for n in groups["first"]) or not all(groups.values()):
            continue
        for g, keys in groups.items():
            dens[g].append(sum(float(probs[m, n]) for n in keys) / len(keys))
    return tuple(sum(v) / len(v) for v in (dens["first"], dens["middle"], dens["near"]))


def planted_u(t: int, first: int = 4, near: int = 16) -> torch.Tensor:
    logits = torch.zeros(t, t, dtype=torch.float64)
    logits[:, :first] = 2.0
    delta = torch.arange(t)[:, None] - torch.arange(t)[None, :]
    logits[(delta >= 0) & (delta < near)] = 2.0
    logits[delta < 0] = -math.inf
    return torch.softmax(logits, -1)


def local_decay(t: int, rate: float = 0.2) -> torch.Tensor:
    delta = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).double()
    return torch.softmax(torch.where(delta >= 0, -rate * delta, -math.inf), -1)


def test_u_index_is_positive_for_a_planted_u_zero_for_uniform_and_negative_for_local_decay():
    t = 96
    u = u_shape_index(planted_u(t))
    assert float(u["index"]) > 1.0 and u["queries"] == t - 20
    assert abs(float(u_shape_index(uniform_causal(t))["index"])) < 1e-12
    assert float(u_shape_index(local_decay(t))["index"]) < 0
    assert float(u_shape_index(local_decay(t, rate=0.0))["index"]) == pytest.approx(0.0, abs=1e-12)


def test_u_index_densities_match_a_naive_loop():
    t = 50
    logits = torch.randn(t, t, dtype=torch.float64)
    logits = logits.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), -math.inf)
    probs = torch.softmax(logits, -1)
    got = u_shape_index(probs, first=3, near=7)
    first, middle, near = naive_densities(probs, 3, 7)
    assert float(got["first"]) == pytest.approx(first, rel=1e-12)
    assert float(got["middle"]) == pytest.approx(middle, rel=1e-12)
    assert float(got["near"]) == pytest.approx(near, rel=1e-12)
    assert float(got["index"]) == pytest.approx(math.log(min(first, near) / middle), rel=1e-12)


def test_u_index_keeps_layer_and_head_dims_and_averages_batch_dims():
    t = 64
    maps = torch.stack([torch.stack([planted_u(t), uniform_causal(t), local_decay(t)]),
                        torch.stack([uniform_causal(t), local_decay(t), planted_u(t)])])      # (L=2, H=3, T, T)
    out = u_shape_index(maps)
    assert out["index"].shape == (2, 3)
    for l in range(2):
        for h in range(3):
            assert float(out["index"][l, h]) == pytest.approx(float(u_shape_index(maps[l, h])["index"]), abs=1e-12)
    batched = u_shape_index(torch.stack([maps, maps.flip(0)]), batch_dims=1)
    assert batched["index"].shape == (2, 3)
    want_first = (u_shape_index(maps)["first"] + u_shape_index(maps.flip(0))["first"]) / 2
    torch.testing.assert_close(batched["first"], want_first)


def test_u_index_query_selection():
    t = 64
    probs = planted_u(t)
    last = u_shape_index(probs, queries=5)
    assert last["queries"] == 5
    torch.testing.assert_close(last["index"], u_shape_index(probs, queries=[59, 60, 61, 62, 63])["index"])
    with pytest.raises(ValueError, match=r"^queries: query index 3 "):
        u_shape_index(probs, queries=[3])


# ----- errors: one line naming the argument -------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda: sign_changes([1.0, -1.0], None, [(5, 1)]), r"^windows\[0\]=\(5, 1\): needs lo < hi"),
    (lambda: sign_changes([1.0, -1.0, 1.0], None, [(0, 2), (2, 2.5)]), r"^windows\[1\]=.*at least 2"),
    (lambda: total_variation([1.0, 2.0], None, "0-128"), r"^windows: "),
    (lambda: total_variation([1.0, 2.0], None, [(0, "x")]), r"^windows\[0\]: "),
    (lambda: sign_changes(torch.zeros(3, 3)), r"^curve: expected a 1-D curve"),
    (lambda: sign_changes([1.0]), r"^curve: needs at least 2"),
    (lambda: sign_changes([1.0, math.nan]), r"^curve: holds non-finite"),
    (lambda: oscillation([1.0, 2.0], [0, 1, 2]), r"^distances: has 3 values"),
    (lambda: oscillation([1.0, 2.0], [1, 0]), r"^distances: must be strictly increasing"),
    (lambda: monotone_fraction([1.0, 2.0], "down"), r"^direction: "),
    (lambda: monotone_fraction([1.0, 2.0], tol=-1.0), r"^tol: "),
    (lambda: far_token_mass(torch.ones(4)), r"^probs: expected shape"),
    (lambda: far_token_mass(torch.ones(3, 4), q_pos=torch.arange(4)), r"^q_pos: expected 3 integer"),
    (lambda: far_token_mass(torch.ones(3, 4), beyond=-1), r"^beyond: "),
    (lambda: u_shape_index(uniform_causal(10)), r"^probs: no query has three non-empty groups"),
    (lambda: u_shape_index(uniform_causal(40), batch_dims=1), r"^batch_dims: "),
    (lambda: u_shape_index(uniform_causal(40), first=0), r"^first: "),
    (lambda: curve_far_mass([-1.0, 2.0], [0, 1], 0), r"^weights: must be ≥ 0"),
])
def test_bad_input_is_one_line_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_channel_monotonicity_refuses_an_encoding_without_rates():
    with pytest.raises(TypeError, match=r"^enc: expected a hope_hyperbolic encoding"):
        channel_monotonicity(pe.build("rope", head_dim=8), torch.arange(10))
    enc = pe.build("hope_hyperbolic", head_dim=8, omega_scale=0.05, penalty=0.06)
    with pytest.raises(ValueError, match=r"^q: expected shape \(head_dim,\)"):
        channel_monotonicity(enc, torch.arange(10), q=torch.ones(6), k=torch.ones(8))
    with pytest.raises(ValueError, match=r"^q, k: pass both or neither"):
        channel_monotonicity(enc, torch.arange(10), q=torch.ones(8))
