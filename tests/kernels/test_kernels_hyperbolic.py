"""hopekit.kernels.hyperbolic: the tree of flash-attention calls against the float64 closed form and
the reference ``chunked_attention`` over ``HyperbolicEncoding.scores``, forward and backward.

Error thresholds (outputs are convex combinations of v rows, so errors are measured against max |v|):

* float32: a logit error ε moves an output by at most ~ε·max|v|. Each logit sums D products whose
  factors carry a few float32 roundings (2⁻²⁴ ≈ 6e-8 each) on terms of size O(scale·|q_c k_c|), and
  every group's log-sum-exp is float32 (relative 6e-8 of |lse| ≈ 10): a few 1e-7. We require 1e-6
  and, the point of the kernel, no more than twice the reference's own error (measured ≈ 7e-8) plus 1e-7.
* bfloat16: q·factor and k·factor are rounded to bfloat16 before the matmul, as in the reference
  (relative 2⁻⁹ ≈ 2e-3 per operand, on logits of size O(3)), and outputs are rounded to bfloat16
  (2⁻⁹ relative): 1e-2 of max|v|, and no more than twice the reference's error plus 2e-3.
* float64 (the flash kernel runs in float64 too): the only approximation is the cut of factors below
  e^{−30} (terms below 1e-13·|Q_c K_c|): 1e-10 against the encoding's own rates.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hopekit import pe
from hopekit.kernels import hyperbolic as kh
from hopekit.kernels import use_kernels
from hopekit.model import chunked_attention

# ---------------------------------------------------------------------------------------------------
# Oracle (float64, test-side only)
# ---------------------------------------------------------------------------------------------------


def rates64(enc) -> torch.Tensor:
    """The decay rates the encoding's parameters denote, in float64, (H|1, D): [λ − ω_i, λ + ω_i]."""
    d = enc.head_dim
    omega = enc.params.omega_scale / enc.params.base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    if enc.penalty_raw is None:
        lam = torch.full((1,), enc.params.resolved_penalty, dtype=torch.float64)
    else:
        lam = float(omega.max()) * (1 + 1e-6) + F.softplus(enc.penalty_raw.detach().double())
    return torch.cat([lam[:, None] - omega, lam[:, None] + omega], dim=-1)


def oracle(enc, q, k, v, q_pos, k_pos, scale, past, rates=None):
    """Causal softmax attention over Σ_c Q_c K_c e^{−r_c(m − n)} (eigenbasis, float64), × s(m) under
    ``log_length``; query row i sees keys 0 … past + i. ``rates``: (H|1, D), default :func:`rates64`."""
    q, k, v = q.double(), k.double(), v.double()
    h = q.shape[-1] // 2
    qe = torch.cat([q[..., :h] + q[..., h:], q[..., :h] - q[..., h:]], -1) / math.sqrt(2)
    ke = torch.cat([k[..., :h] + k[..., h:], k[..., :h] - k[..., h:]], -1) / math.sqrt(2)
    qp, kp = q_pos.reshape(-1, q_pos.shape[-1]), k_pos.reshape(-1, k_pos.shape[-1])
    delta = (qp[:, :, None] - kp[:, None, :]).double()[:, None]                  # (B|1, 1, Tq, Tk)
    r = rates64(enc) if rates is None else rates.double()                        # (H|1, D)
    logits = torch.zeros(q.shape[:3] + (k.shape[2],), dtype=torch.float64)
    for c in range(q.shape[-1]):
        decay = torch.exp(-r[:, c, None, None] * delta.clamp(min=0))             # (B|1, H|1, Tq, Tk)
        logits += qe[..., c, None] * ke[..., None, :, c] * decay
    if enc.params.logit_scale == "log_length":
        m = qp.double()
        s = torch.where(qp < math.floor(enc.params.train_len), 1.0,
                        (torch.log1p(m) / math.log(enc.params.train_len)).clamp(min=1.0))
        logits = logits * s[:, None, :, None]
    Tq, Tk = q.shape[2], k.shape[2]
    blocked = torch.arange(Tk)[None, :] > (past + torch.arange(Tq))[:, None]
    logits = logits.masked_fill(blocked, float("-inf")) * scale
    return torch.softmax(logits, -1) @ v


def hyper(head_dim=16, num_heads=2, **kw):
    return pe.build("hope_hyperbolic", head_dim=head_dim, num_heads=num_heads, **kw)


