"""hopekit.kernels.alibi: ALiBi attention in one fused call, against the float64 closed form and the
pe/ reference (``chunked_attention``).

Thresholds are relative to the largest |value| of the float64 result (max |fast − exact| / max |exact|):

* float32, forward ``1e-5`` (≈ 170 u, u = 2^-24): a logit carries ~u·(|q·k·scale| + the near keys'
  m·Δ + √D accumulation) ≈ 10 u of error, a weight the same relatively, the output a convex mix of v.
  The failure this path can have, a bias rounded at the size of m·(position − anchor) instead of the
  relative m·Δ, costs m·span·u ≈ 4e-2 on the jumping positions used below: far above the threshold.
* float32 gradients ``3e-5``: the backward sums over Tk keys and D channels twice, a bound of
  ~(Tk + D)·u ≈ 2.3e-5 at the largest shape here.
* bfloat16 / float16: computed in float32 and rounded once at the end: ``u`` of the dtype (2^-8, 2^-11)
  plus the float32 threshold. The reference rounds its weights to the dtype before the product (one more
  u, and weights that no longer sum to 1 by up to another), so fast vs reference gets 4 u, as does the
  reference itself, which runs below ``ROW_ALIGN`` query rows.
* float64: ``1e-12``; against the reference, float32's (the reference may keep float32 logits).
"""

from __future__ import annotations

import math
import platform
import sys

import pytest
import torch

from hopekit import kernels, pe
from hopekit.kernels import alibi as ka
from hopekit.model import chunked_attention
from hopekit.pe.alibi import ALiBi

FP32, FP32_GRAD, FP64 = 1e-5, 3e-5, 1e-12
U = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


def tol(dtype: torch.dtype) -> float:
    """The fused path's bound against float64."""
    return {torch.float32: FP32, torch.float64: FP64}.get(dtype) or U[dtype] + FP32


def ref_tol(dtype: torch.dtype) -> float:
    """The bound between the fused path and the reference, and the reference's own against float64:
    4 u in bf16 / fp16, float32's where the reference computes its logits in float32 (float64 inputs)."""
    return 4 * U[dtype] if dtype in U else FP32


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()


def alibi(num_heads: int, head_dim: int):
    return pe.build("alibi", head_dim=head_dim, num_heads=num_heads)


def closed_form(enc, q, k, v, q_pos, k_pos, *, past: int, scale: float) -> torch.Tensor:
    """float64 softmax(q·k·scale − m_h·|q_pos − k_pos|) over keys 0 … past + i, then · v."""
    slopes = ka.alibi_of(enc).slopes().double()                                         # (H,)
    q, k, v = q.double(), k.double(), v.double()
    dist = (q_pos[..., :, None] - k_pos[..., None, :]).abs().double()                    # (…, Tq, Tk)
    dist = dist[:, None] if dist.dim() == 3 else dist                                    # (B | 1, 1 | ., Tq, Tk)
    logits = q @ k.transpose(-1, -2) * scale - slopes[:, None, None] * dist             # (B, H, Tq, Tk)
    Tq, Tk = q.shape[2], k.shape[2]
    future = torch.arange(Tk)[None, :] > past + torch.arange(Tq)[:, None]               # (Tq, Tk)
    return logits.masked_fill(future, float("-inf")).softmax(-1) @ v


def qkv(B, H, Tq, Tk, D, dtype=torch.float32, grad=False):
    def make(T):
        return torch.randn(B, H, T, D).to(dtype).requires_grad_(grad)
    return make(Tq), make(Tk), make(Tk)


