"""schedules.py: parameter dataclasses of the RoPE family (the spectra themselves are checked against
closed forms in test_reductions.py and against transformers in test_hf_parity.py)."""

from __future__ import annotations

import pytest

from hopekit import pe

#: Llama-3.1's values; the four keys transformers requires in a llama3 ``rope_scaling``
LLAMA31 = {"factor": 8.0, "train_len": 8192, "low_freq_factor": 1.0, "high_freq_factor": 4.0}


@pytest.mark.parametrize("missing", sorted(LLAMA31))
def test_llama3_requires_the_fields_transformers_requires(missing):
    """No silent Llama-3.1 values: leaving out any of the four is refused, naming it."""
    cfg = {k: v for k, v in LLAMA31.items() if k != missing}
    with pytest.raises(TypeError, match=missing):
        pe.build("llama3", head_dim=16, **cfg)
    with pytest.raises(TypeError, match=missing):
        pe.Llama3Params(**cfg)


def test_llama3_base_is_ropes_method_independent_default():
    p = pe.Llama3Params(**LLAMA31)
    assert p.base == pe.RopeParams().base
    assert pe.build("llama3", head_dim=16, **LLAMA31).params.base == pe.build("rope", head_dim=16).params.base