def inputs(B, H, Tq, D, past=0, dtype=torch.float32, grad=False, layout="bhtd"):
    Tk = past + Tq
    shapes = [(B, H, Tq, D), (B, H, Tk, D), (B, H, Tk, D)]
    if layout == "bthd":  # as the decoder makes them: (B, T, H, D) viewed as (B, H, T, D)
        ts = [torch.randn(s[0], s[2], s[1], s[3], dtype=dtype).transpose(1, 2) for s in shapes]
    else:
        ts = [torch.randn(s, dtype=dtype) for s in shapes]
    return [t.requires_grad_(grad) for t in ts]


def reference(enc, q, k, v, q_pos, k_pos, scale, past):
    return chunked_attention(enc, q, k, v, q_pos, k_pos, past=past, scale=scale, chunk=64)


def errors(enc, q, k, v, q_pos, k_pos, past):
    scale = q.shape[-1] ** -0.5
    exact = oracle(enc, q, k, v, q_pos, k_pos, scale, past)
    fast = kh.attend(enc, q, k, v, q_pos, k_pos, scale=scale, past=past)
    ref = reference(enc, q, k, v, q_pos, k_pos, scale, past)
    assert fast.shape == ref.shape and fast.dtype == ref.dtype == v.dtype
    assert torch.isfinite(fast).all()
    top = v.double().abs().max()
    return (fast.double() - exact).abs().max() / top, (ref.double() - exact).abs().max() / top


BOUND = {torch.float32: 1e-6, torch.bfloat16: 1e-2}
FLOOR = {torch.float32: 1e-7, torch.bfloat16: 2e-3}


def check(enc, q, k, v, q_pos, k_pos, past=0):
    fast, ref = errors(enc, q, k, v, q_pos, k_pos, past)
    dtype = q.dtype
    assert fast <= BOUND[dtype], (fast, ref)
    assert fast <= 2 * ref + FLOOR[dtype], (fast, ref)


# ---------------------------------------------------------------------------------------------------
# Forward against the float64 closed form and the reference
# ---------------------------------------------------------------------------------------------------

