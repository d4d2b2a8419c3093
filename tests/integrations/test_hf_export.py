"""hopekit.integrations.hf.export: model directories that vanilla transformers runs with hopekit's logits.

Oracles: hopekit's own forward (a patched transformers model, or the reference Decoder) against
vanilla transformers loading the exported directory — in this process, and (marked slow) in a
subprocess that never imports hopekit. Methods transformers cannot express go through
``load_pretrained`` instead, and what a reader without hopekit gets is checked too (plain RoPE).
The rope dicts are checked against the keys vLLM's ``get_rope`` reads (a table from its source).

Tiny random models (2 layers, 4 query / 2 KV heads of 8 or 16, weights N(0, 0.1²), norm weights
N(1, 0.2²) so every parameter matters), float32, lengths below and above the original length 32
(dynamic NTK and LongRoPE switch there).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from hopekit import cli, pe  # noqa: E402
from hopekit.checkpoint import FORMAT, FORMAT_VERSION, model_config_dict, save_checkpoint  # noqa: E402
from hopekit.config import ExperimentConfig  # noqa: E402
from hopekit.data import ByteTokenizer  # noqa: E402
from hopekit.integrations import hf  # noqa: E402
from hopekit.integrations.hf.export import NOTE_NAME  # noqa: E402
from hopekit.model import Decoder, RMSNorm  # noqa: E402

TOL = 1e-5
ORIGINAL = 32              # max_position_embeddings / train.train_len of the tiny models
LENGTHS = (24, 80)         # below and above it, in increasing order (see _vanilla_logits)
VOCAB = 257                # hopekit's byte tokenizer: bytes + <|endoftext|>
HEAD_DIM = 16              # the transformers models; the checkpoints use 8


def _longrope(pairs: int, **extra) -> dict:
    return {"kind": "longrope", "factor": 2.5, "short_rescale": [1.0 + 0.1 * i for i in range(pairs)],
            "long_rescale": [1.0 + 0.5 * i for i in range(pairs)], **extra}


def rope_family(pairs: int) -> dict[str, dict]:
    """Every encoding vanilla transformers can express, with non-default settings."""
    return {
        "rope": {"kind": "rope", "base": 500.0},
        "linear": {"kind": "linear", "factor": 2.0},
        "ntk": {"kind": "ntk", "factor": 3.0},
        "dynamic_ntk": {"kind": "dynamic_ntk", "factor": 2.0},
        "yarn": {"kind": "yarn", "factor": 2.5, "base": 2000.0},
        "yarn_mscale": {"kind": "yarn", "factor": 4.0, "mscale": 0.8, "mscale_all_dim": 0.5, "beta_fast": 16.0},
        "llama3": {"kind": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        "longrope": _longrope(pairs),
        "longrope_yarn_af": _longrope(pairs, attention_factor="yarn"),
    }


HOPEKIT_ONLY = {
    "hope_highfreq": {"kind": "hope_highfreq", "base": 500.0},
    "hope_hyperbolic": {"kind": "hope_hyperbolic", "omega_scale": 0.05, "penalty": 0.06},
    "alibi": {"kind": "alibi"},
    "nope": {"kind": "nope"},
}

_IDS = torch.randint(0, VOCAB, (2, max(LENGTHS)), generator=torch.Generator().manual_seed(7))


def _randomise(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("pe."):
                continue
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def tiny_llama(**overrides) -> LlamaForCausalLM:
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ORIGINAL,
                      rope_theta=100.0, attn_implementation="sdpa", **overrides)
    model = LlamaForCausalLM(cfg).eval()
    _randomise(model)
    return model


@torch.no_grad()
def _logits(model: torch.nn.Module) -> dict[int, torch.Tensor]:
    out = {}
    for length in LENGTHS:
        y = model(_IDS[:, :length])
        out[length] = (y[0] if isinstance(y, tuple) else y.logits).float()
    return out


def _vanilla_logits(path: Path) -> dict[int, torch.Tensor]:
    # transformers' dynamic NTK keeps the longest length seen (its cache only grows past the original
    # length), so lengths go in increasing order, each equal to a fresh forward at that length
    return _logits(AutoModelForCausalLM.from_pretrained(path).eval())


def _max_diff(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> float:
    return max((a[n] - b[n]).abs().max().item() for n in LENGTHS)


@pytest.fixture(scope="module")
def base_llama():
    return tiny_llama()


@pytest.fixture(scope="module")
def pretrained_exports(base_llama, tmp_path_factory):
    """name -> (directory, hopekit's logits, the unpatched model's logits) for every rope-family case."""
    root = tmp_path_factory.mktemp("pretrained")
    native = _logits(base_llama)
    out = {}
    for name, config in rope_family(HEAD_DIM // 2).items():
        model = hf.patch_model(copy.deepcopy(base_llama), config)
        result = hf.export_pretrained(model, root / name)
        assert result.vanilla_exact and result.path == root / name
        out[name] = (result.path, _logits(model), native)
    return out


# --- transformers models, rope family ---------------------------------------------------------------

@pytest.mark.parametrize("name", list(rope_family(HEAD_DIM // 2)))
def test_vanilla_transformers_gives_the_patched_models_logits(pretrained_exports, name):
    path, ours, native = pretrained_exports[name]
    text = (path / "config.json").read_text()
    assert "hopekit" not in text  # a plain HF model: no hopekit block, no "hopekit" attention
    assert _max_diff(_vanilla_logits(path), ours) <= TOL
    assert _max_diff(ours, native) > 1e-2  # the encoding changes the logits, so the comparison can fail


def test_export_of_an_unpatched_model_keeps_its_own_rope(base_llama, tmp_path):
    result = hf.export_pretrained(base_llama, tmp_path / "out")
    assert result.params == hf.native_params(base_llama)
    assert _max_diff(_vanilla_logits(result.path), _logits(base_llama)) <= TOL
    assert not hasattr(base_llama.config, "hopekit_pe")  # the model is not modified


def test_tied_embeddings_are_written_once_and_load_tied(tmp_path):
    from safetensors import safe_open

    model = hf.patch_model(tiny_llama(tie_word_embeddings=True), {"kind": "linear", "factor": 2.0})
    assert model.lm_head.weight is model.model.embed_tokens.weight
    result = hf.export_pretrained(model, tmp_path / "out")
    with safe_open(str(result.path / "model.safetensors"), "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()
    vanilla = AutoModelForCausalLM.from_pretrained(result.path).eval()
    assert vanilla.lm_head.weight.data_ptr() == vanilla.model.embed_tokens.weight.data_ptr()
    assert _max_diff(_logits(vanilla), _logits(model)) <= TOL


def test_exported_dir_is_refused_when_not_empty_and_strict_refuses_hopekit_only_methods(base_llama, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError, match="not an empty directory"):
        hf.export_pretrained(base_llama, tmp_path / "full")
    with pytest.raises(hf.RopeNotExpressible, match="alibi"):
        hf.export_pretrained(base_llama, tmp_path / "strict", {"kind": "alibi"}, strict=True)
    assert not (tmp_path / "strict").exists()


# --- the fields vLLM reads ------------------------------------------------------------------------

#: What vLLM's ``get_rope`` reads from a model's rope parameters, per rope type:
#: vllm-project/vllm, vllm/model_executor/layers/rotary_embedding/__init__.py, ``get_rope``, at commit
#: 0cd5784803d83f81fac0794b82cb592d4317d4bf. Every type also reads ``rope_type``, ``rope_theta`` and
#: ``partial_rotary_factor`` (or ``rope_dim``). vLLM >= 0.24 requires transformers 5, which turns a
#: 4.x ``rope_scaling`` + ``rope_theta`` into the ``rope_parameters`` dict it passes on.
#:
#: ============  ======================================================  ===================================
#: rope_type     required (``rope_parameters[...]``)                     optional (``.get`` / filtered in)
#: ============  ======================================================  ===================================
#: default       —                                                       —  (``mrope_section``, ``use_fope``)
#: linear        factor                                                  —
#: dynamic       factor (or alpha)                                       max_trained_positions
#: yarn          factor, original_max_position_embeddings                beta_fast, beta_slow, mscale,
#:                                                                       mscale_all_dim, attention_factor,
#:                                                                       truncate
#: llama3        factor, low_freq_factor, high_freq_factor,              —
#:               original_max_position_embeddings
#: longrope      short_factor, long_factor,                              short_mscale, long_mscale
#:               original_max_position_embeddings
#: ============  ======================================================  ===================================
#:
#: longrope: vLLM (Phi3LongRoPEScaledRotaryEmbedding) derives the scale as max_position_embeddings /
#: original_max_position_embeddings and the attention factor, unless short_mscale / long_mscale are
#: given, as sqrt(1 + ln s / ln L); it never reads ``factor`` or ``attention_factor``, which
#: transformers reads. Those two are the only keys an export writes that vLLM does not read, and
#: the test checks vLLM derives the same values from what it does read.
VLLM_COMMON = {"rope_type", "rope_theta", "partial_rotary_factor"}
VLLM_READS = {
    "default": (set(), set()),
    "linear": ({"factor"}, set()),
    "dynamic": ({"factor"}, {"max_trained_positions"}),
    "yarn": ({"factor", "original_max_position_embeddings"},
             {"beta_fast", "beta_slow", "mscale", "mscale_all_dim", "attention_factor", "truncate"}),
    "llama3": ({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}, set()),
    "longrope": ({"short_factor", "long_factor", "original_max_position_embeddings"}, {"short_mscale", "long_mscale"}),
}
#: keys transformers reads and vLLM derives from the ones it reads (checked below)
VLLM_DERIVES = {"longrope": {"factor", "attention_factor"}}


def _vllm_rope_parameters(config: dict) -> dict:
    """The rope dict vLLM passes to ``get_rope`` for this config.json (transformers-5 standardised)."""
    if config.get("rope_parameters"):
        return dict(config["rope_parameters"])
    params = {**(config.get("rope_scaling") or {"rope_type": "default"}), "rope_theta": config["rope_theta"]}
    if "partial_rotary_factor" in config:
        params["partial_rotary_factor"] = config["partial_rotary_factor"]
    return params


@pytest.mark.parametrize("name", list(rope_family(HEAD_DIM // 2)))
def test_exported_rope_fields_are_the_ones_vllm_get_rope_reads(pretrained_exports, base_llama, name):
    path, _, _ = pretrained_exports[name]
    config = json.loads((path / "config.json").read_text())
    rope = _vllm_rope_parameters(config)
    rope_type = rope["rope_type"]
    required, optional = VLLM_READS[rope_type]
    keys = set(rope)
    assert required <= keys, f"vLLM needs {sorted(required - keys)}"
    assert keys <= required | optional | VLLM_COMMON | VLLM_DERIVES.get(rope_type, set()), \
        f"vLLM ignores {sorted(keys - required - optional - VLLM_COMMON)}"
    params = hf.resolve_pe(rope_family(HEAD_DIM // 2)[name], base_llama)  # the model's base where unset
    if rope_type == "longrope":
        scale = config["max_position_embeddings"] / rope["original_max_position_embeddings"]
        assert scale == rope["factor"] == params.factor
        vllm_mscale = math.sqrt(1 + math.log(scale) / math.log(rope["original_max_position_embeddings"]))
        want = pe.schedules.longrope_attention_factor(params)
        assert rope.get("short_mscale", vllm_mscale) == rope.get("long_mscale", vllm_mscale) == pytest.approx(want, rel=1e-12)
    if rope_type == "default" and name == "ntk":  # static NTK is written as RoPE with the scaled base
        assert rope["rope_theta"] == pytest.approx(params.base * params.factor ** (HEAD_DIM / (HEAD_DIM - 2)))


# --- transformers models, methods vanilla transformers cannot express -----------------------------

@pytest.mark.parametrize("name", list(HOPEKIT_ONLY))
def test_hopekit_only_method_round_trips_through_load_pretrained_and_vanilla_gets_plain_rope(
        base_llama, tmp_path, name):
    model = hf.patch_model(copy.deepcopy(base_llama), HOPEKIT_ONLY[name])
    ours = _logits(model)
    result = hf.export_pretrained(model, tmp_path / name, tokenizer=ByteTokenizer())
    assert not result.vanilla_exact
    config = json.loads((result.path / "config.json").read_text())
    assert config["hopekit_pe"] == pe.to_config(result.params)
    assert hf.rope_settings(AutoConfig.from_pretrained(result.path)) == hf.rope_settings(base_llama.config)  # its own
    note = (result.path / NOTE_NAME).read_text()
    assert "silently" in note and "plain RoPE" in note and "load_pretrained" in note
    assert _max_diff(_logits(hf.load_pretrained(str(result.path)).model), ours) <= TOL
    vanilla = _vanilla_logits(result.path)  # what a reader without hopekit gets: the unpatched model
    assert _max_diff(vanilla, _logits(base_llama)) <= TOL
    assert _max_diff(vanilla, ours) > 1e-2


def test_absolute_token_derived_and_learnable_encodings_are_refused(base_llama, tmp_path):
    cases = {"sinusoidal": {"kind": "sinusoidal"}, "bipe": {"kind": "bipe", "inter": {"kind": "rope"}},
             "learned": {"kind": "learned", "max_len": 64},
             "learnable": {"kind": "hope_hyperbolic", "omega_scale": 0.05, "penalty": 0.06, "learnable": True}}
    for name, config in cases.items():
        with pytest.raises(ValueError, match=r"pe\.kind=") as info:
            hf.export_pretrained(base_llama, tmp_path / name, config)
        assert "\n" not in str(info.value)
        assert not (tmp_path / name).exists()


# --- reference-decoder checkpoints ------------------------------------------------------------------

def make_checkpoint(path: Path, pe_config: dict, *, tokenizer: str = "byte", vocab: int = VOCAB, **model) -> Decoder:
    """A random (untrained) reference decoder saved with hopekit's checkpoint functions."""
    config = ExperimentConfig.from_dict({
        "name": "export-test", "pe": pe_config, "data": {"tokenizer": tokenizer},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, **model},
        "train": {"train_len": ORIGINAL, "steps": 1, "warmup_steps": 0}})
    mc = config.model_config(vocab)
    decoder = Decoder(mc)
    _randomise(decoder)
    save_checkpoint(path, {
        "format": FORMAT, "version": FORMAT_VERSION, "step": 0, "config": config.resolved(),
        "model_config": model_config_dict(mc), "model": decoder.state_dict(), "optimizer": {}, "rng": [],
        "data": {}, "data_hash": {}, "losses": [], "tokens": 0, "train_time": 0.0})
    return decoder.eval()


