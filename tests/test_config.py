"""hopekit.config: the one boundary where YAML and command-line text become typed parameters."""

from __future__ import annotations

import dataclasses

import pytest

from hopekit import pe
from hopekit.config import ExperimentConfig, TrainConfig, apply_overrides, load_config, parse_yaml, preset_path


def test_pe_is_parsed_once_into_typed_params_with_the_experiments_train_len():
    cfg = load_config("tiny", ["pe.kind=yarn", "pe.factor=4", "train.train_len=96"])
    assert isinstance(cfg.pe, pe.YarnParams) and cfg.pe.train_len == 96 and cfg.pe.factor == 4
    # downstream code receives the object itself, never a dict to re-validate
    assert cfg.model_config(vocab_size=257).pe is cfg.pe
    assert cfg.resolved()["pe"] == pe.to_config(cfg.pe) and cfg.resolved()["pe"]["train_len"] == 96


@pytest.mark.parametrize("kind", sorted(n for n, m in pe.REGISTRY.items()
                                        if "train_len" in {f.name for f in dataclasses.fields(m.params)}))
def test_every_method_with_a_train_len_gets_it_from_train(kind):
    example = {k: v for k, v in pe.example_config(kind, head_dim=32).items() if k != "train_len"}
    cfg = ExperimentConfig.from_dict({"model": {"d_model": 128, "n_heads": 4}, "pe": example,
                                      "train": {"train_len": 48, "warmup_steps": 0}})
    assert cfg.pe.train_len == 48


def test_bipe_hands_train_len_to_its_inter_method():
    cfg = ExperimentConfig.from_dict({"pe": {"kind": "bipe", "inter": {"kind": "hope_highfreq"}},
                                      "train": {"train_len": 40}})
    assert cfg.pe.inter.train_len == 40 and pe.to_config(cfg.pe)["inter"]["kind"] == "hope_highfreq"


def test_a_pe_train_len_that_contradicts_train_is_refused_but_inf_is_allowed():
    with pytest.raises(ValueError, match=r"pe\.train_len=64: differs from train\.train_len=128"):
        load_config("tiny", ["pe={kind: yarn, factor: 2, train_len: 64}"])
    assert load_config("tiny", ["pe={kind: hope_highfreq, train_len: .inf}"]).pe.train_len == float("inf")


def test_a_missing_required_parameter_is_named_before_any_work():
    with pytest.raises(TypeError, match=r"pe\.factor: missing, required by yarn"):
        load_config("tiny", ["pe.kind=yarn"])


def test_randomized_positions_refused_for_a_method_that_reads_token_ids():
    with pytest.raises(ValueError, match="token ids"):
        load_config("tiny", ["pe.kind=bipe", "train.positions=randomized"])


def test_scientific_notation_is_a_float_in_overrides_and_files(tmp_path):
    assert load_config("tiny", ["train.lr=1e-3", "train.min_lr=1E-4"]).train.lr == 1e-3
    path = tmp_path / "x.yaml"
    path.write_text("train: {lr: 2e-3, min_lr: 1e-5}\n")
    assert load_config(path).train.lr == 2e-3
    assert parse_yaml("5", "x") == 5 and parse_yaml("'1e-3'", "x") == "1e-3"  # ints and quoted strings unchanged


def test_warmup_longer_than_training_is_refused():
    with pytest.raises(ValueError, match=r"TrainConfig\.warmup_steps=50: must be <= steps=10"):
        TrainConfig(steps=10, warmup_steps=50)


def test_malformed_preset_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ntrain: {lr: 1\n")
    with pytest.raises(ValueError, match=rf"{path}:\d+: invalid YAML"):
        load_config(path)


def test_a_folder_named_like_a_preset_is_not_mistaken_for_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert preset_path("tiny").name == "tiny.yaml" and preset_path("tiny").is_file()
    assert preset_path("smoke", prefix="bench_").name == "bench_smoke.yaml"


def test_unknown_keys_and_sections_are_named():
    with pytest.raises(ValueError, match=r"train\.stpes: unknown key"):
        load_config("tiny", ["train.stpes=3"])
    with pytest.raises(ValueError, match="unknown top-level"):
        ExperimentConfig.from_dict({"trian": {}})
    with pytest.raises(ValueError, match="not a section"):
        apply_overrides({"train": 3}, ["train.steps=3"])


def test_new_kind_starts_from_its_own_defaults():
    cfg = load_config("tiny", ["pe.kind=alibi"])                 # tiny's pe.base must not leak into alibi
    assert pe.to_config(cfg.pe) == {"kind": "alibi", "max_bias": 8.0}


def test_checkpointed_config_round_trips():
    cfg = load_config("tiny", ["pe={kind: longrope, short_rescale: [1.0], long_rescale: [2.0], factor: 2.0, "
                               "rotary_fraction: 0.0625}"])
    again = ExperimentConfig.from_dict(cfg.resolved())
    assert again == cfg and again.resolved() == cfg.resolved()


@pytest.mark.parametrize("name", list(pe.REGISTRY))
def test_every_registry_example_parses_builds_and_round_trips(name):
    config = pe.example_config(name, head_dim=32)
    params = pe.parse(config)
    assert pe.method_of(params) is pe.REGISTRY[name] and params.kind == name
    assert pe.parse(pe.to_config(params)) == params
    pe.build(params, head_dim=32, num_heads=2)


def test_hope_highfreq_keep_fraction_takes_no_train_len():
    cfg = load_config("tiny", ["pe={kind: hope_highfreq, keep_fraction: 0.25}"])
    assert cfg.pe.keep_fraction == 0.25 and cfg.pe.train_len is None
