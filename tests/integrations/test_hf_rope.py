"""hopekit.integrations.hf.rope: HF config rope fields ↔ hopekit parameters.

Oracle: the installed transformers itself. A tiny model is built from a config in that version's
own layout, and its rotary module's cos/sin tables are compared with the tables hopekit builds from
``params_from_config(config)``. Tolerance: :func:`conftest.angle_error_bound`, the float32 error of
HF's angles (≈ (ln b + 9)·|angle|·2^-24 per angle) plus one rounding of cos/sin on each side. A wrong
field (an original length off by one, the long set chosen one token late, a wrong attention factor)
moves some entry by ≥ 1e-3 at these positions, far above it (≤ 2e-5 here).

The round trips check ``params_from_config(set_rope_fields(config, p)) == p`` and that the config
written by :func:`set_rope_fields` makes *vanilla* transformers build the same model as
``patch_model(model, p)``.
"""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402

from hopekit import pe  # noqa: E402
from hopekit.integrations import hf  # noqa: E402

BASE = 10000.0
SHORT = [1.0 + 0.1 * i for i in range(8)]   # head_dim 16: 8 pairs
LONG = [1.0 + 0.5 * i for i in range(8)]

MAPPED = set(hf.HF_ROPE_TYPES.values())
#: rope types transformers has that hopekit has no method for ("proportional" is a 5.x type; a 4.x
#: config may still name it, and must be refused the same way)
UNMAPPED = sorted((set(ROPE_INIT_FUNCTIONS) | {"proportional"}) - MAPPED)


def native_tables(model, positions: torch.Tensor):
    x = torch.zeros(1, dtype=torch.float32)
    with torch.no_grad():
        return model.model.rotary_emb(x, positions)


def hopekit_tables(params: pe.Params, positions: torch.Tensor, head_dim: int):
    feats = pe.build(params, head_dim=head_dim).features(positions)
    cos, sin = feats.cos.squeeze(1), feats.sin.squeeze(1)
    return torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)


def test_every_mapped_type_exists_in_transformers(tiny):
    """The names hopekit maps are rope types of the installed transformers (5.x computes "default"
    in the model class, outside ROPE_INIT_FUNCTIONS)."""
    assert MAPPED <= set(ROPE_INIT_FUNCTIONS) | {"default"}
    assert {case[0]["rope_type"] for case in tiny.NATIVE.values()} == MAPPED  # every mapped type is tested below


def test_params_from_config_reproduce_native_tables(tiny, native_case, arch):
    """Every native case (conftest.NATIVE) × Llama, Mistral, Qwen2, at lengths below and above the original."""
    model = tiny.native_model(arch, native_case)
    params = hf.params_from_config(model.config)
    assert pe.name_of(params) == {v: k for k, v in hf.HF_ROPE_TYPES.items()}[tiny.NATIVE[native_case][0]["rope_type"]]
    for length in tiny.LENGTHS:
        positions = torch.arange(length)[None].expand(2, length)
        cos_hf, sin_hf = native_tables(model, positions)
        cos, sin = hopekit_tables(params, positions, tiny.HEAD_DIM)
        bound = tiny.angle_error_bound(params, length - 1, seq_len=length)
        err = max((cos - cos_hf).abs().max().item(), (sin - sin_hf).abs().max().item())
        assert err <= bound, f"{native_case}/{arch} at length {length}: |Δ| = {err:.3g} > bound {bound:.3g}"


def test_original_length_conventions_follow_the_installed_version(tiny):
    """The native cases the two versions read differently. LongRoPE in 4.x: original length from the
    top level, factor = max_position_embeddings / original (an explicit factor is ignored); in 5.x:
    original length in the rope dict (a top-level one wins), the explicit factor first, the ratio only
    without one. YaRN: 5.x also lets a top-level original length win."""
    params = hf.params_from_config(tiny.native_config("llama", "longrope_explicit_factor"))
    assert params.train_len == 32
    assert params.factor == (3.0 if hf.TRANSFORMERS_MAJOR >= 5 else 2.0)
    params = hf.params_from_config(tiny.native_config("llama", "yarn_top_level_original"))
    assert params.train_len == (32 if hf.TRANSFORMERS_MAJOR >= 5 else 64)


@pytest.mark.skipif(hf.TRANSFORMERS_MAJOR < 5, reason="4.x requires yarn's factor")
def test_a_null_yarn_factor_is_the_ratio_of_lengths_in_5x(tiny):
    """5.x (DeepSeek-V3 configs): ``"factor": null`` means max_position_embeddings / original length."""
    config = tiny.config("llama", max_pos=96)
    config.rope_parameters = {"rope_type": "yarn", "rope_theta": tiny.BASE, "factor": None,
                              "original_max_position_embeddings": 32}
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    params = hf.params_from_config(model.config)
    assert (params.factor, params.train_len) == (3.0, 32)
    positions = torch.arange(40)[None].expand(2, 40)
    cos_hf, _ = native_tables(model, positions)
    cos, _ = hopekit_tables(params, positions, tiny.HEAD_DIM)
    assert (cos - cos_hf).abs().max().item() <= tiny.angle_error_bound(params, 39, seq_len=40)


