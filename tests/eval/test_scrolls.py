"""SCROLLS-format tasks: the metrics against hand-computed values, SCROLLS' own documented example and
rouge-score called directly; the loader on the shipped sample, a directory, a hub-layout archive read
through ``datasets``, and ``auto`` falling back offline; training rows with the loss on the output only,
a pure function of (seed, step); a fine-tune + evaluation that writes records, and a resume after a
crash that ends on the same weights as an uninterrupted run."""

from __future__ import annotations

import json
import math
import socket
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F

from hopekit.data import ByteTokenizer
from hopekit.eval import scrolls as S
from hopekit.eval.records import REQUIRED_FIELDS, read_records
from hopekit.model import Decoder, ModelConfig

TOK = ByteTokenizer()
SEP = "\n\nAnswer:\n"

pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical comparisons within one thread count


# ----- metrics ---------------------------------------------------------------------------------------

def test_normalisation_f1_and_exact_match_by_hand():
    assert S.normalize_answer("  The Cat's   hat, an  APPLE!") == "cats hat apple"
    assert S.normalize_answer("theatre another") == "theatre another"        # articles only as whole words
    assert S.exact_match("An Apple.", "apple") == 1.0
    assert S.exact_match("apples", "apple") == 0.0
    # "the cat sat" -> [cat, sat]; "a cat sat down" -> [cat, sat, down]: P = 1, R = 2/3, F1 = 0.8
    assert S.token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # tokens count as a multiset: [cat, cat] vs [cat]: P = 1/2, R = 1, F1 = 2/3
    assert S.token_f1("cat cat", "cat") == pytest.approx(2 / 3)
    assert S.token_f1("dog", "cat") == 0.0 and S.token_f1("", "") == 0.0 and S.token_f1("the", "a") == 0.0


def test_multiple_references_take_the_best_one_and_examples_are_averaged():
    # qasper (F1): max(0, 0.8) for the first example, 1 for the second -> (80 + 100) / 2
    m = S.scrolls_metrics("qasper", ["the cat sat", "Yes"], [["dog", "a cat sat down"], ["yes", "no"]])
    assert m == pytest.approx({"f1": 90.0, "scrolls_score": 90.0})
    m = S.scrolls_metrics("contract_nli", ["Not mentioned", "entailment"], [["Contradiction"], ["Entailment"]])
    assert m == pytest.approx({"exact_match": 50.0, "scrolls_score": 50.0})
    assert S.score_key("quality") == "exact_match" and S.score_key("qmsum") == "rouge/geometric_mean"


def test_scrolls_documented_example():
    """The example in the docstring of SCROLLS' own metric script (numbers rounded to 4 decimals there)."""
    pytest.importorskip("rouge_score")
    predictions = ["exact match example", "hello there", "general kenobi"]
    references = [["exact match example"], ["hello", "hi there"], ["commander kenobi"]]
    rouge = S.scrolls_metrics("gov_report", predictions, references)
    expected = {"rouge/rouge1": 72.2222, "rouge/rouge2": 33.3333, "rouge/rougeL": 72.2222,
                "rouge/geometric_mean": 55.8136}
    for key, value in expected.items():
        assert round(rouge[key], 4) == value, key
    assert round(S.scrolls_metrics("contract_nli", predictions, references)["exact_match"], 4) == 33.3333
    assert round(S.scrolls_metrics("narrative_qa", predictions, references)["f1"], 4) == 72.2222


