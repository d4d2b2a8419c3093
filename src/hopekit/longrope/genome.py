"""LongRoPE's search space and its evolutionary operators (Ding et al. 2024, §3.2 and the public code).

A **candidate** is one point of the search space: per-pair rescale factors λ_0 … λ_{p−1} (p = rotary_dim/2)
on a 0.01 grid within [1, λ_max], monotone non-decreasing, and optionally the n̂ prefix of positions kept
un-interpolated (``start_tokens``). Factors are held as integers in hundredths (λ = v / 100), so a
candidate is exact, hashable and prints the same on every machine; :attr:`Candidate.key` is the key of the
evaluation history.

The operators follow the public code (``dim_mono``; docs in ``papers/longrope.md`` of the design notes):

* **mutation** — each gene, with probability ``mutation_prob`` (0.3), is redrawn uniformly on the grid
  between its neighbours: pair 0 in [1, λ_1], pair i in [λ_{i−1}, λ_{i+1}], the last pair in
  [λ_{p−2}, λ_max]; genes are visited in order, so the child is monotone by construction. The n̂ gene
  (when searched) is redrawn from its choices with the same probability.
* **crossover** — a copy of the better parent in which each gene takes the other parent's value with
  probability ``crossover_prob``·0.5 (0.15); a child that is not monotone, or not new, is discarded
  (the caller retries, then falls back to a mutation of the better parent).
* **seeds** — PI (λ = s), NTK (λ_i = s^(2i/(r−2))), YaRN (λ_i = θ_i/θ′_i of YaRN's ramp) and the
  reference code's linear-in-λ YaRN form λ_i = 1 + (s − 1)·ρ_i, each from hopekit's own schedule
  functions, rounded to the grid and clipped to [1, λ_max].

Every random draw comes from one :class:`random.Random`, so a seeded search is reproducible and its
generator state (``getstate()``) can be saved and restored.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Sequence


from ..pe import schedules

__all__ = ["GRID", "SEED_METHODS", "Candidate", "SearchSpace", "seed_factors", "mutate", "crossover",
           "is_monotone"]

#: grid step of the factors, in the units candidates hold them (hundredths)
GRID = 100

#: the seeds a search may start from (module docstring)
SEED_METHODS = ("pi", "ntk", "yarn", "yarn_linear")


@dataclasses.dataclass(frozen=True, order=True)
class Candidate:
    """Factors in hundredths (``λ_i = rescale[i] / 100``) and the un-interpolated prefix n̂."""

    rescale: tuple[int, ...]
    start_tokens: int = 0

    @property
    def key(self) -> str:
        """The history key: ``"n̂:v0,v1,…"``."""
        return f"{self.start_tokens}:" + ",".join(map(str, self.rescale))

    @classmethod
    def from_key(cls, key: str) -> "Candidate":
        n, values = key.split(":", 1)
        return cls(tuple(int(v) for v in values.split(",")), int(n))

    def factors(self) -> tuple[float, ...]:
        """λ_i as floats (exactly ``v / 100``)."""
        return tuple(v / GRID for v in self.rescale)


def is_monotone(values: Sequence[int]) -> bool:
    return all(a <= b for a, b in zip(values, values[1:]))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Where candidates live: ``pairs`` genes in [1, ``lambda_max``] on the 0.01 grid, and the n̂ gene's
    ``start_tokens`` choices (``(0,)``: n̂ is not searched)."""

    pairs: int
    lambda_max: float
    start_tokens: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if isinstance(self.pairs, bool) or not isinstance(self.pairs, int) or self.pairs < 1:
            raise ValueError(f"SearchSpace.pairs={self.pairs!r}: expected the number of rotary pairs, an int >= 1")
        if not isinstance(self.lambda_max, (int, float)) or not math.isfinite(self.lambda_max) or self.lambda_max < 1:
            raise ValueError(f"SearchSpace.lambda_max={self.lambda_max!r}: expected a finite number >= 1")
        choices = tuple(self.start_tokens)
        if not choices or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in choices) \
                or len(set(choices)) != len(choices):
            raise ValueError(f"SearchSpace.start_tokens={self.start_tokens!r}: expected distinct ints >= 0")
        object.__setattr__(self, "start_tokens", choices)

    @property
    def high(self) -> int:
        """λ_max in grid units (rounded down onto the grid)."""
        return int(math.floor(self.lambda_max * GRID + 1e-9))

    def contains(self, c: Candidate) -> bool:
        return (len(c.rescale) == self.pairs and is_monotone(c.rescale) and GRID <= c.rescale[0]
                and c.rescale[-1] <= self.high and c.start_tokens in self.start_tokens)

    def snap(self, factors: Sequence[float], start_tokens: int = 0) -> Candidate:
        """Factors rounded to the grid, clipped to [1, λ_max] and made monotone (a running maximum)."""
        if len(factors) != self.pairs:
            raise ValueError(f"factors: has {len(factors)} entries, the search space has {self.pairs} pairs")
        values, floor = [], GRID
        for f in factors:
            v = min(max(int(round(float(f) * GRID)), GRID), self.high)
            floor = max(floor, v)
            values.append(floor)
        return Candidate(tuple(values), start_tokens)


