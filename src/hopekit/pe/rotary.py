"""Rotary machinery shared by the whole RoPE family: angles, cos/sin, the rotation, layouts.

Conventions (docs/conventions.md):

* **Half-split pairs**: pair i of a rotary slice of width r is (x_i, x_{i+r/2}), as in HF checkpoints.
  The interleaved layout (x_{2i}, x_{2i+1}) of Meta's original Llama code is reached through the
  permutations :func:`interleaved_to_half` / :func:`half_to_interleaved` at the boundary.
* **Sign**: a pair is rotated by +angle: (a, b) -> (a cos − b sin, b cos + a sin), so
  ⟨R(mθ)q, R(nθ)k⟩ depends on m − n only.
* **Partial rotary**: the first r = rotary_dim channels are rotated, the rest pass through untouched.
* **Precision**: angles are products of *integer* positions and float64 frequencies, evaluated in
  float64 with autocast off (float32 on devices without float64, e.g. MPS); only cos/sin are cast.
  float32 angles lose ~|angle|·6e-8 rad, i.e. 0.06 rad at position 10⁶ for θ = 1, which breaks the
  relative property at long offsets; float64 keeps cos/sin exact to float32 rounding at any position.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .base import PositionalEncoding, check_floating, check_positions, check_qk
from .schedules import LongRoPEParams, RopeParams, Spectrum, rope_inv_freq

__all__ = [
    "RotaryFeatures", "angles", "cos_sin", "apply_rotary", "interleaved_to_half", "half_to_interleaved",
    "RotaryEncoding", "LongRoPEEncoding",
]


class RotaryFeatures(NamedTuple):
    """cos and sin of shape ``(T, r/2)`` or ``(B, 1, T, r/2)`` (broadcasts over heads), float32."""

    cos: torch.Tensor
    sin: torch.Tensor


def _angle_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """angle[..., t, i] = positions[..., t] · inv_freq[i], in float64 (see the module docstring)."""
    dtype = _angle_dtype(positions.device)
    with torch.autocast(device_type=positions.device.type, enabled=False):
        return positions.to(dtype)[..., None] * inv_freq.to(device=positions.device, dtype=dtype)


def cos_sin(positions: torch.Tensor, spectrum: Spectrum, *, dtype: torch.dtype = torch.float32) -> RotaryFeatures:
    """cos and sin tables for integer ``positions`` ``(T,)`` or ``(B, T)``, scaled by ``attn_scale``."""
    return _features(angles(positions, spectrum.inv_freq), spectrum.attn_scale, dtype)


def _features(angle: torch.Tensor, scale: float, dtype: torch.dtype) -> RotaryFeatures:
    cos, sin = torch.cos(angle), torch.sin(angle)
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    cos, sin = cos.to(dtype), sin.to(dtype)
    if cos.dim() == 3:  # (B, T, r/2) -> (B, 1, T, r/2) to broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return RotaryFeatures(cos, sin)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the half-split pairs of the first ``2 * cos.shape[-1]`` channels of ``x`` ``(..., T, D)``.

    Pairs with angle 0 (cos = 1, sin = 0, unscaled) come out bit-identical; channels past the rotary
    dim are passed through. ``x`` must be floating point (``TypeError`` otherwise).
    """
    check_floating(x=x)
    half = cos.shape[-1]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:2 * half]
    out = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    if x.shape[-1] > 2 * half:
        out.append(x[..., 2 * half:])
    return torch.cat(out, dim=-1)


def _half_perm(rotary_dim: int, device: torch.device) -> torch.Tensor:
    # interleaved index order [0, 2, 4, ..., 1, 3, 5, ...] gathers pair members into the two halves
    return torch.cat([torch.arange(0, rotary_dim, 2), torch.arange(1, rotary_dim, 2)]).to(device)


def interleaved_to_half(x: torch.Tensor, rotary_dim: int | None = None) -> torch.Tensor:
    """Reorder the first ``rotary_dim`` channels from (a0 b0 a1 b1 …) to (a0 a1 … b0 b1 …)."""
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    perm = _half_perm(r, x.device)
    return torch.cat([x[..., :r][..., perm], x[..., r:]], dim=-1)


