"""LongRoPE (Ding et al. 2024): the evolutionary search of per-pair rescale factors.

* :mod:`.genome` — the search space (factors on a 0.01 grid, monotone, the n̂ gene), seeds, mutation and
  crossover;
* :mod:`.search` — the elitist loop with its history, state file, resume and multi-process evaluation.
"""

from .genome import GRID, SEED_METHODS, Candidate, SearchSpace, crossover, is_monotone, mutate, seed_factors
from .search import EVALUATIONS_NAME, STATE_NAME, SearchConfig, SearchError, SearchResult, run_search

__all__ = ["GRID", "SEED_METHODS", "Candidate", "SearchSpace", "crossover", "is_monotone", "mutate", "seed_factors",
           "EVALUATIONS_NAME", "STATE_NAME", "SearchConfig", "SearchError", "SearchResult", "run_search"]
