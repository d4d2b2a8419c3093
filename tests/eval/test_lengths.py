"""evaluate_lengths: what it skips (only the very same measurement), what it refuses before anything
is recorded (an empty or too short test split, unknown extension names), and its progress bars."""

from __future__ import annotations

import functools
import io
import math
import types

import pytest
import torch

from hopekit.config import DataConfig, EvalConfig, ExperimentConfig, TrainConfig
from hopekit.eval import lengths
from hopekit.eval.lengths import evaluate_lengths
from hopekit.eval.records import read_records
from hopekit.model import Decoder, ModelConfig

VOCAB = 24
TRAIN_LEN = 16
MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2}


def make(seed: int = 0, **pe) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=VOCAB, pe=pe or {"kind": "rope"}, **MODEL)).eval()


def config(pe: dict | None = None, **eval_fields) -> ExperimentConfig:
    ev = {"multiples": (1, 2), "max_tokens": 64, "extensions": (), **eval_fields}
    return ExperimentConfig(model=MODEL, pe=pe or {"kind": "rope"}, train=TrainConfig(train_len=TRAIN_LEN),
                            eval=EvalConfig(**ev))


@pytest.fixture
def toy_split(monkeypatch):
    """The test split: four 60-token documents, a tokenizer named "toy" with separator 0."""
    docs = [torch.randint(1, VOCAB, (60,), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    tokenizer = types.SimpleNamespace(name="toy", eos_id=0)
    monkeypatch.setattr(lengths, "test_documents", lambda cfg: (tokenizer, docs))
    return docs


def run(model, cfg, path, **kw):
    return evaluate_lengths(model, cfg, path, method=cfg.pe.kind, progress=False, log=lambda _: None, **kw)


def ppl_rows(rows):
    return [r for r in rows if r["metric"] == "ppl"]


def test_another_model_is_measured_and_the_same_one_skipped(toy_split, tmp_path):
    path, cfg = tmp_path / "records.jsonl", config()
    a, b = make(seed=0), make(seed=1)
    first = run(a, cfg, path)
    second = run(b, cfg, path)                       # another checkpoint, same method/lengths/protocol
    assert [r["eval_len"] for r in ppl_rows(first)] == [r["eval_len"] for r in ppl_rows(second)] == [16, 32]
    assert {r["model_digest"] for r in first}.isdisjoint({r["model_digest"] for r in second})
    assert [r["value"] for r in ppl_rows(first)] != [r["value"] for r in ppl_rows(second)]
    size = path.stat().st_size
    assert run(a, cfg, path) == first and run(make(seed=1), cfg, path) == second   # same weights: the recorded rows
    assert path.stat().st_size == size and len(ppl_rows(read_records(path))) == 4  # nothing measured again


@pytest.mark.parametrize("change", [{"max_tokens": 32}, {"split": "validation"},
                                    {"protocol": "sliding", "stride": 8}, {"protocol": "sliding", "stride": 4}])
def test_another_split_budget_protocol_or_stride_is_measured(toy_split, tmp_path, change):
    path, model = tmp_path / "records.jsonl", make()
    run(model, config(protocol="sliding", stride=8) if change.get("stride") == 4 else config(), path)
    again = run(model, config(**change), path)
    assert [r["eval_len"] for r in ppl_rows(again)] == [16, 32] and len(ppl_rows(read_records(path))) == 4
    assert run(model, config(**change), path) == again and len(ppl_rows(read_records(path))) == 4


def test_another_longrope_factor_set_is_measured(toy_split, tmp_path):
    path, model = tmp_path / "records.jsonl", make()
    half = model.config.head_dim // 2
    lr1 = {"short_rescale": [1.0] * half, "long_rescale": [2.0] * half, "factor": 4.0}
    lr2 = {"short_rescale": [1.0] * half, "long_rescale": [3.0] * half, "factor": 4.0}
    first = run(model, config(), path, longrope=lr1)
    second = run(model, config(), path, longrope=lr2)
    assert ppl_rows(second)[:2] == ppl_rows(first)[:2]                             # the rope model: recorded
    assert [(r["method"], r["eval_len"], r["params"]["long_rescale"]) for r in ppl_rows(second)[2:]] == \
        [("rope+longrope", 16, [3.0] * half), ("rope+longrope", 32, [3.0] * half)]  # other factors: measured
    assert len(ppl_rows(read_records(path))) == 6
    assert run(model, config(), path, longrope=lr2) == second and len(ppl_rows(read_records(path))) == 6


def test_a_dynamic_ntk_row_recorded_with_factor_s_is_measured_again(toy_split, tmp_path, monkeypatch):
    """Rows of the former dynamic_ntk rule (factor s = 2 at 2×) carry it in their params: the new rule
    (factor 1) is measured, never served from them; the other rows are reused."""
    path, model, cfg = tmp_path / "records.jsonl", make(), config(extensions=("ntk", "dynamic_ntk"))
    with monkeypatch.context() as m:
        m.setattr(lengths, "extension_configs", functools.partial(lengths.extension_configs, dynamic_factor=2.0))
        old = {r["method"]: r for r in ppl_rows(run(model, cfg, path)) if r["eval_len"] == 32}
    assert old["rope+dynamic_ntk"]["params"]["factor"] == 2.0
    new = {r["method"]: r for r in ppl_rows(run(model, cfg, path)) if r["eval_len"] == 32}
    assert new["rope"] == old["rope"] and new["rope+ntk"] == old["rope+ntk"]        # recorded: reused
    assert new["rope+dynamic_ntk"]["params"]["factor"] == 1.0                        # measured anew
    assert len([r for r in ppl_rows(read_records(path)) if r["method"] == "rope+dynamic_ntk"]) == 2
    # one forward per window of 2L: factor 1 is static NTK with factor 2; factor 2 (effective 3) is not
    assert new["rope+dynamic_ntk"]["value"] == new["rope+ntk"]["value"] != old["rope+dynamic_ntk"]["value"]


def test_longrope_row_has_one_attention_factor_at_every_length(toy_split, tmp_path):
    model = make()
    half = model.config.head_dim // 2
    lr = {"short_rescale": [1.0] * half, "long_rescale": [1.0 + i for i in range(half)], "factor": 8.0}
    expected = math.sqrt(1.0 + math.log(8.0) / math.log(TRAIN_LEN))
    jobs = [j for j in lengths.measurement_jobs(model, config(multiples=(1, 2, 16)), "rope", (), lr) if j.method == "rope+longrope"]
    assert [j.eval_len for j in jobs] == [16, 32, 256] and all(j.params == jobs[0].params for j in jobs)
    for job in jobs:   # the encoding each measurement runs, at its window length and below train_len
        for seq_len in (job.eval_len, TRAIN_LEN - 1):
            assert job.model.pe.spectrum(seq_len).attn_scale == pytest.approx(expected, rel=1e-15, abs=0.0)
    rows = [r for r in ppl_rows(run(model, config(), tmp_path / "records.jsonl", longrope=lr))
            if r["method"] == "rope+longrope"]
    assert [r["eval_len"] for r in rows] == [16, 32] and rows[0]["params"] == rows[1]["params"] == jobs[0].params


def test_longrope_without_its_factor_is_refused_before_recording(toy_split, tmp_path):
    path, model = tmp_path / "records.jsonl", make()
    half = model.config.head_dim // 2
    with pytest.raises(ValueError, match=r"^longrope\.factor: missing"):
        run(model, config(), path, longrope={"short_rescale": [1.0] * half, "long_rescale": [2.0] * half})
    assert not path.exists()


def test_rows_carry_every_key_field(toy_split, tmp_path):
    rows = run(make(), config(protocol="sliding", stride=8), tmp_path / "records.jsonl")
    for r in rows:
        assert all(f in r for f in lengths.KEY_FIELDS)
        assert (r["split"], r["tokenizer"], r["max_tokens"], r["stride"]) == ("test", "toy", 64, 8)


def test_a_test_split_without_documents_is_refused_before_recording(tmp_path):
    corpus = tmp_path / "one_work"
    corpus.mkdir()
    (corpus / "only.txt").write_text("To be, or not to be, that is the question. " * 40)
    cfg = ExperimentConfig(model=MODEL, pe={"kind": "rope"}, train=TrainConfig(train_len=TRAIN_LEN),
                           data=DataConfig(corpus=str(corpus)), eval=EvalConfig(multiples=(1,), extensions=()))
    path = tmp_path / "records.jsonl"
    with pytest.raises(ValueError, match=rf"eval.split='test' of corpus '{corpus}' holds no tokens"):
        run(Decoder(cfg.model_config(vocab_size=257)), cfg, path)
    assert not path.exists()


def test_a_split_where_no_window_fits_the_longest_length_is_refused_before_recording(monkeypatch, tmp_path):
    docs = [torch.randint(1, VOCAB, (12,)), torch.randint(1, VOCAB, (7,))]   # ~20 joined tokens: 1× fits, 2× not
    monkeypatch.setattr(lengths, "test_documents", lambda cfg: (types.SimpleNamespace(name="toy", eos_id=0), docs))
    path = tmp_path / "records.jsonl"
    with pytest.raises(ValueError, match=r"no window at eval_len=32.*33 tokens in one document"):
        run(make(), config(), path)
    with pytest.raises(ValueError, match=r"no window at eval_len=16.*17 tokens in one document"):
        run(make(), config(multiples=(1,), protocol="truncate"), path)
    assert not path.exists()


def test_learned_positions_past_their_table_stay_a_recorded_skip(toy_split, tmp_path):
    path, model = tmp_path / "records.jsonl", make(kind="learned", max_len=TRAIN_LEN)
    rows = ppl_rows(run(model, config(pe={"kind": "learned", "max_len": TRAIN_LEN}), path))
    assert [r["value"] is None for r in rows] == [False, True] and "max_len" in rows[1]["skipped"]
    assert ppl_rows(run(model, config(pe={"kind": "learned", "max_len": TRAIN_LEN}), path)) == rows
    assert len(ppl_rows(read_records(path))) == 2


@pytest.mark.parametrize("extensions", [("",), ("yarn", "pi")])
def test_unknown_extension_names_are_refused_before_measuring(toy_split, tmp_path, extensions):
    path = tmp_path / "records.jsonl"
    with pytest.raises(ValueError) as refused:
        run(make(), config(), path, extensions=extensions)
    assert not path.exists()                                  # nothing was measured first
    message = str(refused.value)
    assert "unknown name(s)" in message and "known: rope, linear, ntk, dynamic_ntk, yarn, longrope" in message
    with pytest.raises(TypeError, match="sequence of names"):
        run(make(), config(), path, extensions="yarn")


def test_no_extensions_and_default_extensions(toy_split, tmp_path):
    rows = ppl_rows(run(make(), config(extensions=("yarn",)), tmp_path / "a.jsonl", extensions=()))
    assert {r["method"] for r in rows} == {"rope"}
    rows = ppl_rows(run(make(), config(extensions=("yarn",)), tmp_path / "b.jsonl"))
    assert [(r["method"], r["eval_len"]) for r in rows] == [("rope", 16), ("rope", 32), ("rope+yarn", 32)]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bar_per_length_only_when_asked(toy_split, tmp_path, monkeypatch, progress):
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    evaluate_lengths(make(), config(), tmp_path / "r.jsonl", method="rope", progress=progress, log=lambda _: None)
    shown = err.getvalue()
    assert ("rope @ 16" in shown and "rope @ 32" in shown) == progress
    assert (shown == "") == (not progress)


def test_log_lines_count_the_measurements(toy_split, tmp_path):
    lines: list[str] = []
    evaluate_lengths(make(), config(extensions=("yarn",)), tmp_path / "r.jsonl", method="rope", progress=False,
                     log=lines.append)
    # rope at 1x and 2x, then rope+yarn at 2x: three measurements, each line says which of them it is
    assert [line.split("]")[0].strip() for line in lines] == ["[1/3", "[2/3", "[3/3"]
    assert "rope+yarn" in lines[2]


def test_an_unwritable_records_file_is_refused_before_measuring(toy_split, tmp_path, monkeypatch):
    measured = []
    monkeypatch.setattr(lengths, "_measure", lambda *a, **k: measured.append(a) or [])
    target = tmp_path / "a-file"
    target.write_text("")
    with pytest.raises(PermissionError, match="records file .*cannot be written"):
        run(make(), config(), target / "records.jsonl")        # its parent is a file
    assert not measured


def test_a_record_written_before_a_method_gained_a_field_still_matches(toy_split, tmp_path):
    """hope_hyperbolic's logit_scale / train_len came later: rows without them (logit_scale "none" then)
    are the same measurement; with logit_scale "log_length" it is another one."""
    import json

    path, cfg = tmp_path / "records.jsonl", config({"kind": "hope_hyperbolic"})
    model = make(kind="hope_hyperbolic")
    first = run(model, cfg, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:                                      # as the older code wrote them
        r["params"] = {k: v for k, v in r["params"].items() if k not in ("logit_scale", "train_len")}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = run(model, cfg, path)
    assert len(ppl_rows(read_records(path))) == 2 and [r["value"] for r in ppl_rows(again)] == \
        [r["value"] for r in ppl_rows(first)]
    scaled = config({"kind": "hope_hyperbolic", "logit_scale": "log_length"})
    run(make(kind="hope_hyperbolic", logit_scale="log_length", train_len=TRAIN_LEN), scaled, path)
    assert len(ppl_rows(read_records(path))) == 4
