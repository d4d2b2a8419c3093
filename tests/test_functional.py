"""hopekit.attention: every registered method against a dense float64 reference written from the hooks."""

from __future__ import annotations

import pytest
import torch

import hopekit
from hopekit import kernels, pe
from hopekit.functional import chunked_attention

D, H = 16, 4
ATTENTION_METHODS = [k for k in pe.REGISTRY if k not in ("sinusoidal", "learned")]


def tol(enc) -> dict:
    """float64 throughout, except hope_hyperbolic, whose stable form evaluates its decay factors in
    float32 by design (the float64 closed form is its own tests' oracle): a few float32 roundings."""
    return {"rtol": 1e-5, "atol": 1e-6} if enc.uses_scores else {"rtol": 1e-10, "atol": 1e-10}


def build(kind: str, heads: int = H):
    config = pe.example_config(kind, D)
    if kind == "alibi":
        config = {"kind": "alibi"}
    return pe.build(pe.parse(config, train_len=64), head_dim=D, num_heads=heads).double()


def dense_reference(enc, q, k, v, q_pos, k_pos, *, causal=True, mask=None, scale=None):
    """softmax(logits + causal/padding mask) @ v in float64, the logits straight from the hooks."""
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if enc.uses_rotate:
        q, k = enc.rotate(q, k, q_pos, k_pos)
    if enc.uses_scores:
        logits = enc.scores(q, k, q_pos, k_pos).double() * scale
    else:
        logits = q @ k.transpose(-1, -2) * scale
        if enc.uses_bias:
            logits = logits + enc.bias(q_pos, k_pos).double()
    Tq, Tk = q.shape[2], k.shape[2]
    allowed = torch.ones(Tq, Tk, dtype=torch.bool)
    if causal:
        allowed = allowed.tril(diagonal=Tk - Tq)
    if mask is not None:
        allowed = allowed & mask
    return logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


def qkv(B=2, Tq=9, Tk=9, heads=H, kv_heads=H, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, heads, Tq, D, generator=g, dtype=dtype)
    k = torch.randn(B, kv_heads, Tk, D, generator=g, dtype=dtype)
    v = torch.randn(B, kv_heads, Tk, D, generator=g, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("kind", ATTENTION_METHODS)
@pytest.mark.parametrize("use_kernels", [True, False])
def test_every_method_equals_the_dense_reference(kind, use_kernels):
    enc = build(kind)
    q, k, v = qkv()
    pos = torch.arange(5, 14)
    with kernels.use_kernels(use_kernels):
        out = hopekit.attention(enc, q, k, v, pos, pos)
    torch.testing.assert_close(out, dense_reference(enc, q, k, v, pos, pos), **tol(enc))


@pytest.mark.parametrize("kind", ["rope", "yarn", "alibi", "hope_hyperbolic", "nope", "bipe"])
def test_kv_cache_offsets_grouped_heads_and_batched_positions(kind):
    """The queries are the last Tq of Tk keys (row i sees keys 0 … Tk − Tq + i), two KV heads serve four
    query heads, and each batch row has its own positions."""
    enc = build(kind)
    q, k, v = qkv(Tq=3, Tk=11, kv_heads=2)
    k_pos = torch.stack([torch.arange(11) + 2, torch.arange(11) * 3])            # (B, Tk), non-decreasing
    q_pos = k_pos[:, -3:]
    out = hopekit.attention(enc, q, k, v, q_pos, k_pos)
    torch.testing.assert_close(out, dense_reference(enc, q, k, v, q_pos, k_pos), **tol(enc))


@pytest.mark.parametrize("kind", ["rope", "alibi", "hope_hyperbolic"])
def test_a_padding_mask_is_applied_on_top_of_causality(kind):
    enc = build(kind)
    q, k, v = qkv()
    pos = torch.arange(9)
    mask = torch.ones(2, 1, 9, 9, dtype=torch.bool)
    mask[0, ..., :3] = False                                                     # row 0: keys 0-2 are padding
    mask[0, ..., :3, :] = True                                                   # (rows that see nothing else keep them)
    out = hopekit.attention(enc, q, k, v, pos, pos, mask=mask)
    torch.testing.assert_close(out, dense_reference(enc, q, k, v, pos, pos, mask=mask), **tol(enc))


@pytest.mark.parametrize("kind", ["rope", "alibi", "nope"])
def test_non_causal_attention_sees_every_key(kind):
    enc = build(kind)
    q, k, v = qkv()
    pos = torch.arange(9)
    out = hopekit.attention(enc, q, k, v, pos, pos, causal=False)
    torch.testing.assert_close(out, dense_reference(enc, q, k, v, pos, pos, causal=False), rtol=1e-10, atol=1e-10)


def test_rotated_inputs_are_not_rotated_twice():
    enc = build("yarn")
    q, k, v = qkv()
    pos = torch.arange(9)
    rq, rk = enc.rotate(q, k, pos, pos)
    torch.testing.assert_close(hopekit.attention(enc, rq, rk, v, pos, pos, rotated=True),
                               hopekit.attention(enc, q, k, v, pos, pos), rtol=1e-12, atol=1e-12)


def test_float32_matches_float64_to_float32_rounding():
    enc = build("alibi")
    q, k, v = qkv()
    pos = torch.arange(9)
    out = hopekit.attention(enc.float(), q.float(), k.float(), v.float(), pos, pos)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), dense_reference(enc, q, k, v, pos, pos), rtol=1e-5, atol=1e-6)


