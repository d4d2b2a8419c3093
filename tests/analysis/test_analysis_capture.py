"""capture: the recomputed attention weights are the model's own (weights · values = the layer's output)."""

from __future__ import annotations

import pytest
import torch

from hopekit import pe
from hopekit.analysis.capture import attention_weights, capture_qk, iter_attention
from hopekit.model import Decoder, ModelConfig
from tests.conftest import EXAMPLES

VOCAB = 32


def make(kind: str) -> Decoder:
    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, attn_chunk=5,
                      init_std=0.5, pe={"kind": kind, **EXAMPLES[kind]})
    return Decoder(cfg).eval()


@pytest.mark.parametrize("kind", sorted(pe.REGISTRY))
def test_weights_times_values_is_the_layers_attention_output(kind):
    torch.manual_seed(0)
    model = make(kind)
    idx = torch.randint(0, VOCAB, (2, 23))
    outputs = []  # the input of each layer's output projection: softmax(logits) @ v, heads concatenated
    hooks = [blk.attn.wo.register_forward_pre_hook(lambda m, a: outputs.append(a[0].detach()))
             for blk in model.blocks]
    try:
        layers = list(iter_attention(model, idx))
    finally:
        for h in hooks:
            h.remove()
    assert [qk.layer for qk, _ in layers] == list(range(len(model.blocks)))
    for (qk, w), y in zip(layers, outputs):
        B, H, T, _ = w.shape
        assert (B, H, T) == (2, 4, 23)
        torch.testing.assert_close(w.sum(-1), torch.ones(B, H, T))
        assert (w.triu(diagonal=1) == 0).all()                       # causal: no weight on future keys
        mine = (w.double() @ qk.v.double()).transpose(1, 2).reshape(B, T, -1)
        # float32 rounding: hope_hyperbolic's model path forms logits in 5-row chunks with other block
        # anchors (exponents up to e^±20), so compare at float32's tolerance of the output's scale
        torch.testing.assert_close(mine.float(), y, rtol=1e-4, atol=1e-5 * max(1.0, float(y.abs().max())))


def test_attention_weights_stacks_layers_and_leaves_the_model_unchanged():
    model = make("rope").train()
    idx = torch.randint(0, VOCAB, (1, 9))
    w = attention_weights(model, idx)
    assert w.shape == (2, 1, 4, 9, 9)
    assert model.training                                            # mode restored
    assert all(not m._forward_pre_hooks for m in model.modules())    # hooks removed
    qk = capture_qk(model, idx)[0]
    assert qk.raw_q.shape == qk.q.shape == (1, 4, 9, 16)
    assert not torch.equal(qk.raw_q, qk.q)                           # rope rotated the captured queries


def test_bad_input_is_one_line():
    with pytest.raises(TypeError, match="model: expected a hopekit Decoder"):
        capture_qk(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="idx: expected"):
        capture_qk(make("rope"), torch.zeros(3))
