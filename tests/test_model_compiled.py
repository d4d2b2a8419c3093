"""Decoder.compile_for_training: compiled training forwards equal eager ones to float32 rounding;
evaluation and cached decoding stay eager (bit-identical)."""

from __future__ import annotations

import copy

import pytest
import torch

from hopekit.model import Decoder, ModelConfig


def make(kind: str) -> Decoder:
    torch.manual_seed(0)
    return Decoder(ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, attn_chunk=8, pe={"kind": kind}))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rope", "alibi", "hope_hyperbolic", "sinusoidal"])
def test_compiled_training_forward_and_gradients_equal_eager(kind):
    eager = make(kind).train()
    compiled = copy.deepcopy(eager).compile_for_training()
    idx, tgt = torch.randint(0, 64, (2, 20)), torch.randint(0, 64, (2, 20))  # 20 > attn_chunk: several chunks
    (le, loss_e), (lc, lossc) = eager(idx, targets=tgt), compiled(idx, targets=tgt)
    loss_e.backward()
    lossc.backward()
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_evaluation_of_a_compiled_model_is_eager():
    eager = make("rope").eval()
    compiled = copy.deepcopy(eager).compile_for_training().eval()
    idx = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        assert torch.equal(compiled(idx)[0], eager(idx)[0])
    assert torch.equal(compiled.generate(idx[:, :5], 4, temperature=0), eager.generate(idx[:, :5], 4, temperature=0))