def positions(kind: str, B: int, Tk: int) -> torch.Tensor:
    """Key positions; the queries' are the last Tq of them."""
    if kind == "arange":
        return torch.arange(Tk)
    if kind == "offset":                         # as after a long prefix: positions from 10^6
        return torch.arange(Tk) + 10 ** 6
    if kind == "jump":                           # batched, a 2^20 jump after the first key: a span the
        base = torch.arange(Tk) + (torch.arange(Tk) > 0) * 2 ** 20     # bias must not be rounded at
        return torch.stack([base + 17 * b for b in range(B)])          # (B, Tk)
    if kind == "segments":                       # BiPE: non-decreasing segment indices, repeated values
        g = torch.Generator().manual_seed(1)
        steps = (torch.rand(B, Tk, generator=g) < 0.3).long()
        return torch.cumsum(steps, dim=1) - steps[:, :1]               # (B, Tk)
    raise ValueError(kind)


#: shapes of the fused kernel's calls in the current test (``attend`` runs the reference below
#: ``ROW_ALIGN`` queries and where positions do not fit)
KERNEL_CALLS: list[tuple[int, ...]] = []


@pytest.fixture(autouse=True)
def _count_kernel_calls(monkeypatch):
    KERNEL_CALLS.clear()
    flash = ka._flash

    def counted(*args, **kwargs):
        KERNEL_CALLS.append(tuple(args[0].shape))
        return flash(*args, **kwargs)

    monkeypatch.setattr(ka, "_flash", counted)


def check(enc, q, k, v, k_pos, *, past, scale=None, dtype=torch.float32):
    D, Tq = q.shape[-1], q.shape[2]
    scale = D ** -0.5 if scale is None else scale
    q_pos = k_pos[..., past:]
    assert ka.applies(enc, q, k, mask=None, dropout_p=0.0) == (Tq >= ka.ROW_ALIGN)
    before = len(KERNEL_CALLS)
    out = ka.attend(enc, q, k, v, q_pos, k_pos, scale=scale, past=past)
    kernel = len(KERNEL_CALLS) > before
    assert kernel == (Tq >= ka.ROW_ALIGN)  # the kernel, or the reference for a few query rows
    exact = closed_form(enc, q, k, v, q_pos, k_pos, past=past, scale=scale)
    ref = chunked_attention(enc, q, k, v, q_pos, k_pos, past=past, scale=scale, chunk=32)
    assert out.shape == q.shape[:3] + v.shape[-1:] and out.dtype == v.dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, exact) <= (tol(dtype) if kernel else ref_tol(dtype)), rel_err(out, exact)
    assert rel_err(out, ref) <= ref_tol(dtype), rel_err(out, ref)
    return out


# --- forward against the closed form and the reference ---------------------------------------------------

@pytest.mark.parametrize("H, Tq, D", [(1, 7, 32), (3, 129, 48), (6, 1, 64), (12, 65, 96), (4, 129, 128),
                                      (3, 64, 256), (16, 129, 64), (5, 100, 80), (1, 70, 32)])
def test_shapes_match_closed_form_and_reference(H, Tq, D):
    q, k, v = qkv(2, H, Tq, Tq, D)
    check(alibi(H, D), q, k, v, positions("offset", 2, Tq), past=0)


@pytest.mark.parametrize("kind", ["arange", "offset", "jump", "segments"])
@pytest.mark.parametrize("past, Tq", [(0, 70), (5, 64), (70, 65), (23, 17), (30, 1)])
def test_positions_and_kv_cache(kind, past, Tq):
    """Positions from 0, from 10^6, batched with a 2^20 jump, BiPE-like repeated values; a cached prefix
    of ``past`` keys under the new queries (one call, or two merged when past ≥ ROW_ALIGN), and a few
    queries or a decode step (the reference)."""
    B, H, D = 2, 6, 32
    q, k, v = qkv(B, H, Tq, past + Tq, D)
    check(alibi(H, D), q, k, v, positions(kind, B, past + Tq), past=past)


