"""Shared fixtures: the registry's example configuration of every method, tiny shapes, seeding."""

from __future__ import annotations

import pytest
import torch

from hopekit import pe

HEAD_DIM = 16
NUM_HEADS = 4

#: the registry's example configuration of every method (``Method.example``) at HEAD_DIM, without kind
EXAMPLES: dict[str, dict] = {name: {k: v for k, v in pe.example_config(name, HEAD_DIM).items() if k != "kind"}
                             for name in pe.REGISTRY}


def build_example(name: str, head_dim: int = HEAD_DIM, num_heads: int = NUM_HEADS, **overrides):
    params = {**EXAMPLES[name], **overrides}
    return pe.build(name, head_dim=head_dim, num_heads=num_heads, **params)


# Tiny tensors: one intra-op thread is faster, and immune to oversubscription on a shared 2-core box.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
