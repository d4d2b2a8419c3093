"""alibi.py: the slope range (the bias itself is checked in test_layout_and_baselines.py)."""

from __future__ import annotations

import pytest
import torch

from hopekit import pe
from hopekit.pe.alibi import alibi_slopes

FLOAT32_MIN_NORMAL = torch.finfo(torch.float32).tiny  # 2^-126


@pytest.mark.parametrize("max_bias", [1e300, 1e4, 1000.0, 127.0])
def test_max_bias_so_large_that_slopes_vanish_is_refused(max_bias):
    """2^(−max_bias) underflows float32 (the bias dtype), so every far slope would be 0: no position."""
    with pytest.raises(ValueError, match=r"ALiBiParams\.max_bias=") as excinfo:
        pe.build("alibi", head_dim=8, num_heads=12, max_bias=max_bias)
    assert repr(float(max_bias)) in str(excinfo.value)
    with pytest.raises(ValueError, match="max_bias"):
        alibi_slopes(12, max_bias)


@pytest.mark.parametrize("num_heads", [1, 8, 12])
@pytest.mark.parametrize("max_bias", [8.0, 64.0, 126.0])
def test_accepted_max_bias_gives_positive_normal_float32_slopes(num_heads, max_bias):
    slopes = pe.build("alibi", head_dim=8, num_heads=num_heads, max_bias=max_bias).slopes()
    assert slopes.dtype == torch.float32
    assert (slopes >= FLOAT32_MIN_NORMAL).all() and (slopes < 1).all()
    assert len(set(slopes.tolist())) == num_heads  # distinct per head
