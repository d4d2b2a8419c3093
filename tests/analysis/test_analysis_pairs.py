"""pairs: per-pair rotary logit terms sum to the logits; a planted model gives its closed-form profile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hopekit import pe
from hopekit.analysis.capture import attention_logits, capture_qk
from hopekit.analysis.pairs import (
    BANDS, component_names, hf_capture_qk, pair_logits, pair_periods, pair_profiles, period_bands, u_parts, u_score,
)
from hopekit.model import Decoder, ModelConfig

VOCAB = 16


def make(fraction: float = 1.0, base: float = 100.0, n_kv_heads: int = 2) -> Decoder:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, n_kv_heads=n_kv_heads, init_std=0.3,
                      pe={"kind": "rope", "base": base, "rotary_fraction": fraction})
    return Decoder(cfg).eval()


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_pair_terms_sum_to_the_layers_logits(fraction):
    torch.manual_seed(0)
    model = make(fraction, n_kv_heads=1)
    idx = torch.randint(0, VOCAB, (2, 11))
    for qk in capture_qk(model, idx):
        c = pair_logits(qk, model.pe, dtype=torch.float64)
        r = model.pe.rotary_dim
        assert c.shape == (2, 2, r // 2 + (fraction < 1), 11, 11)
        oracle = (qk.q.double() @ qk.k.double().transpose(-1, -2)) * qk.scale
        torch.testing.assert_close(c.sum(2), oracle, rtol=1e-12, atol=1e-12)
        causal = torch.ones(11, 11, dtype=torch.bool).tril()
        model_logits = attention_logits(model.pe, qk)                  # what the attention softmaxes
        torch.testing.assert_close(c.sum(2)[..., causal].float(), model_logits[..., causal], rtol=1e-5, atol=1e-5)
        rows = pair_logits(qk, model.pe, queries=slice(3, 7), dtype=torch.float64)
        torch.testing.assert_close(rows, c[..., 3:7, :])


def test_rotated_pair_term_is_the_raw_pair_rotated_by_the_distance():
    # c_i(m, n) = scale · Re[q̂_i conj(k̂_i) e^{iθ_i(m−n)}] from the raw (unrotated) projections
    torch.manual_seed(1)
    model = make()
    qk = capture_qk(model, torch.randint(0, VOCAB, (1, 9)))[0]
    inv = model.pe.spectrum().inv_freq
    half = len(inv)
    rq, rk = qk.raw_q.double(), qk.raw_k.double()
    qh = torch.complex(rq[..., :half], rq[..., half:])                 # (B, H, T, P)
    kh = torch.complex(rk[..., :half], rk[..., half:])
    delta = (torch.arange(9)[:, None] - torch.arange(9)[None, :]).double()
    phase = torch.exp(1j * delta[None, :, :] * inv[:, None, None])      # (P, T, T)
    expected = (qh.permute(0, 1, 3, 2)[..., :, None] * kh.conj().permute(0, 1, 3, 2)[..., None, :] * phase).real
    torch.testing.assert_close(pair_logits(qk, model.pe, dtype=torch.float64), expected * qk.scale,
                               rtol=1e-5, atol=1e-6)


def planted(a: tuple[float, float], b: tuple[float, float], pairs: tuple[int, int]) -> Decoder:
    """Every position sees the same input (constant embeddings, no residual writes), and head h puts all
    its query/key energy in pair ``pairs[h]``: q = a_h, k = b_h there (head 1 in the pair's second channel)."""
    model = make()
    with torch.no_grad():
        model.tok_emb.weight.fill_(1.0)
        D, half = model.pe.head_dim, model.pe.rotary_dim // 2
        for blk in model.blocks:
            blk.attn.wo.weight.zero_()
            blk.mlp.w_down.weight.zero_()
            u = blk.attn_norm(torch.ones(1, 32))[0]
            blk.attn.wq.weight.zero_()
            blk.attn.wk.weight.zero_()
            for h, (ah, bh, j) in enumerate(zip(a, b, pairs)):
                ch = h * D + j + (half if h == 1 else 0)
                blk.attn.wq.weight[ch] = ah * u / (u @ u)
                blk.attn.wk.weight[ch] = bh * u / (u @ u)
    return model


def test_planted_pair_gives_its_cosine_profile_times_the_magnitude():
    a, b, pairs, T = (2.0, -1.5), (3.0, 0.5), (2, 5), 24
    model = planted(a, b, pairs)
    windows = [torch.randint(0, VOCAB, (T,)) for _ in range(3)]
    prof = pair_profiles(model, windows, train_len=T, batch_size=2, query_chunk=7)
    inv = model.pe.spectrum().inv_freq
    scale = 1 / math.sqrt(model.pe.head_dim)
    delta = torch.arange(T, dtype=torch.float64)
    assert prof.profile.shape == prof.last_query.shape == (2, 2, 8, T)
    assert prof.layers == [0, 1] and prof.windows == 3 and prof.length == T
    for h in range(2):
        j = pairs[h]
        amp = a[h] * b[h] * scale
        curve = amp * torch.cos(inv[j] * delta)
        others = [i for i in range(8) if i != j]
        for layer in range(2):
            np.testing.assert_allclose(prof.profile[layer, h, j], curve.numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(prof.last_query[layer, h, j], curve.flip(0).numpy(), rtol=1e-5, atol=1e-6)
            assert np.abs(prof.profile[layer, h, others]).max() < 1e-6
            # mean |c| over causal (m, n), by a float64 loop
            naive = sum(abs(amp * math.cos(float(inv[j]) * (m - n))) for m in range(T) for n in range(m + 1))
            naive /= T * (T + 1) / 2
            assert prof.magnitude[layer, h, j] == pytest.approx(naive, rel=1e-5)
            assert prof.logit_magnitude[layer, h] == pytest.approx(naive, rel=1e-5)
            assert prof.share[layer, h, j] == pytest.approx(1.0, abs=1e-5)


def test_profile_accumulation_matches_a_naive_diagonal_mean():
    torch.manual_seed(2)
    model = make()
    T = 13
    windows = torch.randint(0, VOCAB, (5, T))
    prof = pair_profiles(model, windows, train_len=8, batch_size=2, query_chunk=4)
    naive = np.zeros_like(prof.profile)
    last = np.zeros_like(prof.last_query)
    for qk in capture_qk(model, windows):
        c = pair_logits(qk, model.pe, dtype=torch.float64).numpy()    # (B, H, C, T, T)
        for d in range(T):
            naive[qk.layer, ..., d] = np.mean([c[:, :, :, m, m - d] for m in range(d, T)], axis=(0, 1))
        last[qk.layer] = c[:, :, :, -1, :].mean(0)
    np.testing.assert_allclose(prof.profile, naive, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(prof.last_query, last, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(prof.count, 5 * np.arange(T, 0, -1))
    # mean |term| over causal entries, in full and over 4 evenly spaced query rows (0, 4, 8, 12)
    for queries, rows in ((None, range(T)), (4, (0, 4, 8, 12))):
        got = pair_profiles(model, windows, train_len=8, batch_size=3, query_chunk=3, magnitude_queries=queries)
        np.testing.assert_allclose(got.profile, prof.profile, rtol=1e-10, atol=1e-12)
        for qk in capture_qk(model, windows):
            c = pair_logits(qk, model.pe, dtype=torch.float64)
            entries = [c[:, :, :, m, : m + 1] for m in rows]
            mag = torch.cat(entries, -1).abs().sum((0, 3)) / sum(e.shape[0] * e.shape[-1] for e in entries)
            np.testing.assert_allclose(got.magnitude[qk.layer], mag.numpy(), rtol=1e-5)
            logit = torch.cat([e.sum(2) for e in entries], -1).abs().sum((0, 2)) / sum(e.shape[0] * e.shape[-1] for e in entries)
            np.testing.assert_allclose(got.logit_magnitude[qk.layer], logit.numpy(), rtol=1e-5)


def test_period_flags_against_two_pi_over_inv_freq():
    L = 128
    enc = pe.build("rope", head_dim=32, base=1e4)
    inv = enc.spectrum().inv_freq
    periods = pair_periods(inv)
    torch.testing.assert_close(periods, 2 * math.pi / inv)
    bands = period_bands(inv, L)
    for p, band in zip(periods.tolist(), bands):
        assert band == ("within" if p <= L else "activated" if p <= 2 * L else "beyond")
    # base 1e4, 16 pairs, L = 128: pairs 0-5 turn inside the window, pair 6 (P ≈ 199) is the activated one
    assert bands == ["within"] * 6 + ["activated"] + ["beyond"] * 9
    # boundaries: P = L is within, P = 2L activated, a zero frequency (unrotated) beyond
    edges = torch.tensor([2 * math.pi / L, 2 * math.pi / (2 * L), math.nextafter(2 * math.pi / (2 * L), 0), 0.0],
                         dtype=torch.float64)
    assert period_bands(edges, L) == ["within", "activated", "beyond", "beyond"]
    assert math.isinf(pair_periods(edges)[-1])
    assert set(BANDS) == {"within", "activated", "beyond"}


def test_u_score_reference_shapes():
    n = 64
    w = n // 8
    step_both = np.zeros(n)
    step_both[:w] = step_both[-w:] = 1.0
    step_one = np.zeros(n)
    step_one[:w] = 1.0
    assert u_score(step_both) == pytest.approx(1.0)
    assert u_score(step_one) == pytest.approx(0.0)
    assert u_score(np.full(n, 3.0)) == 0.0
    half_cos = np.cos(np.pi * np.arange(n) / (n - 1))            # high near, low far: no U
    assert u_score(half_cos) < -0.4
    v = np.abs(np.arange(n) - (n - 1) / 2)                         # a V: both ends high
    assert u_score(v) > 0.5
    rng = np.random.default_rng(0)
    p = rng.normal(size=(3, n))
    parts = u_parts(p)
    np.testing.assert_allclose(u_score(2.5 * p + 7.0), parts["u_score"])           # affine-invariant
    np.testing.assert_allclose(u_parts(2.5 * p)["u_depth"], 2.5 * parts["u_depth"])
    np.testing.assert_allclose(u_score(p[:, ::-1]), parts["u_score"])               # symmetric ends
    np.testing.assert_allclose(parts["near"], p[:, :w].mean(-1))
    np.testing.assert_allclose(parts["mid"], p[:, w:n - w].mean(-1))
    assert np.all(np.abs(parts["u_score"]) <= 1.0)


def test_bad_input_is_one_line():
    model = make()
    qk = capture_qk(model, torch.randint(0, VOCAB, (1, 5)))[0]
    with pytest.raises(ValueError, match="enc: a per-pair decomposition needs a rotary encoding"):
        pair_logits(qk, pe.build("alibi", head_dim=16, num_heads=2))
    with pytest.raises(ValueError, match="qk: head dim 16"):
        pair_logits(qk, pe.build("rope", head_dim=32))
    with pytest.raises(TypeError, match="queries: expected a slice"):
        pair_logits(qk, model.pe, queries=3)
    with pytest.raises(ValueError, match="train_len: expected an int >= 1, got 0"):
        period_bands([1.0], 0)
    with pytest.raises(ValueError, match="inv_freq: expected a 1-D tensor"):
        pair_periods([-1.0])
    with pytest.raises(ValueError, match="width: need"):
        u_score(np.zeros(4), width=2)
    with pytest.raises(ValueError, match="windows: every window must have the same length"):
        pair_profiles(model, [torch.zeros(5, dtype=torch.long), torch.zeros(6, dtype=torch.long)], train_len=4)
    with pytest.raises(ValueError, match=r"windows\[0\]: expected int64 token ids"):
        pair_profiles(model, [torch.zeros(5)], train_len=4)
    with pytest.raises(ValueError, match="windows: empty"):
        pair_profiles(model, [], train_len=4)
    with pytest.raises(ValueError, match="batch_size: expected an int >= 1"):
        pair_profiles(model, torch.zeros(1, 5, dtype=torch.long), train_len=4, batch_size=0)
    with pytest.raises(ValueError, match="magnitude_queries: expected an int >= 1, got 0"):
        pair_profiles(model, torch.zeros(1, 5, dtype=torch.long), train_len=4, magnitude_queries=0)
    assert component_names(make(0.5).pe)[-1] == "rest"


@pytest.mark.slow
def test_hf_capture_reproduces_the_models_own_attention():
    transformers = pytest.importorskip("transformers")
    from hopekit.analysis.capture import hf_attention

    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, rope_theta=1e5,
                                   max_position_embeddings=64, attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).eval()
    idx = torch.randint(0, 50, (2, 17))
    layers = hf_capture_qk(model, idx)
    weights = hf_attention(model, idx)
    from hopekit.analysis.pairs import hf_rope_encoding

    enc = hf_rope_encoding(cfg)
    causal = torch.ones(17, 17, dtype=torch.bool).tril()
    for qk, w in zip(layers, weights):
        logits = pair_logits(qk, enc, dtype=torch.float64).sum(2).masked_fill(~causal, -math.inf)
        torch.testing.assert_close(logits.softmax(-1).float(), w, rtol=1e-4, atol=1e-5)
