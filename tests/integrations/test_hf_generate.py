"""Greedy decoding with a KV cache equals recomputing the whole sequence, for every encoding
patch_model supports — including LongRoPE's short → long switch and dynamic NTK's growing base, where a
plain cache would hold keys rotated with a stale spectrum."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")
from hopekit import pe  # noqa: E402
from hopekit.integrations import hf  # noqa: E402
from hopekit.integrations.hf.generate import CACHE_ARG  # noqa: E402

TRAIN_LEN = 16  # the tiny model's max_position_embeddings: prompts of 12 + 10 new tokens cross it


def tiny_llama(tiny, model_type: str = "llama", **extra):
    """conftest's seeded tiny model (head dim 16) with a window of TRAIN_LEN and a sharpened LM head."""
    model = tiny.model(model_type, max_pos=TRAIN_LEN, **extra)
    with torch.no_grad():  # larger logits, so greedy choices are not near-ties
        model.lm_head.weight.mul_(20)
    return model


def _configs():
    for kind in ("rope", "linear", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope", "hope_highfreq",
                 "alibi", "hope_hyperbolic", "nope"):
        config = pe.example_config(kind, head_dim=16)
        if "train_len" in config:
            config["train_len"] = TRAIN_LEN
        yield pytest.param(config, id=kind)


@pytest.mark.parametrize("config", list(_configs()))
def test_cached_greedy_decoding_equals_recomputing(config, tiny):
    model = hf.patch_model(tiny_llama(tiny), config)
    prompt = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(1))
    cached, cached_scores = hf.generate(model, prompt, 10, return_scores=True)
    recomputed, scores = hf.generate(model, prompt, 10, use_cache=False, return_scores=True)
    assert cached.shape == (2, 22)
    assert torch.equal(cached, recomputed)
    # same logits up to float32 summation order (a stale rotation in the cache moves them by > 1e-3)
    torch.testing.assert_close(cached_scores, scores, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", ["longrope", "dynamic_ntk", "alibi", "hope_hyperbolic"])
@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_cached_decoding_equals_recomputing_on_mistral_and_qwen2(model_type, kind, tiny):
    extra = {"sliding_window": 8} if model_type == "mistral" else {}  # the window must hold under caching too
    config = {**pe.example_config(kind, head_dim=16)}
    if "train_len" in config:
        config["train_len"] = TRAIN_LEN
    model = hf.patch_model(tiny_llama(tiny, model_type, **extra), config)
    prompt = torch.randint(0, 61, (2, 12), generator=torch.Generator().manual_seed(1))
    cached, cached_scores = hf.generate(model, prompt, 8, return_scores=True)
    recomputed, scores = hf.generate(model, prompt, 8, use_cache=False, return_scores=True)
    assert torch.equal(cached, recomputed)
    torch.testing.assert_close(cached_scores, scores, rtol=0, atol=1e-4)


def test_a_plain_cache_would_drift_at_the_longrope_switch(tiny):
    """Why generate rebuilds the cache: keys cached before the switch were rotated with the short
    factors; reusing them after it gives logits that differ from a full forward (the test above would
    then fail). This checks the premise on the logits directly."""
    model = hf.patch_model(tiny_llama(tiny), {**pe.example_config("longrope", 16), "train_len": TRAIN_LEN})
    ids = torch.randint(0, 61, (1, TRAIN_LEN + 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids).logits[:, -1]
        cache = transformers.DynamicCache()
        model(ids[:, :-1], use_cache=True, **{CACHE_ARG: cache})        # length 16: short factors
        stale = model(ids[:, -1:], use_cache=True, **{CACHE_ARG: cache}).logits[:, -1]  # length 17: long
    assert (full - stale).abs().max() > 1e-3


def test_generate_refuses_bad_arguments(tiny):
    model = tiny_llama(tiny)
    with pytest.raises(ValueError, match="input_ids"):
        hf.generate(model, torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="max_new_tokens"):
        hf.generate(model, torch.zeros(1, 3, dtype=torch.long), -1)


def test_generate_stops_at_eos(tiny):
    model = tiny_llama(tiny)
    prompt = torch.randint(0, 61, (1, 5), generator=torch.Generator().manual_seed(3))
    free = hf.generate(model, prompt, 6)
    eos = int(free[0, 7])  # the third generated token
    out = hf.generate(model, prompt, 6, eos_token_id=eos)
    assert out.shape[1] <= 8 and int(out[0, -1]) == eos
    assert torch.equal(out[0, : out.shape[1]], free[0, : out.shape[1]])
