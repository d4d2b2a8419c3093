"""Layer 2: reductions — each extension method at its neutral setting is exactly RoPE."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe

D = 64


def spectrum(kind, seq_len=None, head_dim=D, **params):
    return pe.build(kind, head_dim=head_dim, **params).spectrum(seq_len)


def rope(head_dim=D, **params):
    return spectrum("rope", head_dim=head_dim, **params)


@pytest.mark.parametrize("base", [10000.0, 500000.0])
@pytest.mark.parametrize("rotary_fraction", [1.0, 0.5])
def test_factor_one_is_rope(base, rotary_fraction):
    ref = rope(base=base, rotary_fraction=rotary_fraction)
    common = dict(base=base, rotary_fraction=rotary_fraction)
    cases = [
        spectrum("linear", factor=1.0, **common),
        spectrum("ntk", factor=1.0, **common),
        spectrum("yarn", factor=1.0, train_len=128, **common),
        spectrum("llama3", factor=1.0, train_len=128, low_freq_factor=1.0, high_freq_factor=4.0, **common),
    ]
    pairs = int(D * rotary_fraction) // 2
    for seq_len in (None, 64, 4096):
        cases.append(spectrum("longrope", seq_len, factor=1.0, train_len=128, short_rescale=[1.0] * pairs,
                              long_rescale=[1.0] * pairs, **common))
    for s in cases:
        assert torch.equal(s.inv_freq, ref.inv_freq)
        assert s.attn_scale == 1.0


@pytest.mark.parametrize("seq_len", [None, 1, 100, 511, 512])
def test_dynamic_ntk_at_or_below_train_len_is_rope(seq_len):
    s = spectrum("dynamic_ntk", seq_len, factor=8.0, train_len=512)
    torch.testing.assert_close(s.inv_freq, rope().inv_freq, rtol=1e-15, atol=0)


def test_dynamic_ntk_reaches_static_ntk_where_its_effective_factor_is_s():
    """HF's formula b·(s·ℓ/L − (s−1))^{r/(r−2)} has effective factor s at ℓ = L·(2 − 1/s), not at ℓ = s·L
    (papers/longrope.md says "static NTK at ℓ = sL"; that holds for neither HF nor us)."""
    s, L = 8.0, 512
    at = int(L * (2 - 1 / s))  # 960
    dyn = spectrum("dynamic_ntk", at, factor=s, train_len=L)
    torch.testing.assert_close(dyn.inv_freq, spectrum("ntk", factor=s).inv_freq, rtol=1e-12, atol=0)
    further = spectrum("dynamic_ntk", 16 * L, factor=s, train_len=L)
    assert (further.inv_freq[1:] < dyn.inv_freq[1:]).all()  # keeps stretching with length


def test_highfreq_with_infinite_train_len_is_rope():
    assert torch.equal(spectrum("hope_highfreq", train_len=math.inf).inv_freq, rope().inv_freq)
    assert torch.equal(spectrum("hope_highfreq", keep_fraction=1.0).inv_freq, rope().inv_freq)


def test_highfreq_with_huge_train_len_is_rope_and_tiny_keeps_pair_zero():
    threshold = 2 * math.pi * 10000 ** ((D - 2) / D)   # L ≥ 2π·b^{(d−2)/d} keeps every pair
    assert torch.equal(spectrum("hope_highfreq", train_len=threshold * 1.0001).inv_freq, rope().inv_freq)
    tiny = spectrum("hope_highfreq", train_len=2.0).inv_freq
    assert tiny[0] == 1.0 and (tiny[1:] == 0).all()


def test_rotations_of_reductions_equal_rope_rotations():
    """Reductions hold end to end (cos/sin and rotation), not only for inv_freq."""
    q, k = torch.randn(1, 2, 30, D), torch.randn(1, 2, 30, D)
    pos = torch.arange(30) * 17
    ref = pe.build("rope", head_dim=D).rotate(q, k, pos, pos)
    for enc in (pe.build("linear", head_dim=D, factor=1.0),
                pe.build("yarn", head_dim=D, factor=1.0, train_len=64),
                pe.build("dynamic_ntk", head_dim=D, factor=4.0, train_len=1024),
                pe.build("hope_highfreq", head_dim=D, train_len=math.inf)):
        out = enc.rotate(q, k, pos, pos)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])
