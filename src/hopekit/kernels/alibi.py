"""ALiBi attention in one fused causal attention call, with no bias tensor at all.

Under a causal mask every key a query sees is at or before it (k_pos ≤ q_pos), so ALiBi's bias is
−m_h·(q_pos − k_pos) = −m_h·q_pos + m_h·k_pos. The first term is one constant per query row, and
softmax does not change when a row is shifted by a constant; the bias therefore rides in the dot
product as two extra channels, put *first*::

    q' = [A_i, m_h, q·scale]        A_i = −m_h·(q_pos_i − a), rounded (one value per query row)
    k' = [1,   r_j, k]              r_j = k_pos_j − a, an exact integer (a: the first key's position)
    v' = [0,   0,   v]

and ``q'·k'`` = A_i + m_h·r_j + q·k·scale = −m_h·(q_pos_i − k_pos_j) + q·k·scale + (rounding of A_i).
The rounding of A_i is the same for every key of row i, so softmax removes it. The GEMM inside PyTorch's
CPU flash attention (MKL's sgemm on blocks of 32 to 256 query rows and 64 to 512 keys) accumulates the
channels in order with fused multiply-adds: its first step is A_i exactly, its second rounds
A_i + m_h·r_j once, at the size of the *relative* bias (small for the near keys that carry the weight),
not at the size of m_h·r_j. The logits are then as accurate as the reference's ``q·k·scale − m_h·|Δ|``
(the tests compare both with the float64 closed form), and one call of
``torch.ops.aten._scaled_dot_product_flash_attention_for_cpu`` (causal, blocked, with its log-sum-exp)
does the rest, forward and backward, with nothing of size (Tq, Tk).

That the GEMM accumulates in this order is a property of the BLAS, not a promise. MKL keeps it on
blocks whose rows and keys are multiples of 32, not on thin ones (1 to 3 rows or keys, i.e. decoding
and odd tails), so every call here has a multiple of :data:`ROW_ALIGN` rows and keys (padding, and
with a KV cache a split in two calls merged by log-sum-exp: :class:`_ChannelAttention`); fewer query
rows than that (decoding) run the reference, which costs one small matmul there. A short probe
(:func:`exact_here`) checks the order once per process and head dim; where it fails, :func:`applies`
says no and the ``pe/`` reference (:func:`hopekit.functional.chunked_attention`) runs. ALiBi's weights also
cross float32's subnormal range, which x86 computes on ~100× slower; the kernel runs with
flush-to-zero on its OpenMP threads (:func:`flush_denormals`).

Where the fast path runs (:func:`applies`): CPU tensors; float32, float64, bfloat16 and float16 (bf16 and
fp16 are computed in float32: on CPU, fp32 flash attention is as fast as bf16 forward and twice as fast
backward, and float32 keeps the bias exact); an ALiBi encoding (or BiPE with an ALiBi between segments);
at least :data:`ROW_ALIGN` query rows; no extra mask, no dropout. Positions must put every key a query
sees at or before it (true for the non-decreasing positions of a decoder, BiPE's segment indices
included) and span less than 2^24; where they do not, :func:`attend` runs the reference instead (the
same result; one host read of the positions decides).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from typing import Iterator

import torch
import torch.nn.functional as F

from . import enabled
from ..pe.alibi import ALiBi
from ..pe.bipe import BiPE

__all__ = ["applies", "attend", "exact_here"]

#: the bias channels in front of the head dim
EXTRA = 2
#: positions must span less than this: the relative positions r_j are exact in float32
MAX_SPAN = 2 ** 24
#: query rows per block when :func:`attend` falls back to the reference
FALLBACK_CHUNK = 256
#: every kernel call has a multiple of this many query rows and keys (:class:`_ChannelAttention`); calls
#: with fewer queries (decoding) run the reference, whose cost at that size is one small matmul
ROW_ALIGN = 64
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def alibi_of(enc) -> ALiBi | None:
    """The ALiBi encoding whose bias ``enc.bias`` returns (``enc`` itself, or BiPE's inter-segment
    encoding), or None. A subclass that overrides ``bias`` is not ALiBi here."""
    while isinstance(enc, BiPE) and type(enc).bias is BiPE.bias:
        enc = enc.inter
    if isinstance(enc, ALiBi) and type(enc).bias is ALiBi.bias and not enc.uses_scores:
        return enc
    return None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def applies(enc, q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None, dropout_p: float) -> bool:
    """Whether :func:`attend` computes this causal call with the fused kernel: kernels enabled, an ALiBi
    bias with as many slopes as q has heads, no ``mask``, no dropout, CPU tensors of one floating dtype,
    at least :data:`ROW_ALIGN` query rows, and the channel accumulation verified on this machine
    (:func:`exact_here`). (:func:`attend` still computes any call: through the reference otherwise.)"""
    if not enabled() or mask is not None or dropout_p != 0.0:
        return False
    alibi = alibi_of(enc)
    if alibi is None or not enc.uses_bias:
        return False
    if not (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)) or q.dim() != 4 or k.dim() != 4:
        return False
    if q.device.type != "cpu" or k.device != q.device or q.dtype not in _DTYPES or k.dtype != q.dtype:
        return False
    if alibi.num_heads != q.shape[1] or q.shape[2] < ROW_ALIGN:
        return False
    return exact_here(q.dtype, q.shape[-1])


@torch.compiler.disable  # a host read of the positions, ctypes and an opaque kernel: one clean graph break
def attend(enc, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
           *, scale: float, past: int) -> torch.Tensor:
    """Causal ALiBi attention, the result of ``chunked_attention(enc, q, k, v, q_pos, k_pos, past=past,
    scale=scale, ...)`` with no mask and no dropout.

    ``q`` ``(B, H, Tq, D)``; ``k``, ``v`` ``(B, H, Tk, D)`` with ``Tk = past + Tq`` (heads already
    repeated); query row i sees keys ``0 … past + i``. ``q_pos`` ``(Tq,)`` / ``(B, Tq)``, ``k_pos``
    ``(Tk,)`` / ``(B, Tk)``, integers. Returns ``(B, H, Tq, D)`` in v's dtype; differentiable in q, k, v.
    Memory: copies of q, k, v with two more channels, no ``(Tq, Tk)`` tensor.
    """
    alibi = alibi_of(enc)
    if alibi is None:
        raise ValueError(f"enc: expected an ALiBi encoding (or BiPE with inter alibi), got {type(enc).__name__}")
    _check_shapes(alibi, q, k, v, q_pos, k_pos, past)
    B, H, Tq, D = q.shape
    if Tq == 0:
        return v.new_empty((B, H, 0, v.shape[-1]))
    q_pos, k_pos = q_pos.to(q.device), k_pos.to(q.device)
    dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    if (Tq < ROW_ALIGN or q.device.type != "cpu" or dtype not in _DTYPES or not exact_here(dtype, D)
            or not _positions_fit(q_pos, k_pos, past)):
        return _reference(enc, q, k, v, q_pos, k_pos, scale=scale, past=past)
    ct = _compute_dtype(dtype)
    a = k_pos[..., :1]                                                            # (1,) | (B, 1): anchor
    rel_q, rel_k = (q_pos - a).to(ct), (k_pos - a).to(ct)                         # (Tq,) | (B, Tq) etc., exact
    slopes = alibi.slopes(q.device).to(ct)                                        # (H,): the reference's values
    q_chan = torch.stack(torch.broadcast_tensors(
        -slopes[:, None] * rel_q[..., None, :], slopes[:, None]), dim=-1)         # (H | B, H, Tq, 2): A_i, m_h
    k_chan = torch.stack(torch.broadcast_tensors(
        torch.ones_like(rel_k), rel_k), dim=-1)[..., None, :, :]                  # (1 | B, 1, Tk, 2): 1, r_j
    with torch.autocast(q.device.type, enabled=False):
        out = _ChannelAttention.apply(q, k, v, q_chan, k_chan, float(scale), int(past))   # (B, H, Tq, D), ct
    return out.to(v.dtype)


def _check_shapes(alibi: ALiBi, q, k, v, q_pos, k_pos, past) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"{name}: expected a (B, H, T, D) tensor, got {getattr(t, 'shape', type(t).__name__)}")
    B, H, Tq, D = q.shape
    if k.shape[:2] != (B, H) or v.shape[:3] != k.shape[:3] or k.shape[-1] != D:
        raise ValueError(f"k, v: expected (B={B}, H={H}, Tk, D={D}), got {tuple(k.shape)} and {tuple(v.shape)}")
    if H != alibi.num_heads:
        raise ValueError(f"q: {H} heads, but the ALiBi encoding has num_heads={alibi.num_heads}")
    if isinstance(past, bool) or not isinstance(past, int) or past < 0 or past + Tq != k.shape[2]:
        raise ValueError(f"past={past!r}: expected an int with past + Tq = Tk ({Tq} queries, {k.shape[2]} keys)")
    for name, pos, T in (("q_pos", q_pos, Tq), ("k_pos", k_pos, k.shape[2])):
        if (not isinstance(pos, torch.Tensor) or pos.dtype.is_floating_point or pos.is_complex()
                or pos.dim() not in (1, 2) or pos.shape[-1] != T or (pos.dim() == 2 and pos.shape[0] not in (1, B))):
            raise ValueError(f"{name}: expected integer positions ({T},) or ({B}, {T}), got "
                             f"{getattr(pos, 'dtype', type(pos).__name__)} {tuple(getattr(pos, 'shape', ()))}")


def _positions_fit(q_pos: torch.Tensor, k_pos: torch.Tensor, past: int) -> bool:
    """Whether every key a query sees is at or before it (then −m·|Δ| = −m·q_pos + m·k_pos) and the
    positions span less than :data:`MAX_SPAN`. One host read."""
    latest = k_pos.cummax(dim=-1).values[..., past:]                              # (…, Tq): latest key seen
    lo = torch.minimum(q_pos.amin(), k_pos.amin())
    hi = torch.maximum(q_pos.amax(), k_pos.amax())
    return bool(((q_pos >= latest).all() & (hi - lo < MAX_SPAN)).item())


def _reference(enc, q, k, v, q_pos, k_pos, *, scale, past) -> torch.Tensor:
    from ..functional import chunked_attention  # the pe/ reference; local import: functional imports the kernels

    return chunked_attention(enc, q, k, v, q_pos, k_pos, past=past, scale=scale, chunk=FALLBACK_CHUNK)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _widen(x: torch.Tensor, chan: torch.Tensor | None, ct: torch.dtype, scale: float = 1.0, *,
           rows: int, front: int = 0) -> torch.Tensor:
    """``(B, H, rows, EXTRA + D)`` contiguous in ``ct``: ``[chan, x·scale]`` (``chan`` None: zeros) at
    rows ``front … front + T``, zeros elsewhere. (The flash kernel runs ~15 % faster on this layout than
    on the (B, T, H, ·) one the decoder's projections come in.)"""
    B, H, T, D = x.shape
    out = torch.empty((B, H, rows, EXTRA + D), dtype=ct, device=x.device)
    out[:, :, :front].zero_()
    out[:, :, front + T:].zero_()
    part = out[:, :, front:front + T]
    if chan is None:
        part[..., :EXTRA].zero_()
    else:
        part[..., :EXTRA] = chan
    body = part[..., EXTRA:]
    if scale == 1.0:
        body.copy_(x)
    elif x.dtype == ct:
        torch.mul(x, scale, out=body)
    else:
        body.copy_(x).mul_(scale)
    return out


def _rows(t: torch.Tensor, rows: int, start: int, fill: float) -> torch.Tensor:
    """``t`` ``(B, H, T, …)`` placed at rows ``start …`` of a ``rows``-row tensor filled with ``fill``."""
    if start == 0 and t.shape[2] == rows:
        return t
    out = t.new_full((*t.shape[:2], rows, *t.shape[3:]), fill)
    out[:, :, start:start + t.shape[2]] = t
    return out


class _ChannelAttention(torch.autograd.Function):
    """Flash attention of the widened q', k', v' (module docstring); gradients for q, k, v.

    The GEMMs inside the kernel run on blocks of at most 256 query rows and 512 keys and on the tails;
    MKL accumulates K in order on those that are multiples of 32 but not on thin ones (1 to 3 rows or
    keys), so every call here has a multiple of :data:`ROW_ALIGN` rows and keys: padded at the end
    (causal: no real row sees a key after it) and, with a cache, split as keys ``0 … P`` (P = ``past``
    rounded down to :data:`ROW_ALIGN`, seen by every row: a plain call) and keys ``P … Tk`` (causal,
    with ``past − P`` empty rows in front so that start-aligned is end-aligned), merged by log-sum-exp.
    Padding rows and keys are zeros; their outputs are dropped and their gradients are zero."""

    @staticmethod
    def forward(ctx, q, k, v, q_chan, k_chan, scale: float, past: int):
        ct, Tq, Tk = q_chan.dtype, q.shape[2], k.shape[2]
        cut = past // ROW_ALIGN * ROW_ALIGN                                       # cached keys in a plain call
        front = past - cut                                                        # empty rows in the causal one
        n = _round_up(front + Tq, ROW_ALIGN)
        calls = [(_widen(q, q_chan, ct, scale, rows=n, front=front),
                  _widen(k[:, :, cut:], k_chan[..., cut:, :], ct, rows=n),
                  _widen(v[:, :, cut:], None, ct, rows=n), True, front)]
        if cut:
            m = _round_up(Tq, ROW_ALIGN)
            calls.append((_widen(q, q_chan, ct, scale, rows=m),
                          _widen(k[:, :, :cut], k_chan[..., :cut, :], ct, rows=cut),
                          _widen(v[:, :, :cut], None, ct, rows=cut), False, 0))
        with flush_denormals():
            results = [_flash(qx, kx, vx, 0.0, causal, scale=1.0) for qx, kx, vx, causal, _ in calls]
        outs = [o[:, :, s:s + Tq] for (o, _), (*_, s) in zip(results, calls)]   # (B, H, Tq, EXTRA + D)
        lses = [lse[:, :, s:s + Tq] for (_, lse), (*_, s) in zip(results, calls)]  # (B, H, Tq)
        if cut:
            lse = torch.logaddexp(*lses)
            out = outs[0] * (lses[0] - lse).exp()[..., None] + outs[1] * (lses[1] - lse).exp()[..., None]
        else:
            out, lse = outs[0], lses[0]
        ctx.save_for_backward(*(t for call in calls for t in call[:3]), out, lse)
        ctx.scale, ctx.layout, ctx.dtypes = scale, [call[3:] for call in calls], (q.dtype, k.dtype, v.dtype)
        ctx.keys, ctx.cut = Tk, cut
        return out[..., EXTRA:]

    @staticmethod
    def backward(ctx, grad):
        *saved, out, lse = ctx.saved_tensors
        Tq, Tk, cut = out.shape[2], ctx.keys, ctx.cut
        grad = F.pad(grad.to(out.dtype), (EXTRA, 0))                              # (B, H, Tq, EXTRA + D)
        parts = []
        with flush_denormals():  # each call with the merged output and log-sum-exp: its share of the softmax
            for i, (causal, start) in enumerate(ctx.layout):
                qx, kx, vx = saved[3 * i:3 * i + 3]
                rows = qx.shape[2]
                parts.append(_flash_backward(_rows(grad, rows, start, 0.0), qx, kx, vx, _rows(out, rows, start, 0.0),
                                             _rows(lse, rows, start, float("inf")), 0.0, causal, scale=1.0))
        (dq, dk, dv), start = parts[0], ctx.layout[0][1]                          # keys cut … Tk
        dq, dk, dv = dq[:, :, start:start + Tq], dk[:, :, :Tk - cut], dv[:, :, :Tk - cut]
        if cut:                                                                   # keys 0 … cut, every row
            dq_c, dk_c, dv_c = parts[1]
            dq, dk, dv = dq + dq_c[:, :, :Tq], torch.cat([dk_c, dk], dim=2), torch.cat([dv_c, dv], dim=2)
        q_dtype, k_dtype, v_dtype = ctx.dtypes
        return ((dq[..., EXTRA:] * ctx.scale).to(q_dtype), dk[..., EXTRA:].to(k_dtype), dv[..., EXTRA:].to(v_dtype),
                None, None, None, None)


_EXACT: dict[tuple[torch.dtype, int], bool] = {}


def exact_here(dtype: torch.dtype, head_dim: int) -> bool:
    """Whether this machine's flash attention keeps the bias channels exact for ``dtype`` (through its
    compute dtype) and ``head_dim``; probed once per process and key.

    The probe's positions jump by 2^20 after the first key. Anchored at the first key, every A_i and
    m·r_j is then ~2^20·m, and a GEMM that rounded m·r_j before adding A_i would be off by ~1e-2 in the
    logits; anchored at the second key, the same problem has small channels for every key that carries
    weight. Forward and backward must agree to 1e-4 (an exact GEMM agrees to ~1e-6), on calls with the
    block shapes long inputs use: 800 causal rows (blocks of 256 and 64 rows, 512 and 320 keys), 100 rows
    after a cache of 700, 600 rows after 200 (forward only). float64 needs no probe: at spans below 2^24
    its rounding is ≤ 2^-29·m."""
    ct = _compute_dtype(dtype)
    if ct == torch.float64:
        return True
    key = (ct, int(head_dim))
    if key not in _EXACT:  # the probe takes gradients: whatever grad mode the first caller is in
        with torch.inference_mode(False), torch.enable_grad():
            _EXACT[key] = _probe(ct, int(head_dim))
    return _EXACT[key]


def _probe(ct: torch.dtype, head_dim: int, T: int = 800) -> bool:
    g = torch.Generator().manual_seed(0)
    slopes = torch.tensor([2.0 ** -5.5, 2.0 ** -0.5], dtype=ct)                   # (2,): not powers of two
    pos = torch.arange(T) + (torch.arange(T) > 0) * 2 ** 20                       # (T,): a jump after key 0
    q, k, v, grad = (torch.randn(1, 2, T, head_dim, generator=g, dtype=ct) for _ in range(4))
    scale = head_dim ** -0.5

    def run(anchor, past):
        rel_q, rel_k = (pos[past:] - pos[anchor]).to(ct), (pos - pos[anchor]).to(ct)
        q_chan = torch.stack(torch.broadcast_tensors(-slopes[:, None] * rel_q, slopes[:, None]), dim=-1)[None]
        k_chan = torch.stack([torch.ones_like(rel_k), rel_k], dim=-1)[None, None]
        backward = past != T - 600
        leaves = [t.clone().requires_grad_(backward) for t in (q[:, :, past:], k, v)]
        with torch.autocast("cpu", enabled=False):
            out = _ChannelAttention.apply(*leaves, q_chan, k_chan, scale, past)
        if not backward:
            return [out]
        return [out.detach(), *torch.autograd.grad(out, leaves, grad[:, :, past:])]

    try:
        for past in (0, T - 100, T - 600):
            for got, want in zip(run(0, past), run(1, past)):
                if not (got - want).abs().max() <= 1e-4 * want.abs().max():
                    return False
    except RuntimeError:  # an op this build lacks: no fast path
        return False
    return True


# --- denormals -------------------------------------------------------------------------------------------
# ALiBi's weights fall through the float32 subnormal range (e^-87 … e^-104 of a row's largest weight) on a
# band of keys of every row: 16.6/m_h keys wide, for every row in the backward and every key block in the
# forward. x86 cores compute on subnormals ~100× slower, which makes the attention 2× (forward) and 3.5×
# (backward) slower than the same kernel without a bias. Flush-to-zero and denormals-are-zero (MXCSR
# bits 15 and 6) remove that: the weights below 2^-126 that they drop change no float32 sum of weights
# ≥ 1. ``torch.set_flush_denormal`` sets them on the calling thread only, not on the OpenMP threads
# that run the kernel; so on Linux x86-64 with glibc, :func:`flush_denormals` runs ``fesetenv`` once on
# every thread of the calling thread's OpenMP team (``GOMP_parallel``, the entry point of
# ``#pragma omp parallel``) before the kernel and restores the caller's environment on all of them after.
# Elsewhere it does nothing: the result is the same, only slower.

#: set False to leave the floating-point environment alone (same results, slower on x86)
FLUSH_DENORMALS = True
_MXCSR_FTZ_DAZ = 0x8040
_FENV_BYTES, _MXCSR_OFFSET = 32, 28          # glibc x86-64 fenv_t: x87 environment, then mxcsr
_OMP: list = []


def _omp_fesetenv():
    """``(GOMP_parallel, fesetenv, fegetenv)`` of this process's OpenMP runtime and libm, or None."""
    if not _OMP:
        found = None
        if sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64") and platform.libc_ver()[0] == "glibc":
            try:
                with open("/proc/self/maps") as maps:
                    libs = sorted({line.split()[-1] for line in maps
                                   if any(name in line for name in ("libgomp", "libiomp", "libomp"))})
                # torch's kernels run on the runtime in torch's own lib directory (other packages, e.g.
                # scikit-learn, may load theirs too); a build without one there: the only one loaded
                torch_lib = os.path.join(os.path.dirname(os.path.realpath(torch.__file__)), "lib") + os.sep
                own = [lib for lib in libs if os.path.realpath(lib).startswith(torch_lib)]
                libs = own if own else libs
                if len(libs) == 1:
                    omp, libm = ctypes.CDLL(libs[0]), ctypes.CDLL("libm.so.6")
                    omp.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
                    omp.GOMP_parallel.restype = None
                    libm.fegetenv.argtypes = [ctypes.c_void_p]
                    found = (omp.GOMP_parallel, ctypes.cast(libm.fesetenv, ctypes.c_void_p), libm.fegetenv)
            except (OSError, AttributeError):
                found = None
        _OMP.append(found)
    return _OMP[0]


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Flush-to-zero and denormals-are-zero on every thread of the calling thread's OpenMP team inside
    the block (module note above); a no-op where that cannot be done or :data:`FLUSH_DENORMALS` is False."""
    omp = _omp_fesetenv() if FLUSH_DENORMALS else None
    if omp is None:
        yield
        return
    gomp_parallel, fesetenv, fegetenv = omp
    saved = ctypes.create_string_buffer(_FENV_BYTES)
    fegetenv(saved)
    flushed = ctypes.create_string_buffer(saved.raw, _FENV_BYTES)
    mxcsr = int.from_bytes(saved.raw[_MXCSR_OFFSET:], "little") | _MXCSR_FTZ_DAZ
    flushed[_MXCSR_OFFSET:] = mxcsr.to_bytes(4, "little")
    gomp_parallel(fesetenv, ctypes.addressof(flushed), 0, 0)
    try:
        yield
    finally:
        gomp_parallel(fesetenv, ctypes.addressof(saved), 0, 0)