CONFIGS = {
    "default": {},                                                  # ω-scale 0.2, λ 0.21: many tree levels
    "rope_freqs": {"omega_scale": 1.0, "penalty": 1.05},            # fast decay: most factors cut to 0
    "slow": {"omega_scale": 0.01, "penalty": 0.0105},               # one leaf holds 300 rows
    "near_max_omega": {"omega_scale": 0.2, "penalty": 0.2 * (1 + 1e-5)},
    "log_length": {"logit_scale": "log_length", "train_len": 64},
    "learnable_per_head": {"learnable": True, "per_head": True, "penalty": 0.3},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_oracle_and_reference(config, dtype):
    enc = hyper(32, 2, **CONFIGS[config])
    q, k, v = inputs(2, 2, 300, 32, dtype=dtype)
    pos = torch.arange(300) + 7
    check(enc, q, k, v, pos, pos)


@pytest.mark.parametrize("head_dim", [32, 48, 96, 256])
def test_head_dims(head_dim):
    enc = hyper(head_dim, 3)
    q, k, v = inputs(1, 3, 129, head_dim)
    pos = torch.arange(129)
    check(enc, q, k, v, pos, pos)


@pytest.mark.parametrize("T", [1, 2, 7, 129, 200])
@pytest.mark.parametrize("H", [1, 5])
def test_lengths_and_odd_head_counts(T, H):
    """Lengths that need padding to R·2^L, and lengths of one leaf."""
    enc = hyper(16, H)
    q, k, v = inputs(1, H, T, 16)
    pos = torch.arange(T) + 3
    check(enc, q, k, v, pos, pos)


def test_strided_inputs_as_the_decoder_makes_them():
    enc = hyper(32, 4)
    q, k, v = inputs(2, 4, 150, 32, layout="bthd")
    assert not q.is_contiguous()
    pos = torch.arange(150)
    check(enc, q, k, v, pos, pos)
    out = kh.attend(enc, q, k, v, pos, pos, scale=0.2, past=0)
    dense = kh.attend(enc, q.contiguous(), k.contiguous(), v.contiguous(), pos, pos, scale=0.2, past=0)
    torch.testing.assert_close(out, dense, rtol=0, atol=0)


@pytest.mark.parametrize("Tq", [1, 5, 33])
def test_kv_cache_calls(Tq):
    """New queries after ``past`` cached keys, positions starting far from 0."""
    enc = hyper(16, 2, omega_scale=0.05, penalty=0.06)
    past = 70
    q, k, v = inputs(2, 2, Tq, 16, past=past)
    k_pos = torch.arange(past + Tq) + 10_000
    check(enc, q, k, v, k_pos[past:], k_pos, past=past)


def test_batched_and_randomized_positions():
    """(B, T) positions: different offsets per row, and sorted random positions with gaps (blocks are
    planned by position span, not by row count)."""
    enc = hyper(16, 2)
    q, k, v = inputs(2, 2, 180, 16)
    offsets = torch.stack([torch.arange(180) + 5, torch.arange(180) + 77_777])
    check(enc, q, k, v, offsets, offsets)
    gen = torch.Generator().manual_seed(1)
    rand = torch.stack([torch.randperm(1500, generator=gen)[:180].sort().values for _ in range(2)])
    check(enc, q, k, v, rand, rand)
    repeated = torch.arange(180) // 3                                    # equal positions: non-decreasing
    check(enc, q, k, v, repeated, repeated)


def test_kv_cache_with_batched_positions():
    enc = hyper(16, 2, omega_scale=0.05, penalty=0.06)
    past, Tq = 40, 9
    q, k, v = inputs(2, 2, Tq, 16, past=past)
    k_pos = torch.stack([torch.arange(past + Tq) + 10_000, torch.arange(past + Tq) * 3 + 77])
    check(enc, q, k, v, k_pos[:, past:], k_pos, past=past)


@pytest.mark.parametrize("omega_scale,penalty", [(1.0, 1.05), (0.2, 0.21), (0.01, 0.0105), (1e-5, 1.000001e-5)])
@pytest.mark.parametrize("offset", [0, 1_000_000])
def test_long_range_positions(omega_scale, penalty, offset):
    """As benchmarks/hyperbolic_precision.py probes the logits: keys at distances 0 … 2^20 from the
    queries, at absolute offsets 0 and 10^6, for rates from RoPE's (everything far decays to a logit of
    exactly 0) down to 1e-5 (terms still significant at Δ = 2^20); a KV-cache call with 4 new queries."""
    enc = hyper(16, 2, omega_scale=omega_scale, penalty=penalty)
    deltas = torch.cat([torch.arange(0, 40), torch.logspace(6, 20, 40, base=2).long()]).unique()
    top = offset + int(deltas.max())
    k_pos = (top - deltas).flip(0)                       # ascending, the last four are the new queries
    Tq = 4
    q, k, v = inputs(1, 2, Tq, 16, past=len(k_pos) - Tq)
    q, k = 2 * q, 2 * k                                  # logits of a few units
    check(enc, q, k, v, k_pos[-Tq:], k_pos, past=len(k_pos) - Tq)


def test_float64_is_exact():
    enc = hyper(16, 2)
    q, k, v = inputs(1, 2, 200, 16, past=20, dtype=torch.float64)
    k_pos = torch.arange(220) + 11
    out = kh.attend(enc, q, k, v, k_pos[20:], k_pos, scale=0.25, past=20)
    # against the encoding's own (float32) rates: only the cut of factors below e^{−30} remains
    exact = oracle(enc, q, k, v, k_pos[20:], k_pos, 0.25, 20, rates=enc.rates())
    assert (out - exact).abs().max() < 1e-10
    # against the exact rates: float32 rates are off by 6e-8 relative, logits by ≤ r·Δ·6e-8·|QK|
    assert (out - oracle(enc, q, k, v, k_pos[20:], k_pos, 0.25, 20)).abs().max() < 2e-5


def test_large_inputs_do_not_overflow():
    """|q|, |k| ≈ 1e4: factors up to e^30 times 1e4 stay finite; masked future products that overflow
    inside a causal leaf are filled with −inf by the kernel, not turned into NaN."""
    enc = hyper(16, 1, omega_scale=1.0, penalty=1.05)
    q, k, v = inputs(1, 1, 120, 16)
    q, k = q * 1e4, k * 1e4
    pos = torch.arange(120)
    out = kh.attend(enc, q, k, v, pos, pos, scale=0.25, past=0)
    ref = reference(enc, q, k, v, pos, pos, 0.25, 0)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_poisoned_buffers_never_reach_the_output(monkeypatch):
    """Every buffer the kernel allocates uninitialised starts as NaN: the output must still be exact."""
    real = torch.Tensor.new_empty

    def poisoned(self, *size, **kw):
        return real(self, *size, **kw).fill_(float("nan"))

    monkeypatch.setattr(torch.Tensor, "new_empty", poisoned)
    enc = hyper(16, 2)
    q, k, v = inputs(1, 2, 129, 16, past=3, grad=True)        # 129 rows: padded to R·2^L
    k_pos = torch.arange(132)
    out = kh.attend(enc, q, k, v, k_pos[3:], k_pos, scale=0.25, past=3)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    monkeypatch.undo()
    torch.testing.assert_close(out, reference(enc, q, k, v, k_pos[3:], k_pos, 0.25, 3), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------------


def grads(fn, tensors, params, g):
    out = fn()
    return torch.autograd.grad(out, tensors + params, g)


@pytest.mark.parametrize("config", ["default", "log_length", "learnable_per_head", "learnable_shared"])
def test_gradients_match_reference(config):
    kw = {**CONFIGS, "learnable_shared": {"learnable": True, "penalty": 0.25}}[config]
    enc = hyper(16, 3, **kw)
    past = 11
    q, k, v = inputs(2, 3, 140, 16, past=past, grad=True, layout="bthd")
    k_pos = torch.arange(past + 140) + 2
    params = [enc.penalty_raw] if enc.penalty_raw is not None else []
    g = torch.randn(2, 3, 140, 16)
    ours = grads(lambda: kh.attend(enc, q, k, v, k_pos[past:], k_pos, scale=0.25, past=past), [q, k, v], params, g)
    ref = grads(lambda: reference(enc, q, k, v, k_pos[past:], k_pos, 0.25, past), [q, k, v], params, g)
    for name, a, b in zip(["q", "k", "v", "penalty_raw"], ours, ref):
        assert torch.isfinite(a).all(), name
        scale = b.abs().max()
        assert (a - b).abs().max() <= 1e-4 * scale, (name, (a - b).abs().max() / scale)


def test_gradcheck_float64():
    """Analytic gradients of q, k, v and per-head rates against finite differences, in float64, with a
    KV-cache prefix, padding and two tree levels."""
    enc = hyper(4, 2, omega_scale=0.5, penalty=0.6)
    past, Tq = 2, 9
    q, k, v = inputs(1, 2, Tq, 4, past=past, dtype=torch.float64, grad=True)
    k_pos = torch.arange(past + Tq) * 2
    rates = (enc.rates().double() * torch.tensor([[1.0], [1.3]], dtype=torch.float64)).requires_grad_(True)
    plan = kh._plan(k_pos[past:], k_pos, Tq, past, span_limit=4)
    assert plan.levels == 2 and plan.padded == 12

    def fn(q, k, v, rates):
        return kh._HyperbolicAttention.apply(q, k, v, rates, plan, 0.3, None)

    assert torch.autograd.gradcheck(fn, (q, k, v, rates), eps=1e-6, atol=1e-7, rtol=1e-6)


def test_bf16_gradients_close_to_float32():
    enc = hyper(32, 2)
    q, k, v = inputs(1, 2, 130, 32, grad=True)
    pos = torch.arange(130)
    g = torch.randn(1, 2, 130, 32)
    exact = grads(lambda: kh.attend(enc, q, k, v, pos, pos, scale=0.2, past=0), [q, k, v], [], g)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_(True) for t in (q, k, v))
    low = grads(lambda: kh.attend(enc, qb, kb, vb, pos, pos, scale=0.2, past=0), [qb, kb, vb], [], g.bfloat16())
    ref = grads(lambda: reference(enc, qb, kb, vb, pos, pos, 0.2, 0), [qb, kb, vb], [], g.bfloat16())
    for a, b, e in zip(low, ref, exact):
        top = e.abs().max()
        fast_err, ref_err = (a.double() - e).abs().max() / top, (b.double() - e).abs().max() / top
        assert fast_err <= max(2 * ref_err, 2e-2), (fast_err, ref_err)


# ---------------------------------------------------------------------------------------------------
# Where the path applies, and the fallback
# ---------------------------------------------------------------------------------------------------


def test_applies():
    enc = hyper(16, 2)
    q = torch.randn(1, 2, 5, 16)
    assert kh.applies(enc, q, q, mask=None, dropout_p=0.0)
    assert not kh.applies(enc, q, q, mask=torch.ones(5, 5, dtype=torch.bool), dropout_p=0.0)
    assert not kh.applies(enc, q, q, mask=None, dropout_p=0.1)
    assert not kh.applies(enc, q.half(), q.half(), mask=None, dropout_p=0.0)
    assert not kh.applies(pe.build("alibi", head_dim=16, num_heads=2), q, q, mask=None, dropout_p=0.0)
    with use_kernels(False):
        assert not kh.applies(enc, q, q, mask=None, dropout_p=0.0)


def test_positions_it_does_not_cover_run_the_reference():
    """Decreasing positions, or query positions that are not the last keys' positions, give exactly
    the reference's result."""
    enc = hyper(16, 2)
    q, k, v = inputs(1, 2, 20, 16, past=4)
    k_pos = torch.arange(24)
    for qp, kp in ((k_pos[4:] + 1, k_pos), (k_pos[4:].flip(0), k_pos.flip(0))):
        out = kh.attend(enc, q, k, v, qp, kp, scale=0.25, past=4)
        ref = reference(enc, q, k, v, qp, kp, 0.25, 4)
        torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)