def test_chunked_reference_equals_dense_for_any_chunk():
    enc = build("hope_hyperbolic")
    q, k, v = qkv(Tq=7, Tk=12)
    pos = torch.arange(12)
    ref = dense_reference(enc, q, k, v, pos[-7:], pos)
    for chunk in (1, 3, 100):
        out = chunked_attention(enc, q, k.clone(), v, pos[-7:], pos, past=5, scale=D ** -0.5, chunk=chunk)
        torch.testing.assert_close(out, ref, **tol(enc))


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_encodings_that_act_at_the_input_are_refused_unless_embedded(kind):
    enc = build(kind)
    q, k, v = qkv()
    pos = torch.arange(9)
    with pytest.raises(ValueError, match=rf"pe.kind='{kind}' acts only through embed\(\)"):
        hopekit.attention(enc, q, k, v, pos, pos)
    out = hopekit.attention(enc, q, k, v, pos, pos, embedded=True)          # then: plain causal attention
    torch.testing.assert_close(out, dense_reference(build("nope"), q, k, v, pos, pos), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("call, message", [
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k, v, p, p, causal=False), "causal=False: pe.kind='hope_hyperbolic'"),
    (lambda enc, q, k, v, p: hopekit.attention("rope", q, k, v, p, p), "enc: expected a hopekit positional encoding"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q[0], k, v, p, p), r"q: expected a \(B, H, T, head_dim\)"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q.long(), k, v, p, p), "q: expected a floating-point"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k[:, :3], v[:, :3], p, p), "3 key/value heads do not divide"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k, v[:, :, :4], p, p), "k, v: expected"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k[:, :, :4], v[:, :, :4], p, p[:4]), "9 queries but only 4 keys"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k, v, p[:4], p), "q_pos: has 4 positions but the input has 9"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k, v, p.float(), p), "q_pos: expected an integer tensor"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k, v, p, p, chunk=0), "chunk=0: expected a positive int"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k, v, p, p, dropout_p=1.5), r"dropout_p=1.5: expected"),
    (lambda enc, q, k, v, p: hopekit.attention(enc, q, k, v, p, p, mask=torch.ones(9, 9)),
     "mask: expected a boolean tensor"),
])
def test_bad_input_is_one_clear_error(call, message):
    enc = build("hope_hyperbolic")
    q, k, v = qkv()
    with pytest.raises((ValueError, TypeError), match=message):
        call(enc, q, k, v, torch.arange(9))


def test_the_decoder_calls_the_entry_point(monkeypatch):
    from hopekit import model as model_module
    from hopekit.model import Decoder, ModelConfig

    calls = []
    real = model_module.attention
    monkeypatch.setattr(model_module, "attention", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    m = Decoder(ModelConfig(vocab_size=11, d_model=32, n_layers=2, n_heads=2, pe={"kind": "sinusoidal"}))
    m(torch.randint(0, 11, (1, 5)))
    assert len(calls) == 2 and all(kw["embedded"] and kw["rotated"] for kw in calls)


@pytest.mark.parametrize("kind", ["alibi", "bipe_alibi", "hope_hyperbolic"])
def test_the_dispatcher_runs_the_kernel_where_it_applies(kind, monkeypatch):
    """At a length the attention kernel takes, hopekit.attention calls it (and only with kernels on),
    and the result is the dense reference's to float32 rounding."""
    import importlib

    config = {"kind": "bipe", "inter": {"kind": "alibi"}} if kind == "bipe_alibi" else pe.example_config(kind, D)
    enc = pe.build(pe.parse(config, train_len=64), head_dim=D, num_heads=H)
    module = importlib.import_module(f"hopekit.kernels.{'hyperbolic' if enc.uses_scores else 'alibi'}")
    calls = []
    real = module.attend
    monkeypatch.setattr(module, "attend", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k, v = qkv(Tq=80, Tk=80, kv_heads=2, dtype=torch.float32)
    pos = torch.arange(80) * 2
    out = hopekit.attention(enc, q, k, v, pos, pos)
    assert calls == [1]
    with kernels.use_kernels(False):
        ref = hopekit.attention(enc, q, k, v, pos, pos)
    assert calls == [1]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.double(), dense_reference(enc.double(), q, k, v, pos, pos), rtol=1e-5, atol=1e-6)
