"""Layer 3 oracle: our RoPE-family spectra against Hugging Face transformers' own rope functions.

``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` is an *external* oracle: we build an HF config,
call HF's function, and compare with ``hopekit.pe.build(kind, ...).spectrum(seq_len)``. Nothing of HF's
code is copied here. This is the only test module that imports transformers (pinned range: 4.46 ≤ v < 5,
the ``rope_scaling`` config API; v5 moved the keys to ``rope_parameters`` and changed LongRoPE's
original-length convention, see papers/longrope.md).

Name mapping (HF → ours): ``rope_theta`` → ``base``; ``original_max_position_embeddings`` (or
``max_position_embeddings`` where HF reads that: ``dynamic``, and ``yarn``/``longrope`` without an
original length) → ``train_len``; ``partial_rotary_factor`` → ``rotary_fraction``; ``short_factor`` /
``long_factor`` → ``short_rescale`` / ``long_rescale``; ``factor`` → ``factor``; ``dynamic`` →
``dynamic_ntk``; ``default`` → ``rope``.

The second half checks the known values of papers/longrope.md, "Validation plan" A, against closed
forms (no HF needed, but kept here beside the oracle they complement).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

transformers = pytest.importorskip("transformers", minversion="4.46")
if int(transformers.__version__.split(".")[0]) >= 5:  # pragma: no cover - pinned range
    pytest.skip(f"transformers {transformers.__version__}: parity tests target the v4 rope_scaling API",
                allow_module_level=True)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

from hopekit import pe  # noqa: E402

# --------------------------------------------------------------------------------------------------
# Tolerances
# --------------------------------------------------------------------------------------------------
#
# HF evaluates inv_freq in float32; we evaluate in float64 and are the reference. HF's float32 error
# per frequency is dominated by the exponent x = 2i/d, which is rounded to float32 (relative error
# ≤ 2^-24, |x| < 1) before b^x is taken: the relative error of b^x is then ≤ ln(b)·2^-24. The float32
# pow, the reciprocal, the division by the factor / rescale list (itself rounded to float32) and YaRN's
# and Llama-3's two-term blends add a handful of float32 roundings (≤ 2^-24 each). Hence
#     rtol = (ln b_eff + 8) · 2^-24      (≈ 1e-6 for b = 1e4, ≈ 1.3e-6 for b = 5e5)
# with b_eff the effective base (dynamic NTK's grown base). A real discrepancy — a pair shifted by
# one, a wrong ramp end, the wrong factor set — is a relative error of 1e-3 or more.
# Attention factors are plain Python floats (float64) on both sides: compared to 1e-12.

U32 = 2.0 ** -24


def rtol_for(base_eff: float) -> float:
    return (math.log(base_eff) + 8.0) * U32


ATTN_RTOL = 1e-12


@pytest.fixture(autouse=True)
def _quiet_hf_config_warnings():
    """HF's config validators log style warnings (e.g. ``factor`` given as an int); not our concern."""
    logger = logging.getLogger("transformers.modeling_rope_utils")
    old = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(old)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

#: (head_dim, rotary_fraction, base): full and partial rotary, Llama / Llama-3 / Code-Llama / SmolLM bases
SHAPES = [
    (64, 1.0, 10000.0),
    (128, 1.0, 10000.0),
    (96, 1.0, 10000.0),        # Phi-3-mini head
    (128, 1.0, 500000.0),      # Llama-3
    (128, 0.75, 10000.0),      # Phi-4-mini: 48 rotary pairs
    (64, 0.5, 1000000.0),      # Code Llama base, GPT-NeoX-style rotary_pct
    (128, 0.25, 100000.0),     # SmolLM2 base, 16 pairs
]
SHAPE_IDS = [f"d{d}-rf{rf}-b{b:g}" for d, rf, b in SHAPES]


def hf_config(head_dim: int, base: float, max_pos: int, rope_scaling: dict | None = None,
              rotary_fraction: float = 1.0, **top_level):
    """A minimal HF config; only the fields the rope init functions read matter."""
    return transformers.LlamaConfig(
        hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim, rope_theta=base,
        max_position_embeddings=max_pos, rope_scaling=rope_scaling, partial_rotary_factor=rotary_fraction,
        **top_level)


