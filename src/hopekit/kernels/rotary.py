"""The rotary apply of the whole RoPE family, fused: one pass over q or k instead of seven.

:func:`apply_rotary` computes what :func:`hopekit.pe.rotary.apply_rotary` (the oracle) computes: the
half-split pairs of the first ``r = 2 * cos.shape[-1]`` channels of ``x`` ``(..., T, D)`` rotated by
+angle, channels past ``r`` passed through, the result in ``x``'s dtype, autograd through ``x``. The
arithmetic is float32 whatever ``x``'s dtype, with one rounding to that dtype at the end: float32
results are bit-identical to the reference (same products, same order, no fused multiply-add);
bfloat16/float16 results differ from it by their rounding (the reference multiplies in the activation
dtype) and are closer to the float64 rotation. Pairs with angle 0 come out bit-identical.

Where it runs:

* **CPU**, tensors of at least :data:`CPU_MIN_NUMEL` elements: a hand-vectorised C kernel (AVX-512 or
  AVX2/F16C intrinsics, OpenMP threads, the count of ``torch.get_num_threads()``), built with the
  system C compiler (``$CC``, else ``cc``) at its first use and cached in
  ``$HOPEKIT_CACHE/kernels`` (default ``~/.cache/hopekit/kernels``; under a second on a first build,
  milliseconds to load after), called through ctypes. It reads ``x`` once and writes each output row
  whole in ``x``'s own memory order (a ``transpose(1, 2)`` view of the decoder's ``(B, T, H, D)``
  projection stays that layout); outputs of :data:`STREAM_MIN_BYTES` or more are written with
  non-temporal stores, which skip reading the destination into the cache first (a plain copy pays
  that read; this is what brings the kernel to the copy floor, ``benchmarks/NOTES.md``). For a
  contiguous ``(B, H, T, D)`` input it walks blocks of positions head by head, so their cos/sin rows
  stay in L1. Without a working C compiler, or on a build without vector paths for the dtype (bfloat16
  and float16 need AVX2/F16C or AVX-512), the reference runs (with one warning when the build fails).
* **CUDA**: the Triton kernel of :mod:`hopekit.kernels.triton_rotary` (any strides, any size).
* **Under** ``torch.compile``: the plain float32 arithmetic of :func:`rotation`, which the caller's
  compiler fuses with its neighbours.
* Everywhere else (kernels switched off with ``HOPEKIT_KERNELS=reference`` / ``use_kernels(False)``,
  small tensors, float64, cos/sin that need a gradient or are not float32, more than 4 dims, …): the
  reference.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable

import torch

from . import enabled
from ..pe.base import check_floating
from ..pe.rotary import apply_rotary as reference

__all__ = ["apply_rotary", "rotation", "inverse_rotation", "CPU_MIN_NUMEL", "STREAM_MIN_BYTES"]

#: elements of ``x`` from which the CPU kernel runs: below it the reference's few small ops are as fast
#: (the kernel call costs ~15 µs of Python and ctypes; measured: benchmarks/NOTES.md)
CPU_MIN_NUMEL = 1 << 14
#: output bytes from which the CPU kernel writes with non-temporal stores (smaller outputs stay in cache
#: for the attention that reads them next)
STREAM_MIN_BYTES = 1 << 21

_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPE_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_MAX_D = 8192  # the C kernel's row buffer


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
    if x.device.type == "cuda" and x.dim() <= 4:
        triton_rotary = _triton()
        if triton_rotary is not None:
            return triton_rotary.apply_rotary(x, cos, sin)
    elif (x.device.type == "cpu" and x.numel() >= CPU_MIN_NUMEL and x.dim() <= 4 and x.shape[-1] <= _MAX_D
          and _native_takes(x.dtype)):
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
# CPU: the C kernel
# ---------------------------------------------------------------------------------------------------

class _CpuRotation(torch.autograd.Function):
    """The C kernel with its backward, the rotation by −angle (the same kernel, itself differentiable)."""

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
    """``x`` (2 to 4 dims, any strides) rotated by the C kernel into a new tensor laid out like ``x``."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if cos.stride(-1) != 1 or sin.stride() != cos.stride():
        cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty_like(x)  # x's strides where x is dense (a transposed view stays one), else contiguous
    shape, xs, os_ = tuple(x.shape), x.stride(), out.stride()
    if x.dim() < 4:  # as (B, H, T, D): leading 1-dims (their strides only order the walk: outermost)
        pad = 4 - x.dim()
        shape, xs, os_ = (1,) * pad + shape, (1 << 40,) * pad + xs, (1 << 40,) * pad + os_
    if cos.dim() == 2:  # cos/sin strides over (B, H, T); 0 where they broadcast
        sc = (0, 0, cos.stride(0))
    else:
        sc = (cos.stride(0) if cos.shape[0] > 1 else 0, 0, cos.stride(2))
    if xs[0] >= xs[1] >= xs[2] or xs[0] >= xs[2] >= xs[1]:  # walk x in memory order
        o = (0, 1, 2) if xs[1] >= xs[2] else (0, 2, 1)
    else:
        o = tuple(sorted(range(3), key=lambda d: -xs[d]))
    stream = out.numel() * out.element_size() >= STREAM_MIN_BYTES
    code = _lib[0](x.data_ptr(), cos.data_ptr(), sin.data_ptr(), out.data_ptr(), _DTYPE_CODE[x.dtype],
                   shape[o[0]], shape[o[1]], shape[o[2]], xs[o[0]], xs[o[1]], xs[o[2]],
                   os_[o[0]], os_[o[1]], os_[o[2]], sc[o[0]], sc[o[1]], sc[o[2]],
                   cos.shape[-1], shape[3], int(inverse), int(stream), torch.get_num_threads())
    if code:  # pragma: no cover - the arguments are checked before
        raise RuntimeError(f"hopekit.kernels.rotary: the C kernel refused its arguments (code {code})")
    return out


