"""rotary.py: the shared rotation refuses what it cannot rotate (layouts, signs and precision are in
test_invariants.py, test_layout_and_baselines.py and test_precision.py)."""

from __future__ import annotations

import pytest
import torch

from hopekit import pe

NOT_FLOAT = [torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool]


@pytest.mark.parametrize("dtype", NOT_FLOAT, ids=str)
@pytest.mark.parametrize("which", ["q", "k"])
def test_rotate_refuses_non_floating_q_or_k(which, dtype):
    """Rotating integers would cast cos/sin to integers (0 or ±1) and return wrong integers silently."""
    enc = pe.build("rope", head_dim=8, num_heads=2)
    q, k = torch.ones(1, 2, 3, 8), torch.ones(1, 2, 3, 8)
    bad = {"q": q, "k": k}
    bad[which] = bad[which].to(dtype)
    pos = torch.arange(3)
    with pytest.raises(TypeError, match=rf"^{which}: .*{dtype}"):
        enc.rotate(bad["q"], bad["k"], pos, pos)
    with pytest.raises(TypeError, match=str(dtype)):  # the per-forward path the model uses
        enc.apply(bad[which], enc.features(pos))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_rotate_accepts_every_floating_dtype(dtype):
    enc = pe.build("rope", head_dim=8, num_heads=2)
    q = torch.randn(1, 2, 3, 8, dtype=dtype)
    pos = torch.arange(3)
    q2, k2 = enc.rotate(q, q, pos, pos)
    assert q2.dtype == k2.dtype == dtype