def test_bad_input_is_one_clear_error():
    enc = hyper(16, 2)
    q, k, v = inputs(1, 2, 5, 16)
    pos = torch.arange(5)
    with pytest.raises(ValueError, match="past=1"):
        kh.attend(enc, q, k, v, pos, pos, scale=0.25, past=1)
    with pytest.raises(ValueError, match="k_pos"):
        kh.attend(enc, q, k, v, pos, torch.arange(6), scale=0.25, past=0)
    with pytest.raises(ValueError, match="head_dim=16"):
        kh.attend(enc, q[..., :8], k, v, pos, pos, scale=0.25, past=0)


def test_plan_is_made_once_for_every_layer_of_a_forward(monkeypatch):
    """The same position tensors (as every layer of a forward passes them) reuse the plan and its
    factor tables; positions changed in place, or a learnable λ changed by a step, are seen."""
    made = []
    real = kh._plan
    monkeypatch.setattr(kh, "_plan", lambda *a, **kw: made.append(1) or real(*a, **kw))
    enc = hyper(16, 2, learnable=True, penalty=0.25)
    q, k, v = inputs(1, 2, 70, 16)
    pos = torch.arange(70)
    outs = [kh.attend(enc, q, k, v, pos, pos, scale=0.25, past=0) for _ in range(3)]
    assert len(made) == 1 and all(torch.equal(o, outs[0]) for o in outs)
    with torch.no_grad():
        enc.penalty_raw.add_(0.5)                        # an optimizer step (new rates: new leaf span limit)
    torch.testing.assert_close(kh.attend(enc, q, k, v, pos, pos, scale=0.25, past=0),
                               reference(enc, q, k, v, pos, pos, 0.25, 0), rtol=1e-5, atol=1e-6)
    pos.mul_(2)                                          # the same tensor, new positions
    torch.testing.assert_close(kh.attend(enc, q, k, v, pos, pos, scale=0.25, past=0),
                               reference(enc, q, k, v, pos, pos, 0.25, 0), rtol=1e-5, atol=1e-6)
    pos.numpy()[:] *= 3                                  # written behind autograd's version counter
    torch.testing.assert_close(kh.attend(enc, q, k, v, pos, pos, scale=0.25, past=0),
                               reference(enc, q, k, v, pos, pos, 0.25, 0), rtol=1e-5, atol=1e-6)
    assert len(made) == 4
    kh.attend(enc, q, k, v, pos.clone(), pos.clone(), scale=0.25, past=0)  # equal positions, new tensors
    assert len(made) == 4


