"""A toy decoder and token stream shared by the evaluation tests."""

from __future__ import annotations

import pytest
import torch

from hopekit.model import Decoder, ModelConfig

VOCAB = 24
TRAIN_LEN = 16


def make(kind: str = "rope", **pe_params) -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, attn_chunk=48,
                      pe={"kind": kind, **pe_params})
    return Decoder(cfg).eval()


@pytest.fixture(scope="module")
def rope_model() -> Decoder:
    return make("rope")


def stream(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (n,), generator=g)
