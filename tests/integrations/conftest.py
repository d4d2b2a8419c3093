"""Tiny randomly initialised Llama / Mistral / Qwen2 models for the Hugging Face integration tests.

Every model: vocabulary 97, hidden 64, 2 layers, 4 query / 2 KV heads, seeded weights. ``head_dim=16``
is given explicitly: 4.x's ``MistralConfig`` stores ``head_dim=None``, which HF's own dynamic-NTK
function then multiplies (a TypeError in vanilla transformers, not ours).
``initializer_range=0.1`` (HF's default is 0.02): at 0.02 the attention logits are ~0.01, attention is
nearly uniform and the logits barely depend on positions (a 1 % change of every frequency moves them
by 3e-4); at 0.1 the same change moves them by ~0.3, so the logit comparisons below can see an
encoding error.

The rope settings of a tiny model are written as one flat dict ``{"rope_type", "rope_theta", ...}``
and handed to the config in the installed transformers' own layout (:func:`rope_kwargs`).

The helpers reach the tests through the ``tiny`` fixture (a namespace of these functions and
constants), so no test module imports this conftest.
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")

from hopekit import pe  # noqa: E402
from hopekit.integrations import hf  # noqa: E402

ARCHS = ("llama", "mistral", "qwen2")
CONFIG_CLASSES = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
                  "qwen2": transformers.Qwen2Config}
VOCAB = 97
HEAD_DIM = 16
NUM_HEADS = 4
NUM_KV_HEADS = 2

#: float32 unit roundoff
U32 = 2.0 ** -24


BASE = 10000.0
SHORT = [1.0 + 0.1 * i for i in range(8)]   # LongRoPE rescale lists, one per pair (head_dim 16: 8 pairs)
LONG = [1.0 + 0.5 * i for i in range(8)]

#: native rope settings of the installed transformers: (flat rope dict: rope_type, rope_theta, the
#: type's fields; max_position_embeddings; optional further config keywords). Every rope type hopekit
#: maps appears; every original (pre-training) length is 32 (64 for 4.x's reading of
#: yarn_top_level_original), and the tests run lengths 12 and 40, below and above it (dynamic NTK
#: grows, LongRoPE switches to its long set).
NATIVE = {
    "default": ({"rope_type": "default", "rope_theta": BASE}, 32),
    "linear": ({"rope_type": "linear", "rope_theta": BASE, "factor": 2.0}, 32),
    "dynamic": ({"rope_type": "dynamic", "rope_theta": BASE, "factor": 2.0}, 32),
    "yarn": ({"rope_type": "yarn", "rope_theta": BASE, "factor": 4.0, "original_max_position_embeddings": 32}, 128),
    "yarn_options": ({"rope_type": "yarn", "rope_theta": 5e5, "factor": 3.0, "original_max_position_embeddings": 32,
                      "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 0.8, "truncate": False},
                     96),
    # a top-level original length beside yarn's rope dict (DeepSeek style): 4.x reads only the dict's
    # (absent here: max_position_embeddings, 64), 5.x lets the top-level one (32) win
    "yarn_top_level_original": ({"rope_type": "yarn", "rope_theta": BASE, "factor": 2.0}, 64,
                                {"original_max_position_embeddings": 32}),
    # original 32 and high/low factors 4/1: pair 0 (wavelength 6.3) is kept, pair 1 (19.9) blended,
    # pairs ≥ 2 (≥ 63) divided by the factor: all three bands of Llama 3.1's rule
    "llama3": ({"rope_type": "llama3", "rope_theta": BASE, "factor": 4.0, "original_max_position_embeddings": 32,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0}, 128),
    "longrope": ({"rope_type": "longrope", "rope_theta": BASE, "short_factor": SHORT, "long_factor": LONG,
                  "original_max_position_embeddings": 32}, 64),
    "longrope_attention_factor": ({"rope_type": "longrope", "rope_theta": BASE, "short_factor": SHORT,
                                   "long_factor": LONG, "original_max_position_embeddings": 32,
                                   "attention_factor": 1.3}, 64),
    # an explicit factor that disagrees with max_position_embeddings / original: 4.x takes the ratio
    # (2), 5.x the explicit factor (3); hopekit must follow the installed version
    "longrope_explicit_factor": ({"rope_type": "longrope", "rope_theta": BASE, "short_factor": SHORT,
                                  "long_factor": LONG, "original_max_position_embeddings": 32, "factor": 3.0}, 64),
    # no original length at all: it is max_position_embeddings, the factor comes from the dict
    "longrope_no_original": ({"rope_type": "longrope", "rope_theta": BASE, "short_factor": SHORT,
                              "long_factor": LONG, "factor": 2.0}, 32),
}
LENGTHS = (12, 40)  # ascending: HF's dynamic NTK keeps the largest spectrum it has grown to


def rope_kwargs(rope: dict) -> dict:
    """Config keyword arguments for rotary settings given flat, in the installed version's layout."""
    rope = dict(rope)
    # The one place the tests branch on the version, because the two layouts are what users of each
    # version write: 5.x takes one dict ``rope_parameters`` (``rope_theta`` and LongRoPE's original
    # length inside it); 4.x takes ``rope_theta`` plus a ``rope_scaling`` dict (None for plain RoPE),
    # and its LongRoPE reads the original length only from the top level of the config (Phi-3 style).
    if hf.TRANSFORMERS_MAJOR >= 5:
        return {"rope_parameters": rope}
    out = {"rope_theta": rope.pop("rope_theta")}
    if rope["rope_type"] == "longrope" and "original_max_position_embeddings" in rope:
        out["original_max_position_embeddings"] = rope.pop("original_max_position_embeddings")
    out["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    return out


def tiny_config(arch: str = "llama", rope: dict | None = None, *, max_pos: int = 32, **extra):
    rope = rope if rope is not None else {"rope_type": "default", "rope_theta": BASE}
    kwargs = dict(vocab_size=VOCAB, hidden_size=HEAD_DIM * NUM_HEADS, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=NUM_HEADS, num_key_value_heads=NUM_KV_HEADS, head_dim=HEAD_DIM,
                  max_position_embeddings=max_pos, initializer_range=0.1, attn_implementation="sdpa")
    return CONFIG_CLASSES[arch](**{**kwargs, **rope_kwargs(rope), **extra})


def _seeded_model(config):
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


def tiny_model(arch: str = "llama", rope: dict | None = None, **kwargs):
    """A seeded tiny ``*ForCausalLM`` in eval mode (same weights for the same arguments)."""
    return _seeded_model(tiny_config(arch, rope, **kwargs))


def native_config(arch: str, case: str):
    """The tiny config of ``NATIVE[case]``."""
    rope, max_pos, *extra = NATIVE[case]
    return tiny_config(arch, copy.deepcopy(rope), max_pos=max_pos, **(extra[0] if extra else {}))


def native_model(arch: str, case: str):
    """The seeded tiny model of ``NATIVE[case]`` (its own rotary module: HF's reference)."""
    return _seeded_model(native_config(arch, case))


def logits(model, ids: torch.Tensor, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(ids, **kwargs).logits


def ids_of(length: int, batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def angle_error_bound(params: pe.Params, max_position: int, seq_len: int | None = None) -> float:
    """Bound on |hopekit − HF| for one cos or sin entry at positions ≤ ``max_position``.

    HF computes angles in float32: θ_i carries a relative error ≤ (ln b_eff + 8)·2^-24 (the exponent
    2i/d rounded to float32 before b^x, plus a handful of float32 roundings; tests/pe/test_hf_parity.py
    derives it), and θ_i·p rounds once more; so an angle φ is off by ≤ (ln b_eff + 9)·|φ|·2^-24.
    cos and sin are 1-Lipschitz and each side rounds its result once (≤ 2^-24 each). Both sides then
    multiply by the attention factor a. Our angles are float64, exact to far below this.
    """
    enc = pe.build(params, head_dim=HEAD_DIM)
    spec = enc.spectrum(seq_len)
    # ln b_eff ≤ ln(1/θ_min)·d/(d−2): the effective base, with dynamic NTK's growth and any factor folded in
    slowest = float(spec.inv_freq[spec.inv_freq > 0].min())  # hope_highfreq zeroes some pairs: angle 0, exact
    ln_b = math.log(1.0 / slowest) * HEAD_DIM / (HEAD_DIM - 2)
    max_angle = max_position * float(spec.inv_freq.max())
    return spec.attn_scale * ((ln_b + 9.0) * max_angle + 2.0) * U32


def pytest_generate_tests(metafunc):
    """A test asking for ``arch`` runs on Llama, Mistral and Qwen2; one asking for ``native_case`` on
    every case of NATIVE."""
    if "arch" in metafunc.fixturenames:
        metafunc.parametrize("arch", ARCHS)
    if "native_case" in metafunc.fixturenames:
        metafunc.parametrize("native_case", sorted(NATIVE))


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The helpers and constants above: ``tiny.model(arch, rope)``, ``tiny.logits(model, ids)``, …"""
    return SimpleNamespace(
        ARCHS=ARCHS, NATIVE=NATIVE, LENGTHS=LENGTHS, BASE=BASE, VOCAB=VOCAB, HEAD_DIM=HEAD_DIM,
        NUM_HEADS=NUM_HEADS, NUM_KV_HEADS=NUM_KV_HEADS, U32=U32, rope_kwargs=rope_kwargs, config=tiny_config,
        model=tiny_model, native_config=native_config, native_model=native_model, logits=logits, ids=ids_of,
        angle_error_bound=angle_error_bound)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    """HF's config validators warn about style (e.g. an original length equal to max_position_embeddings)."""
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    yield
    transformers.logging.set_verbosity(verbosity)
