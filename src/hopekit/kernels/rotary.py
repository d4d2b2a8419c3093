"""The rotary apply of the whole RoPE family, fused: one pass over q or k instead of seven.

:func:`apply_rotary` computes what :func:`hopekit.pe.rotary.apply_rotary` (the oracle) computes: the
half-split pairs of the first ``r = 2 * cos.shape[-1]`` channels of ``x`` ``(..., T, D)`` rotated by
+angle, channels past ``r`` passed through, the result in ``x``'s dtype, autograd through ``x``. The
arithmetic is float32 whatever ``x``'s dtype, with one rounding to that dtype at the end (the
reference multiplies in ``x``'s dtype, so bfloat16/float16 results differ from it by their rounding
and are closer to the float64 rotation). Pairs with angle 0 come out bit-identical, as in the
reference.

Where it runs:

* **CPU**, tensors of at least :data:`CPU_MIN_NUMEL` elements: an inductor C++ kernel
  (``torch.compile`` of :func:`rotation`, dynamic shapes: a new length, batch or head count does not
  recompile), one vectorised loop that reads ``x`` once and writes the output once, in ``x``'s own
  memory order (a ``transpose(1, 2)`` view of a ``(B, T, H, D)`` projection stays that layout).
  Smaller tensors run the reference, which is faster there per call. Compiling costs seconds once per
  process (importing dynamo and inductor, tracing; the C++ is cached on disk across processes), which
  a one-off call never earns back, so the reference also runs until it has rotated
  :data:`CPU_COMPILE_AFTER` elements in such calls (about what it rotates in the time of a first
  compile: a training run switches within its first steps, a one-off analysis never compiles). Set
  ``CPU_COMPILE_AFTER = 0`` to compile at the first call. Numbers: ``benchmarks/NOTES.md``.
* **CUDA**: the Triton kernel of :mod:`hopekit.kernels.triton_rotary` (any strides, any size).
* **Under** ``torch.compile``: the plain float32 arithmetic of :func:`rotation`, which the caller's
  compiler fuses with its neighbours.
* Everywhere else (kernels switched off with ``HOPEKIT_KERNELS=reference`` / ``use_kernels(False)``,
  float64, cos/sin that need a gradient, more than 4 dims with batched cos/sin, a compiler that
  fails, …): the reference.
"""

from __future__ import annotations

import types
import warnings
from typing import Callable

import torch

from . import enabled
from ..pe.base import check_floating
from ..pe.rotary import apply_rotary as reference

__all__ = ["apply_rotary", "rotation", "inverse_rotation", "CPU_MIN_NUMEL", "CPU_COMPILE_AFTER"]

#: elements of ``x`` from which the CPU path may run the compiled kernel: below it the reference is as
#: fast or faster per call (the compiled call has ~50 µs of fixed overhead; measured: benchmarks/NOTES.md)
CPU_MIN_NUMEL = 1 << 16
#: elements the reference rotates (in calls of CPU_MIN_NUMEL or more) before the first compile: the
#: reference's ~5 ns per element against a first compile of ~5 s (0: compile at the first such call)
CPU_COMPILE_AFTER = 1 << 30

_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation in float32 arithmetic (float64 for float64), rounded once to ``x``'s dtype: what every
    fast path computes. Eager, it is several passes over memory; traced by ``torch.compile``, one loop.
    """
    half = cos.shape[-1]
    acc = torch.promote_types(x.dtype, torch.float32)
    x1, x2 = x[..., :half].to(acc), x[..., half:2 * half].to(acc)
    cos, sin = cos.to(acc), sin.to(acc)
    out = [(x1 * cos - x2 * sin).to(x.dtype), (x2 * cos + x1 * sin).to(x.dtype)]
    if x.shape[-1] > 2 * half:
        out.append(x[..., 2 * half:])
    return torch.cat(out, dim=-1)


def inverse_rotation(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation by −angle (the backward of :func:`rotation`: the transpose of a rotation)."""
    return rotation(x, cos, -sin)