def test_bipe_with_inter_alibi():
    B, H, D, T = 2, 4, 32, 80
    enc = pe.build("bipe", head_dim=D, num_heads=H, inter={"kind": "alibi"})
    assert ka.alibi_of(enc) is enc.inter
    q, k, v = qkv(B, H, T, T, D)
    check(enc, q, k, v, positions("segments", B, T), past=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("past, Tq", [(0, 65), (70, 64), (9, 33)])
def test_dtypes(dtype, past, Tq):
    B, H, D = 2, 3, 64
    q, k, v = qkv(B, H, Tq, past + Tq, D, dtype)
    check(alibi(H, D), q, k, v, positions("offset", B, past + Tq), past=past, dtype=dtype)


def test_non_power_of_two_heads_and_max_bias():
    H, D, T = 6, 48, 66
    enc = pe.build("alibi", head_dim=D, num_heads=H, max_bias=3.0)
    q, k, v = qkv(1, H, T, T, D)
    check(enc, q, k, v, positions("jump", 1, T), past=0)


def test_strided_and_expanded_inputs():
    """q, k, v as the decoder makes them, transpose(1, 2) views of (B, T, H, D); k and v also as
    expanded grouped heads (stride 0 over heads)."""
    B, H, T, D = 2, 4, 70, 48
    q, k, v = (torch.randn(B, T, H, D).transpose(1, 2) for _ in range(3))
    enc, pos = alibi(H, D), positions("offset", B, T)
    out = check(enc, q, k, v, pos, past=0)
    dense = ka.attend(enc, q.contiguous(), k.contiguous(), v.contiguous(), pos, pos, scale=D ** -0.5, past=0)
    torch.testing.assert_close(out, dense, rtol=0, atol=0)
    k1, v1 = (torch.randn(B, 1, T, D).expand(B, H, T, D) for _ in range(2))
    check(enc, q, k1, v1, pos, past=0)


def test_scale_other_than_inverse_sqrt():
    B, H, T, D = 1, 3, 64, 32
    q, k, v = qkv(B, H, T, T, D)
    check(alibi(H, D), q, k, v, positions("arange", B, T), past=0, scale=0.37)


def test_empty_queries():
    enc = alibi(2, 32)
    q, k, v = qkv(1, 2, 0, 5, 32)
    out = ka.attend(enc, q, k, v, torch.arange(5, 5), torch.arange(5), scale=0.2, past=5)
    assert out.shape == (1, 2, 0, 32)


# --- every element written ----------------------------------------------------------------------------

@pytest.mark.parametrize("past, Tq", [(0, 65), (75, 70)])
def test_poisoned_buffers(monkeypatch, past, Tq):
    """Every buffer the path allocates starts as NaN: the result must be the same, with no NaN."""
    B, H, D = 2, 3, 48
    q, k, v = qkv(B, H, Tq, past + Tq, D, grad=True)
    enc, pos = alibi(H, D), positions("jump", B, past + Tq)
    clean = ka.attend(enc, q, k, v, pos[..., past:], pos, scale=D ** -0.5, past=past)
    clean_grads = torch.autograd.grad(clean.square().sum(), (q, k, v))
    empty = torch.empty

    def nan_empty(*args, **kwargs):
        return empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(torch, "empty", nan_empty)
    out = ka.attend(enc, q, k, v, pos[..., past:], pos, scale=D ** -0.5, past=past)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    for got, want in zip((out, *grads), (clean, *clean_grads)):
        assert not got.isnan().any()
        torch.testing.assert_close(got, want, rtol=0, atol=0)


# --- gradients -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, past, Tq", [("offset", 0, 65), ("jump", 70, 64), ("jump", 19, 12),
                                            ("segments", 40, 1)])
def test_gradients_match_closed_form_and_reference(kind, past, Tq):
    B, H, D = 2, 6, 48
    q, k, v = qkv(B, H, Tq, past + Tq, D, grad=True)
    enc, k_pos = alibi(H, D), positions(kind, B, past + Tq)
    q_pos, scale = k_pos[..., past:], D ** -0.5
    grad_out = torch.randn(B, H, Tq, D)
    fast = torch.autograd.grad(ka.attend(enc, q, k, v, q_pos, k_pos, scale=scale, past=past), (q, k, v), grad_out)
    exact = torch.autograd.grad(closed_form(enc, q, k, v, q_pos, k_pos, past=past, scale=scale), (q, k, v),
                                grad_out.double())
    ref = torch.autograd.grad(chunked_attention(enc, q, k, v, q_pos, k_pos, past=past, scale=scale, chunk=16),
                              (q, k, v), grad_out)
    for name, f, e, r in zip("qkv", fast, exact, ref):
        assert f.dtype == torch.float32 and torch.isfinite(f).all()
        assert rel_err(f, e) <= FP32_GRAD, (name, rel_err(f, e))
        assert rel_err(f, r) <= FP32_GRAD, (name, rel_err(f, r))


