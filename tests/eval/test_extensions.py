"""Eval-time extensions of a rope model: the swapped model shares every weight, each extension
reduces to rope at factor 1, configurations per kind, refusals, and every swap at 16×."""

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
        "dynamic_ntk": {"kind": "dynamic_ntk", "base": 500.0, "factor": 16.0, "train_len": TRAIN_LEN},
        "yarn": {"kind": "yarn", "base": 500.0, "factor": 16.0, "train_len": TRAIN_LEN},
    }
    assert set(map(str, extension_configs({"kind": "rope"}, TRAIN_LEN, TRAIN_LEN).values())) == {"{'kind': 'rope'}"}
    lr = {"short_rescale": [1.0] * 8, "long_rescale": [2.0] * 8}
    assert extension_configs({"kind": "rope"}, 16, 8, ["longrope"], longrope=lr)["longrope"]["factor"] == 1.0
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
    lr = {"short_rescale": [1.0] * 8, "long_rescale": [1.0 + i for i in range(8)]}
    cfgs = extension_configs(rope_model.config.pe, TRAIN_LEN, L,
                             ("rope", "linear", "ntk", "dynamic_ntk", "yarn", "longrope"), longrope=lr)
    s = stream(L + 1)
    nlls = {name: perplexity(with_pe(rope_model, cfg), s, L).nll for name, cfg in cfgs.items()}
    assert all(math.isfinite(v) for v in nlls.values())
    assert len({round(v, 12) for v in nlls.values()}) == len(nlls)   # each swap really changes the model
