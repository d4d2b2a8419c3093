"""Randomized positional encodings (Ruoss et al. 2023), as a *position sampler*.

During training each sequence of length T gets positions drawn as a sorted random subset of
``range(max_position)`` (``max_position`` ≥ T, e.g. the largest evaluation length); at evaluation the
positions are simply 0 … T−1. Works with every relative method (RoPE family, hope_highfreq, ALiBi,
hope_hyperbolic): the encoding is unchanged, only the positions fed to it differ.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import Params, check_int

__all__ = ["RandomizedPositions"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class RandomizedPositions(Params):
    """Sampler of training positions. ``max_position``: size of the range positions are drawn from."""

    max_position: int

    def __post_init__(self) -> None:
        check_int(self, "max_position", low=1)

    def sample(self, batch: int, length: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> torch.Tensor:
        """``(batch, length)`` int64 positions, each row a sorted subset of range(max_position)."""
        if length > self.max_position:
            raise ValueError(f"length={length}: exceeds RandomizedPositions.max_position={self.max_position}")
        keys = torch.rand(batch, self.max_position, generator=generator)
        rows = keys.topk(length, dim=-1).indices.sort(dim=-1).values  # uniform random subset, sorted
        return rows.to(device)

    @staticmethod
    def evaluation(length: int, device: torch.device | str | None = None) -> torch.Tensor:
        return torch.arange(length, device=device)