def test_rouge_agrees_with_rouge_score_called_directly(monkeypatch):
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

    predictions = ["The committee approved the budget on Tuesday. It rejected the plan.",
                   "Wells are overdue for inspection because there are fewer inspectors.",
                   "nothing in common",
                   "Fees rise next year. The ferry runs at dawn."]              # the reference's sentences swapped
    references = [["The budget was approved by the committee on Tuesday; the plan was rejected.",
                   "On Tuesday the committee approved it."],
                  ["6,300 wells are overdue for inspection, as the office has fewer inspectors.",
                   "Inspection backlog doubled."],
                  ["Completely different words here."],
                  ["The ferry runs at dawn. Fees rise next year."]]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    best = {k: [] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for pred, refs in zip(predictions, references):
        scores = [scorer.score(r, pred) for r in refs]
        for k in best:
            best[k].append(max(s[k].fmeasure for s in scores))
    mean = {k: 100 * sum(v) / len(v) for k, v in best.items()}

    monkeypatch.setattr(S, "_sentence_splitter", lambda: None)            # no punkt model: no rougeLsum
    got = S.scrolls_metrics("summ_screen_fd", predictions, references)
    assert set(got) == {"rouge/rouge1", "rouge/rouge2", "rouge/rougeL", "rouge/geometric_mean", "scrolls_score"}
    for k in ("rouge1", "rouge2", "rougeL"):
        assert got[f"rouge/{k}"] == pytest.approx(mean[k], abs=1e-9)
    assert got["rouge/geometric_mean"] == pytest.approx((mean["rouge1"] * mean["rouge2"] * mean["rougeL"]) ** (1 / 3))
    assert got["scrolls_score"] == got["rouge/geometric_mean"] and 0 < got["scrolls_score"] < 100

    # with a sentence splitter: rougeLsum on one sentence a line, the other types unchanged
    def split(text):
        return [s.strip() for s in text.replace(";", ".").split(".") if s.strip()]

    monkeypatch.setattr(S, "_sentence_splitter", lambda: split)
    with_lsum = S.scrolls_metrics("summ_screen_fd", predictions, references)
    lsum = [max(scorer.score("\n".join(split(r)), "\n".join(split(p)))["rougeLsum"].fmeasure for r in refs)
            for p, refs in zip(predictions, references)]
    assert with_lsum["rouge/rougeLsum"] == pytest.approx(100 * sum(lsum) / len(lsum))
    assert with_lsum["rouge/rougeLsum"] > mean["rougeLsum"] + 5              # the split mattered (swapped sentences)
    assert {k: with_lsum[k] for k in got} == pytest.approx(got)


def test_bad_metric_inputs_and_rouge_imported_lazily(monkeypatch):
    with pytest.raises(ValueError, match="scrolls.task='squad': not a SCROLLS task"):
        S.scrolls_metrics("squad", ["a"], [["a"]])
    with pytest.raises(ValueError, match="one list of references per prediction"):
        S.scrolls_metrics("qasper", ["a", "b"], [["a"]])
    with pytest.raises(ValueError, match=r"references\[0\] must be a non-empty list"):
        S.scrolls_metrics("qasper", ["a"], ["a"])
    monkeypatch.setitem(sys.modules, "rouge_score", None)                 # not installed
    S._rouge_scorer.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'hopekit\[scrolls\]'"):
            S.scrolls_metrics("qmsum", ["a"], [["a"]])
        assert S.scrolls_metrics("quality", ["a"], [["a"]])["exact_match"] == 100.0   # no ROUGE needed
    finally:
        S._rouge_scorer.cache_clear()


# ----- loading ---------------------------------------------------------------------------------------

def _raw(task, split):
    return [json.loads(line) for line in (S.SAMPLE_DIR / task / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("task", ["contract_nli", "qasper", "gov_report"])
def test_local_sample_groups_references_by_id(task):
    for split in ("train", "validation"):
        rows = _raw(task, split)
        assert all(set(r) == {"id", "pid", "input", "output"} for r in rows)
        data = S.load_scrolls(task, split, source="local")
        assert data.source == "local" and data.task == task and data.location.endswith(f"{task}/{split}.jsonl")
        assert [e.id for e in data.examples] == list(dict.fromkeys(r["id"] for r in rows))
        for e in data.examples:
            mine = [r for r in rows if r["id"] == e.id]
            assert e.outputs == tuple(r["output"] for r in mine) and e.pids == tuple(r["pid"] for r in mine)
            assert {r["input"] for r in mine} == {e.input}
        assert data.rows == len(rows)
    assert max(len(e.outputs) for e in S.load_scrolls("qasper", "validation", "local").examples) > 1
    assert len(S.load_scrolls(task, "train", "local", limit=2).examples) == 2


def test_missing_task_or_split_is_one_line():
    with pytest.raises(ValueError, match=r"^scrolls: the local sample has no narrative_qa train split; it holds "
                                         r"contract_nli \(train, validation\)"):
        S.load_scrolls("narrative_qa", "train", source="local")
    with pytest.raises(ValueError, match="local sample has no qasper test split"):
        S.load_scrolls("qasper", "test", source="local")
    with pytest.raises(ValueError, match=r"scrolls split='dev': expected one of"):
        S.load_scrolls("qasper", "dev", source="local")
    with pytest.raises(ValueError, match="scrolls.source='nowhere': expected one of"):
        S.load_scrolls("qasper", "train", source="nowhere")


def test_directory_source_groups_non_adjacent_rows_and_keeps_test_inputs(tmp_path):
    rows = [{"id": "a", "pid": "a_0", "input": "doc A", "output": "x"},
            {"id": "b", "pid": "b_0", "input": "doc B", "output": "y"},
            {"id": "a", "pid": "a_1", "input": "doc A", "output": "z"},
            {"id": "c", "pid": "c_0", "input": "doc C", "output": None}]     # the test split: no output
    (tmp_path / "quality").mkdir()
    (tmp_path / "quality" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = S.load_scrolls("quality", "test", source=str(tmp_path))
    assert data.source == "dir"
    assert [(e.id, e.outputs) for e in data.examples] == [("a", ("x", "z")), ("b", ("y",)), ("c", ())]
    assert [e.id for e in S.load_scrolls("quality", "test", source=str(tmp_path), limit=1).examples] == ["a"]
    (tmp_path / "quality" / "test.jsonl").write_text(json.dumps({**rows[0], "input": "other"}) + "\n"
                                                     + json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError, match=r"row 2 \(id 'a'\) has another input"):
        S.load_scrolls("quality", "test", source=str(tmp_path))


def test_hub_layout_archive_is_read_through_datasets(tmp_path, monkeypatch):
    """The hub route end to end with the endpoint pointing at a local folder in the hub's layout:
    ``<endpoint>/datasets/tau/scrolls/resolve/main/qasper.zip`` holding ``qasper/<split>.jsonl``."""
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "endpoint" / "datasets" / "tau" / "scrolls" / "resolve" / "main"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / "qasper.zip", "w") as z:
        z.write(S.SAMPLE_DIR / "qasper" / "validation.jsonl", "qasper/validation.jsonl")
    monkeypatch.setenv("HF_ENDPOINT", str(tmp_path / "endpoint"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    hub = S.load_scrolls("qasper", "validation", source="hub")
    local = S.load_scrolls("qasper", "validation", source="local")
    assert hub.source == "hub" and hub.location.startswith("zip://qasper/validation.jsonl::")
    assert hub.examples == local.examples
    with pytest.raises(ValueError, match="^scrolls: no train split of qasper at zip://qasper/train.jsonl::"):
        S.load_scrolls("qasper", "train", source="hub")


def test_auto_falls_back_to_the_local_sample_offline(monkeypatch):
    lines = []
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = S.load_scrolls("contract_nli", "validation", source="auto", log=lines.append)
    assert data.source == "local" and data.examples == S.load_scrolls("contract_nli", "validation", "local").examples
    assert len(lines) == 1 and "HF_DATASETS_OFFLINE is set" in lines[0] and "using the local sample" in lines[0]

    # no offline variable, but no network: the hub's host refuses the connection
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy",
                "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    lines.clear()
    assert S.load_scrolls("qasper", "train", source="auto", log=lines.append).source == "local"
    assert "unreachable (Connection refused)" in lines[0]
    with pytest.raises(ValueError, match="^scrolls.source=auto: no hub .*and the local sample has no qmsum validation"):
        S.load_scrolls("qmsum", "validation", source="auto")


# ----- configuration ---------------------------------------------------------------------------------

def test_preset_loads_with_overrides_and_unknown_keys_are_named():
    config, task = S.load_scrolls_config("scrolls", ["scrolls.task=qasper", "train.steps=30", "scrolls.max_output=8"])
    assert task.task == "qasper" and task.max_output == 8 and task.metric == "f1" and config.train.steps == 30
    assert config.data.tokenizer == "byte" and config.name == "scrolls"
    with pytest.raises(ValueError, match=r"^scrolls.max_inputs: unknown key; scrolls accepts \["):
        S.load_scrolls_config("scrolls", ["scrolls.max_inputs=10"])
    with pytest.raises(ValueError, match=r"^scrolls.keep='end': expected one of"):
        S.load_scrolls_config("scrolls", ["scrolls.keep=end"])
    with pytest.raises(ValueError, match=r"^scrolls.task='squad': not a SCROLLS task"):
        S.ScrollsConfig(task="squad")
    with pytest.raises(ValueError, match=r"preset='nope': not a file and not a scrolls preset; scrolls presets: \['scrolls'\]"):
        S.load_scrolls_config("nope")


def test_budget_fills_train_len_and_refuses_what_cannot_fit():
    task = S.ScrollsConfig(max_output=16)
    assert S._budget(task, 128, 10) == 128 - 10 - 16                        # row = input + sep + 16 + end = 129
    assert S._budget(S.ScrollsConfig(max_output=16, max_input=50), 128, 10) == 50
    with pytest.raises(ValueError, match=r"scrolls.max_input=103: .* at most 102"):
        S._budget(S.ScrollsConfig(max_output=16, max_input=103), 128, 10)
    with pytest.raises(ValueError, match=r"train.train_len=26: too short"):
        S._budget(task, 26, 10)


# ----- training rows ---------------------------------------------------------------------------------

def test_encode_pair_cuts_the_input_as_asked_and_ends_complete_outputs():
    text = "Question?\n\n" + "".join(chr(ord("a") + i % 26) for i in range(300))
    prompt, answer, cut = S.encode_pair(TOK, text, "Yes", max_input=100, max_output=8, separator=SEP)
    assert cut and TOK.decode(prompt) == text[:100] + SEP and answer == TOK.encode("Yes") + [TOK.eos_id]
    prompt, _, _ = S.encode_pair(TOK, text, "Yes", max_input=101, max_output=8, separator=SEP, keep="start_and_end")
    assert TOK.decode(prompt) == text[:51] + text[-50:] + SEP
    prompt, answer, cut = S.encode_pair(TOK, "short", "a long answer", max_input=100, max_output=4, separator=SEP)
    assert not cut and TOK.decode(prompt) == "short" + SEP and answer == TOK.encode("a lo")  # cut: no end token
    assert S.encode_pair(TOK, "short", None, max_input=100, max_output=4, separator=SEP)[1] == []


def _pairs(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, 256, (int(torch.randint(3, 20, (1,), generator=g)),), generator=g).tolist(),
             torch.randint(0, 256, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist() + [256])
            for _ in range(n)]


def test_rows_put_the_loss_on_the_output_only():
    pairs = _pairs()
    b = S.ScrollsBatches(pairs, batch_size=3, train_len=32, seed=1, pad_id=256)
    for i, (prompt, answer) in enumerate(pairs):
        x, y = b.row(i)
        seq = prompt + answer                                               # naive construction
        assert x.tolist() == seq[:-1] + [256] * (32 - len(seq) + 1)
        scored = (y != -1).nonzero().flatten().tolist()
        assert scored == list(range(len(prompt) - 1, len(seq) - 1))         # the positions that predict the answer
        assert y[scored].tolist() == answer == [seq[t + 1] for t in scored]
    # the decoder's loss on such a batch is the mean cross-entropy of the answer tokens alone
    model = Decoder(ModelConfig(vocab_size=257, d_model=16, n_layers=1, n_heads=2)).eval()
    x, y = b.batch(0)
    logits, loss = model(x, targets=y)
    mask = y != -1
    assert loss.item() == pytest.approx(F.cross_entropy(logits[mask], y[mask]).item(), rel=1e-5)
    with pytest.raises(ValueError, match="pair 0 has 30 prompt and 4 answer tokens"):
        S.ScrollsBatches([([1] * 30, [1, 2, 3, 256])], batch_size=1, train_len=32, seed=0, pad_id=256)


def test_batches_are_a_pure_function_of_seed_and_step_and_cover_every_pair_each_epoch():
    pairs = _pairs(7)
    a = S.ScrollsBatches(pairs, batch_size=3, train_len=32, seed=5, pad_id=256)
    b = S.ScrollsBatches(pairs, batch_size=3, train_len=32, seed=5, pad_id=256)
    for step in (9, 0, 4, 4, 1):                                             # any order, repeated
        assert all(torch.equal(u, v) for u, v in zip(a.batch(step), b.batch(step)))
    assert sorted(a.order(0)) == list(range(7)) and sorted(a.order(3)) == list(range(7))
    rows = torch.cat([a.batch(s)[0] for s in range(7)])                      # 21 rows = 3 epochs
    for epoch in range(3):
        expected = torch.stack([a.row(i)[0] for i in a.order(epoch)])
        assert torch.equal(rows[7 * epoch:7 * epoch + 7], expected)
    c = S.ScrollsBatches(pairs, batch_size=3, train_len=32, seed=6, pad_id=256)
    assert any(not torch.equal(a.batch(s)[0], c.batch(s)[0]) for s in range(3))
    d = S.ScrollsBatches(pairs[:-1] + [(pairs[-1][0], [7, 256])], batch_size=3, train_len=32, seed=5, pad_id=256)
    assert not torch.equal(a.stream, d.stream)                              # a resume would see the change


# ----- fine-tuning and evaluation --------------------------------------------------------------------

def _tiny(steps=6, **scrolls):
    overrides = ["model.d_model=32", "model.n_layers=2", "model.n_heads=2", "train.train_len=160",
                 "train.batch_size=2", f"train.steps={steps}", "train.warmup_steps=1", "train.checkpoint_every=2",
                 "train.log_every=2", "scrolls.max_output=8", "scrolls.eval_limit=2"]
    overrides += [f"scrolls.{k}={v}" for k, v in scrolls.items()]
    return S.load_scrolls_config("scrolls", overrides)


def test_finetune_and_evaluate_write_records(tmp_path):
    config, task = _tiny(task="qasper")
    lines = []
    result = S.run_scrolls(config, task, tmp_path / "run", progress=False, log=lines.append)
    assert result.train.step == 6 and len(result.predictions) == 2 == len(result.data.examples)
    rows = read_records(tmp_path / "run" / "records.jsonl")
    assert [r["metric"] for r in rows] == ["f1"] and rows[0]["primary"] is True
    row = rows[0]
    assert all(f in row for f in REQUIRED_FIELDS)
    assert row["task"] == "scrolls/qasper" and row["split"] == "validation" and row["source"] == "local"
    assert row["method"] == "rope" and row["params"]["kind"] == "rope" and row["train_len"] == 160
    assert row["examples"] == 2 and row["eval_len"] == 160          # the longest input + separator + output
    assert row["config"] == result.train.config.resolved() and row["scrolls"] == task.resolved()
    references = [e.outputs for e in result.data.examples]
    assert row["value"] == S.scrolls_metrics("qasper", result.predictions, references)["f1"] == result.metrics["f1"]
    predictions = [json.loads(x) for x in (tmp_path / "run" / "predictions-validation.jsonl").read_text().splitlines()]
    assert [p["prediction"] for p in predictions] == result.predictions
    assert any(line.startswith("scrolls: qasper validation (2 inputs, local): f1") for line in lines)
    reloaded, reloaded_task = S.load_scrolls_config(tmp_path / "run" / "scrolls.yaml")
    assert reloaded.resolved() == result.train.config.resolved() and reloaded_task == task

    again = S.run_scrolls(config, task, tmp_path / "run", resume=True, progress=False, log=lines.append)
    assert again.predictions is None and again.metrics["f1"] == row["value"]   # recorded: not repeated
    assert len(read_records(tmp_path / "run" / "records.jsonl")) == 1


def test_resume_after_a_crash_ends_on_the_same_weights(tmp_path, monkeypatch):
    config, task = _tiny(steps=6)
    ref = S.run_scrolls(config, task, tmp_path / "ref", progress=False, log=None)

    batch = S.ScrollsBatches.batch

    def crash_at_5(self, step):
        if step == 5:
            raise KeyboardInterrupt
        return batch(self, step)

    monkeypatch.setattr(S.ScrollsBatches, "batch", crash_at_5)
    with pytest.raises(KeyboardInterrupt):
        S.run_scrolls(config, task, tmp_path / "crash", progress=False, log=None)
    monkeypatch.setattr(S.ScrollsBatches, "batch", batch)
    resumed = S.run_scrolls(config, task, tmp_path / "crash", resume=True, progress=False, log=None)
    assert resumed.train.start_step == 4 and resumed.train.losses == ref.train.losses
    a, b = ref.train.model.state_dict(), resumed.train.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.predictions == ref.predictions and resumed.metrics == ref.metrics
    assert all(math.isfinite(x) for x in ref.train.losses)

    # other training data in the same run directory: refused by the data hash
    other, other_task = _tiny(steps=6, keep="start_and_end")
    with pytest.raises(Exception, match="training data changed"):
        S.run_scrolls(other, other_task, tmp_path / "crash", resume=True, progress=False, log=None)


def test_cli_prints_the_config_and_names_a_bad_key(capsys):
    from hopekit.cli import main

    assert main(["scrolls", "--print-config", "--out", "x", "scrolls.task=gov_report"]) == 0
    out = capsys.readouterr().out
    assert "task: gov_report" in out and "train_len: 1024" in out
    assert main(["scrolls", "--out", "x", "scrolls.limit=3"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "hopekit: error: scrolls.limit: unknown key; scrolls accepts ['eval_limit', 'eval_max_input', 'eval_split', "
        "'hub', 'keep', 'max_input', 'max_output', 'separator', 'source', 'task', 'train_limit', 'train_split']"]


def test_a_pretrained_model_finetunes_and_generates(tmp_path, tiny_dir):
    """``hf``: the pretrained model's own tokenizer builds the rows; generation through the KV cache stops
    at its end token."""
    pytest.importorskip("transformers")
    config, task = S.load_scrolls_config("scrolls", [
        f"hf={tiny_dir}", "model={}", "pe=null", "data.tokenizer=model", "train.train_len=64", "train.batch_size=2",
        "train.steps=2", "train.warmup_steps=1", "train.lr=1e-3", "train.min_lr=1e-4", "scrolls.max_output=4",
        "scrolls.eval_limit=2"])
    result = S.run_scrolls(config, task, tmp_path / "hf", progress=False, log=None)
    assert result.train.step == 2 and len(result.predictions) == 2
    (row,) = read_records(tmp_path / "hf" / "records.jsonl")
    assert row["metric"] == "exact_match" and row["method"] == "rope" and row["model"].startswith("llama-")
