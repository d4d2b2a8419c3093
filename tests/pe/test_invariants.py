"""Layer 1: invariants, parametrised over the registry by capability (never by method name)."""

from __future__ import annotations

import pytest
import torch

from hopekit import pe
from tests.conftest import EXAMPLES, HEAD_DIM, NUM_HEADS, build_example

ALL = list(pe.REGISTRY)


def logits(enc, q, k, q_pos, k_pos, seq_len=None):
    """Pre-softmax logits (B, H, Tq, Tk) of one attention call, through whichever hooks the method uses."""
    if enc.uses_scores:
        return enc.scores(q, k, q_pos, k_pos)
    if enc.uses_rotate:
        q, k = enc.rotate(q, k, q_pos, k_pos, seq_len=seq_len)
    out = q @ k.transpose(-1, -2)
    if enc.uses_bias:
        out = out + enc.bias(q_pos, k_pos)
    return out


def _relative_methods():
    return [n for n in ALL if build_example(n).relative and not build_example(n).uses_embed]


@pytest.mark.parametrize("name", _relative_methods())
@pytest.mark.parametrize("offset", [0, 1, 37, 4096, 1_000_000])
def test_relative_methods_depend_only_on_offset(name, offset):
    enc = build_example(name)
    q = torch.randn(1, NUM_HEADS, 8, HEAD_DIM)
    k = torch.randn(1, NUM_HEADS, 8, HEAD_DIM)
    pos = torch.arange(8) * 3  # non-contiguous positions on purpose
    # the length-dependent spectra (dynamic NTK, LongRoPE) are held fixed by passing seq_len
    ref = logits(enc, q, k, pos, pos, seq_len=64)
    shifted = logits(enc, q, k, pos + offset, pos + offset, seq_len=64)
    finite = torch.isfinite(ref)
    assert torch.equal(finite, torch.isfinite(shifted))
    assert torch.allclose(ref[finite], shifted[finite], rtol=1e-4, atol=1e-4), (ref - shifted).abs().max()


def test_relative_set_is_what_we_expect():
    assert set(_relative_methods()) == set(ALL) - {"sinusoidal", "learned", "bipe"}


@pytest.mark.parametrize("name", [n for n in ALL if build_example(n).uses_rotate])
def test_rotation_preserves_norm_when_unscaled(name):
    enc = build_example(name)
    x = torch.randn(2, NUM_HEADS, 50, HEAD_DIM, dtype=torch.float64)
    pos = torch.arange(50) * 101
    feats = enc.features(pos, seq_len=32)
    scale = enc.spectrum(32).attn_scale
    out = enc.apply(x, feats)
    # attention factors scale cos and sin together: the norm scales by exactly attn_scale
    r = enc.rotary_dim
    torch.testing.assert_close(out[..., :r].norm(dim=-1), scale * x[..., :r].norm(dim=-1), rtol=1e-6, atol=0)
    torch.testing.assert_close(out[..., r:], x[..., r:], rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in ALL if build_example(n).uses_rotate])
def test_position_zero_is_identity(name):
    enc = build_example(name)
    x = torch.randn(1, NUM_HEADS, 1, HEAD_DIM)
    feats = enc.features(torch.zeros(1, dtype=torch.long), seq_len=32)
    out = enc.apply(x, feats)
    torch.testing.assert_close(out, x * enc.spectrum(32).attn_scale ** torch.tensor(
        [1.0] * enc.rotary_dim + [0.0] * (HEAD_DIM - enc.rotary_dim)), rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in ALL if build_example(n).uses_rotate])
def test_zero_frequency_pairs_untouched(name):
    enc = build_example(name)
    spec = enc.spectrum(32)
    zero = (spec.inv_freq == 0).nonzero().flatten()
    x = torch.randn(1, 1, 20, HEAD_DIM)
    out = enc.apply(x, enc.features(torch.arange(20) * 1000, seq_len=32))
    half = enc.rotary_dim // 2
    for i in zero.tolist():
        for ch in (i, i + half):
            assert torch.equal(out[..., ch], x[..., ch] * spec.attn_scale)


def test_highfreq_example_has_zero_pairs():
    # the invariant above would pass vacuously if no method had a zero-frequency pair
    assert (build_example("hope_highfreq").spectrum().inv_freq == 0).any()
    assert (build_example("rope", rotary_fraction=0.5).rotary_dim == HEAD_DIM // 2)


def test_hope_hyperbolic_channel_contributions_decay_monotonically():
    enc = build_example("hope_hyperbolic")
    d = HEAD_DIM
    deltas = torch.arange(0, 400)
    # One eigen-channel at a time: q and k equal to a single eigenvector (u or v of pair i) give
    # contribution e^{-r_c Δ}; it must be positive and strictly decreasing in Δ.
    for c in range(d):
        e = torch.zeros(d)
        half = d // 2
        i, is_v = c % half, c >= half
        e[i], e[i + half] = 1.0, (-1.0 if is_v else 1.0)
        q = e.view(1, 1, 1, d).expand(1, NUM_HEADS, 1, d)
        k = e.view(1, 1, 1, d).expand(1, NUM_HEADS, len(deltas), d)
        s = enc.scores(q, k, torch.tensor([400]), 400 - deltas)[0, 0, 0]
        assert (s > 0).all()
        assert (s[1:] < s[:-1]).all(), f"channel {c} not strictly decreasing"