def test_v_changed_in_place_after_the_forward_is_refused():
    enc = hyper(16, 2)
    q, k, v = inputs(1, 2, 64, 16, grad=True)
    pos = torch.arange(64)
    v_leaf = v.detach().clone().requires_grad_(True)
    vv = v_leaf * 1.0                                    # a non-leaf the caller could still change
    out = kh.attend(enc, q, k, vv, pos, pos, scale=0.25, past=0)
    with torch.no_grad():
        vv.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.slow
def test_a_compiled_caller_runs_the_kernel_eagerly():
    """``attend`` is one graph break under ``torch.compile`` (it plans on the host): a compiled caller
    gets the eager values and gradients, learnable λ included."""
    B, H, T, D = 1, 2, 150, 16
    proj = torch.nn.Linear(H * D, H * D)
    enc = hyper(D, H, learnable=True, per_head=True)
    pos = torch.arange(T)

    def layer(x):
        q = proj(x).view(B, T, H, D).transpose(1, 2)
        return kh.attend(enc, q, q, q, pos, pos, scale=D ** -0.5, past=0)

    x = torch.randn(B, T, H * D, requires_grad=True)
    eager = layer(x)
    eager_grads = torch.autograd.grad(eager.sum(), [x, enc.penalty_raw])
    compiled = torch.compile(layer)(x)
    compiled_grads = torch.autograd.grad(compiled.sum(), [x, enc.penalty_raw])
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
