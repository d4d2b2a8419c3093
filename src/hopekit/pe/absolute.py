"""Absolute encodings added at the input: sinusoidal (Vaswani et al. 2017) and learned (GPT-2).

* ``sinusoidal``: PE[p, 2i] = sin(p·base^(−2i/d)), PE[p, 2i+1] = cos(p·base^(−2i/d)), d = d_model,
  times ``scale``; computed from integer positions in float64 and cast; defined at every position.
  **Default scale 0.03 (ours):** the code must sit on the scale of the token embeddings it is added
  to. Vaswani et al. multiply embeddings by √d_model for this; our decoder (like GPT-2) initialises
  embeddings N(0, 0.02²) and does not rescale them, so the unit-amplitude table (per-dimension RMS
  0.71) would swamp the tokens (35× the embedding norm at d_model 128). 0.03 gives the table the
  embeddings' per-dimension RMS (0.02·√2 ≈ 0.028). The default bench's sinusoidal row
  (docs/results/default/report.md) is measured with it; rerun the bench with ``pe.scale=...`` to compare.
* ``learned``: a trainable table of ``max_len`` rows (init N(0, ``init_std``²)). It cannot represent a
  position ≥ ``max_len`` and refuses one with an error naming both — the only method in hopekit with
  a length ceiling.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .base import Params, PositionalEncoding, check_embed_input, check_int, check_positions, check_real
from .rotary import angles

__all__ = ["SinusoidalParams", "Sinusoidal", "LearnedParams", "Learned"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinusoidalParams(Params):
    base: float = 10000.0
    scale: float = 0.03

    def __post_init__(self) -> None:
        check_real(self, "base", low=1.0, low_open=True)
        check_real(self, "scale", low=0.0, low_open=True, high=1e4)


class Sinusoidal(PositionalEncoding):
    uses_embed = True

    def __init__(self, params, *, head_dim, num_heads=1, d_model=None):
        super().__init__(params, head_dim=head_dim, num_heads=num_heads, d_model=d_model)
        if self.d_model % 2:
            raise ValueError(f"d_model={self.d_model}: sinusoidal needs an even model width")

    def table(self, positions: torch.Tensor) -> torch.Tensor:
        """``(..., T, d_model)`` float32 codes for integer positions."""
        exponent = torch.arange(0, self.d_model, 2, dtype=torch.float64) / self.d_model
        angle = angles(positions, 1.0 / (self.params.base ** exponent))          # (..., T, d/2)
        pe = torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)          # interleave sin, cos
        return (self.params.scale * pe.flatten(-2)).float()

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        check_embed_input(self, x)
        positions = check_positions(positions, "positions", x.shape[-2], batch=x.shape[0] if x.dim() == 3 else None).to(x.device)
        return x + self.table(positions).to(x.dtype)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LearnedParams(Params):
    max_len: int
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_int(self, "max_len", low=1)
        check_real(self, "init_std", low=0.0, high=1e3)


class Learned(PositionalEncoding):
    uses_embed = True

    def __init__(self, params, *, head_dim, num_heads=1, d_model=None):
        super().__init__(params, head_dim=head_dim, num_heads=num_heads, d_model=d_model)
        self.weight = nn.Parameter(torch.empty(params.max_len, self.d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.weight, std=self.params.init_std)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        check_embed_input(self, x)
        positions = check_positions(positions, "positions", x.shape[-2], batch=x.shape[0] if x.dim() == 3 else None).to(x.device)
        if positions.numel() and (int(positions.max()) >= self.params.max_len or int(positions.min()) < 0):
            bad = int(positions.min()) if int(positions.min()) < 0 else int(positions.max())
            raise ValueError(
                f"learned: position {bad} is outside the learned table "
                f"(LearnedParams.max_len={self.params.max_len}); learned absolute encodings cannot "
                f"extrapolate — train with a larger max_len or pick a relative method")
        return x + self.weight[positions].to(x.dtype)
