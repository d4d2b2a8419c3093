"""hope_highfreq specifics (papers/hope_highfreq.md, validation plan)."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe
from hopekit.pe.schedules import HighFreqParams, highfreq_keep_mask


def kept_formula(d, b, L):
    return min(d // 2, math.floor((d / 2) * math.log(L / (2 * math.pi)) / math.log(b)) + 1)


# (d, b, L, K, longest kept period, first removed period) — the table in papers/hope_highfreq.md
TABLE = [
    (64, 1e4, 512, 16, 471, 628), (64, 1e4, 2048, 21, 1987, 2650), (64, 1e4, 4096, 23, 3533, 4712),
    (128, 1e4, 512, 31, 471, 544), (128, 1e4, 2048, 41, 1987, 2294), (128, 1e4, 4096, 46, 4080, 4712),
    (128, 5e5, 4096, 32, 3619, 4443), (128, 5e5, 8192, 35, 6695, 8219),
]


@pytest.mark.parametrize("d,b,L,K,longest,first_removed", TABLE)
def test_kept_count_and_periods_match_the_table(d, b, L, K, longest, first_removed):
    inv = pe.build("hope_highfreq", head_dim=d, base=b, train_len=L).spectrum().inv_freq
    kept = int((inv > 0).sum())
    assert kept == K == kept_formula(d, b, L)
    assert (inv[:K] > 0).all() and (inv[K:] == 0).all()   # kept set is a prefix (highest frequencies)
    periods = 2 * math.pi / pe.build("rope", head_dim=d, base=b).spectrum().inv_freq
    assert round(periods[K - 1].item()) == longest
    assert round(periods[K].item()) == first_removed


def test_kept_pairs_bit_identical_to_rope_and_removed_pairs_untouched():
    d, L = 64, 512
    enc = pe.build("hope_highfreq", head_dim=d, train_len=L)
    rope = pe.build("rope", head_dim=d)
    x = torch.randn(2, 3, 40, d)
    pos = torch.arange(40) * 13
    out = enc.apply(x, enc.features(pos))
    ref = rope.apply(x, rope.features(pos))
    K = 16
    kept = torch.cat([torch.arange(K), torch.arange(K) + d // 2])
    removed = torch.cat([torch.arange(K, d // 2), torch.arange(K, d // 2) + d // 2])
    assert torch.equal(out[..., kept], ref[..., kept])
    assert torch.equal(out[..., removed], x[..., removed])


def test_mask_is_frozen_whatever_the_input_length():
    enc = pe.build("hope_highfreq", head_dim=64, train_len=512)
    masks = {tuple((enc.spectrum(n).inv_freq > 0).tolist()) for n in (256, 512, 4096, None)}
    assert len(masks) == 1


def test_keep_fraction_is_p_rope():
    p = HighFreqParams(keep_fraction=0.75)
    mask = highfreq_keep_mask(p, 64)
    assert mask.sum() == 24 and mask[:24].all()


def test_equivalent_to_neox_partial_rotary_with_reduced_base():
    """HoPE with K kept pairs == partial rotary (pct 2K/d) with base b^{2K/d}, up to a channel permutation."""
    d, b, L = 128, 1e4, 4096
    K = 46
    enc = pe.build("hope_highfreq", head_dim=d, base=b, train_len=L)
    neox = pe.build("rope", head_dim=d, base=b ** (2 * K / d), rotary_fraction=2 * K / d)
    assert neox.rotary_dim == 2 * K and round(b ** (2 * K / d)) == 750  # "≈ 750" in the spec
    torch.testing.assert_close(neox.spectrum().inv_freq, enc.spectrum().inv_freq[:K], rtol=1e-12, atol=0)
    # the permutation: our pairs (i, i + d/2) for i < K  <->  neox pairs (i, i + K)
    perm = torch.cat([torch.arange(K), torch.arange(K) + d // 2,
                      torch.arange(K, d // 2), torch.arange(K, d // 2) + d // 2])
    x = torch.randn(1, 1, 20, d, dtype=torch.float64)
    pos = torch.arange(20) * 111
    ours = enc.apply(x, enc.features(pos))[..., perm]
    theirs = neox.apply(x[..., perm], neox.features(pos))
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-6, atol=1e-6)


def test_validation_requires_exactly_one_rule():
    with pytest.raises(ValueError, match="train_len"):
        HighFreqParams()
    with pytest.raises(ValueError, match="keep_fraction"):
        HighFreqParams(train_len=10, keep_fraction=0.5)