def hf_spectrum(rope_type: str, config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    inv_freq, attn = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), seq_len)
    assert inv_freq.dtype == torch.float32  # the premise of the tolerance above
    return inv_freq.double(), float(attn)


def ours(kind: str, head_dim: int, seq_len: int | None = None, **params) -> pe.Spectrum:
    spec = pe.build(kind, head_dim=head_dim, **params).spectrum(seq_len)
    assert spec.inv_freq.dtype == torch.float64
    return spec


def yarn_extra_rtol(rotary_dim, base, train_len, factor, beta_fast=32.0, beta_slow=1.0, truncate=True) -> float:
    """YaRN's blend θ·[(1 − ρ) + ρ/s] amplifies an absolute error δρ of HF's float32 ramp by up to s − 1
    (relative, where ρ → 1 the result is ≈ θ/s). HF forms ρ = (i − lo)/(hi − lo) in float32 with lo and hi
    rounded to float32 (exact integers when truncated): δρ ≤ (2 + (|lo| + |hi|)/(hi − lo))·2^-24."""
    lo, hi = _ramp_ends(rotary_dim, base, train_len, beta_fast, beta_slow, truncate)
    width = max(hi - lo, 0.001)
    return (factor - 1) * (2 + (abs(lo) + abs(hi)) / width) * U32


def assert_parity(mine: pe.Spectrum, theirs: tuple[torch.Tensor, float], base_eff: float,
                  extra_rtol: float = 0.0) -> None:
    inv_freq, attn = theirs
    assert mine.inv_freq.shape == inv_freq.shape
    torch.testing.assert_close(mine.inv_freq, inv_freq, rtol=rtol_for(base_eff) + extra_rtol, atol=0.0)
    assert mine.attn_scale == pytest.approx(attn, rel=ATTN_RTOL)


def rescale_lists(pairs: int, factor: float, seed: int) -> tuple[list[float], list[float]]:
    """Random monotone LongRoPE-like sets: short in [1, 1.1], long in [1, 2s] (seeded)."""
    g = torch.Generator().manual_seed(seed)
    short = (1.0 + 0.1 * torch.rand(pairs, generator=g, dtype=torch.float64)).sort().values
    long = (1.0 + (2 * factor - 1) * torch.rand(pairs, generator=g, dtype=torch.float64)).sort().values
    return short.tolist(), long.tolist()


# --------------------------------------------------------------------------------------------------
# default / linear
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
def test_default(head_dim, fraction, base):
    cfg = hf_config(head_dim, base, 4096, rotary_fraction=fraction)
    mine = ours("rope", head_dim, base=base, rotary_fraction=fraction)
    assert mine.inv_freq.shape == (int(head_dim * fraction) // 2,)
    assert_parity(mine, hf_spectrum("default", cfg), base)


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.5, 32.0])
@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
def test_linear(head_dim, fraction, base, factor):
    cfg = hf_config(head_dim, base, 4096, {"rope_type": "linear", "factor": factor}, fraction)
    mine = ours("linear", head_dim, base=base, rotary_fraction=fraction, factor=factor)
    assert_parity(mine, hf_spectrum("linear", cfg), base)


# --------------------------------------------------------------------------------------------------
# dynamic NTK (HF "dynamic": the original length is max_position_embeddings)
# --------------------------------------------------------------------------------------------------


def _dynamic_base(base, factor, train_len, seq_len, rotary_dim):
    length = max(seq_len or train_len, train_len)
    return base * (factor * length / train_len - (factor - 1)) ** (rotary_dim / (rotary_dim - 2))


@pytest.mark.parametrize("seq_len", [None, 1, 1000, 2047, 2048, 2049, 3072, 4096, 8192, 16384, 65536])
@pytest.mark.parametrize("factor", [2.0, 8.0])
@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
def test_dynamic_ntk(head_dim, fraction, base, factor, seq_len):
    train_len = 2048
    cfg = hf_config(head_dim, base, train_len, {"rope_type": "dynamic", "factor": factor}, fraction)
    mine = ours("dynamic_ntk", head_dim, seq_len, base=base, rotary_fraction=fraction, factor=factor,
                train_len=train_len)
    base_eff = _dynamic_base(base, factor, train_len, seq_len, int(head_dim * fraction))
    assert_parity(mine, hf_spectrum("dynamic", cfg, seq_len), base_eff)


