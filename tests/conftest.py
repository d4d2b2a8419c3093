"""Shared fixtures: one example configuration per registered method (a test checks it covers all)."""

from __future__ import annotations

import pytest
import torch

HEAD_DIM = 16
NUM_HEADS = 4

#: one example configuration per registry entry, with non-trivial parameters
EXAMPLES: dict[str, dict] = {
    "rope": {"base": 10000.0},
    "linear": {"factor": 4.0},
    "ntk": {"factor": 4.0},
    "dynamic_ntk": {"factor": 4.0, "train_len": 64},
    "yarn": {"factor": 4.0, "train_len": 64},
    "llama3": {"factor": 4.0, "train_len": 64, "base": 10000.0},
    "longrope": {"short_rescale": [1.0 + 0.1 * i for i in range(HEAD_DIM // 2)],
                 "long_rescale": [1.0 + 0.5 * i for i in range(HEAD_DIM // 2)],
                 "train_len": 64, "factor": 4.0},
    "hope_highfreq": {"train_len": 64},
    "hope_hyperbolic": {"omega_scale": 0.05, "penalty": 0.06},
    "alibi": {},
    "sinusoidal": {},
    "learned": {"max_len": 4096},
    "nope": {},
    "bipe": {"inter": {"kind": "rope"}, "intra_max_len": 512},
}


def build_example(name: str, head_dim: int = HEAD_DIM, num_heads: int = NUM_HEADS, **overrides):
    from hopekit import pe

    params = {**EXAMPLES[name], **overrides}
    return pe.build(name, head_dim=head_dim, num_heads=num_heads, **params)


# Tiny tensors: one intra-op thread is faster, and immune to oversubscription on a shared 2-core box.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