_lib: list = []  # [the loaded kernel or None], once tried
_BUILD_LOCK = threading.Lock()


def _native_takes(dtype: torch.dtype) -> bool:
    """Whether the C kernel is built here and has a vectorised path for ``dtype``."""
    fn = _native()
    return fn is not None and bool(_lib[1] >> _DTYPE_CODE[dtype] & 1)


def _native() -> Callable | None:
    """``hk_rotary`` from the C kernel, built on first use (None, with one warning, when that fails)."""
    if not _lib:
        with _BUILD_LOCK:  # one build per process, whichever thread asks first
            if not _lib:
                _lib.extend(_try_build())
    return _lib[0]


def _try_build() -> list:
    """``[hk_rotary, dtype bits]`` of the built kernel, or ``[None, 0]`` with one warning."""
    try:
        return list(_load(_build()))
    except (OSError, subprocess.SubprocessError) as e:
        last = (str(e).strip().splitlines() or [""])[-1][:300]
        warnings.warn(f"hopekit.kernels.rotary: could not build the CPU rotary kernel, the reference runs "
                      f"instead ({type(e).__name__}: {last})", RuntimeWarning, stacklevel=4)
        return [None, 0]


def _load(path: Path) -> tuple[Callable, int]:
    """``hk_rotary`` of the library at ``path`` and its dtype bits (``hk_rotary_caps``)."""
    lib = ctypes.CDLL(str(path))
    fn = lib.hk_rotary
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] + [ctypes.c_int64] * 14 + [ctypes.c_int] * 3
    fn.restype = ctypes.c_int
    lib.hk_rotary_caps.restype = ctypes.c_int
    return fn, lib.hk_rotary_caps()


#: flag sets tried in turn: the host's vector ISA and OpenMP threads, then without each
_FLAG_SETS = (["-march=native", "-fopenmp"], ["-fopenmp"], ["-march=native"], [])