def half_to_interleaved(x: torch.Tensor, rotary_dim: int | None = None) -> torch.Tensor:
    """Inverse of :func:`interleaved_to_half`."""
    r = x.shape[-1] if rotary_dim is None else rotary_dim
    inverse = torch.argsort(_half_perm(r, x.device))
    return torch.cat([x[..., :r][..., inverse], x[..., r:]], dim=-1)


Schedule = Callable[[RopeParams, int, "int | None"], Spectrum]


class RotaryEncoding(PositionalEncoding):
    """Any member of the RoPE family: a schedule (the method) plus the shared rotation.

    ``features(positions, seq_len)`` makes the cos/sin tables once per forward; ``apply(x, features)``
    rotates q or k with them. ``rotate(q, k, q_pos, k_pos)`` does both for a one-off call. For
    length-dependent schedules (dynamic NTK, LongRoPE) ``seq_len`` defaults to max(position) + 1, the
    HF rule.
    """

    uses_rotate = True

    def __init__(self, params: RopeParams, *, schedule: Schedule, head_dim: int, num_heads: int = 1,
                 d_model: int | None = None):
        super().__init__(params, head_dim=head_dim, num_heads=num_heads, d_model=d_model)
        self.schedule = schedule
        self.rotary_dim = params.rotary_dim(head_dim)

    def spectrum(self, seq_len: int | None = None) -> Spectrum:
        """The method's frequencies at this length (float64, CPU). Length-independent spectra are
        cached; length-dependent ones are recomputed (r/2 values, once per forward) — a per-length
        cache would grow by one entry per decoding step."""
        if self.params.length_dependent:
            return self.schedule(self.params, self.rotary_dim, seq_len)
        if "spectrum" not in self._cache:
            self._cache["spectrum"] = self.schedule(self.params, self.rotary_dim, None)
        return self._cache["spectrum"]

    def _seq_len(self, positions: torch.Tensor, seq_len: int | None) -> int | None:
        if seq_len is None and self.params.length_dependent and positions.numel():
            seq_len = int(positions.max()) + 1
        return seq_len

    def features(self, positions: torch.Tensor, seq_len: int | None = None) -> RotaryFeatures:
        positions = check_positions(positions, "positions")
        return cos_sin(positions, self.spectrum(self._seq_len(positions, seq_len)))

    def apply(self, x: torch.Tensor, features: RotaryFeatures) -> torch.Tensor:
        """Rotate q or k with ``features``: :func:`apply_rotary`, on the fast path where one applies
        (:mod:`hopekit.kernels.rotary`; ``HOPEKIT_KERNELS=reference`` runs :func:`apply_rotary` itself)."""
        from ..kernels import rotary as kernels  # imported on first use: hopekit.pe imports torch alone

        return kernels.apply_rotary(x, features.cos, features.sin)

    def rotate(self, q, k, q_pos, k_pos, *, seq_len=None):
        check_qk(self, q, k)
        q_pos = check_positions(q_pos, "q_pos", q.shape[-2], batch=q.shape[0] if q.dim() == 4 else None)
        k_pos = check_positions(k_pos, "k_pos", k.shape[-2], batch=k.shape[0] if k.dim() == 4 else None)
        if seq_len is None and self.params.length_dependent:
            seq_len = max(self._seq_len(q_pos, None) or 0, self._seq_len(k_pos, None) or 0) or None
        return self.apply(q, self.features(q_pos, seq_len)), self.apply(k, self.features(k_pos, seq_len))


class LongRoPEEncoding(RotaryEncoding):
    """LongRoPE adds one thing to the rotary machinery: the n̂ prefix of un-interpolated positions."""

    params: LongRoPEParams

    @property
    def relative(self) -> bool:
        return self.params.start_tokens == 0

    def features(self, positions: torch.Tensor, seq_len: int | None = None) -> RotaryFeatures:
        positions = check_positions(positions, "positions")
        spectrum = self.spectrum(self._seq_len(positions, seq_len))
        angle = angles(positions, spectrum.inv_freq)
        if self.params.start_tokens:
            plain = angles(positions, rope_inv_freq(self.params.base, self.rotary_dim))
            angle = torch.where((positions < self.params.start_tokens)[..., None], plain, angle)
        return _features(angle, spectrum.attn_scale, torch.float32)
