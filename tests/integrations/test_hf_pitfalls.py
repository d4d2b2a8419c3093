"""The integration pitfalls of papers/ecosystem.md §1.8 that are not covered elsewhere, each as a test:
bf16 / float32 positions, global patches leaking across models, an attention function without its
model. (Layout, the 5.x config accessor and masking are in test_hf_rope.py / test_hf_patch.py.)"""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from hopekit import pe  # noqa: E402
from hopekit.integrations import hf  # noqa: E402


def test_rotary_tables_come_from_exact_integer_positions(tiny):
    """float32 holds integers exactly only to 2^24 (bf16 to 256): positions 2^24 and 2^24 + 1 must
    still get different angles. The tables are made in float64 and only then cast."""
    rotary = hf.patch_model(tiny.model(max_pos=16), {"kind": "rope", "base": 10000.0}).model.rotary_emb
    positions = torch.tensor([[2 ** 24, 2 ** 24 + 1]])
    cos, sin = rotary(torch.zeros(1, dtype=torch.float32), positions)
    assert cos.shape == (1, 2, 16) and cos.dtype == torch.float32
    for j, p in enumerate((2 ** 24, 2 ** 24 + 1)):
        expected = torch.tensor([math.cos(p * 10000.0 ** (-2 * i / 16)) for i in range(8)], dtype=torch.float64)
        torch.testing.assert_close(cos[0, j, :8].double(), expected, rtol=0, atol=2 ** -24)
        torch.testing.assert_close(cos[0, j, 8:], cos[0, j, :8], rtol=0, atol=0)  # HF's duplicated halves
    assert not torch.equal(cos[0, 0], cos[0, 1])


def test_bf16_tables_are_float64_values_rounded_once(tiny):
    model = hf.patch_model(tiny.model(max_pos=16), {"kind": "yarn", "factor": 4.0}).to(torch.bfloat16)
    positions = torch.tensor([[255, 256, 257, 1001]])
    cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.bfloat16), positions)
    assert cos.dtype == torch.bfloat16
    enc = hf.encoding_of(model)
    spec = enc.spectrum()
    angle = positions[0].double()[:, None] * spec.inv_freq
    torch.testing.assert_close(cos[0, :, :8], (torch.cos(angle) * spec.attn_scale).to(torch.bfloat16), rtol=0, atol=0)
    torch.testing.assert_close(sin[0, :, :8], (torch.sin(angle) * spec.attn_scale).to(torch.bfloat16), rtol=0, atol=0)


def test_patching_one_model_leaves_another_untouched(tiny):
    """The attention function is registered globally by name, but only a patched model selects it."""
    patched, plain = tiny.model(max_pos=16), tiny.model(max_pos=16)
    ids = torch.randint(0, 61, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = plain(ids).logits
        hf.patch_model(patched, {"kind": "alibi"})
        after = plain(ids).logits
        assert not torch.allclose(patched(ids).logits, after)
    assert plain.config._attn_implementation == "sdpa"
    assert torch.equal(before, after)


def test_the_attention_function_refuses_an_unpatched_model(tiny):
    model = tiny.model(max_pos=16)
    model.set_attn_implementation(hf.ATTENTION_NAME)
    with pytest.raises(RuntimeError, match="patch_model"):
        model(torch.zeros(1, 4, dtype=torch.long))


def test_a_patched_model_has_no_position_buffers_to_corrupt(tiny):
    """Non-persistent inv_freq buffers are missing from checkpoints and garbage after ``to_empty``; the
    patched rotary module has none (its tables come from the frozen parameters)."""
    model = hf.patch_model(tiny.model(max_pos=16), {"kind": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0})
    assert dict(model.model.rotary_emb.named_buffers()) == {}
    assert pe.name_of(hf.encoding_of(model).params) == "llama3"