def _build(flags: list[str] | None = None) -> Path:
    """The kernel's shared library, compiled once per source, compiler, flags and CPU, cached on disk."""
    cc = os.environ.get("CC", "cc")
    errors = []
    for extra in ([flags] if flags is not None else _FLAG_SETS):
        args = ["-O3", "-ffp-contract=off", "-std=c11", "-shared", "-fPIC", *extra]
        key = hashlib.sha256("\0".join([_C_SOURCE, cc, *args, _cpu_id()]).encode()).hexdigest()[:20]
        path = _cache_dir() / f"rotary-{key}.so"
        if path.exists():
            return path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writable = os.access(path.parent, os.W_OK)
        except OSError:
            writable = False
        if not writable:  # an unwritable cache: a private directory of this process (mkdtemp: mode 0700,
            # an unpredictable name; never a fixed shared path another user could fill first)
            path = Path(tempfile.mkdtemp(prefix="hopekit-kernels-")) / path.name
        source = path.with_suffix(f".{os.getpid()}.c")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        source.write_text(_C_SOURCE)
        try:
            run = subprocess.run([cc, *args, str(source), "-o", str(tmp)], capture_output=True, text=True, timeout=120)
            if run.returncode == 0:
                os.replace(tmp, path)  # atomic: concurrent builders agree
                return path
            errors.append(run.stderr.strip() or f"{cc} exited with {run.returncode}")
        finally:
            source.unlink(missing_ok=True)
            tmp.unlink(missing_ok=True)
    raise OSError(f"{cc} failed: {errors[-1] if errors else ''}")


