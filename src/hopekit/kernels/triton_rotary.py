"""The rotary apply as a Triton kernel (CUDA), forward and backward, any strides, partial rotary.

:func:`apply_rotary` computes what :func:`hopekit.pe.rotary.apply_rotary` computes, in float32
arithmetic for float32, bfloat16 and float16 inputs, with one rounding to the input dtype: one program
rotates a block of positions of one (batch, head) row, reading ``x`` once and writing the output once
in ``x``'s own layout (a ``transpose(1, 2)`` view stays one). The backward is the same kernel rotating
the gradient by −angle, and is itself differentiable.

:mod:`hopekit.kernels.rotary` dispatches here for CUDA tensors. The tests run the kernel on CPU
tensors through Triton's interpreter: ``TRITON_INTERPRET=1`` must be set before this module is
imported (``triton.jit`` reads it when it decorates the kernel).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["apply_rotary"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BLOCK = 2048  # elements of one rotary half per program: positions x pairs


@triton.jit
def _rotary_kernel(X, COS, SIN, OUT, n_heads, seq, half, rest,
                   sxb, sxh, sxt, sxd, sob, soh, sot, sod, scb, sct,
                   INVERSE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    t_blocks = (seq + BLOCK_T - 1) // BLOCK_T      # (no tl.cdiv: the tests interpret this kernel alone)
    row = pid // t_blocks                          # (batch, head)
    b = (row // n_heads).to(tl.int64)
    h = (row % n_heads).to(tl.int64)
    t = (pid % t_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    i = tl.arange(0, BLOCK_H)
    t_in = t < seq
    mask = t_in[:, None] & (i < half)[None, :]
    t = t.to(tl.int64)
    x_row = X + b * sxb + h * sxh + t[:, None] * sxt
    o_row = OUT + b * sob + h * soh + t[:, None] * sot
    x1 = tl.load(x_row + i[None, :] * sxd, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + (i[None, :] + half) * sxd, mask=mask, other=0.0).to(tl.float32)
    at = b * scb + t[:, None] * sct + i[None, :]
    c = tl.load(COS + at, mask=mask, other=0.0)
    s = tl.load(SIN + at, mask=mask, other=0.0)
    if INVERSE:
        s = -s
    tl.store(o_row + i[None, :] * sod, (x1 * c - x2 * s).to(OUT.dtype.element_ty), mask=mask)
    tl.store(o_row + (i[None, :] + half) * sod, (x2 * c + x1 * s).to(OUT.dtype.element_ty), mask=mask)
    if BLOCK_R > 0:                                # channels past the rotary dim pass through
        j = tl.arange(0, BLOCK_R)
        keep = t_in[:, None] & (j < rest)[None, :]
        p = tl.load(x_row + (2 * half + j[None, :]) * sxd, mask=keep, other=0.0)
        tl.store(o_row + (2 * half + j[None, :]) * sod, p, mask=keep)


def _check(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype not in _DTYPES:
        raise TypeError(f"x: expected a float32, bfloat16 or float16 tensor, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 2 or x.dim() > 4:
        raise ValueError(f"x: expected shape (T, D), (H, T, D) or (B, H, T, D), got {tuple(x.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32:
            raise TypeError(f"{name}: expected a float32 tensor, got {getattr(t, 'dtype', type(t))}")
        if t.device != x.device:
            raise ValueError(f"{name}: on {t.device}, x on {x.device}")
    if cos.shape != sin.shape:
        raise ValueError(f"cos, sin: shapes differ, {tuple(cos.shape)} and {tuple(sin.shape)}")
    T, D = x.shape[-2:]
    batched = cos.dim() == 4 and x.dim() == 4 and cos.shape[1] == 1 and cos.shape[0] in (1, x.shape[0])
    if not (cos.dim() == 2 or batched) or cos.shape[-2] != T or not 1 <= 2 * cos.shape[-1] <= D:
        raise ValueError(f"cos: expected shape (T={T}, r/2) or (B={x.shape[0] if x.dim() == 4 else 'B'}, 1, T, r/2) "
                         f"with 2 <= r <= D={D}, got {tuple(cos.shape)}")


def _launch(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    out = torch.empty_like(x)  # x's layout where x is dense (a transposed view stays one), else contiguous
    lead = (1,) * (4 - x.dim())
    x4, o4 = x.reshape(lead + tuple(x.shape)), out.reshape(lead + tuple(out.shape))  # views: leading 1-dims
    cos, sin = cos.contiguous(), sin.contiguous()
    B, H, T, D = x4.shape
    half = cos.shape[-1]
    cos_b = cos.stride(0) if cos.dim() == 4 and cos.shape[0] > 1 else 0
    block_h = triton.next_power_of_2(half)
    block_t = min(triton.next_power_of_2(T), max(1, _BLOCK // block_h))
    rest = D - 2 * half
    block_r = triton.next_power_of_2(rest) if rest else 0
    grid = (B * H * triton.cdiv(T, block_t),)
    _rotary_kernel[grid](x4, cos, sin, o4, H, T, half, rest, *x4.stride(), *o4.stride(), cos_b, cos.stride(-2),
                         INVERSE=inverse, BLOCK_T=block_t, BLOCK_H=block_h, BLOCK_R=block_r)
    return out


class _TritonRotation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, cos, sin, inverse):
        ctx.save_for_backward(cos, sin)
        ctx.inverse = inverse
        return _launch(x, cos, sin, inverse)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _TritonRotation.apply(grad, cos, sin, not ctx.inverse), None, None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the half-split pairs of the first ``2 * cos.shape[-1]`` channels of ``x`` ``(..., T, D)``.

    ``x``: 2 to 4 dims, any strides, float32/bfloat16/float16; ``cos``, ``sin``: float32 ``(T, r/2)`` or
    ``(B, 1, T, r/2)``, on x's device. Differentiable in ``x`` (not in cos/sin).
    """
    _check(x, cos, sin)
    if x.requires_grad and torch.is_grad_enabled():
        return _TritonRotation.apply(x, cos, sin, False)
    return _launch(x, cos, sin, False)