@pytest.mark.parametrize("past, Tq", [(0, 65), (67, 64)])
def test_gradcheck_float64(past, Tq):
    B, H, D = 1, 2, 8
    q, k, v = qkv(B, H, Tq, past + Tq, D, torch.float64, grad=True)
    enc, k_pos = alibi(H, D), positions("jump", B, past + Tq)
    fn = lambda q, k, v: ka.attend(enc, q, k, v, k_pos[..., past:], k_pos, scale=0.4, past=past)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


def test_bfloat16_gradients_are_bfloat16_and_close():
    B, H, T, D = 1, 4, 70, 64
    q, k, v = qkv(B, H, T, T, D, torch.bfloat16, grad=True)
    enc, pos = alibi(H, D), positions("offset", B, T)
    grad_out = torch.randn(B, H, T, D)
    fast = torch.autograd.grad(ka.attend(enc, q, k, v, pos, pos, scale=0.125, past=0), (q, k, v),
                               grad_out.bfloat16())
    exact = torch.autograd.grad(closed_form(enc, q, k, v, pos, pos, past=0, scale=0.125), (q, k, v),
                                grad_out.bfloat16().double())
    for f, e in zip(fast, exact):  # float32 gradients rounded once to bf16
        assert f.dtype == torch.bfloat16
        assert rel_err(f, e) <= U[torch.bfloat16] + FP32_GRAD