@pytest.mark.parametrize("name", list(rope_family(4)))
def test_checkpoint_exports_to_a_llama_vanilla_transformers_runs_exactly(tmp_path, name):
    decoder = make_checkpoint(tmp_path / "ckpt.pt", rope_family(4)[name])
    result = hf.export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    assert result.vanilla_exact
    config = json.loads((result.path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "hopekit" not in json.dumps(config)
    assert (config["num_key_value_heads"], config["head_dim"], config["tie_word_embeddings"]) == (2, 8, True)
    assert (config["hidden_act"], config["attention_bias"], config["mlp_bias"]) == ("silu", False, False)
    assert {"config.json", "generation_config.json", "model.safetensors", NOTE_NAME, "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in result.path.iterdir()}
    assert _max_diff(_vanilla_logits(result.path), _logits(decoder)) <= TOL


def test_untied_mha_checkpoint_maps_every_weight(tmp_path):
    decoder = make_checkpoint(tmp_path / "ckpt.pt", {"kind": "yarn", "factor": 2.0}, n_kv_heads=4,
                              tie_embeddings=False, ffn_hidden=40)
    result = hf.export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    vanilla = AutoModelForCausalLM.from_pretrained(result.path).eval()
    assert not vanilla.config.tie_word_embeddings and vanilla.config.intermediate_size == 40
    assert not torch.equal(vanilla.lm_head.weight, vanilla.model.embed_tokens.weight)
    assert _max_diff(_logits(vanilla), _logits(decoder)) <= TOL


@pytest.mark.parametrize("name", list(HOPEKIT_ONLY))
def test_checkpoint_with_a_hopekit_only_method_round_trips_through_load_pretrained(tmp_path, name):
    decoder = make_checkpoint(tmp_path / "ckpt.pt", HOPEKIT_ONLY[name])
    with pytest.raises(hf.RopeNotExpressible):
        hf.export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "strict", strict=True)
    result = hf.export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    assert not result.vanilla_exact
    assert _max_diff(_logits(hf.load_pretrained(str(result.path)).model), _logits(decoder)) <= TOL
    # without hopekit: plain RoPE with the encoding's base (10000 when it has none), silently
    base = getattr(decoder.config.pe, "base", 10000.0)
    plain = Decoder(dataclasses.replace(decoder.config, pe=pe.RopeParams(base=base)))
    plain.load_state_dict(decoder.state_dict())
    assert _max_diff(_vanilla_logits(result.path), _logits(plain.eval())) <= TOL


def test_checkpoint_refusals_name_the_reason(tmp_path):
    cases = {"bipe": {"kind": "bipe", "inter": {"kind": "rope"}, "intra_max_len": 64},
             "sinusoidal": {"kind": "sinusoidal"}, "learned": {"kind": "learned", "max_len": 64},
             "learnable": {"kind": "hope_hyperbolic", "omega_scale": 0.05, "penalty": 0.06, "learnable": True},
             "partial": {"kind": "rope", "rotary_fraction": 0.5}}
    whys = {"bipe": "derives positions from token ids", "sinusoidal": "adds position vectors",
            "learned": "adds position vectors", "learnable": "learnable parameters", "partial": "partial rotary"}
    for name, config in cases.items():
        make_checkpoint(tmp_path / f"{name}.pt", config)
        with pytest.raises(ValueError, match=whys[name]):
            hf.export_checkpoint(tmp_path / f"{name}.pt", tmp_path / name)
        assert not (tmp_path / name).exists()


def test_tokenizer_mismatch_is_refused_unless_no_tokenizer(tmp_path):
    decoder = make_checkpoint(tmp_path / "ckpt.pt", {"kind": "rope"}, vocab=48)  # trained on custom batches
    with pytest.raises(ValueError, match="vocab_size is 48"):
        hf.export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    result = hf.export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out2", tokenizer=False)
    assert result.tokenizer is None and not (result.path / "tokenizer.json").exists()
    vanilla = AutoModelForCausalLM.from_pretrained(result.path).eval()
    with torch.no_grad():
        assert (vanilla(_IDS[:, :24] % 48).logits - decoder(_IDS[:, :24] % 48)[0]).abs().max() <= TOL


@pytest.mark.parametrize("spec", ["byte", "byte256"])
def test_byte_tokenizer_exports_as_a_tokenizer_json_with_the_same_ids(tmp_path, spec):
    vocab = 257 if spec == "byte" else 256
    make_checkpoint(tmp_path / "ckpt.pt", {"kind": "rope"}, tokenizer=spec, vocab=vocab)
    result = hf.export_checkpoint(tmp_path / "ckpt.pt", tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(result.path)
    ours = ByteTokenizer() if spec == "byte" else ByteTokenizer(specials=())
    text = "Hello, wörld!\n\ttabs  and  spaces ✓ 𝄞 \x00\x7f end "
    assert tok(text)["input_ids"] == ours.encode(text)
    assert tok.decode(ours.encode(text)) == text
    assert len(tok) == vocab
    if spec == "byte":
        assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == 256
        assert json.loads((result.path / "config.json").read_text())["eos_token_id"] == 256
        assert json.loads((result.path / "generation_config.json").read_text())["eos_token_id"] == 256


def test_rms_norm_matches_transformers_llama_rms_norm_bitwise():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    ours, theirs = RMSNorm(64, 1e-5), LlamaRMSNorm(64, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_(1.0, 0.3)
        theirs.weight.copy_(ours.weight)
    x = 3 * torch.randn(4, 7, 64)
    assert torch.equal(ours(x), theirs(x))                       # float32
    ours.to(torch.bfloat16), theirs.to(torch.bfloat16)
    xb = x.bfloat16()
    assert torch.equal(ours(xb), theirs(xb))                     # both normalise in float32 and cast back
    assert ours(xb).dtype == theirs(xb).dtype == torch.bfloat16


# --- the command line -------------------------------------------------------------------------------

def test_cli_exports_a_checkpoint(tmp_path, capsys):
    decoder = make_checkpoint(tmp_path / "ckpt.pt", {"kind": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                                     "high_freq_factor": 4.0})
    assert cli.main(["export", str(tmp_path / "ckpt.pt"), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "plain Hugging Face model" in out and "byte tokenizer" in out
    assert _max_diff(_vanilla_logits(tmp_path / "out"), _logits(decoder)) <= TOL


def test_cli_exports_a_transformers_model_with_an_encoding(base_llama, tmp_path, capsys):
    source = hf.export_pretrained(base_llama, tmp_path / "src", tokenizer=ByteTokenizer()).path
    argv = ["export", "--hf", str(source), "--pe", "yarn", "pe.factor=2.5", "pe.beta_fast=16", str(tmp_path / "out")]
    assert cli.main(argv) == 0
    assert "plain Hugging Face model" in capsys.readouterr().out
    patched = hf.patch_model(copy.deepcopy(base_llama), {"kind": "yarn", "factor": 2.5, "beta_fast": 16.0})
    assert _max_diff(_vanilla_logits(tmp_path / "out"), _logits(patched)) <= TOL
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_cli_errors_are_one_line(base_llama, tmp_path, capsys):
    make_checkpoint(tmp_path / "alibi.pt", {"kind": "alibi"})
    source = hf.export_pretrained(base_llama, tmp_path / "src", tokenizer=ByteTokenizer()).path
    capsys.readouterr()  # (transformers 5 draws a progress bar while saving)
    cases = {
        "checkpoint .*: no such file": ["export", str(tmp_path / "missing.pt"), str(tmp_path / "a")],
        "vanilla transformers has no rope type .*--hopekit-pe": ["export", "--hf", str(source), "--pe",
                                                                 "hope_highfreq", str(tmp_path / "b")],
        "alibi.*--hopekit-pe": ["export", str(tmp_path / "alibi.pt"), str(tmp_path / "c")],
        "--pe yarn: only with --hf": ["export", "--pe", "yarn", str(tmp_path / "alibi.pt"), str(tmp_path / "d")],
        "expected CKPT OUT": ["export", str(tmp_path / "alibi.pt")],
        "only pe.KEY=VALUE": ["export", "--hf", str(source), "--pe", "yarn", "model.x=1", str(tmp_path / "e")],
        "need --pe KIND": ["export", "--hf", str(source), "pe.factor=2", str(tmp_path / "f")],
    }
    for pattern, argv in cases.items():
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("hopekit: error: "), err
        assert re.search(pattern, err), (pattern, err)
    assert cli.main(["export", "--hopekit-pe", str(tmp_path / "alibi.pt"), str(tmp_path / "g")]) == 0
    assert "silently runs plain RoPE" in capsys.readouterr().out


# --- vanilla transformers in a process that never imports hopekit -----------------------------------

VANILLA_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys

    class NoHopekit(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hopekit" or name.startswith("hopekit."):
                raise ImportError("hopekit must not be imported here")

    sys.meta_path.insert(0, NoHopekit())
    import torch
    from transformers import AutoModelForCausalLM

    jobs = json.loads(sys.argv[1])
    ids = torch.tensor(jobs["ids"])
    out = {}
    for path in jobs["dirs"]:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():  # increasing lengths (transformers' dynamic NTK only grows its length)
            out[path] = {n: model(ids[:, :n]).logits for n in jobs["lengths"]}
    assert not [m for m in sys.modules if m == "hopekit" or m.startswith("hopekit.")]
    torch.save(out, jobs["out"])
""")


def _run_vanilla(python: str, expected: dict[str, dict[int, torch.Tensor]], tmp_path: Path) -> dict:
    jobs = {"dirs": sorted(expected), "ids": _IDS.tolist(), "lengths": list(LENGTHS), "out": str(tmp_path / "out.pt")}
    subprocess.run([python, "-c", VANILLA_SCRIPT, json.dumps(jobs)], check=True, cwd=tmp_path,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}, timeout=300)
    return torch.load(tmp_path / "out.pt")


#: another Python whose transformers has the other major version (CI's 5.x step sets it to the 4.x venv)
OTHER_PYTHON = os.environ.get("HOPEKIT_OTHER_TRANSFORMERS_PYTHON")


@pytest.mark.skipif(not OTHER_PYTHON, reason="set HOPEKIT_OTHER_TRANSFORMERS_PYTHON to a Python with the other "
                                             "transformers major version")
def test_an_export_reads_alike_under_the_other_transformers_major(pretrained_exports, tmp_path):
    """config.json carries both rope layouts: 5.x saves only rope_parameters, which 4.x ignores (it would
    silently run RoPE with base 10000); 4.x saves only rope_scaling + rope_theta."""
    expected = {str(path): ours for path, ours, _ in pretrained_exports.values()}
    got = _run_vanilla(OTHER_PYTHON, expected, tmp_path)
    for path, ours in expected.items():
        assert _max_diff(got[path], ours) <= TOL, path


@pytest.mark.slow
def test_vanilla_transformers_without_hopekit_gives_hopekits_logits(pretrained_exports, tmp_path):
    expected = {str(path): ours for path, ours, _ in pretrained_exports.values()}
    for name, config in rope_family(4).items():
        decoder = make_checkpoint(tmp_path / f"{name}.pt", config)
        expected[str(hf.export_checkpoint(tmp_path / f"{name}.pt", tmp_path / name).path)] = _logits(decoder)
    got = _run_vanilla(sys.executable, expected, tmp_path)
    for path, ours in expected.items():
        assert _max_diff(got[path], ours) <= TOL, path


@pytest.mark.parametrize("model_type", ["mistral", "qwen2"])
def test_mistral_and_qwen2_export_too(tmp_path, model_type):
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"mistral": (MistralConfig, MistralForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[model_type]
    config = config_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=ORIGINAL,
                        rope_theta=100.0, attn_implementation="sdpa")
    model = model_cls(config).eval()
    _randomise(model)  # (Qwen2's q/k/v biases too)
    hf.patch_model(model, {"kind": "yarn", "factor": 2.5})
    result = hf.export_pretrained(model, tmp_path / model_type)
    assert json.loads((result.path / "config.json").read_text())["model_type"] == model_type
    assert _max_diff(_vanilla_logits(result.path), _logits(model)) <= TOL


@pytest.mark.pretrained
def test_smollm2_with_yarn_exports_to_a_directory_vanilla_transformers_runs_exactly(smollm2, tmp_path):
    source = smollm2.source
    gguf_tokenizer = AutoTokenizer.from_pretrained(source["path"], gguf_file=source["gguf_file"])
    model = hf.patch_model(copy.deepcopy(smollm2.model), {"kind": "yarn", "factor": 2.0})  # the fixture is shared
    result = hf.export_pretrained(model, tmp_path / "smol", tokenizer=gguf_tokenizer)
    assert result.vanilla_exact
    text = "The quick brown fox jumps over the lazy dog. " * 3
    ids = torch.tensor([gguf_tokenizer(text)["input_ids"]])
    exported_tokenizer = AutoTokenizer.from_pretrained(result.path)
    assert exported_tokenizer(text)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        ours = model(ids).logits
        del model
        theirs = AutoModelForCausalLM.from_pretrained(result.path).eval()(ids).logits
    scale = ours.abs().max().item()
    print(f"smollm2 yarn export: max |Δlogit| = {(ours - theirs).abs().max().item():.3g} "
          f"(logits up to {scale:.3g}, {ids.shape[1]} tokens)")
    # transformers rotates with float32 angles, hopekit with float64 ones; through 30 layers that is
    # ~1e-4 on logits of ~20 (measured 8.9e-5 on 31 tokens): TOL relative to the logit scale
    assert (ours - theirs).abs().max() <= TOL * max(1.0, scale)
    # transformers against transformers, to the absolute 1e-5: the original weights with yarn set
    # through rope fields in memory give exactly the exported directory's logits (weights and fields exact)
    config = copy.deepcopy(smollm2.model.config)
    hf.set_rope_fields(config, hf.resolve_pe({"kind": "yarn", "factor": 2.0}, smollm2.model))
    reference = AutoModelForCausalLM.from_config(config).eval()
    reference.load_state_dict(smollm2.model.state_dict())
    with torch.no_grad():
        assert (reference(ids).logits - theirs).abs().max() <= TOL
