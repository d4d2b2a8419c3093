"""Pair layouts (half-split vs interleaved), ALiBi slopes, absolute encodings, the randomized sampler."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe


def meta_llama_interleaved_rope(x, positions, base=10000.0):
    """Meta's original Llama formulation (complex multiply on interleaved pairs), float64 reference."""
    d = x.shape[-1]
    freqs = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions.double()[:, None] * freqs[None]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    out = torch.view_as_real(xc * torch.polar(torch.ones_like(angle), angle))
    return out.flatten(-2)


def test_interleaved_layout_via_permutation_equals_meta_reference():
    d = 32
    enc = pe.build("rope", head_dim=d)
    x = torch.randn(2, 4, 25, d, dtype=torch.float64)
    pos = torch.arange(25) * 7
    ours = pe.half_to_interleaved(enc.apply(pe.interleaved_to_half(x), enc.features(pos)))
    torch.testing.assert_close(ours, meta_llama_interleaved_rope(x, pos).to(ours.dtype), rtol=1e-6, atol=1e-6)


def test_permutations_are_inverse_and_respect_rotary_dim():
    x = torch.arange(12.0)
    assert pe.interleaved_to_half(x).tolist() == [0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]
    assert torch.equal(pe.half_to_interleaved(pe.interleaved_to_half(x)), x)
    assert pe.interleaved_to_half(x, rotary_dim=4).tolist() == [0, 2, 1, 3] + list(range(4, 12))


def test_sign_convention_matches_hf_rotate_half():
    d = 8
    x = torch.randn(3, d, dtype=torch.float64)
    pos = torch.tensor([0, 5, 99])
    enc = pe.build("rope", head_dim=d)
    cos, sin = enc.features(pos)
    cos_full, sin_full = torch.cat([cos, cos], -1).double(), torch.cat([sin, sin], -1).double()
    rotate_half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
    torch.testing.assert_close(enc.apply(x, enc.features(pos)), x * cos_full + rotate_half * sin_full)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6, 8, 12, 16, 20, 32])
def test_alibi_slopes(n):
    s = pe.alibi_slopes(n)
    assert s.shape == (n,) and (s > 0).all() and (s < 1).all()
    p = 2 ** int(math.log2(n))
    assert torch.allclose(s[:p], torch.tensor([2 ** (-8 * (h + 1) / p) for h in range(p)], dtype=torch.float64))
    if n == 8:
        assert s.tolist() == [1 / 2 ** i for i in range(1, 9)]
    if n == 12:  # 8 slopes of the 8-sequence, then every other slope of the 16-sequence
        assert torch.allclose(s[8:], torch.tensor([2 ** (-8 * h / 16) for h in (1, 3, 5, 7)], dtype=torch.float64))


def test_alibi_bias_is_linear_in_distance():
    enc = pe.build("alibi", head_dim=8, num_heads=4)
    pos = torch.arange(10)
    b = enc.bias(pos, pos)
    assert b.shape == (4, 10, 10)
    slopes = pe.alibi_slopes(4).float()
    torch.testing.assert_close(b[:, 9, :], -slopes[:, None] * (9 - pos).float())
    assert enc.bias(pos[None].expand(3, -1), pos[None].expand(3, -1)).shape == (3, 4, 10, 10)


def test_sinusoidal_values_and_any_length():
    enc = pe.build("sinusoidal", head_dim=4, num_heads=2, scale=1.0)  # d_model 8, unit amplitude
    x = torch.zeros(1, 3, 8)
    out = enc.embed(x, torch.tensor([0, 1, 100_000]))
    assert torch.allclose(out[0, 0], torch.tensor([0.0, 1.0] * 4))
    i = torch.arange(4, dtype=torch.float64)
    ang = 100_000 / 10000 ** (2 * i / 8)
    ref = torch.stack([torch.sin(ang), torch.cos(ang)], -1).flatten().float()
    torch.testing.assert_close(out[0, 2], ref)
    default = pe.build("sinusoidal", head_dim=4, num_heads=2)   # default: scaled to the embeddings' size
    torch.testing.assert_close(default.embed(x, torch.tensor([0, 1, 100_000])), 0.03 * out)


def test_learned_refuses_positions_beyond_its_table():
    enc = pe.build("learned", head_dim=4, num_heads=2, max_len=16)
    enc.embed(torch.zeros(1, 16, 8), torch.arange(16))
    with pytest.raises(ValueError, match="max_len=16"):
        enc.embed(torch.zeros(1, 17, 8), torch.arange(17))


def test_randomized_positions_sampler():
    sampler = pe.RandomizedPositions(max_position=1024)
    g = torch.Generator().manual_seed(0)
    pos = sampler.sample(4, 128, generator=g)
    assert pos.shape == (4, 128) and (pos[:, 1:] > pos[:, :-1]).all()
    assert pos.min() >= 0 and pos.max() < 1024 and pos.max() > 512   # spread over the range
    again = sampler.sample(4, 128, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pos, again)
    assert torch.equal(sampler.evaluation(5), torch.arange(5))
    with pytest.raises(ValueError, match="max_position"):
        sampler.sample(1, 2048)


def test_resolve_fills_every_default_and_round_trips():
    assert pe.resolve({"kind": "alibi"}) == {"kind": "alibi", "max_bias": 8.0}
    hyp = pe.resolve({"kind": "hope_hyperbolic", "penalty": 0.5})
    assert hyp["omega_scale"] == pe.HyperbolicParams().omega_scale and hyp["penalty"] == 0.5
    nested = pe.resolve({"kind": "bipe", "inter": {"kind": "alibi"}})
    assert nested["inter"] == {"kind": "alibi", "max_bias": 8.0} and nested["boundary_ids"] == [46, 10]
    for config in ({"kind": "yarn", "factor": 4.0, "train_len": 64}, nested, hyp):
        assert pe.resolve(pe.resolve(config)) == pe.resolve(config)   # idempotent: the full form rebuilds itself
    with pytest.raises(ValueError, match="omega_scale"):
        pe.resolve({"kind": "hope_hyperbolic", "omega_scale": -1.0})
    with pytest.raises(ValueError, match="kind"):
        pe.resolve({"factor": 2.0})
