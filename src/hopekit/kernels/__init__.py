"""Fast paths for the hot spots of attention with positional encodings; ``hopekit.pe`` stays the oracle.

Each fast path computes exactly what its ``pe/`` reference computes (to the rounding of its dtype; the
tests compare both against float64 on fresh random inputs) and is selected automatically where it
applies. To run the reference everywhere instead (to debug, or to rule a kernel out), set the
environment variable ``HOPEKIT_KERNELS=reference`` or wrap the code in ``with use_kernels(False):``.

* :mod:`hopekit.kernels.rotary`: the rotary apply of the whole RoPE family (CPU and Triton on CUDA);
* :mod:`hopekit.kernels.hyperbolic`: hope_hyperbolic attention without a T×T logit tensor per head;
* :mod:`hopekit.kernels.alibi`: ALiBi attention without a materialised bias.

The attention entry point :func:`hopekit.attention` is where the attention kernels are chosen.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

__all__ = ["ENV_VAR", "ATTENTION_KERNELS", "enabled", "use_kernels"]

#: the attention kernels :func:`hopekit.attention` tries in order; each module has ``applies(enc, q, k, *,
#: mask, dropout_p)`` and ``attend(enc, q, k, v, q_pos, k_pos, *, scale, past)``
ATTENTION_KERNELS: tuple[str, ...] = ("hyperbolic", "alibi")

#: the environment variable that selects the kernels: "auto" (the default) or "reference"
ENV_VAR = "HOPEKIT_KERNELS"
_CHOICES = ("auto", "reference")
_override: list[bool] = []


def enabled() -> bool:
    """Whether fast paths may be used: the innermost :func:`use_kernels`, else ``HOPEKIT_KERNELS``."""
    if _override:
        return _override[-1]
    value = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if value not in _CHOICES:
        raise ValueError(f"{ENV_VAR}={os.environ[ENV_VAR]!r}: must be one of {_CHOICES}")
    return value == "auto"


@contextlib.contextmanager
def use_kernels(flag: bool) -> Iterator[None]:
    """``with use_kernels(False):`` runs the ``pe/`` reference inside the block (True: fast paths)."""
    if not isinstance(flag, bool):
        raise TypeError(f"use_kernels: expected a bool, got {flag!r}")
    _override.append(flag)
    try:
        yield
    finally:
        _override.pop()