def test_dynamic_ntk_follows_the_positions_like_hf():
    """Through ``rotate``, the length is max(position) + 1 (HF's ``dynamic_rope_update`` rule)."""
    enc = pe.build("dynamic_ntk", head_dim=64, factor=4.0, train_len=256)
    cfg = hf_config(64, 10000.0, 256, {"rope_type": "dynamic", "factor": 4.0})
    for last in (100, 255, 256, 700):
        positions = torch.arange(last - 9, last + 1)
        feats = enc.features(positions)
        inv_freq, _ = hf_spectrum("dynamic", cfg, last + 1)
        expected = torch.cos(positions.double()[:, None] * inv_freq)
        # angles ≤ 700 rad from float32-rounded HF frequencies: |Δangle| ≤ 700·rtol ≈ 8e-4 worst case
        torch.testing.assert_close(feats.cos.double(), expected, rtol=0, atol=700 * rtol_for(1e5) + 1e-6)


# --------------------------------------------------------------------------------------------------
# YaRN
# --------------------------------------------------------------------------------------------------


def _yarn_scaling(factor, train_len, **extra):
    return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": train_len, **extra}


@pytest.mark.parametrize(("factor", "train_len"), [(1.0, 4096), (2.0, 2048), (4.0, 4096), (2.5, 8192),
                                                   (32.0, 4096), (16.0, 512)])
@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
def test_yarn_default_attention_factor(head_dim, fraction, base, factor, train_len):
    cfg = hf_config(head_dim, base, int(factor * train_len), _yarn_scaling(factor, train_len), fraction)
    mine = ours("yarn", head_dim, base=base, rotary_fraction=fraction, factor=factor, train_len=train_len)
    extra = yarn_extra_rtol(int(head_dim * fraction), base, train_len, factor)
    assert_parity(mine, hf_spectrum("yarn", cfg), base, extra)


