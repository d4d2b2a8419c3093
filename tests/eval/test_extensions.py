"""Eval-time extensions of a rope model: the swapped model shares every weight, each extension
reduces to rope at factor 1, configurations per kind, refusals, every swap at 16×, LongRoPE's attention
factor (constant, transformers' rule) and the dynamic-NTK baseline (factor 1 = static NTK per window)."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit import pe
from hopekit.eval.extensions import EXTENSIONS, extension_configs, extension_name, with_pe
from hopekit.eval.perplexity import perplexity

from tests.eval._toy import TRAIN_LEN, make, rope_model, stream  # noqa: F401 (rope_model: a fixture)


def test_with_pe_shares_weights_and_leaves_the_model_alone(rope_model):
    swapped = with_pe(rope_model, {"kind": "yarn", "factor": 4.0, "train_len": TRAIN_LEN})
    assert swapped is not rope_model and swapped.config.pe.kind == "yarn"
    assert rope_model.config.pe == pe.RopeParams() and rope_model.pe.kind == "rope" and swapped.pe.kind == "yarn"
    pairs = list(zip(swapped.named_parameters(), rope_model.named_parameters()))
    assert len(pairs) == len(list(rope_model.parameters())) > 0
    assert all(n1 == n2 and p1 is p2 for (n1, p1), (n2, p2) in pairs)           # the same objects: no copy
    assert swapped.lm_head.weight is rope_model.tok_emb.weight                    # tying kept
    x = stream(40)[None]
    assert not torch.equal(swapped(x)[0], rope_model(x)[0])


@pytest.mark.parametrize("cfg", [
    {"kind": "linear", "factor": 1.0},
    {"kind": "ntk", "factor": 1.0},
    {"kind": "yarn", "factor": 1.0, "train_len": TRAIN_LEN},
    {"kind": "dynamic_ntk", "factor": 4.0, "train_len": 64},    # below train_len: RoPE
])
def test_extension_at_factor_one_gives_exactly_the_rope_logits(rope_model, cfg):
    x = stream(48)[None]
    assert torch.equal(with_pe(rope_model, cfg)(x)[0], rope_model(x)[0])


def test_extension_configs():
    cfgs = extension_configs({"kind": "rope", "base": 500.0}, TRAIN_LEN, 16 * TRAIN_LEN,
                             ("rope", "linear", "ntk", "dynamic_ntk", "yarn"))
    assert cfgs == {
        "rope": {"kind": "rope", "base": 500.0},
        "linear": {"kind": "linear", "base": 500.0, "factor": 16.0},
        "ntk": {"kind": "ntk", "base": 500.0, "factor": 16.0},
        "dynamic_ntk": {"kind": "dynamic_ntk", "base": 500.0, "factor": 1.0, "train_len": TRAIN_LEN},
        "yarn": {"kind": "yarn", "base": 500.0, "factor": 16.0, "train_len": TRAIN_LEN},
    }
    assert set(map(str, extension_configs({"kind": "rope"}, TRAIN_LEN, TRAIN_LEN).values())) == {"{'kind': 'rope'}"}
    assert extension_configs({"kind": "rope"}, TRAIN_LEN, 4 * TRAIN_LEN, ["dynamic_ntk"],
                             dynamic_factor=4.0)["dynamic_ntk"]["factor"] == 4.0       # HF's meaning, on request
    lr = {"short_rescale": [1.0] * 8, "long_rescale": [2.0] * 8, "factor": 4.0}
    assert extension_configs({"kind": "rope"}, 16, 8, ["longrope"], longrope=lr)["longrope"] == \
        {"kind": "longrope", "train_len": 16, **lr}                # the configured factor, also below train_len
    assert extension_name("yarn") == "rope+yarn" and extension_name("rope") == "rope"
    with pytest.raises(ValueError, match="searched factors"):
        extension_configs({"kind": "rope"}, 16, 64, ["longrope"])
    with pytest.raises(ValueError, match="rope"):
        extension_configs({"kind": "alibi"}, 16, 64, ["linear"])
    with pytest.raises(ValueError, match="unknown extension"):
        extension_configs({"kind": "rope"}, 16, 64, ["pi"])


def test_with_pe_refuses_learnable_encodings():
    with pytest.raises(ValueError, match="learnable"):
        with_pe(make("learned", max_len=64), {"kind": "rope"})
    with pytest.raises(ValueError, match="learnable"):
        with_pe(make("hope_hyperbolic", learnable=True), {"kind": "rope"})
    with pytest.raises(ValueError, match="learnable"):
        with_pe(make("rope"), {"kind": "learned", "max_len": 64})


@pytest.mark.parametrize("kinds", [("",), ("yarn", "pi")])
def test_unknown_extension_names_list_the_known_ones(kinds):
    with pytest.raises(ValueError, match=r"unknown extension\(s\).*'linear'"):
        extension_configs({"kind": "rope"}, 16, 64, kinds)
    assert extension_configs({"kind": "rope"}, 16, 64, ()) == {}
    assert set(EXTENSIONS) >= {"rope", "linear", "ntk", "dynamic_ntk", "yarn", "longrope"}


def test_rope_extensions_at_16x(rope_model):
    L = 16 * TRAIN_LEN
    lr = {"short_rescale": [1.0] * 8, "long_rescale": [1.0 + i for i in range(8)], "factor": 16.0}
    cfgs = extension_configs(rope_model.config.pe, TRAIN_LEN, L,
                             ("rope", "linear", "ntk", "dynamic_ntk", "yarn", "longrope"), longrope=lr)
    s = stream(L + 1)
    nlls = {name: perplexity(with_pe(rope_model, cfg), s, L).nll for name, cfg in cfgs.items()}
    assert all(math.isfinite(v) for v in nlls.values())
    assert nlls["dynamic_ntk"] == nlls["ntk"]            # one forward of L tokens: the same spectrum (below)
    del nlls["dynamic_ntk"]
    assert len({round(v, 12) for v in nlls.values()}) == len(nlls)   # each other swap really changes the model


# --- LongRoPE's attention factor: transformers' rule, from the configured factor ---------------------

LONGROPE = {"short_rescale": [1.0 + 0.01 * i for i in range(8)], "long_rescale": [1.0 + 0.5 * i for i in range(8)]}


@pytest.mark.parametrize("factor", [8.0, 16.0, 2.5])
def test_longrope_attention_factor_is_the_configured_one_at_every_length(rope_model, factor):
    expected = math.sqrt(1.0 + math.log(factor) / math.log(TRAIN_LEN))          # su, in float64
    configs = {m: extension_configs(rope_model.config.pe, TRAIN_LEN, m * TRAIN_LEN, ["longrope"],
                                    longrope={**LONGROPE, "factor": factor})["longrope"] for m in (1, 2, 16)}
    assert configs[1] == configs[2] == configs[16]                # one configuration for every length
    for m, cfg in configs.items():
        enc = with_pe(rope_model, cfg).pe                          # the encoding the measured model uses
        for seq_len in (TRAIN_LEN // 2, TRAIN_LEN, m * TRAIN_LEN, TRAIN_LEN + 1):   # short and long sets
            assert enc.spectrum(seq_len).attn_scale == pytest.approx(expected, rel=1e-15, abs=0.0)


def test_longrope_attention_factor_matches_transformers(rope_model):
    """The same configuration through ``ROPE_INIT_FUNCTIONS["longrope"]`` (the parity suite's configs:
    the factor in the rope dict, or Phi-3's max_position_embeddings / original length)."""
    parity = pytest.importorskip("tests.pe.test_hf_parity")
    factor = 8.0
    cfg = extension_configs(rope_model.config.pe, TRAIN_LEN, 2 * TRAIN_LEN, ["longrope"],
                            longrope={**LONGROPE, "factor": factor})["longrope"]
    enc = with_pe(rope_model, cfg).pe
    for style in ("nested", "phi3"):
        hf = parity._longrope_hf(enc.head_dim, cfg.get("base", 10000.0), 1.0, TRAIN_LEN, factor,
                                 LONGROPE["short_rescale"], LONGROPE["long_rescale"], style)
        for seq_len in (TRAIN_LEN, TRAIN_LEN + 1, 16 * TRAIN_LEN):     # short set, long set
            parity.assert_parity(enc.spectrum(seq_len), parity.hf_spectrum("longrope", hf, seq_len), 10000.0)


@pytest.mark.parametrize("longrope", [LONGROPE, {**LONGROPE, "factor": None}])
def test_longrope_without_its_factor_is_refused(longrope):
    with pytest.raises(ValueError, match=r"^longrope\.factor: missing; give the target ratio L'/L") as refused:
        extension_configs({"kind": "rope"}, TRAIN_LEN, 4 * TRAIN_LEN, ["longrope"], longrope=longrope)
    assert "\n" not in str(refused.value)
    with pytest.raises(ValueError, match=r"^longrope\.long_rescale: missing"):
        extension_configs({"kind": "rope"}, TRAIN_LEN, 4 * TRAIN_LEN, ["longrope"],
                          longrope={"short_rescale": [1.0] * 8, "factor": 4.0})


# --- the dynamic-NTK baseline: factor 1, i.e. NTK by ℓ/L at length ℓ ----------------------------------

def spectra(cfgs: dict, head_dim: int, seq_len: int) -> dict[str, pe.Spectrum]:
    return {k: pe.build(c["kind"], head_dim=head_dim, **{f: v for f, v in c.items() if f != "kind"}).spectrum(seq_len)
            for k, c in cfgs.items()}


@pytest.mark.parametrize(("train_len", "eval_len"), [(16, 32), (16, 256), (128, 2048), (24, 72), (16, 40)])
def test_dynamic_ntk_row_per_window_is_static_ntk_exactly(train_len, eval_len):
    cfgs = extension_configs({"kind": "rope", "base": 500.0}, train_len, eval_len, ["ntk", "dynamic_ntk"])
    got = spectra(cfgs, 16, eval_len)                          # one forward of one window: ℓ = eval_len
    assert torch.equal(got["dynamic_ntk"].inv_freq, got["ntk"].inv_freq)
    assert got["dynamic_ntk"].attn_scale == got["ntk"].attn_scale == 1.0
    # the rows differ where one forward (or a cache during generation) covers another length
    shorter = spectra(cfgs, 16, (train_len + eval_len) // 2)
    assert not torch.allclose(shorter["dynamic_ntk"].inv_freq, shorter["ntk"].inv_freq, rtol=1e-6)


def test_dynamic_ntk_at_a_ratio_not_exact_in_binary_is_static_ntk_to_rounding():
    cfgs = extension_configs({"kind": "rope"}, 3, 5, ["ntk", "dynamic_ntk"])   # 5/3 vs 1 + 2/3: last bit
    got = spectra(cfgs, 64, 5)
    torch.testing.assert_close(got["dynamic_ntk"].inv_freq, got["ntk"].inv_freq, rtol=1e-14, atol=0.0)


def test_dynamic_factor_s_is_transformers_meaning_effective_factor_s2_minus_s_plus_1():
    s, L = 16, TRAIN_LEN
    cfgs = extension_configs({"kind": "rope"}, L, s * L, ["dynamic_ntk"], dynamic_factor=float(s))
    cfgs["ntk"] = {"kind": "ntk", "factor": float(s * s - s + 1)}                   # 241
    got = spectra(cfgs, 16, s * L)
    assert torch.equal(got["dynamic_ntk"].inv_freq, got["ntk"].inv_freq)