def _cache_dir() -> Path:
    """``$HOPEKIT_CACHE/kernels`` (default ``$XDG_CACHE_HOME/hopekit`` or ``~/.cache/hopekit``)."""
    root = os.environ.get("HOPEKIT_CACHE")
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = str((Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "hopekit")
    return Path(root).expanduser() / "kernels"


def _cpu_id() -> str:
    """The CPU a ``-march=native`` build is for: a library built on another CPU of a shared cache is not reused."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


_C_SOURCE = r"""
/* hopekit rotary apply on CPU: one pass over x, float32 arithmetic, one rounding to x's dtype, rows
   written whole (non-temporal stores for large outputs: no read-for-ownership of the destination). */
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define MAX_D 8192
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define HK_AVX512 1
#elif defined(__AVX2__) && defined(__F16C__)
#define HK_AVX2 1
#endif

static inline float bf16_to_f32(uint16_t v) { uint32_t u = (uint32_t)v << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {  /* round to nearest even; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u | 0x400000u) >> 16);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
#if defined(HK_AVX512) || defined(HK_AVX2)
static inline float f16_to_f32(uint16_t v) { return _cvtsh_ss(v); }
static inline uint16_t f32_to_f16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
#elif defined(__FLT16_MAX__)
static inline float f16_to_f32(uint16_t v) { _Float16 h; memcpy(&h, &v, 2); return (float)h; }
static inline uint16_t f32_to_f16(float f) { _Float16 h = (_Float16)f; uint16_t v; memcpy(&v, &h, 2); return v; }
#define HK_F16_SCALAR 1
#endif

static inline float load1(const char* x, int64_t i, int dtype) {
    if (dtype == 0) return ((const float*)x)[i];
    uint16_t v = ((const uint16_t*)x)[i];
#if defined(HK_AVX512) || defined(HK_AVX2) || defined(HK_F16_SCALAR)
    if (dtype == 2) return f16_to_f32(v);
#endif
    return bf16_to_f32(v);
}
static inline void store1(char* row, int64_t i, float v, int dtype) {
    if (dtype == 0) { ((float*)row)[i] = v; return; }
#if defined(HK_AVX512) || defined(HK_AVX2) || defined(HK_F16_SCALAR)
    if (dtype == 2) { ((uint16_t*)row)[i] = f32_to_f16(v); return; }
#endif
    ((uint16_t*)row)[i] = f32_to_bf16(v);
}

#if defined(HK_AVX512)
#define W 16
static inline __m512 loadv(const char* x, int64_t i, __mmask16 m, int dtype) {
    if (dtype == 0) return _mm512_maskz_loadu_ps(m, (const float*)x + i);
    __m256i v = _mm256_maskz_loadu_epi16(m, (const uint16_t*)x + i);
    if (dtype == 2) return _mm512_cvtph_ps(v);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}
static inline void storev(char* row, int64_t i, __mmask16 m, __m512 v, int dtype) {
    if (dtype == 0) { _mm512_mask_storeu_ps((float*)row + i, m, v); return; }
    __m256i h;
    if (dtype == 2) h = _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else {
        __m512i u = _mm512_castps_si512(v);
        __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
        __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
        /* no NaN case: products and sums of bfloat16 values and float32 cos/sin are NaN only with a quiet
           payload from a bfloat16 operand (16 zero low bits) or the default NaN, which the rounding keeps */
        h = _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
    }
    _mm256_mask_storeu_epi16((uint16_t*)row + i, m, h);
}
static inline __attribute__((always_inline)) void rotate_row(
        const char* x, const float* c, const float* s, char* row, int64_t half, float sign, int dtype) {
    __m512 sg = _mm512_set1_ps(sign);
    for (int64_t i = 0; i < half; i += W) {
        __mmask16 m = half - i >= W ? (__mmask16)0xffff : (__mmask16)((1u << (half - i)) - 1u);
        __m512 a = loadv(x, i, m, dtype), b = loadv(x, half + i, m, dtype);
        __m512 cv = _mm512_maskz_loadu_ps(m, c + i), sv = _mm512_mul_ps(sg, _mm512_maskz_loadu_ps(m, s + i));
        storev(row, i, m, _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv)), dtype);
        storev(row, half + i, m, _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv)), dtype);
    }
}
static inline __m512i bf16_round(__m512 v) {  /* round to nearest even: the result in the high 16 bits */
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
}
static inline __m512i bf16_pack(__m512 lo, __m512 hi) {  /* 32 bfloat16: the high halves of lo's then hi's lanes */
    const __m512i odd = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37, 35, 33,
                                         31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    return _mm512_permutex2var_epi16(bf16_round(lo), odd, bf16_round(hi));
}
static inline void put64(char* dst, __m512i v, int stream) {
    if (stream) _mm512_stream_si512((__m512i*)dst, v); else _mm512_storeu_si512(dst, v);
}
/* out row written whole with 64-byte stores: needs half a multiple of 16 floats (32 halves) */
static inline __attribute__((always_inline)) void rotate_row_direct(
        const char* x, const float* c, const float* s, char* o, int64_t half, float sign, int dtype, int stream) {
    const __m512 sg = _mm512_set1_ps(sign);
    const int64_t step = dtype == 0 ? 16 : 32, esize = dtype == 0 ? 4 : 2;
    for (int64_t i = 0; i < half; i += step) {
        __m512 cv = _mm512_loadu_ps(c + i), sv = _mm512_mul_ps(sg, _mm512_loadu_ps(s + i));
        __m512 a = loadv(x, i, 0xffff, dtype), b = loadv(x, half + i, 0xffff, dtype);
        __m512 o1 = _mm512_sub_ps(_mm512_mul_ps(a, cv), _mm512_mul_ps(b, sv));
        __m512 o2 = _mm512_add_ps(_mm512_mul_ps(b, cv), _mm512_mul_ps(a, sv));
        if (dtype == 0) {
            put64(o + i * esize, _mm512_castps_si512(o1), stream);
            put64(o + (half + i) * esize, _mm512_castps_si512(o2), stream);
            continue;
        }
        __m512 c2 = _mm512_loadu_ps(c + i + 16), s2 = _mm512_mul_ps(sg, _mm512_loadu_ps(s + i + 16));
        __m512 a2 = loadv(x, i + 16, 0xffff, dtype), b2 = loadv(x, half + i + 16, 0xffff, dtype);
        __m512 p1 = _mm512_sub_ps(_mm512_mul_ps(a2, c2), _mm512_mul_ps(b2, s2));
        __m512 p2 = _mm512_add_ps(_mm512_mul_ps(b2, c2), _mm512_mul_ps(a2, s2));
        __m512i lo, hi;
        if (dtype == 2) {
            const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(o1, mode)), _mm512_cvtps_ph(p1, mode), 1);
            hi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(o2, mode)), _mm512_cvtps_ph(p2, mode), 1);
        } else {
            lo = bf16_pack(o1, p1);
            hi = bf16_pack(o2, p2);
        }
        put64(o + i * esize, lo, stream);
        put64(o + (half + i) * esize, hi, stream);
    }
}
/* count 16-bit rows (x at x + k*xstep bytes, out at o + k*ostep) sharing one cos/sin row of half = 32 or 64
   pairs, each written whole: the cos/sin vectors are loaded once for all of them */