VARIANTS = {
    "attention_factor": {"attention_factor": 0.8},
    "attention_factor_wins_over_mscale": {"attention_factor": 1.25, "mscale": 0.707, "mscale_all_dim": 1.0},
    "mscale_deepseek": {"mscale": 1.0, "mscale_all_dim": 1.0},
    "mscale_ratio": {"mscale": 0.707, "mscale_all_dim": 1.0},
    "mscale_ratio_2": {"mscale": 1.0, "mscale_all_dim": 0.5},
    "mscale_alone_is_ignored": {"mscale": 0.707},
    "mscale_all_dim_alone_is_ignored": {"mscale_all_dim": 0.707},
    "untruncated": {"truncate": False},
    "untruncated_mistral_betas": {"truncate": False, "beta_fast": 128.0, "beta_slow": 2.0},
    "mistral_betas": {"beta_fast": 128.0, "beta_slow": 2.0},
    "narrow_betas": {"beta_fast": 8.0, "beta_slow": 4.0},
    "fractional_betas": {"beta_fast": 24.5, "beta_slow": 0.5},
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
def test_yarn_variants(head_dim, fraction, base, variant):
    extra = VARIANTS[variant]
    factor, train_len = 16.0, 4096
    cfg = hf_config(head_dim, base, int(factor * train_len), _yarn_scaling(factor, train_len, **extra), fraction)
    mine = ours("yarn", head_dim, base=base, rotary_fraction=fraction, factor=factor, train_len=train_len, **extra)
    ramp = {k: extra[k] for k in ("beta_fast", "beta_slow", "truncate") if k in extra}
    assert_parity(mine, hf_spectrum("yarn", cfg), base,
                  yarn_extra_rtol(int(head_dim * fraction), base, train_len, factor, **ramp))


def test_yarn_without_original_length_uses_max_position_embeddings():
    """Older configs carry no original length: HF then ramps on max_position_embeddings (our train_len)."""
    cfg = hf_config(128, 10000.0, 4096, {"rope_type": "yarn", "factor": 8.0})
    assert_parity(ours("yarn", 128, factor=8.0, train_len=4096), hf_spectrum("yarn", cfg), 1e4,
                  yarn_extra_rtol(128, 1e4, 4096, 8.0))


def _ramp_ends(head_dim, base, train_len, beta_fast=32.0, beta_slow=1.0, truncate=True):
    """The closed form of papers/longrope.md: i(q) = d·ln(L/(2πq)) / (2 ln b), floor/ceil, clipped."""
    def i(q):
        return head_dim * math.log(train_len / (2 * math.pi * q)) / (2 * math.log(base))
    lo, hi = i(beta_fast), i(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    return max(lo, 0), min(hi, head_dim - 1)


@pytest.mark.parametrize("where", ["both_ends_at_0", "both_ends_at_d_minus_1"])
def test_yarn_equal_ramp_ends_guard(where):
    """When the clipped ramp ends coincide the reference code widens the ramp by 0.001 (no 0/0)."""
    head_dim, base, factor = 16, 10000.0, 4.0
    if where == "both_ends_at_0":
        train_len = 6  # i(1) = 16·ln(6/2π)/(2 ln 1e4) ≈ −0.04 → ceil 0; i(32) < 0 → clipped to 0
    else:  # floor(i(32)) = d − 1 and i(1) > d − 1 → hi clipped to d − 1
        train_len = math.ceil(2 * math.pi * 32 * base ** (2 * (head_dim - 0.5) / head_dim))
    lo, hi = _ramp_ends(head_dim, base, train_len)
    assert lo == hi  # the guard's precondition really holds
    cfg = hf_config(head_dim, base, int(factor * train_len), _yarn_scaling(factor, train_len))
    mine = ours("yarn", head_dim, base=base, factor=factor, train_len=train_len)
    assert torch.isfinite(mine.inv_freq).all()
    assert_parity(mine, hf_spectrum("yarn", cfg), base, yarn_extra_rtol(head_dim, base, train_len, factor))
    ratio = mine.inv_freq / ours("rope", head_dim, base=base).inv_freq
    if where == "both_ends_at_0":  # pair 0 kept, the rest (i ≥ 0.001 past the end) fully interpolated
        torch.testing.assert_close(ratio, torch.tensor([1.0] + [1 / factor] * 7, dtype=torch.float64))
    else:  # every pair sits below the ramp: nothing is interpolated
        torch.testing.assert_close(ratio, torch.ones(8, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# Llama-3
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("factor", "train_len", "low", "high"),
                         [(8.0, 8192, 1.0, 4.0), (32.0, 8192, 1.0, 4.0), (4.0, 2048, 1.0, 4.0),
                          (8.0, 8192, 2.0, 8.0), (16.0, 4096, 0.5, 3.0)])
@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
def test_llama3(head_dim, fraction, base, factor, train_len, low, high):
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
               "original_max_position_embeddings": train_len}
    cfg = hf_config(head_dim, base, int(factor * train_len), scaling, fraction)
    mine = ours("llama3", head_dim, base=base, rotary_fraction=fraction, factor=factor, train_len=train_len,
                low_freq_factor=low, high_freq_factor=high)
    assert_parity(mine, hf_spectrum("llama3", cfg), base)


#: transformers' llama3 rope_scaling keys → ours
LLAMA3_REQUIRED = {"factor": "factor", "low_freq_factor": "low_freq_factor",
                   "high_freq_factor": "high_freq_factor", "original_max_position_embeddings": "train_len"}


@pytest.mark.parametrize("hf_key", sorted(LLAMA3_REQUIRED))
def test_llama3_required_keys_match_transformers(hf_key):
    """transformers refuses a llama3 rope_scaling without any of these four keys; so do we (no silent
    Llama-3.1 values), and its default rope_theta is RoPE's, as is our default base."""
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 1024}
    mine = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "train_len": 1024}
    with pytest.raises(KeyError, match=hf_key):  # (at config validation or in the init function)
        cfg = transformers.LlamaConfig(hidden_size=128, num_attention_heads=2, head_dim=64,
                                       max_position_embeddings=8192,
                                       rope_scaling={k: v for k, v in scaling.items() if k != hf_key})
        ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ours_key = LLAMA3_REQUIRED[hf_key]
    with pytest.raises(TypeError, match=ours_key):
        pe.build("llama3", head_dim=64, **{k: v for k, v in mine.items() if k != ours_key})
    full = transformers.LlamaConfig(hidden_size=128, num_attention_heads=2, head_dim=64,
                                    max_position_embeddings=8192, rope_scaling=scaling)
    assert pe.build("llama3", head_dim=64, **mine).params.base == full.rope_theta