@pytest.mark.parametrize("rope_type", UNMAPPED)
def test_unmapped_rope_types_are_refused(tiny, rope_type):
    config = tiny.config("llama")
    # written after construction (the validators would reject the fields), into the attribute each
    # version keeps its rope dict in: 5.x rope_parameters (rope_theta inside), 4.x rope_scaling
    if hf.TRANSFORMERS_MAJOR >= 5:
        config.rope_parameters = {"rope_type": rope_type, "rope_theta": BASE, "factor": 2.0}
    else:
        config.rope_scaling = {"rope_type": rope_type, "factor": 2.0}
    with pytest.raises(ValueError, match=f"rope_type='{rope_type}'"):
        hf.params_from_config(config)


def test_missing_required_field_is_named(tiny):
    config = tiny.native_config("llama", "llama3")
    # removed after construction (4.x's validator refuses the config itself); the rope dict is
    # config.rope_parameters in 5.x, config.rope_scaling in 4.x
    for attr in ("rope_parameters", "rope_scaling"):
        fields = getattr(config, attr, None)
        if isinstance(fields, dict):
            fields.pop("low_freq_factor", None)
    with pytest.raises(ValueError, match="low_freq_factor: missing, required by rope_type 'llama3'"):
        hf.params_from_config(config)


@pytest.mark.parametrize("rope_type", ["linear", "dynamic"])
def test_rope_settings_reads_the_legacy_type_key(tiny, rope_type):
    """Old config.json files name the type ``type``; both versions' constructors accept them, and a raw
    dict with only ``type`` (no constructor normalisation) is read too."""
    config = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=32,
                                      rope_theta=5e4, rope_scaling={"type": rope_type, "factor": 2.0})
    settings = hf.rope_settings(config)
    assert settings["rope_type"] == rope_type and "type" not in settings
    assert (settings["rope_theta"], settings["factor"]) == (5e4, 2.0)
    kind = {"linear": "linear", "dynamic": "dynamic_ntk"}[rope_type]
    expected = pe.parse({"kind": kind, "base": 5e4, "factor": 2.0}, train_len=32)
    assert hf.params_from_config(config) == expected

    raw = tiny.config("llama")
    if hf.TRANSFORMERS_MAJOR >= 5:  # the rope dict's attribute is named differently in each version
        raw.rope_parameters = {"type": rope_type, "factor": 2.0, "rope_theta": 5e4}
    else:
        raw.rope_theta, raw.rope_scaling = 5e4, {"type": rope_type, "factor": 2.0}
    assert hf.rope_settings(raw)["rope_type"] == rope_type
    assert hf.params_from_config(raw) == expected


# --------------------------------------------------------------------------------------------------
# hopekit parameters -> config fields -> hopekit parameters
# --------------------------------------------------------------------------------------------------

#: one or more parameter sets per HF-expressible method (head_dim 16)
ROUND_TRIP = {
    "rope": [{"base": 5e5}],
    "linear": [{"factor": 2.5}],
    "dynamic_ntk": [{"factor": 2.0, "train_len": 24}],
    "yarn": [{"factor": 4.0, "train_len": 32},
             {"factor": 3.0, "train_len": 20, "beta_fast": 16.0, "beta_slow": 2.0, "mscale": 1.0,
              "mscale_all_dim": 0.8, "truncate": False},
             {"factor": 2.0, "train_len": 32, "attention_factor": 1.25}],
    "llama3": [{"factor": 4.0, "train_len": 32, "low_freq_factor": 1.0, "high_freq_factor": 4.0}],
    "longrope": [{"short_rescale": SHORT, "long_rescale": LONG, "train_len": 16, "factor": 4.0},
                 {"short_rescale": SHORT, "long_rescale": LONG, "train_len": 16, "factor": 2.5,
                  "attention_factor": 1.3}],
}
ROUND_TRIP_CASES = [(kind, i) for kind, variants in ROUND_TRIP.items() for i in range(len(variants))]


def round_trip_params(kind: str, i: int) -> pe.Params:
    return pe.make_params(kind, **ROUND_TRIP[kind][i])


def test_round_trip_covers_every_expressible_method():
    assert set(ROUND_TRIP) == set(hf.HF_ROPE_TYPES)


@pytest.mark.parametrize("kind,i", ROUND_TRIP_CASES)
def test_params_round_trip_through_config_fields(tiny, kind, i):
    params = round_trip_params(kind, i)
    config = tiny.config("llama")
    hf.set_rope_fields(config, params)
    assert hf.params_from_config(config) == params
    fields = hf.rope_fields(params, head_dim=tiny.HEAD_DIM)
    # the installed version's layout, and nothing of the other one
    layout = "rope_parameters" if hf.TRANSFORMERS_MAJOR >= 5 else "rope_scaling"
    assert layout in fields or (kind == "rope" and fields.get("rope_scaling", "absent") is None)
    assert ("rope_theta" in fields) == (hf.TRANSFORMERS_MAJOR < 5)