def _features_fit(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """Whether cos/sin are what the kernels take: float32, (T, r/2) or (B|1, 1, T, r/2), r <= D, no grad."""
    if cos.dtype != torch.float32 or sin.dtype != torch.float32 or cos.shape != sin.shape:
        return False
    if cos.device != x.device or sin.device != x.device or cos.requires_grad or sin.requires_grad:
        return False
    if x.dim() < 2 or x.shape[-1] < 2 * cos.shape[-1] or cos.shape[-1] < 1 or cos.shape[-2] != x.shape[-2]:
        return False
    if cos.dim() == 2:
        return True
    return cos.dim() == 4 and x.dim() == 4 and cos.shape[1] == 1 and cos.shape[0] in (1, x.shape[0])


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """:func:`hopekit.pe.rotary.apply_rotary` on the fastest path that applies (see the module docstring)."""
    check_floating(x=x)
    if not enabled() or x.dtype not in _FAST_DTYPES or not _features_fit(x, cos, sin):
        return reference(x, cos, sin)
    if _is_compiling():
        return rotation(x, cos, sin)
    if x.device.type == "cuda":
        triton_rotary = _triton()
        if triton_rotary is not None:
            return triton_rotary.apply_rotary(x, cos, sin)
    elif x.device.type == "cpu" and x.numel() >= CPU_MIN_NUMEL and not _cpu_broken and x.dim() <= 4:
        global _rented
        if _rented < CPU_COMPILE_AFTER:  # not yet worth a compile
            _rented += x.numel()
            return reference(x, cos, sin)
        if x.requires_grad and torch.is_grad_enabled():
            return _CpuRotation.apply(x, cos, sin, False)
        return _cpu_rotate(x, cos, sin, False)
    return reference(x, cos, sin)


def _is_compiling() -> bool:
    """Whether dynamo is tracing this call (torch >= 2.3 has it public)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    if is_compiling is None:  # pragma: no cover - torch 2.2
        from torch._dynamo import is_compiling
    return is_compiling()


def _autocast_on() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # pragma: no cover - torch < 2.4
        return torch.is_autocast_cpu_enabled()


# ---------------------------------------------------------------------------------------------------
# CUDA: Triton, imported on first use
# ---------------------------------------------------------------------------------------------------

_triton_module: list = []


def _triton():
    """:mod:`hopekit.kernels.triton_rotary`, or None where triton is not installed."""
    if not _triton_module:
        try:
            from . import triton_rotary
        except ImportError:
            triton_rotary = None
        _triton_module.append(triton_rotary)
    return _triton_module[0]


# ---------------------------------------------------------------------------------------------------
# CPU: inductor
# ---------------------------------------------------------------------------------------------------

_cpu_broken = False  # set when inductor fails to compile (e.g. no C++ compiler): the reference from then on
_rented = 0  # elements the reference has rotated in calls the kernel could have taken
_compiled: dict[tuple, Callable] = {}


class _CpuRotation(torch.autograd.Function):
    """The compiled rotation with its backward, the rotation by −angle (also compiled, also differentiable)."""

    @staticmethod
    def forward(ctx, x, cos, sin, inverse):
        ctx.save_for_backward(cos, sin)
        ctx.inverse = inverse
        return _cpu_rotate(x, cos, sin, inverse)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _CpuRotation.apply(grad, cos, sin, not ctx.inverse), None, None, None


def _cpu_rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Run the kernel compiled for this pattern of inputs (compiling it on first use).

    Each pattern (dtype, rank, batched cos/sin, partial rotary, direction, inference tensor) gets its own
    compiled function, so that patterns do not share dynamo's per-function recompile limit; within one,
    a new length, batch, head count or head dim reuses the kernel (dynamic shapes).
    """
    global _cpu_broken
    if x.stride(-1) != 1:
        x = x.contiguous()
    key = (x.dtype, x.dim(), cos.dim(), x.shape[-1] > 2 * cos.shape[-1], inverse, x.is_inference())
    fn = _compiled.get(key) or _compile(key)
    x = x.detach()  # the graph sees one state (no grad, no autocast): dynamo would recompile on each change
    try:
        if torch.is_grad_enabled() or _autocast_on():
            with torch.no_grad(), torch.autocast("cpu", enabled=False):
                return fn(x, cos, sin)
        return fn(x, cos, sin)
    except torch._dynamo.exc.BackendCompilerFailed as e:  # e.g. no working C++ compiler
        _cpu_broken = True
        warnings.warn(f"hopekit.kernels.rotary: inductor could not compile the CPU rotary kernel, using the "
                      f"reference from now on ({type(e).__name__}: {str(e).splitlines()[0][:200]})", RuntimeWarning)
        return _in_memory_order(x, cos, sin, inverse_rotation if inverse else rotation)


def _in_memory_order(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, fn: Callable) -> torch.Tensor:
    """``fn`` applied to ``x`` ``(..., T, D)`` (2 to 4 dims) viewed as ``(B, H, T, D)`` in memory order.

    A ``(B, T, H, D)`` buffer seen through ``transpose(1, 2)`` (the decoder's q and k) is rotated as the
    buffer it is, so the loop streams through memory and writes its output in the same layout.
    """
    shape = x.shape
    x = x.reshape((1,) * (4 - x.dim()) + tuple(shape))  # a view: adds leading 1-dims
    cos = cos if cos.dim() == 4 else cos[None, None]
    sin = sin if sin.dim() == 4 else sin[None, None]
    if x.stride(1) < x.stride(2):  # heads inside positions in memory
        out = fn(x.transpose(1, 2), cos.transpose(1, 2), sin.transpose(1, 2)).transpose(1, 2)
    else:
        out = fn(x, cos, sin)
    return out.reshape(shape)


def _kernel(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _in_memory_order(x, cos, sin, rotation)


def _kernel_inverse(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return _in_memory_order(x, cos, sin, inverse_rotation)


def _compile(key: tuple) -> Callable:
    # dynamo caches graphs on the code object: one copy of the template's code per pattern
    dtype, dim, cos_dim, partial, inverse, inference = key
    template = _kernel_inverse if inverse else _kernel
    name = (f"{template.__name__}_{str(dtype).removeprefix('torch.')}_{dim}d{'_batched' if cos_dim == 4 else ''}"
            f"{'_partial' if partial else ''}{'_inference' if inference else ''}")
    code = template.__code__.replace(co_name=name)
    compiled = torch.compile(types.FunctionType(code, template.__globals__, name), dynamic=True)
    _compiled[key] = compiled
    return compiled