def test_autocast_does_not_lower_the_kernel():
    B, H, T, D = 1, 4, 64, 32
    q, k, v = qkv(B, H, T, T, D)
    enc, pos = alibi(H, D), positions("jump", B, T)
    plain = ka.attend(enc, q, k, v, pos, pos, scale=D ** -0.5, past=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = ka.attend(enc, q, k, v, pos, pos, scale=D ** -0.5, past=0)
    torch.testing.assert_close(under, plain, rtol=0, atol=0)


# --- where it applies, and the fallback ----------------------------------------------------------------

def test_applies_only_where_it_computes_the_call():
    H, D = 4, 32
    q, k, _ = qkv(1, H, 64, 64, D)
    ok = dict(mask=None, dropout_p=0.0)
    assert not ka.applies(alibi(H, D), q[:, :, :ka.ROW_ALIGN - 1], k, **ok)                # decoding: reference
    assert ka.applies(alibi(H, D), q, k, **ok)
    assert ka.applies(alibi(H, D), q.bfloat16(), k.bfloat16(), **ok)
    assert ka.applies(pe.build("bipe", head_dim=D, num_heads=H, inter={"kind": "alibi"}), q, k, **ok)
    assert not ka.applies(pe.build("bipe", head_dim=D, num_heads=H), q, k, **ok)          # inter rope
    for kind in ("rope", "hope_hyperbolic", "nope"):
        assert not ka.applies(pe.build(kind, head_dim=D, num_heads=H), q, k, **ok)
    assert not ka.applies(alibi(H, D), q, k, mask=torch.ones(64, 64, dtype=torch.bool), dropout_p=0.0)
    assert not ka.applies(alibi(H, D), q, k, mask=None, dropout_p=0.1)
    assert not ka.applies(alibi(H + 1, D), q, k, **ok)                                       # other head count
    assert not ka.applies(alibi(H, D), q, k.double(), **ok)
    assert not ka.applies(alibi(H, D), q.to("meta"), k.to("meta"), **ok)
    with kernels.use_kernels(False):
        assert not ka.applies(alibi(H, D), q, k, **ok)

    class Shifted(ALiBi):  # a subclass with its own bias is not ALiBi to this kernel
        def bias(self, q_pos, k_pos):
            return super().bias(q_pos, k_pos) + 1.0

    assert not ka.applies(Shifted(alibi(H, D).params, head_dim=D, num_heads=H), q, k, **ok)


@pytest.mark.parametrize("case", ["key_after_query", "decreasing", "span"])
def test_positions_outside_the_fast_path_run_the_reference(case):
    """Where a visible key sits after its query (|Δ| ≠ Δ) or positions span ≥ 2^24, the result is the
    reference's (symmetric −m·|Δ|), not a wrong fast one."""
    B, H, T, D = 1, 3, 64, 32
    q, k, v = qkv(B, H, T, T, D)
    pos = {"key_after_query": torch.arange(T).flip(0),
           "decreasing": torch.arange(T).index_fill(0, torch.tensor([5]), 2),
           "span": torch.arange(T) * 2 ** 19}[case]
    out = ka.attend(alibi(H, D), q, k, v, pos, pos, scale=D ** -0.5, past=0)
    assert not KERNEL_CALLS
    exact = closed_form(alibi(H, D), q, k, v, pos, pos, past=0, scale=D ** -0.5)
    ref = chunked_attention(alibi(H, D), q, k, v, pos, pos, past=0, scale=D ** -0.5, chunk=ka.FALLBACK_CHUNK)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert rel_err(out, exact) <= FP32


def test_bad_input_names_the_field():
    enc = alibi(4, 32)
    q, k, v = qkv(1, 4, 5, 8, 32)
    pos = torch.arange(8)
    with pytest.raises(ValueError, match="past=2"):
        ka.attend(enc, q, k, v, pos[3:], pos, scale=0.1, past=2)
    with pytest.raises(ValueError, match="q_pos"):
        ka.attend(enc, q, k, v, pos[3:].float(), pos, scale=0.1, past=3)
    with pytest.raises(ValueError, match="k_pos"):
        ka.attend(enc, q, k, v, pos[3:], pos[1:], scale=0.1, past=3)
    with pytest.raises(ValueError, match="num_heads=3"):
        ka.attend(alibi(3, 32), q, k, v, pos[3:], pos, scale=0.1, past=3)
    with pytest.raises(ValueError, match="k, v"):
        ka.attend(enc, q, k[..., :16], v, pos[3:], pos, scale=0.1, past=3)
    with pytest.raises(ValueError, match="enc"):
        ka.attend(pe.build("rope", head_dim=32), q, k, v, pos[3:], pos, scale=0.1, past=3)


# --- the probe and the denormal guard ------------------------------------------------------------------

def test_probe_passes_here_and_catches_a_gemm_that_adds_the_channels_last(monkeypatch):
    """Simulate a BLAS that accumulates the two bias channels after q·k (they are moved to the end of
    the head dim before the real kernel): the probe must then refuse the fast path."""
    assert ka.exact_here(torch.float32, 48) and ka.exact_here(torch.bfloat16, 48)
    assert ka.applies(alibi(4, 48), *qkv(1, 4, 64, 64, 48)[:2], mask=None, dropout_p=0.0)
    flash, flash_backward = ka._flash, ka._flash_backward

    def last(x):
        return torch.cat([x[..., ka.EXTRA:], x[..., :ka.EXTRA]], dim=-1)

    def first(x):
        return torch.cat([x[..., -ka.EXTRA:], x[..., :-ka.EXTRA]], dim=-1)

    def late_flash(q, k, v, *args, **kwargs):
        out, lse = flash(last(q), last(k), last(v), *args, **kwargs)
        return first(out), lse

    def late_flash_backward(g, q, k, v, out, lse, *args, **kwargs):
        return tuple(first(t) for t in flash_backward(last(g), last(q), last(k), last(v), last(out), lse,
                                                      *args, **kwargs))

    monkeypatch.setattr(ka, "_flash", late_flash)
    monkeypatch.setattr(ka, "_flash_backward", late_flash_backward)
    monkeypatch.setattr(ka, "_EXACT", {})
    assert not ka.exact_here(torch.float32, 48)
    q, k, _ = qkv(1, 4, 64, 64, 48)
    assert not ka.applies(alibi(4, 48), q, k, mask=None, dropout_p=0.0)
    assert ka.exact_here(torch.float64, 48)  # float64 needs no probe


def test_flush_denormals_reaches_every_thread_and_restores(monkeypatch):
    if ka._omp_fesetenv() is None:
        pytest.skip("no glibc / OpenMP runtime to set the floating-point environment of the kernel's threads")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tiny = torch.full((1 << 16,), 1e-40)  # subnormal
        with ka.flush_denormals():
            assert (tiny * 1.0 == 0).all()    # both threads' halves flushed
        assert (tiny * 1.0 != 0).all()        # restored
        monkeypatch.setattr(ka, "FLUSH_DENORMALS", False)
        with ka.flush_denormals():
            assert (tiny * 1.0 != 0).all()
    finally:
        torch.set_num_threads(threads)


def test_flushing_changes_nothing_measurable(monkeypatch):
    """Steep slopes over a long row put many weights in the subnormal range: with and without the
    flush the results agree to float32 rounding."""
    B, H, T, D = 1, 4, 300, 32
    q, k, v = qkv(B, H, T, T, D, grad=True)
    enc, pos = pe.build("alibi", head_dim=D, num_heads=H, max_bias=1.0), positions("arange", B, T)
    results = []
    for flag in (True, False):
        monkeypatch.setattr(ka, "FLUSH_DENORMALS", flag)
        out = ka.attend(enc, q, k, v, pos, pos, scale=D ** -0.5, past=0)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    for flushed, kept in zip(*results):
        assert rel_err(flushed, kept) <= 1e-6


@pytest.mark.slow
def test_a_compiled_caller_runs_the_kernel_eagerly():
    """``attend`` is one graph break under ``torch.compile`` (it reads positions on the host): the
    compiled caller gets the same values and gradients."""
    B, H, T, D = 1, 4, 64, 32
    proj = torch.nn.Linear(H * D, H * D)
    enc, pos = alibi(H, D), positions("offset", B, T)

    def layer(x):
        q = proj(x).view(B, T, H, D).transpose(1, 2)
        return ka.attend(enc, q, q, q, pos, pos, scale=D ** -0.5, past=0)

    x = torch.randn(B, T, H * D, requires_grad=True)
    eager = layer(x)
    (eager_grad,) = torch.autograd.grad(eager.sum(), x)
    compiled = torch.compile(layer)(x)
    (compiled_grad,) = torch.autograd.grad(compiled.sum(), x)
    assert KERNEL_CALLS
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled_grad, eager_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_the_probe_does_not_depend_on_the_callers_grad_mode(mode, monkeypatch):
    """The first call in a process may come from evaluation (no_grad, inference_mode); the probe's
    backward must run anyway, or the verdict 'not exact here' would stick for the whole process."""
    monkeypatch.setattr(ka, "_EXACT", {})
    with mode():
        assert ka.exact_here(torch.float32, 48)


@pytest.mark.skipif(not (sys.platform == "linux" and platform.machine() == "x86_64"
                         and platform.libc_ver()[0] == "glibc"), reason="Linux x86-64 glibc only")
def test_flush_to_zero_finds_torchs_runtime_beside_another_packages(monkeypatch):
    """scikit-learn (pulled in by lm-eval) loads its own libgomp; the guard must still find torch's, the
    one the kernel's threads run on, instead of giving up on two runtimes."""
    pytest.importorskip("sklearn")
    maps = [line.split()[-1] for line in open("/proc/self/maps") if "gomp" in line]
    assert len(set(maps)) >= 2, "expected torch's and scikit-learn's libgomp to be loaded"
    monkeypatch.setattr(ka, "_OMP", [])
    assert ka._omp_fesetenv() is not None