# --------------------------------------------------------------------------------------------------
# LongRoPE
# --------------------------------------------------------------------------------------------------

#: (train_len, factor): Phi-3-mini-128k (4096, 32), LongRoPE2-Phi3 (2048, 64), small ones
LONGROPE_LENGTHS = [(4096, 32.0), (2048, 64.0), (256, 4.0)]


def _longrope_hf(head_dim, base, fraction, train_len, factor, short, long, style, attention_factor=None):
    """Two consistent encodings of the same model in HF v4 configs.

    * ``nested``: no top-level original length, so HF takes L = max_position_embeddings and F = factor;
    * ``phi3``: the Phi-3 layout, a top-level ``original_max_position_embeddings`` = L and
      max_position_embeddings = F·L, from which HF derives F (any ``factor`` key would be overridden).
    """
    scaling = {"rope_type": "longrope", "short_factor": list(short), "long_factor": list(long)}
    if attention_factor is not None:
        scaling["attention_factor"] = attention_factor
    if style == "nested":
        return hf_config(head_dim, base, train_len, {**scaling, "factor": factor}, fraction)
    max_pos = int(factor * train_len)
    assert max_pos / train_len == factor
    return hf_config(head_dim, base, max_pos, scaling, fraction, original_max_position_embeddings=train_len)


