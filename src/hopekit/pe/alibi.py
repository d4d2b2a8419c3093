"""ALiBi (Press et al. 2022): a linear, per-head additive logit bias −m_h·|q_pos − k_pos|.

Slopes are the geometric sequence m_h = 2^(−max_bias·h/n), h = 1 … n, for a power-of-two head count n.
For other counts the paper's rule is used: the slopes of the closest lower power of two p, followed
by every other slope of the 2p sequence until n slopes exist. ``max_bias`` = 8 is the paper's value
(MPT's ``alibi_bias_max``).

The bias is −m·|Δ| (symmetric); under a causal mask only Δ ≥ 0 is ever used, which is the original
method. The bias tensor is ``(H, Tq, Tk)``; attention adds it in chunks so no model ever holds a full
T×T×H bias at long lengths.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import Params, PositionalEncoding, check_positions, check_real

__all__ = ["ALiBiParams", "ALiBi", "alibi_slopes"]

#: the largest ``max_bias``: every slope is ≥ 2^(−max_bias) and the bias is float32, so this keeps each
#: slope a positive normal float32 (≥ 2^−126); beyond it slopes silently round to 0 (no position at all)
MAX_BIAS = 126.0


def alibi_slopes(num_heads: int, max_bias: float = 8.0) -> torch.Tensor:
    """Per-head slopes (float64), including non-power-of-two head counts; 0 < ``max_bias`` ≤ 126."""
    if isinstance(max_bias, bool) or not isinstance(max_bias, (int, float)) or not 0 < max_bias <= MAX_BIAS:
        raise ValueError(f"max_bias={max_bias!r}: must be a real number in (0, {MAX_BIAS:g}] "
                         f"(the smallest slope, 2^-max_bias, must stay a normal float32)")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-max_bias * (h + 1) / n) for h in range(n)]

    p = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(p)
    if p < num_heads:
        slopes += geometric(2 * p)[0::2][: num_heads - p]
    return torch.tensor(slopes, dtype=torch.float64)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ALiBiParams(Params):
    """ALiBi. ``max_bias``: the exponent range of the slope sequence (8 in the paper), at most 126 so
    that every slope 2^(−max_bias·h/n) is a positive normal float32."""

    max_bias: float = 8.0

    def __post_init__(self) -> None:
        check_real(self, "max_bias", low=0.0, low_open=True, high=MAX_BIAS)


class ALiBi(PositionalEncoding):
    uses_bias = True

    def slopes(self, device: torch.device | None = None) -> torch.Tensor:
        key = ("slopes", device)
        if key not in self._cache:
            self._cache[key] = alibi_slopes(self.num_heads, self.params.max_bias).float().to(device)
        return self._cache[key]

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """``(H, Tq, Tk)`` for 1-D positions, ``(B, H, Tq, Tk)`` for batched ones; float32."""
        q_pos = check_positions(q_pos, "q_pos")
        k_pos = check_positions(k_pos, "k_pos", batch=q_pos.shape[0] if q_pos.dim() == 2 else None)
        if q_pos.dim() == 2 and k_pos.dim() == 2 and k_pos.shape[0] != q_pos.shape[0] and 1 not in (q_pos.shape[0], k_pos.shape[0]):
            raise ValueError(f"q_pos, k_pos: batch sizes differ: {tuple(q_pos.shape)} vs {tuple(k_pos.shape)}")
        dist = (q_pos[..., :, None] - k_pos[..., None, :]).abs().float()   # (..., Tq, Tk), exact integers
        slopes = self.slopes(dist.device)
        if dist.dim() == 3:
            return -slopes[None, :, None, None] * dist[:, None]
        return -slopes[:, None, None] * dist
