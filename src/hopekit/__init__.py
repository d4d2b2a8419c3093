"""hopekit — positional encodings for long-context language models.

Glossary (one name per idea, everywhere; docs/conventions.md has the full version):

* ``base`` — the RoPE base b (HF: ``rope_theta``, only inside integrations).
* ``inv_freq`` — per-pair frequency θ_i = b^(−2i/r).
* ``angle`` — position × inv_freq.
* ``train_len`` — the (pre-)training length L; an experiment parameter, never a ceiling.
* ``eval_len`` — the evaluation length.
* ``factor`` — the extension factor s = L′/L.
* ``positions``, ``q_pos``, ``k_pos`` — integer token positions.
* ``rescale`` — LongRoPE's per-pair factors λ_i (short and long sets).
* ``hope_hyperbolic`` (Dai et al. 2025) and ``hope_highfreq`` (Chen et al. 2024) — two unrelated
  methods that share the name HoPE; never called by the bare name.

The core, :mod:`hopekit.pe`, depends on torch alone. :func:`hopekit.attention` is attention with any
of its encodings (:mod:`hopekit.functional`).
"""

__version__ = "0.1.0"

from .functional import attention  # noqa: E402  (the public attention entry point)

__all__ = ["attention", "__version__"]