@pytest.mark.parametrize("style", ["nested", "phi3"])
@pytest.mark.parametrize(("train_len", "factor"), LONGROPE_LENGTHS)
@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
def test_longrope_short_and_long_sets(head_dim, fraction, base, train_len, factor, style):
    pairs = int(head_dim * fraction) // 2
    short, long = rescale_lists(pairs, factor, seed=head_dim + pairs)
    cfg = _longrope_hf(head_dim, base, fraction, train_len, factor, short, long, style)
    enc = pe.build("longrope", head_dim=head_dim, base=base, rotary_fraction=fraction, train_len=train_len,
                   factor=factor, short_rescale=short, long_rescale=long)
    rope = ours("rope", head_dim, base=base, rotary_fraction=fraction).inv_freq
    for seq_len in (None, 1, train_len // 2, train_len, train_len + 1, 4 * train_len, int(factor * train_len)):
        mine = enc.spectrum(seq_len)
        assert_parity(mine, hf_spectrum("longrope", cfg, seq_len), base)
        expected = long if seq_len is not None and seq_len > train_len else short  # the HF/Phi switching rule
        torch.testing.assert_close(rope / mine.inv_freq, torch.tensor(expected, dtype=torch.float64),
                                   rtol=1e-13, atol=0)


def test_longrope_partial_rotary_phi4_mini_has_48_factors():
    head_dim, fraction, base, train_len, factor = 128, 0.75, 10000.0, 4096, 32.0
    short, long = rescale_lists(48, factor, seed=4)
    cfg = _longrope_hf(head_dim, base, fraction, train_len, factor, short, long, "phi3")
    enc = pe.build("longrope", head_dim=head_dim, base=base, rotary_fraction=fraction, train_len=train_len,
                   factor=factor, short_rescale=short, long_rescale=long)
    assert enc.rotary_dim == 96
    for seq_len in (None, 4096, 4097):
        mine = enc.spectrum(seq_len)
        assert mine.inv_freq.shape == (48,)
        assert_parity(mine, hf_spectrum("longrope", cfg, seq_len), base)


@pytest.mark.parametrize(("factor", "train_len", "expected"), [(32.0, 4096, 1.190238), (64.0, 2048, 1.243163),
                                                               (16.0, 8192, 1.1435), (1.0, 4096, 1.0)])
def test_longrope_su_attention_factor(factor, train_len, expected):
    """a = sqrt(1 + ln F / ln L) (papers/longrope.md; 1 when F ≤ 1), ours vs HF vs the quoted values."""
    pairs = 32
    short, long = rescale_lists(pairs, factor, seed=1)
    enc = pe.build("longrope", head_dim=64, train_len=train_len, factor=factor, short_rescale=short,
                   long_rescale=long)
    digits = len(str(expected).split(".")[1])
    for seq_len in (None, train_len, train_len + 1):  # applied to both sets, as in HF
        a = enc.spectrum(seq_len).attn_scale
        assert a == pytest.approx(expected, abs=0.6 * 10 ** -digits)
        for style in ("nested", "phi3"):
            cfg = _longrope_hf(64, 10000.0, 1.0, train_len, factor, short, long, style)
            assert a == pytest.approx(hf_spectrum("longrope", cfg, seq_len)[1], rel=ATTN_RTOL)


@pytest.mark.parametrize("style", ["nested", "phi3"])
@pytest.mark.parametrize("attention_factor", [1.0, 0.75, 1.5])
def test_longrope_explicit_attention_factor(attention_factor, style):
    head_dim, fraction, base, train_len, factor = 96, 1.0, 10000.0, 4096, 32.0
    short, long = rescale_lists(48, factor, seed=7)
    cfg = _longrope_hf(head_dim, base, fraction, train_len, factor, short, long, style, attention_factor)
    enc = pe.build("longrope", head_dim=head_dim, base=base, train_len=train_len, factor=factor,
                   short_rescale=short, long_rescale=long, attention_factor=attention_factor)
    for seq_len in (None, 100, 4097):
        mine = enc.spectrum(seq_len)
        assert mine.attn_scale == attention_factor
        assert_parity(mine, hf_spectrum("longrope", cfg, seq_len), base)


def test_longrope_hf_test_case_constant_and_ramp_factors():
    """Plan A.2: short = 2 everywhere → default / 2; long = (1 … d/2) → default / (i + 1)."""
    head_dim, base, train_len, factor = 64, 10000.0, 2048, 16.0
    short, long = [2.0] * 32, [float(i + 1) for i in range(32)]
    enc = pe.build("longrope", head_dim=head_dim, train_len=train_len, factor=factor, short_rescale=short,
                   long_rescale=long)
    rope = ours("rope", head_dim).inv_freq
    cfg = _longrope_hf(head_dim, base, 1.0, train_len, factor, short, long, "nested")
    torch.testing.assert_close(enc.spectrum(train_len).inv_freq, rope / 2, rtol=1e-15, atol=0)
    torch.testing.assert_close(enc.spectrum(train_len + 1).inv_freq, rope / torch.arange(1, 33, dtype=torch.float64),
                               rtol=1e-15, atol=0)
    for seq_len in (train_len, train_len + 1):
        assert_parity(enc.spectrum(seq_len), hf_spectrum("longrope", cfg, seq_len), base)


# --------------------------------------------------------------------------------------------------
# End to end: HF's rotary module (dynamic update rule + attention scaling) vs our cos/sin features
# --------------------------------------------------------------------------------------------------


def _hf_rotary_cos(cfg, positions):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rotary = LlamaRotaryEmbedding(cfg)
    x = torch.zeros(1, 1, dtype=torch.float32)  # only its dtype/device are read
    cos, sin = rotary(x, positions[None])
    return cos[0].double(), sin[0].double()


@pytest.mark.parametrize("kind", ["rope", "linear", "dynamic_ntk", "yarn", "llama3", "longrope"])
@pytest.mark.parametrize("last", [40, 63, 64, 65, 200])
def test_rotary_module_cos_sin(kind, last):
    """HF picks the length-dependent spectrum from max(position_ids) + 1 and scales cos/sin by the
    attention factor; so must our ``features``. Small L keeps HF's float32 angles (≤ 200 rad) accurate to
    ~200·rtol ≈ 2e-4 rad, far below what a wrong factor set or a missing attention factor would cost."""
    head_dim, fraction, base, L, s = 32, 0.75, 10000.0, 64, 4.0
    r = int(head_dim * fraction)
    short, long = rescale_lists(r // 2, s, seed=3)
    params, scaling, max_pos, top = {}, None, L, {}
    if kind == "linear":
        params, scaling = {"factor": s}, {"rope_type": "linear", "factor": s}
    elif kind == "dynamic_ntk":
        params, scaling = {"factor": s, "train_len": L}, {"rope_type": "dynamic", "factor": s}
    elif kind == "yarn":
        params, scaling, max_pos = {"factor": s, "train_len": L}, _yarn_scaling(s, L), int(s * L)
    elif kind == "llama3":
        params = {"factor": s, "train_len": L, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
        scaling = {"rope_type": "llama3", "factor": s, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": L}
        max_pos = int(s * L)
    elif kind == "longrope":
        params = {"factor": s, "train_len": L, "short_rescale": short, "long_rescale": long}
        scaling = {"rope_type": "longrope", "short_factor": short, "long_factor": long}
        max_pos, top = int(s * L), {"original_max_position_embeddings": L}
    cfg = hf_config(head_dim, base, max_pos, scaling, fraction, **top)
    positions = torch.arange(last - 15, last + 1)
    hf_cos, hf_sin = _hf_rotary_cos(cfg, positions)
    enc = pe.build(kind, head_dim=head_dim, rotary_fraction=fraction, **params)
    feats = enc.features(positions)  # seq_len defaults to max(position) + 1, HF's rule
    atol = (last + 1) * rtol_for(1e6) * 2 + 1e-6
    # HF's tables are (T, r): the r/2 pair values repeated for the two halves
    torch.testing.assert_close(feats.cos.double(), hf_cos[:, : r // 2], rtol=0, atol=atol)
    torch.testing.assert_close(feats.sin.double(), hf_sin[:, : r // 2], rtol=0, atol=atol)
    torch.testing.assert_close(hf_cos[:, : r // 2], hf_cos[:, r // 2:], rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------
# Known values (papers/longrope.md, Validation plan A) — closed forms, float64
# --------------------------------------------------------------------------------------------------


def _ratio(kind, head_dim=128, base=10000.0, seq_len=None, rotary_fraction=1.0, **params):
    """λ_i = θ_i / θ'_i of a method against plain RoPE at the same base and dims."""
    rope = ours("rope", head_dim, base=base, rotary_fraction=rotary_fraction).inv_freq
    return rope / ours(kind, head_dim, seq_len, base=base, rotary_fraction=rotary_fraction, **params).inv_freq


def test_yarn_known_values_d128_b1e4_L4096():
    d, b, L, s = 128, 10000.0, 4096, 32.0
    i = [d * math.log(L / (2 * math.pi * q)) / (2 * math.log(b)) for q in (32.0, 1.0)]
    assert round(i[0], 2) == 20.94 and round(i[1], 2) == 45.03
    assert _ramp_ends(d, b, L) == (20, 46)

    lam = _ratio("yarn", factor=s, train_len=L)
    assert torch.equal(lam[:21], torch.ones(21, dtype=torch.float64))  # pairs 0 … 20 untouched (ρ = 0)
    torch.testing.assert_close(lam[46:], torch.full((18,), s, dtype=torch.float64), rtol=1e-14, atol=0)
    rho = (torch.arange(64, dtype=torch.float64) - 20) / 26
    expected = 1 / ((1 - rho) + rho / s)  # θ′ = θ·[(1 − ρ) + ρ/s]
    torch.testing.assert_close(lam[20:47], expected[20:47], rtol=1e-14, atol=0)
    assert ((lam[21:46] > 1) & (lam[21:46] < s)).all()
    assert (lam[1:] >= lam[:-1]).all()

    # untruncated (gpt-oss): the ramp runs over the continuous ends 20.94 … 45.03
    lam_u = _ratio("yarn", factor=s, train_len=L, truncate=False)
    rho_u = ((torch.arange(64, dtype=torch.float64) - i[0]) / (i[1] - i[0])).clamp(0, 1)
    torch.testing.assert_close(lam_u, 1 / ((1 - rho_u) + rho_u / s), rtol=1e-14, atol=0)
    assert lam_u[20] == 1.0 and 1.0 < lam_u[21] and lam_u[45] < s and lam_u[46] == pytest.approx(s, rel=1e-14)

    a = ours("yarn", d, factor=s, train_len=L).attn_scale
    assert a == pytest.approx(1.346574, abs=5e-7)
    assert a == pytest.approx(0.1 * math.log(s) + 1, rel=1e-15)


def test_yarn_mscale_ratio_known_value():
    """DeepSeek: a = (0.1·m·ln s + 1) / (0.1·m_all·ln s + 1); with m = m_all it is exactly 1."""
    s = 40.0
    a = ours("yarn", 128, factor=s, train_len=4096, mscale=0.707, mscale_all_dim=1.0).attn_scale
    assert a == pytest.approx((0.1 * 0.707 * math.log(s) + 1) / (0.1 * math.log(s) + 1), rel=1e-15)
    assert ours("yarn", 128, factor=s, train_len=4096, mscale=1.0, mscale_all_dim=1.0).attn_scale == 1.0


def test_llama31_known_bands():
    """Llama-3.1 (b 5e5, d 128, s 8, L 8192, low 1, high 4): w < 2048 unchanged, w > 8192 divided by 8,
    the blend (1 − σ)θ/s + σθ with σ = (L/w − 1)/3 in between."""
    d, b, s, L = 128, 500000.0, 8.0, 8192
    theta = ours("rope", d, base=b).inv_freq
    llama31 = {"base": b, "factor": s, "train_len": L, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    new = ours("llama3", d, **llama31).inv_freq
    w = 2 * math.pi / theta
    high, low, mid = w < L / 4, w > L, (w >= L / 4) & (w <= L)
    assert high.sum() > 0 and low.sum() > 0 and mid.sum() > 0  # all three bands are populated
    assert torch.equal(new[high], theta[high])
    torch.testing.assert_close(new[low], theta[low] / s, rtol=1e-15, atol=0)
    sigma = (L / w[mid] - 1) / 3
    torch.testing.assert_close(new[mid], (1 - sigma) * theta[mid] / s + sigma * theta[mid], rtol=1e-14, atol=0)
    assert ours("llama3", d, **llama31).attn_scale == 1.0


@pytest.mark.parametrize(("head_dim", "fraction", "base"), SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("factor", [2.0, 8.0, 32.0])
def test_ntk_known_values(head_dim, fraction, base, factor):
    """Static NTK: λ_i = s^{2i/(r−2)}, so λ_0 = 1 and λ_{r/2−1} = s."""
    r = int(head_dim * fraction)
    lam = _ratio("ntk", head_dim, base, rotary_fraction=fraction, factor=factor)
    assert lam[0] == 1.0
    assert lam[-1] == pytest.approx(factor, rel=1e-12)
    expected = factor ** (2 * torch.arange(r // 2, dtype=torch.float64) / (r - 2))
    torch.testing.assert_close(lam, expected, rtol=1e-12, atol=0)
    assert ours("ntk", head_dim, base=base, rotary_fraction=fraction, factor=factor).attn_scale == 1.0


@pytest.mark.parametrize("factor", [2.0, 4.0, 8.0])
def test_dynamic_ntk_known_values(factor):
    """Dynamic NTK is RoPE for ℓ ≤ L and static NTK where its effective factor s·ℓ/L − (s−1) reaches s,
    i.e. at ℓ = L·(2 − 1/s) — NOT at ℓ = s·L as papers/longrope.md states (there it is s² − s + 1).
    HF's own function is the referee for both statements."""
    d, b, L = 128, 10000.0, 4096
    rope = ours("rope", d, base=b).inv_freq
    for ell in (None, 1, L // 2, L):
        assert torch.equal(ours("dynamic_ntk", d, ell, factor=factor, train_len=L).inv_freq, rope)
    at = L * (2 - 1 / factor)
    assert at == int(at)
    static = ours("ntk", d, factor=factor)
    dyn = ours("dynamic_ntk", d, int(at), factor=factor, train_len=L)
    torch.testing.assert_close(dyn.inv_freq, static.inv_freq, rtol=1e-12, atol=0)
    cfg = hf_config(d, b, L, {"rope_type": "dynamic", "factor": factor})
    assert_parity(static, hf_spectrum("dynamic", cfg, int(at)), b * factor ** (d / (d - 2)))
    # at ℓ = s·L the effective factor is s² − s + 1: beyond static NTK (strictly lower frequencies)
    at_sl = ours("dynamic_ntk", d, int(factor * L), factor=factor, train_len=L)
    lam = rope / at_sl.inv_freq
    assert lam[-1] == pytest.approx(factor ** 2 - factor + 1, rel=1e-12)
    assert (at_sl.inv_freq[1:] < static.inv_freq[1:]).all()
