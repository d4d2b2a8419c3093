"""hopekit.longrope.run: a search on a trained checkpoint, end to end, and how a search is planned.

Oracles: the files a search writes read back independently (``hopekit.pe.parse``, csv, json lines, the
state file), the best candidate re-scored by hand with ``perplexity(with_pe(...), "truncate")``, and the
exported ``rope_parameters`` block run through transformers' own ``ROPE_INIT_FUNCTIONS["longrope"]``
against hopekit's ``longrope`` schedule. The checkpoint is a 2-layer width-32 decoder trained here for
5 steps on the embedded corpus (byte tokenizer, train_len 32).
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from hopekit import pe
from hopekit.checkpoint import load_checkpoint
from hopekit.config import ExperimentConfig
from hopekit.data import encode_documents
from hopekit.data.prepare import load_corpus_from_config, tokenizer_from_config
from hopekit.eval.extensions import with_pe
from hopekit.eval.perplexity import perplexity
from hopekit.longrope import STATE_NAME, Candidate, SearchConfig, SearchError
from hopekit.longrope.run import lambda_max_for, plan_target, read_search_records, search_checkpoint, search_model
from hopekit.pe.schedules import LongRoPEParams, RopeParams, longrope
from tests.longrope._search_worker import synthetic_documents, tiny_decoder

TRAIN_LEN, FACTOR = 32, 2.0
CFG = SearchConfig(population=6, parents=3, mutations=2, crossovers=1, iterations=2, seed=2)


def quiet(**kw):
    return dict(progress=False, log=lambda s: None, **kw)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from hopekit.train import train

    out = tmp_path_factory.mktemp("ckpt")
    cfg = ExperimentConfig.from_dict({
        "name": "lr-test", "model": {"d_model": 32, "n_layers": 2, "n_heads": 2}, "pe": {"kind": "rope"},
        "train": {"train_len": TRAIN_LEN, "batch_size": 4, "steps": 5, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 1,
                  "checkpoint_every": 5, "log_every": 5}})
    train(cfg, out, progress=False, log=None)
    return out / "checkpoint.pt"


@pytest.fixture(scope="module")
def searched(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("search")
    result = search_checkpoint(checkpoint, out, factor=FACTOR, config=CFG, fitness_docs=2, **quiet())
    return result, out


def test_search_checkpoint_writes_the_searched_factors(searched, checkpoint):
    output, out = searched
    best = output.result.best
    params = pe.parse(json.loads((out / "longrope.json").read_text()))
    assert isinstance(params, LongRoPEParams) and params == output.params
    assert params.long_rescale == best.factors() and params.short_rescale == (1.0,) * 8
    assert (params.train_len, params.factor, params.start_tokens) == (TRAIN_LEN, FACTOR, 0)
    model, config, _ = load_checkpoint(checkpoint, "cpu")
    assert params.base == config.pe.base
    lines = (out / "factors.csv").read_text().splitlines()
    assert len(lines) == 8 and [float(v) for v in lines] == list(best.factors())
    assert output.slot == "long"


def test_the_best_fitness_is_the_truncated_perplexity_of_the_written_encoding(searched, checkpoint):
    output, out = searched
    model, config, _ = load_checkpoint(checkpoint, "cpu")
    docs = encode_documents(load_corpus_from_config(config.data, "validation"), tokenizer_from_config(config.data))
    eval_len = int(TRAIN_LEN * FACTOR)
    chosen = [d[:eval_len + 1] for d in docs if d.numel() > eval_len][:2]   # byte tokenizer: no BOS
    scored = with_pe(model, json.loads((out / "longrope.json").read_text()))
    assert output.result.best_fitness == pytest.approx(perplexity(scored, chosen, eval_len, "truncate").ppl, rel=1e-6)
    assert output.result.best_fitness <= min(output.seed_fitness.values())
    history = json.loads((out / STATE_NAME).read_text())["history"]
    assert set(output.seed_fitness) == {"pi", "ntk", "yarn", "yarn_linear"}
    assert all(math.isfinite(v) and v in history.values() for v in output.seed_fitness.values())


def test_records_hold_one_row_per_iteration_and_one_result_each_with_commit_and_config(searched):
    output, out = searched
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    per_iteration = [r for r in rows if r["metric"] == "search_best_ppl"]
    final = [r for r in rows if r["metric"] == "search_result_ppl"]
    assert [r["iteration"] for r in per_iteration] == list(range(CFG.iterations + 1)) and len(final) == 1
    assert [r["value"] for r in per_iteration] == [row["best"] for row in output.result.curve]
    assert final[0]["value"] == output.result.best_fitness
    for r in rows:
        assert r["commit"] and r["config"]["target"]["eval_len"] == 64 and r["search"]["population"] == 6
        assert r["method"] == "longrope_search" and r["train_len"] == TRAIN_LEN and r["eval_len"] == 64
    assert pe.parse(final[0]["params"]) == output.params
    assert read_search_records(out / "records.jsonl") == per_iteration


def test_best_per_iteration_csv_and_plot(searched):
    output, out = searched
    with open(out / "best_per_iteration.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(CFG.iterations + 1))
    assert [float(r["best_ppl"]) for r in rows] == [row["best"] for row in output.result.curve]
    assert [int(r["evaluations"]) for r in rows] == [6, 9, 12]
    assert (out / "search_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rope_parameters_round_trip_through_transformers_longrope(searched):
    pytest.importorskip("transformers")
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    output, out = searched
    block = json.loads((out / "rope_parameters.json").read_text())
    rope = dict(block["rope_parameters"])
    assert block["max_position_embeddings"] == TRAIN_LEN * FACTOR
    assert rope["original_max_position_embeddings"] == TRAIN_LEN and rope["rope_type"] == "longrope"
    assert rope["long_factor"] == list(output.params.long_rescale)
    theta = rope.pop("rope_theta")
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=16, rope_theta=theta, rope_scaling=rope,
                         max_position_embeddings=block["max_position_embeddings"],
                         original_max_position_embeddings=block["original_max_position_embeddings"])
    for seq_len in (TRAIN_LEN + 1, 64, TRAIN_LEN, 8):
        theirs, scale = ROPE_INIT_FUNCTIONS["longrope"](config, "cpu", seq_len=seq_len)
        ours = longrope(output.params, 16, seq_len=seq_len)
        assert torch.allclose(theirs.double(), ours.inv_freq, rtol=1e-6, atol=0), seq_len
        assert scale == pytest.approx(ours.attn_scale, rel=1e-12)
    long = longrope(output.params, 16, seq_len=64).inv_freq
    assert not torch.allclose(long, longrope(output.params, 16, seq_len=TRAIN_LEN).inv_freq)   # both sets exercised


# ---- search_model on a tiny random decoder --------------------------------------------------------

L_SMALL = 16                                             # tests/longrope/_search_worker.py: TRAIN_LEN


def small_search(tmp_path, **kw):
    model = tiny_decoder()
    kw = {**dict(head_dim=16, train_len=L_SMALL, fitness_docs=2, bos=0,
                 config=SearchConfig(population=4, parents=2, mutations=1, crossovers=1, iterations=1)), **kw}
    return search_model(lambda p: with_pe(model, pe.to_config(p)), model.config.pe, synthetic_documents(),
                        out_dir=tmp_path, **quiet(**kw))


def _state_config(out):
    return json.loads((out / STATE_NAME).read_text())["config"]


def test_a_progressive_search_multiplies_the_fine_tuned_factors(tmp_path):
    existing = tuple(1.0 + 0.2 * i for i in range(8))
    base = {"kind": "longrope", "train_len": L_SMALL, "factor": 2.0, "short_rescale": [1.0] * 8,
            "long_rescale": list(existing)}
    out = small_search(tmp_path, base=base, factor=4.0)
    p = out.params
    assert p.factor == 4.0 and p.long_rescale == tuple(m * v for m, v in zip(existing, out.result.best.factors()))
    state = _state_config(tmp_path)
    assert state["space"]["lambda_max"] == 1.25 * 2 and state["target"]["eval_len"] == 4 * L_SMALL
    assert state["target"]["ratio"] == 2.0 and state["target"]["multiply"] == list(existing)


def test_a_short_search_fills_the_short_set_at_train_len(tmp_path):
    long = [1.0 + 0.5 * i for i in range(8)]
    base = {"kind": "longrope", "train_len": L_SMALL, "factor": 2.0, "short_rescale": [1.0] * 8, "long_rescale": long}
    out = small_search(tmp_path, base=base, short=True,
                       config=SearchConfig(population=8, parents=4, mutations=2, crossovers=2, iterations=1))
    assert out.slot == "short" and out.params.long_rescale == tuple(long)
    assert out.params.short_rescale == out.result.best.factors()
    state = _state_config(tmp_path)
    assert state["target"]["eval_len"] == L_SMALL and set(state["seeds"]) == {"rope", "long", "pi", "ntk", "yarn",
                                                                               "yarn_linear"}
    assert (tmp_path / "factors.csv").read_text().splitlines() == [repr(v) for v in out.params.short_rescale]


def test_a_short_search_has_the_lower_lambda_max_by_default(tmp_path):
    base = {"kind": "longrope", "train_len": L_SMALL, "factor": 2.0, "short_rescale": [1.0] * 8,
            "long_rescale": [2.0] * 8}
    small_search(tmp_path, base=base, short=True,
                 config=SearchConfig(population=8, parents=4, mutations=2, crossovers=2, iterations=0))
    assert _state_config(tmp_path)["space"]["lambda_max"] == 2.0


def test_a_short_search_keeps_the_configurations_n_hat(tmp_path):
    """The short set shares n̂ with the long set: a short search of a configuration with n̂ = 4 keeps 4 for
    every candidate (and the long set's n̂ in the result), and refuses other choices."""
    base = {"kind": "longrope", "train_len": L_SMALL, "factor": 2.0, "short_rescale": [1.0] * 8,
            "long_rescale": [2.0] * 8, "start_tokens": 4}
    cfg = SearchConfig(population=8, parents=4, mutations=2, crossovers=2, iterations=1)
    out = small_search(tmp_path / "a", base=base, short=True, config=cfg)
    history = json.loads((tmp_path / "a" / STATE_NAME).read_text())["history"]
    assert {Candidate.from_key(k).start_tokens for k in history} == {4} and out.params.start_tokens == 4
    with pytest.raises(ValueError, match="shares n̂ with the long set"):
        small_search(tmp_path / "b", base=base, short=True, config=cfg, start_tokens=(0, 4))


def test_start_tokens_are_searched_within_their_choices(tmp_path):
    out = small_search(tmp_path, factor=2.0, start_tokens=(0, 2),
                       config=SearchConfig(population=8, parents=4, mutations=2, crossovers=2, iterations=6))
    history = json.loads((tmp_path / STATE_NAME).read_text())["history"]
    assert {Candidate.from_key(k).start_tokens for k in history} == {0, 2}
    assert out.params.start_tokens == out.result.best.start_tokens
    assert pe.parse(json.loads((tmp_path / "longrope.json").read_text())).start_tokens == out.params.start_tokens
    # transformers' longrope has no n̂: the block is written only for n̂ = 0
    assert (tmp_path / "rope_parameters.json").exists() == (out.params.start_tokens == 0)


def test_a_search_at_a_fixed_n_hat(tmp_path):
    out = small_search(tmp_path, factor=2.0, start_tokens=(4,))
    assert out.params.start_tokens == 4
    assert pe.parse(json.loads((tmp_path / "longrope.json").read_text())).start_tokens == 4
    assert not (tmp_path / "rope_parameters.json").exists()          # transformers has no n̂


def test_a_kill_between_the_state_and_the_record_keeps_one_record_per_iteration(tmp_path, monkeypatch):
    import hopekit.eval.records as records

    real, calls = records.append_records, []

    def dies_on_second(path, rows):
        calls.append(1)
        if len(calls) == 2:                                        # iteration 1's row: its state is written
            raise KeyboardInterrupt
        return real(path, rows)

    monkeypatch.setattr(records, "append_records", dies_on_second)
    cfg = SearchConfig(population=4, parents=2, mutations=1, crossovers=1, iterations=3)
    with pytest.raises(KeyboardInterrupt):
        small_search(tmp_path, factor=2.0, config=cfg)
    monkeypatch.setattr(records, "append_records", real)
    small_search(tmp_path, factor=2.0, config=cfg, resume=True)
    assert [r["iteration"] for r in read_search_records(tmp_path / "records.jsonl")] == [0, 1, 2, 3]


def test_a_search_killed_mid_iteration_resumes_with_one_record_per_iteration(tmp_path):
    model = tiny_decoder()
    n = [0]

    def dies(p):
        n[0] += 1
        if n[0] == 7:
            raise KeyboardInterrupt
        return with_pe(model, pe.to_config(p))

    cfg = SearchConfig(population=4, parents=2, mutations=1, crossovers=1, iterations=3)
    kw = dict(head_dim=16, train_len=L_SMALL, factor=2.0, fitness_docs=2, bos=0, config=cfg, out_dir=tmp_path)
    with pytest.raises(KeyboardInterrupt):
        search_model(dies, model.config.pe, synthetic_documents(), **quiet(**kw))
    resumed = small_search(tmp_path, factor=2.0, config=cfg, resume=True)
    whole = small_search(tmp_path / "whole", factor=2.0, config=cfg)
    assert resumed.params == whole.params and resumed.result.best_fitness == whole.result.best_fitness
    assert [r["iteration"] for r in read_search_records(tmp_path / "records.jsonl")] == [0, 1, 2, 3]
    assert resumed.seed_fitness == whole.seed_fitness


def test_seed_fitness_without_an_output_directory():
    model = tiny_decoder()
    out = search_model(lambda p: with_pe(model, pe.to_config(p)), model.config.pe, synthetic_documents(), head_dim=16,
                       train_len=L_SMALL, factor=2.0, fitness_docs=2, bos=0,
                       config=SearchConfig(population=4, parents=2, mutations=1, crossovers=1, iterations=0), **quiet())
    assert all(math.isfinite(v) for v in out.seed_fitness.values())


def test_search_model_refuses_an_unknown_fitness_and_a_needle_without_a_tokenizer(tmp_path):
    with pytest.raises(ValueError, match="fitness='bleu'"):
        small_search(tmp_path / "a", factor=2.0, fitness="bleu")
    with pytest.raises(ValueError, match="fitness='needle': needs encode"):
        small_search(tmp_path / "b", factor=2.0, fitness="needle")
    with pytest.raises(ValueError, match="seeds: unknown seed 'linear'"):
        small_search(tmp_path / "c", factor=2.0, seeds=("pi", "linear"))


# ---- plan_target, lambda_max_for ------------------------------------------------------------------

def _longrope_pe(factor=2.0, train_len=L_SMALL):
    return LongRoPEParams(train_len=train_len, factor=factor, short_rescale=(1.0,) * 8,
                          long_rescale=tuple(1.0 + 0.1 * i for i in range(8)))


def test_plan_target_for_a_rope_model_a_progressive_and_a_short_search():
    target, eval_len, ratio = plan_target(RopeParams(base=500.0), head_dim=16, train_len=32, factor=4.0)
    t = target.template
    assert (target.slot, eval_len, ratio, target.multiply) == ("long", 128, 4.0, None)
    assert (t.base, t.train_len, t.factor, t.short_rescale, t.long_rescale) == (500.0, 32, 4.0, (1.0,) * 8, (1.0,) * 8)
    lr = _longrope_pe()
    target, eval_len, ratio = plan_target(lr, head_dim=16, train_len=999, factor=8.0)
    assert (target.slot, eval_len, ratio, target.multiply, target.template.factor) == (
        "long", 8 * L_SMALL, 4.0, lr.long_rescale, 8.0)
    target, eval_len, ratio = plan_target(RopeParams(), head_dim=16, train_len=32, factor=None, short=True, base=lr)
    assert (target.slot, eval_len, ratio, target.template) == ("short", L_SMALL, 2.0, lr)
    assert plan_target(lr, head_dim=16, train_len=32, factor=None, short=True, eval_len=8)[1] == 8


@pytest.mark.parametrize("kwargs, match", [
    (dict(model_pe=RopeParams(), factor=1.0), r"factor=1\.0: expected the target extension"),
    (dict(model_pe=RopeParams(), factor=0.5), r"factor=0\.5"),
    (dict(model_pe=RopeParams(), factor=None), r"factor=None"),
    (dict(model_pe=RopeParams(), factor=True), r"factor=True"),
    (dict(model_pe=RopeParams(), factor=2.0, short=True), r"short=True: .*give base="),
    (dict(model_pe=_longrope_pe(4.0), factor=4.0), r"factor=4\.0: progressive extension goes beyond .*4\.0"),
    (dict(model_pe=_longrope_pe(4.0), factor=2.0), r"factor=2\.0: progressive"),
    (dict(model_pe=RopeParams(), factor=1.25, train_len=10), r"factor=1\.25: train_len·factor = 12\.5"),
    (dict(model_pe=pe.make_params("alibi"), factor=2.0), r"pe.kind='alibi'"),
    (dict(model_pe=RopeParams(), factor=None, short=True, base=_longrope_pe(), eval_len=L_SMALL + 1),
     r"eval_len=17: the short set is used at lengths <= train_len=16"),
    (dict(model_pe=RopeParams(), factor=2.0, base={"kind": "yarn", "factor": 2.0, "train_len": 16}),
     r"base: expected a longrope configuration, got kind 'yarn'"),
    (dict(model_pe=RopeParams(), factor=2.0, base={"kind": "longrope", "train_len": 16, "factor": 2.0,
                                                   "short_rescale": [1.0] * 4, "long_rescale": [1.0] * 4}),
     r"LongRoPEParams\.short_rescale: has 4 entries but rotary_dim/2 = 8"),
])
def test_plan_target_refusals_name_the_field(kwargs, match):
    kwargs = {"head_dim": 16, "train_len": 32, **kwargs}
    with pytest.raises(ValueError, match=match) as e:
        plan_target(kwargs.pop("model_pe"), **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("eval_len", [32, 16])
def test_a_long_search_refuses_an_eval_len_within_train_len(eval_len):
    with pytest.raises(ValueError, match=f"eval_len={eval_len}"):
        plan_target(RopeParams(), head_dim=16, train_len=32, factor=4.0, eval_len=eval_len)


def test_lambda_max_rules():
    assert lambda_max_for("paper", 8.0) == 10.0 and lambda_max_for("code", 8.0) == 9.0 and lambda_max_for(3, 8.0) == 3.0
    for bad in ("half", 0.5, math.nan, True, None):
        with pytest.raises(ValueError, match="lambda_max="):
            lambda_max_for(bad, 8.0)


# ---- a transformers model ------------------------------------------------------------------------

def test_search_pretrained_scores_the_patched_model_and_exports_a_block_vanilla_transformers_runs(tiny_dir,
                                                                                                  tmp_path):
    """A tiny random Llama (tests/eval/_tiny_hf.py: original length 32, base 500, 4 pairs), searched at 2×:
    the best fitness is the truncated perplexity (BOS first) of a freshly loaded model patched with the
    result, and vanilla transformers built from rope_parameters.json gives that model's logits."""
    pytest.importorskip("transformers")
    from transformers import AutoConfig, AutoModelForCausalLM

    from hopekit.eval.pretrained import HFLogits, pretrained_text
    from hopekit.integrations import hf
    from hopekit.longrope.run import search_pretrained

    out = search_pretrained(str(tiny_dir), tmp_path, factor=2.0, split="validation", fitness_docs=2,
                            config=SearchConfig(population=6, parents=3, mutations=2, crossovers=1, iterations=1),
                            **quiet())
    lm = hf.load_pretrained(str(tiny_dir))
    docs = [d for d in pretrained_text(lm.tokenizer, split="validation").documents if d.numel() >= 64][:2]
    patched = hf.patch_model(lm.model, out.params)
    want = perplexity(HFLogits(patched), docs, 64, "truncate", bos=lm.tokenizer.bos_id).ppl
    assert lm.tokenizer.bos_id is not None and out.result.best_fitness == pytest.approx(want, rel=1e-6)

    block = json.loads((tmp_path / "rope_parameters.json").read_text())
    rope = dict(block.pop("rope_parameters"))
    config = AutoConfig.from_pretrained(tiny_dir)
    config.rope_theta = rope.pop("rope_theta")
    config.rope_scaling = rope
    for key, value in block.items():
        setattr(config, key, value)
    vanilla = AutoModelForCausalLM.from_pretrained(tiny_dir, config=config).eval()
    ids = torch.cat([torch.tensor([lm.tokenizer.bos_id]), docs[0][:63]])[None]
    with torch.no_grad():
        theirs = vanilla(ids).logits
        ours = HFLogits(patched)(ids)
        ours = ours.materialize() if hasattr(ours, "materialize") else ours
    assert torch.allclose(theirs, torch.as_tensor(ours), atol=1e-5)
