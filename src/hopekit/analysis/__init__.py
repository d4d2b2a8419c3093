"""Analysis of positional encodings: what each method's parameters mean in tokens, score-vs-distance
curves from three sources of q/k, the metrics that turn the seeds' words into numbers (oscillation,
monotonicity, far-token mass, the U-shape index), a trained model's attention, and sweeps.

The modules: :mod:`.defaults` (describe, in_tokens), :mod:`.distance` (curves), :mod:`.metrics`,
:mod:`.plots`, :mod:`.capture` (a trained model's q, k and attention weights), :mod:`.sweep` (the report of
a bench grid), :mod:`.run` (``hopekit analyze distance``).
"""

from .defaults import describe, in_tokens
from .distance import SOURCES, attention_weight_vs_distance, gaussian_qk, rope_decay_bound, score_vs_distance
from .metrics import (channel_monotonicity, curve_far_mass, far_token_mass, monotone_fraction, oscillation,
                      sign_changes, total_variation, u_shape_index)

__all__ = ["score_vs_distance", "describe", "in_tokens", "SOURCES", "attention_weight_vs_distance", "gaussian_qk",
           "rope_decay_bound", "channel_monotonicity", "curve_far_mass", "far_token_mass", "monotone_fraction",
           "oscillation", "sign_changes", "total_variation", "u_shape_index"]