static inline __attribute__((always_inline)) void rotate_group16(
        const char* x, int64_t xstep, const float* c, const float* s, char* o, int64_t ostep, int64_t count,
        int64_t half, float sign, int dtype, int stream) {
    const __m512 sg = _mm512_set1_ps(sign);
    const int chunks = (int)(half / 32);
    if (dtype == 1) {  /* bfloat16: even and odd elements as float32 lanes, one op each (shift, mask) */
        const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
        const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
        const __m512i high = _mm512_set1_epi32((int)0xffff0000u), one = _mm512_set1_epi32(1);
        const __m512i bias = _mm512_set1_epi32(0x7fff);
        __m512 ce[2], co[2], se[2], so[2];
        for (int j = 0; j < chunks; j++) {
            const __m512 c0 = _mm512_loadu_ps(c + 32 * j), c1 = _mm512_loadu_ps(c + 32 * j + 16);
            const __m512 s0 = _mm512_loadu_ps(s + 32 * j), s1 = _mm512_loadu_ps(s + 32 * j + 16);
            ce[j] = _mm512_permutex2var_ps(c0, even, c1);
            co[j] = _mm512_permutex2var_ps(c0, odd, c1);
            se[j] = _mm512_mul_ps(sg, _mm512_permutex2var_ps(s0, even, s1));
            so[j] = _mm512_mul_ps(sg, _mm512_permutex2var_ps(s0, odd, s1));
        }
#define HK_RNE(v) _mm512_add_epi32(_mm512_castps_si512(v), \
        _mm512_add_epi32(bias, _mm512_and_si512(_mm512_srli_epi32(_mm512_castps_si512(v), 16), one)))
#define HK_PACK(e, o) _mm512_mask_blend_epi16(0xaaaaaaaau, _mm512_srli_epi32(HK_RNE(e), 16), HK_RNE(o))
        for (int64_t k = 0; k < count; k++) {
            const char* xr = x + k * xstep;
            char* orow = o + k * ostep;
            for (int j = 0; j < chunks; j++) {
                const int64_t i = 32 * j;
                const __m512i va = _mm512_loadu_si512(xr + 2 * i), vb = _mm512_loadu_si512(xr + 2 * (half + i));
                const __m512 ae = _mm512_castsi512_ps(_mm512_slli_epi32(va, 16));
                const __m512 ao = _mm512_castsi512_ps(_mm512_and_si512(va, high));
                const __m512 be = _mm512_castsi512_ps(_mm512_slli_epi32(vb, 16));
                const __m512 bo = _mm512_castsi512_ps(_mm512_and_si512(vb, high));
                const __m512 o1e = _mm512_sub_ps(_mm512_mul_ps(ae, ce[j]), _mm512_mul_ps(be, se[j]));
                const __m512 o1o = _mm512_sub_ps(_mm512_mul_ps(ao, co[j]), _mm512_mul_ps(bo, so[j]));
                const __m512 o2e = _mm512_add_ps(_mm512_mul_ps(be, ce[j]), _mm512_mul_ps(ae, se[j]));
                const __m512 o2o = _mm512_add_ps(_mm512_mul_ps(bo, co[j]), _mm512_mul_ps(ao, so[j]));
                put64(orow + 2 * i, HK_PACK(o1e, o1o), stream);
                put64(orow + 2 * (half + i), HK_PACK(o2e, o2o), stream);
            }
        }
#undef HK_PACK
#undef HK_RNE
        return;
    }
    __m512 cv[4], sv[4];
    for (int j = 0; j < 2 * chunks; j++) {
        cv[j] = _mm512_loadu_ps(c + 16 * j);
        sv[j] = _mm512_mul_ps(sg, _mm512_loadu_ps(s + 16 * j));
    }
    for (int64_t k = 0; k < count; k++) {
        const char* xr = x + k * xstep;
        char* orow = o + k * ostep;
        for (int j = 0; j < chunks; j++) {
            const int64_t i = 32 * j;
            __m512 a = loadv(xr, i, 0xffff, dtype), b = loadv(xr, half + i, 0xffff, dtype);
            __m512 a2 = loadv(xr, i + 16, 0xffff, dtype), b2 = loadv(xr, half + i + 16, 0xffff, dtype);
            __m512 o1 = _mm512_sub_ps(_mm512_mul_ps(a, cv[2 * j]), _mm512_mul_ps(b, sv[2 * j]));
            __m512 o2 = _mm512_add_ps(_mm512_mul_ps(b, cv[2 * j]), _mm512_mul_ps(a, sv[2 * j]));
            __m512 p1 = _mm512_sub_ps(_mm512_mul_ps(a2, cv[2 * j + 1]), _mm512_mul_ps(b2, sv[2 * j + 1]));
            __m512 p2 = _mm512_add_ps(_mm512_mul_ps(b2, cv[2 * j + 1]), _mm512_mul_ps(a2, sv[2 * j + 1]));
            __m512i lo, hi;
            if (dtype == 2) {
                const int mode = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
                lo = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(o1, mode)),
                                        _mm512_cvtps_ph(p1, mode), 1);
                hi = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(o2, mode)),
                                        _mm512_cvtps_ph(p2, mode), 1);
            } else {
                lo = bf16_pack(o1, p1);
                hi = bf16_pack(o2, p2);
            }
            put64(orow + 2 * i, lo, stream);
            put64(orow + 2 * (half + i), hi, stream);
        }
    }
}
#define HK_DIRECT 1
#elif defined(HK_AVX2)
#define W 8
static inline __m256 loadv(const char* x, int64_t i, int dtype) {
    if (dtype == 0) return _mm256_loadu_ps((const float*)x + i);
    __m128i v = _mm_loadu_si128((const __m128i*)((const uint16_t*)x + i));
    if (dtype == 2) return _mm256_cvtph_ps(v);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
static inline void storev(char* row, int64_t i, __m256 v, int dtype) {
    if (dtype == 0) { _mm256_storeu_ps((float*)row + i, v); return; }
    __m128i h;
    if (dtype == 2) h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    else {
        __m256i u = _mm256_castps_si256(v);
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
        __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        r = _mm256_blendv_epi8(r, _mm256_or_si256(u, _mm256_set1_epi32(0x400000)), nan);
        r = _mm256_srli_epi32(r, 16);
        h = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    }
    _mm_storeu_si128((__m128i*)((uint16_t*)row + i), h);
}
static inline __attribute__((always_inline)) void rotate_row(
        const char* x, const float* c, const float* s, char* row, int64_t half, float sign, int dtype) {
    __m256 sg = _mm256_set1_ps(sign);
    int64_t i = 0;
    for (; i + W <= half; i += W) {
        __m256 a = loadv(x, i, dtype), b = loadv(x, half + i, dtype);
        __m256 cv = _mm256_loadu_ps(c + i), sv = _mm256_mul_ps(sg, _mm256_loadu_ps(s + i));
        storev(row, i, _mm256_sub_ps(_mm256_mul_ps(a, cv), _mm256_mul_ps(b, sv)), dtype);
        storev(row, half + i, _mm256_add_ps(_mm256_mul_ps(b, cv), _mm256_mul_ps(a, sv)), dtype);
    }
    for (; i < half; i++) {
        float a = load1(x, i, dtype), b = load1(x, half + i, dtype), ci = c[i], si = sign * s[i];
        store1(row, i, a * ci - b * si, dtype);
        store1(row, half + i, b * ci + a * si, dtype);
    }
}
#else
static inline __attribute__((always_inline)) void rotate_row(
        const char* x, const float* c, const float* s, char* row, int64_t half, float sign, int dtype) {
    for (int64_t i = 0; i < half; i++) {
        float a = load1(x, i, dtype), b = load1(x, half + i, dtype), ci = c[i], si = sign * s[i];
        store1(row, i, a * ci - b * si, dtype);
        store1(row, half + i, b * ci + a * si, dtype);
    }
}
#endif

/* dst <- src, one row; non-temporal 16-byte stores when asked and aligned */
static inline void put_row(char* dst, const char* src, int64_t bytes, int stream) {
#if defined(HK_AVX512)
    if (stream && ((uintptr_t)dst & 63) == 0 && (bytes & 63) == 0) {
        for (int64_t i = 0; i < bytes; i += 64)
            _mm512_stream_si512((__m512i*)(dst + i), _mm512_load_si512((const __m512i*)(src + i)));
        return;
    }
#endif
#if defined(__SSE2__)
    if (stream && ((uintptr_t)dst & 15) == 0 && (bytes & 15) == 0) {
        for (int64_t i = 0; i < bytes; i += 16)
            _mm_stream_si128((__m128i*)(dst + i), _mm_load_si128((const __m128i*)(src + i)));
        return;
    }
#endif
    memcpy(dst, src, (size_t)bytes);
}

/* one row: rotate x's row into buf, pass the rest through, write buf to out's row */
static inline __attribute__((always_inline)) void one_row(
        const char* xr, const float* c, const float* s, char* orow, char* buf, const int dtype,
        int64_t half, int64_t d, float sign, int stream) {
    const int64_t esize = dtype == 0 ? 4 : 2;
#if defined(HK_DIRECT)
    if (d == 2 * half && half % (dtype == 0 ? 16 : 32) == 0 && (!stream || ((uintptr_t)orow & 63) == 0)) {
        rotate_row_direct(xr, c, s, orow, half, sign, dtype, stream);
        return;
    }
#endif
    rotate_row(xr, c, s, buf, half, sign, dtype);
    if (d > 2 * half) memcpy(buf + 2 * half * esize, xr + 2 * half * esize, (size_t)((d - 2 * half) * esize));
    put_row(orow, buf, d * esize, stream);
}

#define TILE 32  /* rows of i2 that share a pass over i1 when cos/sin do not change along i1 */

/* Units [start, stop) of the walk: rows in memory order (i0, i1, i2), or, when cos/sin are constant along
   i1 (heads outside positions, the contiguous (B, H, T, D) layout), tiles (i0, block of i2) each walked
   i1-outer so that a tile's cos/sin rows stay in L1 across the heads. */
static inline __attribute__((always_inline)) void walk(
        const void* x, const float* cos, const float* sin, void* out, const int dtype, int tiled,
        int64_t start, int64_t stop, int64_t n1, int64_t n2, int64_t sx0, int64_t sx1, int64_t sx2,
        int64_t so0, int64_t so1, int64_t so2, int64_t sc0, int64_t sc1, int64_t sc2,
        int64_t half, int64_t d, float sign, int stream) {
    const int64_t esize = dtype == 0 ? 4 : 2;
    _Alignas(64) char buf[MAX_D * 4];
#if defined(HK_DIRECT)
    /* 16-bit rows of 32 or 64 pairs, full-width rotary, every row 64-byte aligned: the rows of one position
       (its heads) share cos/sin vectors held in registers */
    const int group = dtype != 0 && d == 2 * half && (half == 32 || half == 64) &&
        (!stream || (((uintptr_t)out | (uintptr_t)(so0 * esize) | (uintptr_t)(so1 * esize)
                      | (uintptr_t)(so2 * esize)) & 63) == 0);
    if (group && tiled) {  /* (i0, t-tile, t, heads) */
        const int64_t tiles = (n2 + TILE - 1) / TILE;
        for (int64_t u = start; u < stop; u++) {
            const int64_t i0 = u / tiles, lo = (u % tiles) * TILE, hi = lo + TILE < n2 ? lo + TILE : n2;
            for (int64_t i2 = lo; i2 < hi; i2++) {
                const int64_t at = i0 * sc0 + i2 * sc2;
                rotate_group16((const char*)x + (i0 * sx0 + i2 * sx2) * esize, sx1 * esize, cos + at, sin + at,
                               (char*)out + (i0 * so0 + i2 * so2) * esize, so1 * esize, n1, half, sign, dtype, stream);
            }
        }
        return;
    }
    if (group && sc2 == 0) {  /* runs of i2 (the heads) share a cos/sin row */
        int64_t i2 = start % n2, i1 = (start / n2) % n1, i0 = start / (n2 * n1);
        for (int64_t r = start; r < stop;) {
            const int64_t run = n2 - i2 < stop - r ? n2 - i2 : stop - r;
            const int64_t at = i0 * sc0 + i1 * sc1;
            rotate_group16((const char*)x + (i0 * sx0 + i1 * sx1 + i2 * sx2) * esize, sx2 * esize, cos + at, sin + at,
                           (char*)out + (i0 * so0 + i1 * so1 + i2 * so2) * esize, so2 * esize, run, half, sign,
                           dtype, stream);
            r += run;
            i2 += run;
            if (i2 == n2) { i2 = 0; if (++i1 == n1) { i1 = 0; i0++; } }
        }
        return;
    }
#endif
    if (tiled) {
        const int64_t tiles = (n2 + TILE - 1) / TILE;
        for (int64_t u = start; u < stop; u++) {
            const int64_t i0 = u / tiles, lo = (u % tiles) * TILE, hi = lo + TILE < n2 ? lo + TILE : n2;
            for (int64_t i1 = 0; i1 < n1; i1++)
                for (int64_t i2 = lo; i2 < hi; i2++) {
                    const int64_t at = i0 * sc0 + i2 * sc2;
                    one_row((const char*)x + (i0 * sx0 + i1 * sx1 + i2 * sx2) * esize, cos + at, sin + at,
                            (char*)out + (i0 * so0 + i1 * so1 + i2 * so2) * esize, buf, dtype, half, d, sign, stream);
                }
        }
        return;
    }
    int64_t i2 = start % n2, i1 = (start / n2) % n1, i0 = start / (n2 * n1);
    for (int64_t r = start; r < stop; r++) {
        const int64_t at = i0 * sc0 + i1 * sc1 + i2 * sc2;
        one_row((const char*)x + (i0 * sx0 + i1 * sx1 + i2 * sx2) * esize, cos + at, sin + at,
                (char*)out + (i0 * so0 + i1 * so1 + i2 * so2) * esize, buf, dtype, half, d, sign, stream);
        if (++i2 == n2) { i2 = 0; if (++i1 == n1) { i1 = 0; i0++; } }
    }
}

/* Bit k set: dtype k (0 float32, 1 bfloat16, 2 float16) has a vectorised path in this build. */
int hk_rotary_caps(void) {
#if defined(HK_AVX512) || defined(HK_AVX2)
    return 7;
#else
    return 1;
#endif
}

/* x, out: (n0, n1, n2, d), element strides sx*, so* (the last is 1); the cos/sin row of (i0, i1, i2) (half
   floats, contiguous) starts at i0*sc0 + i1*sc1 + i2*sc2. dtype: 0 float32, 1 bfloat16, 2 float16.
   inverse: rotate by -angle. stream: non-temporal stores. Returns 0, or 1 for arguments it does not take. */
int hk_rotary(const void* x, const float* cos, const float* sin, void* out, int dtype,
              int64_t n0, int64_t n1, int64_t n2, int64_t sx0, int64_t sx1, int64_t sx2,
              int64_t so0, int64_t so1, int64_t so2, int64_t sc0, int64_t sc1, int64_t sc2,
              int64_t half, int64_t d, int inverse, int stream, int threads) {
    if (d > MAX_D || 2 * half > d || dtype < 0 || dtype > 2) return 1;
#if !defined(HK_AVX512) && !defined(HK_AVX2) && !defined(HK_F16_SCALAR)
    if (dtype == 2) return 1;
#endif
    const int tiled = sc1 == 0 && sc2 != 0 && n1 > 1 && n2 > TILE;
    const int64_t units = tiled ? n0 * ((n2 + TILE - 1) / TILE) : n0 * n1 * n2;
    const float sign = inverse ? -1.0f : 1.0f;
    if (units * (tiled ? TILE * n1 : 1) < 64 * (int64_t)threads) threads = 1;
#pragma omp parallel num_threads(threads)
    {
        int nt = 1, id = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads(); id = omp_get_thread_num();
#endif
        const int64_t start = units * id / nt, stop = units * (id + 1) / nt;
#define HK_WALK(DT) walk(x, cos, sin, out, DT, tiled, start, stop, n1, n2, sx0, sx1, sx2, so0, so1, so2, \
                         sc0, sc1, sc2, half, d, sign, stream)
        if (dtype == 0) HK_WALK(0);
        else if (dtype == 1) HK_WALK(1);
        else HK_WALK(2);
#undef HK_WALK
#if defined(__SSE2__)
        if (stream) _mm_sfence();
#endif
    }
    return 0;
}
"""