def test_longrope_yarn_attention_factor_round_trips_as_its_value(tiny):
    """HF has no named LongRoPE attention factors besides the default: ``"yarn"`` is written as its value."""
    params = pe.make_params("longrope", short_rescale=SHORT, long_rescale=LONG, train_len=16, factor=4.0,
                            attention_factor="yarn")
    config = tiny.config("llama")
    hf.set_rope_fields(config, params)
    back = hf.params_from_config(config)
    assert back.attention_factor == pytest.approx(pe.schedules.longrope_attention_factor(params), rel=1e-15)
    for length in (8, 40):
        a, b = pe.build(params, head_dim=16).spectrum(length), pe.build(back, head_dim=16).spectrum(length)
        assert torch.equal(a.inv_freq, b.inv_freq) and a.attn_scale == pytest.approx(b.attn_scale, rel=1e-15)


@pytest.mark.parametrize("kind,i", ROUND_TRIP_CASES)
def test_set_rope_fields_makes_vanilla_transformers_equal_the_patched_model(tiny, kind, i):
    """A config written by set_rope_fields, loaded by vanilla transformers, gives the logits of the
    default model patched with the same parameters (same seeded weights)."""
    params = round_trip_params(kind, i)
    config = tiny.config("llama")
    hf.set_rope_fields(config, params)
    torch.manual_seed(0)
    native = transformers.AutoModelForCausalLM.from_config(config).eval()
    patched = hf.patch_model(tiny.model("llama"), params)
    for length in tiny.LENGTHS:
        ids = tiny.ids(length)
        ref, out = tiny.logits(native, ids), tiny.logits(patched, ids)
        bound = tiny.angle_error_bound(params, length - 1, seq_len=length)
        tol = ref.abs().max().item() * bound * 2  # see test_hf_patch.py: relative cos/sin error → logits
        assert (out - ref).abs().max().item() <= tol, f"{kind}[{i}] at length {length}"


@pytest.mark.parametrize("kind,fields", [("linear", {"factor": 2.0}), ("yarn", {"factor": 2.0, "train_len": 32})])
def test_partial_rotary_is_written_where_transformers_reads_it(tiny, kind, fields):
    """4.x reads partial_rotary_factor at the top level, 5.x in the rope dict: HF's own rope function,
    given the written config, makes the frequencies of the first half of the head (4 pairs)."""
    params = pe.make_params(kind, rotary_fraction=0.5, **fields)
    config = tiny.config("llama")
    hf.set_rope_fields(config, params)
    assert hf.params_from_config(config) == params
    inv_freq, scale = ROPE_INIT_FUNCTIONS[hf.HF_ROPE_TYPES[kind]](config, None)
    spectrum = pe.build(params, head_dim=tiny.HEAD_DIM).spectrum()
    assert inv_freq.shape == spectrum.inv_freq.shape == (4,)
    rtol = (math.log(BASE) + 8) * 2.0 ** -24  # HF's float32 frequencies (tests/pe/test_hf_parity.py)
    assert torch.allclose(inv_freq.double(), spectrum.inv_freq, rtol=rtol, atol=0)
    assert scale == pytest.approx(spectrum.attn_scale, rel=1e-12)


def test_set_rope_fields_twice_leaves_no_stale_fields(tiny):
    """Writing yarn over a LongRoPE (top-level original length) or a partial-rotary config: nothing of
    the first may survive. 5.x gives a top-level original length priority over the rope dict's."""
    config = tiny.config("llama")
    hf.set_rope_fields(config, round_trip_params("longrope", 0))
    hf.set_rope_fields(config, pe.make_params("rope", rotary_fraction=0.5))
    params = round_trip_params("yarn", 0)
    hf.set_rope_fields(config, params)
    assert hf.params_from_config(config) == params
    torch.manual_seed(0)
    native = transformers.AutoModelForCausalLM.from_config(config).eval()
    patched = hf.patch_model(tiny.model("llama"), params)
    ids = tiny.ids(40)
    ref = tiny.logits(native, ids)
    tol = ref.abs().max().item() * tiny.angle_error_bound(params, 39) * 2
    assert (tiny.logits(patched, ids) - ref).abs().max().item() <= tol


@pytest.mark.parametrize("kind", sorted(set(pe.REGISTRY) - set(hf.HF_ROPE_TYPES)))
def test_rope_fields_refuses_hopekit_only_methods(kind):
    params = pe.parse(pe.example_config(kind, 16), train_len=32)
    with pytest.raises(hf.RopeNotExpressible, match=f"pe.kind='{kind}'"):
        hf.rope_fields(params, head_dim=16)


def test_rope_fields_refuses_what_longrope_in_transformers_lacks():
    prefix = pe.make_params("longrope", short_rescale=SHORT, long_rescale=LONG, train_len=16, factor=4.0,
                            start_tokens=4)
    with pytest.raises(hf.RopeNotExpressible, match="start_tokens=4"):
        hf.rope_fields(prefix, head_dim=16)
    fractional = pe.make_params("longrope", short_rescale=SHORT, long_rescale=LONG, train_len=10, factor=1.25)
    with pytest.raises(hf.RopeNotExpressible, match="pe.factor=1.25"):
        hf.rope_fields(fractional, head_dim=16)
