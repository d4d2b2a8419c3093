"""Frequency schedules of the RoPE family: **the schedule is the method**.

Each method is one frozen parameter dataclass plus one pure function

    schedule(params, rotary_dim, seq_len) -> Spectrum(inv_freq, attn_scale)

with ``inv_freq`` a float64 tensor of ``rotary_dim // 2`` per-pair frequencies (pair i rotates channels
i and i + rotary_dim/2, the half-split layout) and ``attn_scale`` the factor applied to cos and sin (so
logits scale by its square, as in Hugging Face). A **zero frequency means "not rotated"**: that is how
hope_highfreq switches pairs off, with no special case in the rotation code.

Notation (docs/conventions.md): ``base`` b, ``inv_freq`` θ_i = b^(−2i/r) with r the rotary dim,
``train_len`` L (the pre-training length), ``factor`` s = L′/L, ``rescale`` λ_i (LongRoPE).

Adding a RoPE variant = one dataclass + one function here + one line in ``hopekit.pe.REGISTRY`` + one
test.
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import torch

from .base import Params, check_bool, check_choice, check_int, check_real

#: upper bound on cos/sin multipliers (attention factors, mscale): beyond it float32 logits overflow
MAX_MULTIPLIER = 1e3

__all__ = [
    "Spectrum",
    "RopeParams", "LinearParams", "NTKParams", "DynamicNTKParams", "YarnParams", "Llama3Params",
    "LongRoPEParams", "HighFreqParams",
    "rope", "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope", "hope_highfreq",
    "rope_inv_freq", "yarn_get_mscale",
]


@dataclasses.dataclass(frozen=True)
class Spectrum:
    """Per-pair frequencies (float64, shape ``(rotary_dim // 2,)``) and the cos/sin scale."""

    inv_freq: torch.Tensor
    attn_scale: float = 1.0


def rope_inv_freq(base: float, rotary_dim: int) -> torch.Tensor:
    """θ_i = base^(−2i/r), i = 0 … r/2 − 1, in float64."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return 1.0 / (float(base) ** exponent)


def _check_factor(p: Params) -> None:
    check_real(p, "factor", low=1.0)


def _check_train_len(p: Params) -> None:
    check_int(p, "train_len", low=1)


# --------------------------------------------------------------------------------------------------
# One section per method: its parameter dataclass, then its schedule, a pure function
# (params, rotary_dim, seq_len) -> Spectrum
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeParams(Params):
    """RoPE (Su et al. 2021). θ_i = base^(−2i/r) over the rotary dim r = int(head_dim·rotary_fraction).

    ``rotary_fraction`` < 1 is partial rotary (GPT-NeoX ``rotary_pct``, HF ``partial_rotary_factor``):
    the first r channels of each head are rotated (half-split within them), the rest pass through.
    """

    base: float = 10000.0
    rotary_fraction: float = 1.0

    #: whether the spectrum depends on the current sequence length (dynamic NTK, LongRoPE)
    length_dependent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_real(self, "base", low=1.0, low_open=True)
        check_real(self, "rotary_fraction", low=0.0, high=1.0, low_open=True)

    def rotary_dim(self, head_dim: int) -> int:
        return int(head_dim * self.rotary_fraction)

    def validate_dims(self, head_dim: int, num_heads: int) -> None:
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim}: rotary encodings need an even head dim")
        r = self.rotary_dim(head_dim)
        if r < 2 or r % 2:
            raise ValueError(
                f"{type(self).__name__}.rotary_fraction={self.rotary_fraction!r}: gives rotary dim "
                f"int({head_dim}*{self.rotary_fraction})={r}, which must be even and >= 2")


def rope(p: RopeParams, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    return Spectrum(rope_inv_freq(p.base, rotary_dim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearParams(RopeParams):
    """Position Interpolation (Chen et al. 2023): θ_i / s, i.e. positions divided by ``factor``."""

    factor: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_factor(self)


def linear(p: LinearParams, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    return Spectrum(rope_inv_freq(p.base, rotary_dim) / p.factor)


@dataclasses.dataclass(frozen=True, kw_only=True)
class NTKParams(RopeParams):
    """NTK-aware scaling (bloc97 2023): base′ = base·s^(r/(r−2)), so λ_0 = 1 and λ_{r/2−1} = s."""

    factor: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_factor(self)

    def validate_dims(self, head_dim: int, num_heads: int) -> None:
        super().validate_dims(head_dim, num_heads)
        r = self.rotary_dim(head_dim)
        if r <= 2:
            raise ValueError(f"head_dim={head_dim}: NTK scaling needs a rotary dim > 2 (exponent r/(r-2))")
        if math.log(self.base) + r / (r - 2) * math.log(self.factor) >= math.log(1e300):
            raise ValueError(f"{type(self).__name__}.factor={self.factor!r}: the scaled base "
                             f"base·factor^(r/(r−2)) overflows float64")


def _ntk_base(base: float, factor: float, rotary_dim: int) -> float:
    return base * factor ** (rotary_dim / (rotary_dim - 2))


def ntk(p: NTKParams, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    return Spectrum(rope_inv_freq(_ntk_base(p.base, p.factor, rotary_dim), rotary_dim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DynamicNTKParams(NTKParams):
    """Dynamic NTK (emozilla 2023): at length ℓ = max(seq_len, L), base′ = b·(s·ℓ/L − (s−1))^(r/(r−2)).

    s = ``factor`` as in transformers' ``dynamic``. Equals RoPE for ℓ ≤ L. With ``factor`` 1 the
    effective NTK factor is ℓ/L, so at every length ℓ it equals static NTK with factor ℓ/L (the
    Dynamic-NTK the YaRN and LongRoPE papers compare against); with ``factor`` s it is s·ℓ/L − (s − 1),
    which at ℓ = s·L is s² − s + 1, not s. The length is an argument; nothing is mutated.
    """

    train_len: int
    length_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_train_len(self)


def dynamic_ntk(p: DynamicNTKParams, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    length = max(seq_len or p.train_len, p.train_len)
    # = s·ℓ/L − (s − 1) (HF's form), written so that it is exactly 1 at ℓ = L for any s
    effective = 1.0 + p.factor * (length - p.train_len) / p.train_len
    return Spectrum(rope_inv_freq(_ntk_base(p.base, effective, rotary_dim), rotary_dim))


@dataclasses.dataclass(frozen=True, kw_only=True)
class YarnParams(RopeParams):
    """YaRN (Peng et al. 2023) as in the reference code and HF: a ramp on the pair index.

    Pairs that turn more than ``beta_fast`` times within ``train_len`` keep θ_i, pairs turning fewer than
    ``beta_slow`` times get θ_i/s, with a linear ramp in between; cos/sin scale by
    ``attention_factor`` (default 0.1·ln s + 1, or the DeepSeek ``mscale``/``mscale_all_dim`` ratio).
    ``truncate=False`` (gpt-oss) drops the floor/ceil of the ramp ends.
    """

    factor: float
    train_len: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_factor(self)
        _check_train_len(self)
        check_real(self, "beta_slow", low=0.0, low_open=True)
        fast = check_real(self, "beta_fast", low=0.0, low_open=True)
        if fast <= float(self.beta_slow):
            raise ValueError(f"YarnParams.beta_fast={self.beta_fast!r}: must be > beta_slow={self.beta_slow!r}")
        for name in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(self, name) is not None:
                check_real(self, name, low=0.0, low_open=True, high=MAX_MULTIPLIER)
        check_bool(self, "truncate")


def yarn_get_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature term 0.1·m·ln s + 1 (1 for s ≤ 1)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn(p: YarnParams, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    inv_freq = rope_inv_freq(p.base, rotary_dim)
    pairs = rotary_dim // 2

    # Pair index at which a pair completes `turns` rotations within train_len (continuous).
    def pair_for_turns(turns: float) -> float:
        return rotary_dim * (math.log(p.train_len) - math.log(turns) - math.log(2 * math.pi)) / (2 * math.log(p.base))

    lo, hi = pair_for_turns(p.beta_fast), pair_for_turns(p.beta_slow)
    if p.truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, rotary_dim - 1)  # (clip to rotary_dim - 1, as the reference code does)
    if lo == hi:
        hi += 0.001  # avoid 0/0 in the ramp
    ramp = ((torch.arange(pairs, dtype=torch.float64) - lo) / (hi - lo)).clamp(0.0, 1.0)  # 0 keep … 1 interpolate
    inv_freq = inv_freq * (1.0 - ramp) + (inv_freq / p.factor) * ramp

    if p.attention_factor is not None:
        scale = float(p.attention_factor)
    elif p.mscale and p.mscale_all_dim:
        scale = yarn_get_mscale(p.factor, p.mscale) / yarn_get_mscale(p.factor, p.mscale_all_dim)
    else:
        scale = yarn_get_mscale(p.factor)
    return Spectrum(inv_freq, scale)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Llama3Params(RopeParams):
    """Llama-3.1 scaling: wavelengths < L/high_freq_factor keep θ_i, > L/low_freq_factor get θ_i/s,
    a linear blend in between; no attention factor.

    ``factor``, ``train_len``, ``low_freq_factor`` and ``high_freq_factor`` are required, as in
    transformers (they describe a checkpoint; no value is method-independent), and ``base`` has RoPE's
    default like every rope-family method. Llama-3.1 itself is ``factor=8, train_len=8192,
    low_freq_factor=1, high_freq_factor=4, base=500000``.
    """

    factor: float
    train_len: int
    low_freq_factor: float
    high_freq_factor: float

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_factor(self)
        _check_train_len(self)
        low = check_real(self, "low_freq_factor", low=0.0, low_open=True)
        high = check_real(self, "high_freq_factor", low=0.0, low_open=True)
        if high <= low:
            raise ValueError(
                f"Llama3Params.high_freq_factor={self.high_freq_factor!r}: must be > low_freq_factor={low!r}")


def llama3(p: Llama3Params, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    inv_freq = rope_inv_freq(p.base, rotary_dim)
    wavelen = 2 * math.pi / inv_freq
    low_wavelen = p.train_len / p.low_freq_factor    # longer than this: fully interpolated
    high_wavelen = p.train_len / p.high_freq_factor  # shorter than this: untouched
    smooth = (p.train_len / wavelen - p.low_freq_factor) / (p.high_freq_factor - p.low_freq_factor)
    blended = (1 - smooth) * inv_freq / p.factor + smooth * inv_freq
    out = torch.where(wavelen > low_wavelen, inv_freq / p.factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return Spectrum(torch.where(medium, blended, out))


@dataclasses.dataclass(frozen=True, kw_only=True)
class LongRoPEParams(RopeParams):
    """LongRoPE (Ding et al. 2024): θ_i / λ_i with per-pair ``rescale`` factors found by search.

    * Two factor sets chosen by length (the HF/Phi rule): ``long_rescale`` iff ``seq_len > train_len``,
      else ``short_rescale``. Each has ``rotary_dim // 2`` entries.
    * ``attention_factor``: ``"su"`` = sqrt(1 + ln F / ln L) (HF default), ``"yarn"`` = 0.1·ln F + 1, or
      an explicit float; F = ``factor``, the target ratio L′/L the rescale factors were searched for: a
      constant of the configuration as transformers' ``factor`` is, never the length being evaluated,
      so the attention factor is the same at every length. It is 1 when F ≤ 1 and is applied to both
      sets (also at inputs ≤ ``train_len``), as in HF.
    * ``start_tokens`` n̂ (paper §3.2, not in HF): positions < n̂ use un-interpolated θ_i. With n̂ > 0
      the method is no longer relative (by design: sink tokens keep their positions).
    """

    short_rescale: tuple[float, ...]
    long_rescale: tuple[float, ...]
    train_len: int
    factor: float
    attention_factor: float | str = "su"
    start_tokens: int = 0
    length_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_train_len(self)
        _check_factor(self)
        for name in ("short_rescale", "long_rescale"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise TypeError(f"LongRoPEParams.{name}={value!r}: expected a list or tuple of floats")
            value = tuple(value)
            for i, v in enumerate(value):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError(f"LongRoPEParams.{name}[{i}]={v!r}: expected a real number")
                if not math.isfinite(v) or not 1e-6 <= v <= 1e12:
                    raise ValueError(f"LongRoPEParams.{name}[{i}]={v!r}: rescale factors must be in [1e-6, 1e12]")
            object.__setattr__(self, name, tuple(float(v) for v in value))
        af = self.attention_factor
        if isinstance(af, str):
            check_choice(self, "attention_factor", ("su", "yarn"))
            if af == "su" and self.factor > 1 and self.train_len < 2:
                raise ValueError(f"LongRoPEParams.train_len={self.train_len!r}: the 'su' attention factor "
                                 f"sqrt(1 + ln s / ln L) needs train_len >= 2")
        else:
            check_real(self, "attention_factor", low=0.0, low_open=True, high=MAX_MULTIPLIER)
        check_int(self, "start_tokens", low=0)

    def validate_dims(self, head_dim: int, num_heads: int) -> None:
        super().validate_dims(head_dim, num_heads)
        pairs = self.rotary_dim(head_dim) // 2
        for name in ("short_rescale", "long_rescale"):
            n = len(getattr(self, name))
            if n != pairs:
                raise ValueError(
                    f"LongRoPEParams.{name}: has {n} entries but rotary_dim/2 = {pairs} "
                    f"(head_dim={head_dim}, rotary_fraction={self.rotary_fraction})")


def longrope_attention_factor(p: LongRoPEParams) -> float:
    if not isinstance(p.attention_factor, str):
        return float(p.attention_factor)
    if p.factor <= 1.0:
        return 1.0
    if p.attention_factor == "su":
        return math.sqrt(1.0 + math.log(p.factor) / math.log(p.train_len))
    return yarn_get_mscale(p.factor)


def longrope_uses_long(p: LongRoPEParams, seq_len: int | None) -> bool:
    """The HF/Phi switching rule: long factors iff the current length exceeds ``train_len``."""
    return seq_len is not None and seq_len > p.train_len


def longrope(p: LongRoPEParams, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    rescale = p.long_rescale if longrope_uses_long(p, seq_len) else p.short_rescale
    inv_freq = rope_inv_freq(p.base, rotary_dim) / torch.tensor(rescale, dtype=torch.float64)
    return Spectrum(inv_freq, longrope_attention_factor(p))


@dataclasses.dataclass(frozen=True, kw_only=True)
class HighFreqParams(RopeParams):
    """hope_highfreq (Chen et al. 2024, arXiv 2410.21216): keep only pairs with θ_i ≥ 2π/L.

    Kept pairs rotate with their original θ_i; the others get θ = 0 (position-free content channels).
    The mask is computed once in float64 from (base, rotary dim, L) and never from the input length.
    If no pair qualifies, pair 0 is kept (as praxis and sglang do). ``train_len=inf`` keeps every pair
    (exactly RoPE).

    Alternatively ``keep_fraction`` p keeps the round(p·r/2) highest-frequency pairs (p-RoPE, Barbero
    et al. 2025) instead of the 2π/L rule; give exactly one of the two.
    """

    train_len: float | None = None
    keep_fraction: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.train_len is None) == (self.keep_fraction is None):
            raise ValueError(
                f"HighFreqParams: give exactly one of train_len (the 2π/L rule) or keep_fraction "
                f"(p-RoPE); got train_len={self.train_len!r}, keep_fraction={self.keep_fraction!r}")
        if self.train_len is not None:
            check_real(self, "train_len", low=1.0, allow_inf=True)
        else:
            check_real(self, "keep_fraction", low=0.0, high=1.0, low_open=True)

    @classmethod
    def fill_train_len(cls, fields: dict, train_len: int) -> dict:
        """The experiment's training length is the 2π/L rule's L, unless ``keep_fraction`` is chosen."""
        return fields if fields.get("keep_fraction") is not None else super().fill_train_len(fields, train_len)


def highfreq_keep_mask(p: HighFreqParams, rotary_dim: int) -> torch.Tensor:
    """Boolean mask of kept pairs, computed once in float64 from the frozen parameters."""
    inv_freq = rope_inv_freq(p.base, rotary_dim)
    pairs = rotary_dim // 2
    if p.keep_fraction is not None:
        kept = max(1, round(p.keep_fraction * pairs))
        return torch.arange(pairs) < kept
    keep = inv_freq >= 2 * math.pi / float(p.train_len)  # inf train_len -> threshold 0 -> keep all
    if not bool(keep.any()):
        keep[0] = True
    return keep


def hope_highfreq(p: HighFreqParams, rotary_dim: int, seq_len: int | None = None) -> Spectrum:
    inv_freq = rope_inv_freq(p.base, rotary_dim)
    return Spectrum(torch.where(highfreq_keep_mask(p, rotary_dim), inv_freq, torch.zeros_like(inv_freq)))
