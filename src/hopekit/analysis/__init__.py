"""Analysis of how attention behaves with distance (score-vs-distance curves; more studies to come)."""

from .distance import score_vs_distance

__all__ = ["score_vs_distance"]
