"""hopekit.config: the one boundary where YAML and command-line text become typed parameters."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hopekit import pe
from hopekit.checkpoint import read_checkpoint
from hopekit.config import (ExperimentConfig, TrainConfig, apply_overrides, load_config, load_pe_file, parse_yaml,
                            preset_path)


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


# ----- init_from: fine-tuning a checkpoint of the reference decoder ---------------------------------------

@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two tiny checkpoints: ``first`` (rope base 500 at train_len 32) and ``chained``, initialised from
    ``first`` and fine-tuned at train_len 64 with yarn (its encoding's train_len: 32, the original)."""
    from tests._train_worker import run, tiny

    out = tmp_path_factory.mktemp("sources")
    torch.set_num_threads(1)
    run(tiny(pe={"kind": "rope", "base": 500.0}, steps=1, warmup_steps=0, checkpoint_every=0), out / "first")
    first = out / "first" / "checkpoint.pt"
    run(ExperimentConfig.from_dict({**_fine_tune(first, {"kind": "yarn", "factor": 2.0}, 64), "model": {}}), out / "chained")
    return first, out / "chained" / "checkpoint.pt"


def _fine_tune(source, pe_block, train_len, **sections) -> dict:
    return {"name": "ft", "init_from": str(source), "pe": pe_block,
            "train": {"train_len": train_len, "batch_size": 8, "steps": 1, "warmup_steps": 0, "checkpoint_every": 0},
            **sections}


def test_init_from_gives_an_unset_train_len_the_sources_original_length_not_the_fine_tuning_window(sources):
    first, chained = sources
    cfg = ExperimentConfig.from_dict(_fine_tune(first, {"kind": "yarn", "factor": 8.0}, 256))
    assert cfg.pe.train_len == 32 and cfg.train.train_len == 256
    assert cfg.init_from == {"path": str(first), "content_hash": read_checkpoint(first)["content_hash"], "train_len": 32}
    again = ExperimentConfig.from_dict(_fine_tune(first, {"kind": "yarn", "factor": 8.0, "train_len": 32}, 256))
    assert again.pe == cfg.pe                                                 # the original length, given: fine
    with pytest.raises(ValueError, match=r"pe\.train_len=256: differs from the original training length 32 of init_from="):
        ExperimentConfig.from_dict(_fine_tune(first, {"kind": "yarn", "factor": 8.0, "train_len": 256}, 256))
    # a chain keeps the first original length, not the chained source's train.train_len (64)
    assert read_checkpoint(chained)["config"]["train"]["train_len"] == 64
    assert ExperimentConfig.from_dict(_fine_tune(chained, {"kind": "longrope", "short_rescale": [1.0] * 8,
                                                           "long_rescale": [2.0] * 8, "factor": 8.0}, 256)).pe.train_len == 32


def test_init_from_takes_shape_tokenizer_and_unset_rotary_fields_from_the_source(sources):
    first, _ = sources
    saved = read_checkpoint(first)
    cfg = ExperimentConfig.from_dict(_fine_tune(first, {"kind": "yarn", "factor": 4.0}, 64))
    shape = {k: v for k, v in saved["model_config"].items() if k not in ("vocab_size", "pe")}
    assert dict(cfg.model) == shape and cfg.model_config(vocab_size=48).d_model == 32
    assert cfg.pe.base == 500.0                                               # the source's, not the registry's 1e4
    assert ExperimentConfig.from_dict(_fine_tune(first, {"kind": "yarn", "factor": 4.0, "base": 1e4}, 64)).pe.base == 1e4
    assert ExperimentConfig.from_dict(_fine_tune(first, None, 64)).pe == pe.parse(saved["config"]["pe"])  # unset: its own
    assert ExperimentConfig.from_dict(_fine_tune(first, None, 64, model={"d_model": 32})).model == cfg.model  # equal: fine
    with pytest.raises(ValueError, match=r"model\.d_model=64: the source checkpoint \(init_from=.*\) has d_model=32"):
        ExperimentConfig.from_dict(_fine_tune(first, None, 64, model={"d_model": 64}))
    with pytest.raises(ValueError, match=r"data\.tokenizer='bpe': the source checkpoint .* data\.tokenizer='byte'"):
        ExperimentConfig.from_dict(_fine_tune(first, None, 64, data={"tokenizer": "bpe"}))
    with pytest.raises(ValueError, match=r"init_from=.*: starts the reference decoder .* not with hf='smollm2'"):
        ExperimentConfig.from_dict(_fine_tune(first, None, 64, hf="smollm2"))


def test_an_init_from_record_reads_back_without_the_source_file(sources, tmp_path):
    import shutil

    source = tmp_path / "source.pt"
    shutil.copy(sources[0], source)
    cfg = ExperimentConfig.from_dict(_fine_tune(source, {"kind": "yarn", "factor": 4.0}, 64))
    record = cfg.resolved()
    assert record["init_from"]["train_len"] == 32 and record["pe"]["train_len"] == 32
    source.unlink()
    assert ExperimentConfig.from_dict(record).resolved() == record            # nothing read: the file is gone
    assert "init_from" not in load_config("tiny").resolved()                  # only when set
    with pytest.raises(ValueError, match=r"ExperimentConfig\.init_from=.*exactly the keys"):
        ExperimentConfig.from_dict({**record, "init_from": {"path": "x"}})


def test_a_pe_file_is_a_json_or_yaml_pe_block_and_errors_name_the_file(tmp_path):
    (tmp_path / "a.json").write_text('{"kind": "yarn", "factor": 4, "beta_fast": 1e1}')
    (tmp_path / "a.yaml").write_text("kind: yarn\nfactor: 4\nbeta_fast: 1e1\n")
    assert load_pe_file(tmp_path / "a.json") == load_pe_file(tmp_path / "a.yaml") == {
        "kind": "yarn", "factor": 4, "beta_fast": 10.0}
    (tmp_path / "b.yaml").write_text("factor: 4\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'b.yaml'}: expected a pe block.*got keys \['factor'\]"):
        load_pe_file(tmp_path / "b.yaml")
    (tmp_path / "c.json").write_text('{"kind": "yarn",')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'c.json'}:\d+: invalid YAML"):
        load_pe_file(tmp_path / "c.json")
