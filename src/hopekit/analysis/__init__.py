"""Analysis of positional encodings: score-vs-distance curves, and what each method's parameters mean
in tokens (half-lives, rotating pairs, wavelengths)."""

from .defaults import describe, in_tokens
from .distance import score_vs_distance

__all__ = ["score_vs_distance", "describe", "in_tokens"]