def seed_factors(method: str, *, factor: float, pairs: int, base: float, train_len: int) -> list[float]:
    """The factors λ_i of a seed ``method`` (:data:`SEED_METHODS`) for the extension ``factor`` s, from
    hopekit's own schedules: λ_i = θ_i / θ′_i."""
    rotary_dim = 2 * pairs
    plain = schedules.rope_inv_freq(base, rotary_dim)
    if method == "pi":
        return [float(factor)] * pairs
    if method == "ntk":
        scaled = schedules.ntk(schedules.NTKParams(base=base, factor=factor), rotary_dim).inv_freq
        return (plain / scaled).tolist()
    if method in ("yarn", "yarn_linear"):
        scaled = schedules.yarn(schedules.YarnParams(base=base, factor=factor, train_len=train_len), rotary_dim).inv_freq
        if method == "yarn":
            return (plain / scaled).tolist()
        if factor == 1:
            return [1.0] * pairs
        ramp = (1.0 - scaled / plain) / (1.0 - 1.0 / factor)      # θ′/θ = (1 − ρ) + ρ/s  ->  ρ
        return (1.0 + (factor - 1.0) * ramp.clamp(0.0, 1.0)).tolist()
    raise ValueError(f"seed method {method!r}: expected one of {SEED_METHODS}")


def _draw(rng: random.Random, low: int, high: int) -> int:
    return low if high <= low else rng.randint(low, high)


def mutate(parent: Candidate, space: SearchSpace, rng: random.Random, prob: float) -> Candidate:
    """One mutation of ``parent`` (module docstring). The child may equal the parent; callers retry."""
    values = list(parent.rescale)
    last = len(values) - 1
    for i in range(len(values)):
        if rng.random() < prob:
            low = GRID if i == 0 else values[i - 1]
            high = space.high if i == last else values[i + 1]
            values[i] = _draw(rng, low, high)
    start = parent.start_tokens
    if len(space.start_tokens) > 1 and rng.random() < prob:
        start = rng.choice(space.start_tokens)
    return Candidate(tuple(values), start)


def crossover(better: Candidate, other: Candidate, rng: random.Random, prob: float) -> Candidate:
    """``better`` with each gene (and n̂) taken from ``other`` with probability ``prob / 2``. The child
    may be non-monotone or equal to a parent; callers check and retry."""
    values = [b if rng.random() >= prob / 2 else o for b, o in zip(better.rescale, other.rescale)]
    start = better.start_tokens if rng.random() >= prob / 2 else other.start_tokens
    return Candidate(tuple(values), start)


