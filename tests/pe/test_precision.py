"""Precision: encoding tables survive the operations that corrupt ``inv_freq`` buffers elsewhere.

* ``model.to(torch.bfloat16)``: a bf16 ``inv_freq``/position table aliases positions above 256;
* meta-device init + ``to_empty``: buffers become uninitialised memory (NaN / garbage);
* FSDP-style re-materialisation: every tensor of the module is replaced by fresh storage.

hopekit keeps no derived buffers (tables are recomputed from the frozen parameters), so these are
no-ops for tables; learnable parameters are re-initialised with ``hopekit.pe.reset_encodings``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hopekit import pe
from tests.conftest import EXAMPLES, HEAD_DIM, NUM_HEADS, build_example
from tests.pe.test_invariants import logits

ALL = list(pe.REGISTRY)


class Holder(nn.Module):
    """A stand-in model: a linear layer and an encoding (as a model would hold them)."""

    def __init__(self, name):
        super().__init__()
        self.proj = nn.Linear(HEAD_DIM, HEAD_DIM)
        self.enc = build_example(name)


def outputs(enc, positions):
    torch.manual_seed(1)
    q = torch.randn(1, NUM_HEADS, len(positions), HEAD_DIM)
    k = torch.randn(1, NUM_HEADS, len(positions), HEAD_DIM)
    x = torch.randn(1, len(positions), enc.d_model)
    return logits(enc, q, k, positions, positions, seq_len=64), enc.embed(x, positions)


POSITIONS = torch.arange(250, 300)  # above 256: where bf16 position tables alias


def test_no_derived_tensors_in_state_dict():
    for name in ALL:
        keys = set(build_example(name).state_dict())
        # only learnable parameters: a learned table ("weight") or hope_hyperbolic's learnable penalty
        assert all(k.split(".")[-1] in ("weight", "penalty_raw") for k in keys), (name, keys)


@pytest.mark.parametrize("name", ALL)
def test_survives_model_to_bfloat16(name):
    ref_enc = build_example(name)
    ref = outputs(ref_enc, POSITIONS)
    h = Holder(name).to(torch.bfloat16)
    if ref_enc.state_dict():  # learned tables are weights like any other: bf16 is the user's choice; restore
        h.enc.float().load_state_dict(ref_enc.state_dict())
    for a, b in zip(ref, outputs(h.enc, POSITIONS)):
        fin = torch.isfinite(a)
        assert torch.equal(fin, torch.isfinite(b))
        torch.testing.assert_close(a[fin], b[fin], rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
def test_survives_meta_init_then_to_empty(name):
    with torch.device("meta"):
        h = Holder(name)
    h.to_empty(device="cpu")
    n = pe.reset_encodings(h)  # the documented re-initialisation hook
    assert n == sum(isinstance(m, pe.PositionalEncoding) for m in h.modules()) >= 1
    ref_enc = build_example(name)
    if ref_enc.state_dict():  # learned weights are fresh random values: compare after loading the same weights
        h.enc.load_state_dict(ref_enc.state_dict())
    for a, b in zip(outputs(ref_enc, POSITIONS), outputs(h.enc, POSITIONS)):
        fin = torch.isfinite(a)
        assert torch.equal(fin, torch.isfinite(b))
        torch.testing.assert_close(a[fin], b[fin], rtol=0, atol=0)


def test_learnable_penalty_after_to_empty_needs_the_hook():
    with torch.device("meta"):
        enc = build_example("hope_hyperbolic", learnable=True, per_head=True)
    enc.to_empty(device="cpu")
    with torch.no_grad():
        enc.penalty_raw.fill_(float("nan"))   # what uninitialised memory may hold
    assert not torch.isfinite(enc.penalty()).all()
    pe.reset_encodings(enc)
    torch.testing.assert_close(enc.penalty(), torch.full((NUM_HEADS,), EXAMPLES["hope_hyperbolic"]["penalty"]))


@pytest.mark.parametrize("name", ALL)
def test_survives_fsdp_style_rematerialisation(name):
    """Replace every parameter/buffer by fresh (garbage) storage of possibly another dtype, as sharding
    wrappers do, then reload the state dict: outputs are unchanged."""
    enc = build_example(name)
    ref = outputs(enc, POSITIONS)
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    enc._apply(lambda t: torch.full_like(t, float("nan")).to(torch.bfloat16).float())
    enc.load_state_dict(state)
    pe.reset_encodings(enc, parameters=False)
    for a, b in zip(ref, outputs(enc, POSITIONS)):
        fin = torch.isfinite(a)
        assert torch.equal(fin, torch.isfinite(b))
        torch.testing.assert_close(a[fin], b[fin], rtol=0, atol=0)


def test_cos_sin_exact_at_large_positions():
    """Tables come from integer positions: cos/sin at position p match a float64 reference to float32
    rounding, even where a float32 angle would be off by ~0.06 rad (p ~ 1e6)."""
    enc = pe.build("rope", head_dim=64)
    pos = torch.tensor([0, 255, 256, 257, 65_537, 1_000_003, 16_777_217])
    cos, sin = enc.features(pos)
    inv = 1.0 / 10000 ** (torch.arange(0, 64, 2, dtype=torch.float64) / 64)
    ref = pos.double()[:, None] * inv
    torch.testing.assert_close(cos, torch.cos(ref).float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(sin, torch.sin(ref).float(), rtol=0, atol=1e-7)


def test_tables_under_autocast_are_float32():
    enc = pe.build("yarn", head_dim=64, factor=4.0, train_len=128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = enc.features(torch.arange(1000))
    assert cos.dtype == sin.dtype == torch.float32
