"""Long-context tasks at evaluation: compact instances, batched scoring against per-instance oracles,
and evaluate_tasks' records (one row per cell and metric, skipping what is recorded, the rope model's
extensions); the EvalConfig fields that drive it and config comparison against older saved configs."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from hopekit.config import DataConfig, EvalConfig, ExperimentConfig, TrainConfig, config_differences
from hopekit.data import ByteTokenizer, load_corpus
from hopekit.eval import tasks as tasks_module
from hopekit.eval.records import REQUIRED_FIELDS, model_digest, read_records
from hopekit.eval.tasks import (
    TASK_KEY_FIELDS,
    TASK_METRICS,
    TASKS,
    evaluate_tasks,
    make_task,
    score_generation,
    score_likelihood,
    task_instances,
)
from hopekit.model import Decoder, ModelConfig

TOK = ByteTokenizer()
TRAIN_LEN = 64
MODEL = {"d_model": 16, "n_layers": 1, "n_heads": 2}


def decoder(seed: int = 0, **pe) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=TOK.vocab_size, pe=pe or {"kind": "rope"}, **MODEL)).eval()


@pytest.fixture(scope="module")
def model() -> Decoder:
    return decoder()


@functools.lru_cache(maxsize=None)
def split_text(split: str) -> str:
    """The oracle of a split's text: its documents as load_corpus gives them, joined by blank lines."""
    return "\n\n".join(d.text for d in load_corpus("shakespeare", split))


# --- compact instances ----------------------------------------------------------------------------

def _filler_of(inst, info: str, tail: str) -> str:
    """The filler of a compact instance (empty head): prompt = filler[:a] + info + filler[a:] + tail."""
    text = TOK.decode(inst.prompt)
    before = text[:inst.position]
    rest = text[inst.position:]
    assert rest.startswith(info) and rest.endswith(tail)
    return before + rest[len(info):len(rest) - len(tail)]


@pytest.mark.parametrize("length", [65, 129, 300])
def test_compact_pass_key_and_copy_are_exactly_length_marked_and_answered_last(length):
    for seed in range(4):
        for depth in (0.0, 0.5, 1.0):
            p = make_task("passkey", TOK, length=length, depth=depth, seed=seed, style="compact")
            key = p.meta["passkey"]
            assert len(p.prompt) + len(p.answer) == length == p.length
            assert TOK.decode(p.answer) == key and len(key) == 5
            text = TOK.decode(p.prompt)
            assert text.endswith(" What is the pass key? #") and text.count("#") == 2
            assert text[p.position:].startswith(f" The pass key is #{key}. ")
            assert p.meta["filler_before"] == round(depth * p.meta["filler_tokens"])

            c = make_task("copy", TOK, length=length, depth=depth, seed=seed, style="compact")
            span = c.meta["span"]
            assert len(c.prompt) + len(c.answer) == length and len(span) == 8
            assert TOK.decode(c.answer) == span
            text = TOK.decode(c.prompt)
            assert text.endswith(" Copy: <") and text.count("<") == 2
            assert text[c.position:].startswith(f" <{span}> ")


@pytest.mark.parametrize("task", ["needle", "kv"])
def test_compact_needle_and_kv_fit_a_129_token_window(task):
    for seed in range(10):
        inst = make_task(task, TOK, length=129, depth=0.5, seed=seed, style="compact")
        assert len(inst.prompt) + len(inst.answer) == 129
        text, answer = TOK.decode(inst.prompt), TOK.decode(inst.answer)
        if task == "needle":
            assert answer == f" {inst.meta['activity']}." and text.endswith(f" In {inst.meta['city']},")
        else:
            assert answer == f" {inst.meta['value']}" and text.endswith(f" {inst.meta['key']}:")
            assert f"{inst.meta['key']}: {inst.meta['value']}." in text


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_compact_filler_comes_from_the_requested_split_only(split):
    others = [s for s in ("train", "validation", "test") if s != split]
    for task, info, tail in (("passkey", None, " What is the pass key? #"), ("copy", None, " Copy: <")):
        for seed in (0, 1):
            inst = make_task(task, TOK, length=300, depth=0.5, seed=seed, style="compact", split=split,
                             filler="corpus")
            info = (f" The pass key is #{inst.meta['passkey']}. " if task == "passkey"
                    else f" <{inst.meta['span']}> ")
            filler = _filler_of(inst, info, tail)
            assert len(filler) == inst.meta["filler_tokens"] > 200
            assert filler in split_text(split)
            assert all(filler not in split_text(o) for o in others)
            if task == "copy":   # the copied span is text of the split too
                assert inst.meta["span"] in split_text(split)


def test_training_instances_draw_task_and_depth_from_the_seed():
    from hopekit.eval.tasks import training_instance

    kinds = set()
    for seed in range(30):
        ids = training_instance(TOK, seed, tasks=("passkey", "copy"), length=129, corpus="shakespeare",
                                style="compact")
        assert len(ids) == 129
        assert ids == training_instance(TOK, seed, tasks=("passkey", "copy"), length=129, corpus="shakespeare",
                                        style="compact")
        text = TOK.decode(ids)
        kinds.add("passkey" if "What is the pass key? #" in text else "copy" if " Copy: <" in text else "?")
    assert kinds == {"passkey", "copy"}


# --- scoring: oracles and batching ----------------------------------------------------------------

def naive_likelihood(model, inst):
    """One instance alone: a forward of all its tokens, the answer rows in float64."""
    ids = torch.tensor([inst.prompt + inst.answer])
    with torch.no_grad():
        out = model(ids)
    logits = out[0] if isinstance(out, tuple) else out
    p, a = len(inst.prompt), len(inst.answer)
    rows = logits[0, p - 1:p - 1 + a].double()
    logp = torch.log_softmax(rows, -1)
    target = torch.tensor(inst.answer)
    true = logp[torch.arange(a), target]
    right = [int(rows[i].argmax()) == inst.answer[i] for i in range(a)]
    ranks = [1 + int((logp[i] > true[i]).sum()) for i in range(a)]
    return all(right), sum(right) / a, float(-true.mean()), sum(ranks) / a


def naive_greedy(model, inst):
    """Greedy decoding without a cache: the argmax of a full forward's last row, one token at a time."""
    seq = list(inst.prompt)
    with torch.no_grad():
        for _ in inst.answer:
            out = model(torch.tensor([seq]))
            logits = out[0] if isinstance(out, tuple) else out
            seq.append(int(logits[0, -1].argmax()))
    got = seq[len(inst.prompt):]
    right = [g == a for g, a in zip(got, inst.answer)]
    return all(right), sum(right) / len(right)


def mixed_instances():
    """Instances of several tasks, lengths and answer lengths, interleaved (one call must keep the order)."""
    spec = [("passkey", 80), ("copy", 64), ("passkey", 100), ("copy", 80), ("passkey", 80), ("kv", 100),
            ("copy", 64), ("passkey", 100), ("copy", 80), ("passkey", 80), ("copy", 64)]
    return [make_task(t, TOK, length=n, depth=(i % 5) / 4, seed=i, style="compact") for i, (t, n) in enumerate(spec)]


def test_likelihood_scores_equal_a_per_instance_oracle_in_any_batching(model):
    insts = mixed_instances()
    one = score_likelihood(model, insts, batch_size=1)
    many = score_likelihood(model, insts, batch_size=8)
    for inst, a, b in zip(insts, one, many):
        correct, token_accuracy, nll, rank = naive_likelihood(model, inst)
        for s in (a, b):
            assert s.correct == correct
            assert s.token_accuracy == pytest.approx(token_accuracy, rel=1e-6)   # float32 means: not exact
            assert s.mean_rank == pytest.approx(rank, rel=1e-6)
            assert s.nll == pytest.approx(nll, rel=1e-5, abs=1e-6)
    assert [s.nll for s in one] != [one[0].nll] * len(one)          # the instances really differ


def test_generation_scores_equal_greedy_decoding_without_a_cache_in_any_batching(model):
    insts = mixed_instances()[:7]
    one = score_generation(model, insts, batch_size=1)
    many = score_generation(model, insts, batch_size=8)
    assert one == many
    assert [(s.correct, s.token_accuracy) for s in one] == [naive_greedy(model, i) for i in insts]


def test_scoring_leaves_the_model_in_its_mode(model):
    m = decoder(seed=3).train()
    score_likelihood(m, mixed_instances()[:2])
    score_generation(m, mixed_instances()[:2])
    assert m.training


# --- evaluate_tasks -------------------------------------------------------------------------------

def config(pe: dict | None = None, *, scoring: str = "likelihood", **ev) -> ExperimentConfig:
    fields = {"multiples": (1, 2), "extensions": (), "tasks": ("passkey", "copy"), "task_depths": (0.0, 1.0),
              "task_instances": 2, "task_scoring": scoring, **ev}
    return ExperimentConfig(model=MODEL, pe=pe or {"kind": "rope"}, data=DataConfig(task_style="compact"),
                            train=TrainConfig(train_len=TRAIN_LEN), eval=EvalConfig(**fields))


def evaluate(model, cfg, path, **kw):
    kw.setdefault("method", cfg.pe.kind)
    return evaluate_tasks(model, cfg, path, progress=False, log=lambda _: None, **kw)


def cells(rows):
    return sorted((r["method"], r["eval_len"], r["task"], r["depth"], r["metric"]) for r in rows)


def test_one_row_per_cell_and_metric_with_a_naive_recomputation_as_values(model, tmp_path):
    cfg, path = config(), tmp_path / "records.jsonl"
    rows = evaluate(model, cfg, path)
    assert cells(rows) == sorted(("rope", L, t, d, m) for L in (64, 128) for t in ("passkey", "copy")
                                 for d in (0.0, 1.0) for m in TASK_METRICS)
    assert read_records(path) == rows
    digest = model_digest(model)
    for r in rows:
        assert all(f in r for f in REQUIRED_FIELDS + TASK_KEY_FIELDS)
        assert (r["model_digest"], r["train_len"], r["seed"], r["corpus"], r["split"], r["tokenizer"], r["style"],
                r["scoring"], r["instances"]) == (digest, 64, 0, "shakespeare", "test", TOK.name, "compact",
                                                  "likelihood", 2)
        assert r["params"] == cfg.resolved()["pe"] and r["config"] == cfg.resolved()
        insts = task_instances(r["task"], TOK, length=r["eval_len"], depth=r["depth"], instances=2,
                               corpus="shakespeare", split="test", style="compact")
        assert [i.seed for i in insts] == [0, 1] and all(len(i.prompt) + len(i.answer) == r["eval_len"] for i in insts)
        naive = [naive_likelihood(model, i) for i in insts]
        expected = {"accuracy": sum(n[0] for n in naive) / 2, "token_accuracy": sum(n[1] for n in naive) / 2,
                    "answer_nll": sum(n[2] for n in naive) / 2, "answer_rank": sum(n[3] for n in naive) / 2}
        assert r["value"] == pytest.approx(expected[r["metric"]], rel=1e-5)
        assert r["per_instance"] == [n[0] for n in naive]
    assert len({r["value"] for r in rows if r["metric"] == "answer_nll"}) > 1


def test_generation_scoring_records_accuracies_of_greedy_decoding(model, tmp_path):
    cfg = config(scoring="generation", multiples=(1,), tasks=("copy",))
    rows = evaluate(model, cfg, tmp_path / "records.jsonl")
    assert cells(rows) == sorted(("rope", 64, "copy", d, m) for d in (0.0, 1.0) for m in ("accuracy", "token_accuracy"))
    for r in rows:
        insts = task_instances("copy", TOK, length=64, depth=r["depth"], instances=2, corpus="shakespeare",
                               split="test", style="compact")
        naive = [naive_greedy(model, i) for i in insts]
        assert r["scoring"] == "generation"
        assert r["value"] == pytest.approx(sum(n[0 if r["metric"] == "accuracy" else 1] for n in naive) / 2)


def test_a_second_call_measures_nothing_and_returns_the_same_rows(model, tmp_path, monkeypatch):
    cfg, path = config(), tmp_path / "records.jsonl"
    first = evaluate(model, cfg, path)
    size = path.stat().st_size
    lines: list[str] = []

    def fail(*args, **kwargs):
        raise AssertionError("a recorded cell was measured again")

    monkeypatch.setattr(tasks_module, "score_likelihood", fail)
    again = evaluate_tasks(model, cfg, path, method="rope", progress=False, log=lines.append)
    assert again == first and path.stat().st_size == size
    assert len(lines) == 4 and all("already recorded" in line for line in lines)
    # the same weights in another object: the same measurement
    assert evaluate(decoder(), cfg, path) == first and path.stat().st_size == size


@pytest.mark.parametrize("change, new_cells", [
    ({"task_instances": 3}, 8),                          # other instances: every cell again
    ({"task_depths": (0.5,)}, 4),                        # a new depth: its cells only
    ({"task_depths": (1.0, 0.5, 0.0)}, 4),               # the recorded depths are kept, 0.5 measured
    ({"tasks": ("copy", "kv")}, 4),                      # kv measured, copy kept (kv needs 60 tokens: fits 64)
    ({"multiples": (1, 2, 3)}, 4),                       # a new length
    ({"split": "validation"}, 8),                        # other filler
])
def test_a_change_of_instances_depth_task_length_or_split_measures_only_the_new_cells(model, tmp_path, change,
                                                                                      new_cells):
    path = tmp_path / "records.jsonl"
    evaluate(model, config(), path)
    before = len(read_records(path))
    rows = evaluate(model, config(**change), path)
    added = read_records(path)[before:]
    assert len(added) == new_cells * len(TASK_METRICS)
    assert all(r in rows for r in added)
    n_cells = len(config(**change).eval.tasks) * len(config(**change).eval.task_depths) * len(
        config(**change).eval.multiples)
    assert len(rows) == n_cells * len(TASK_METRICS)


def test_another_model_or_style_is_measured_anew(model, tmp_path):
    path = tmp_path / "records.jsonl"
    first = evaluate(model, config(), path)
    other = evaluate(decoder(seed=1), config(), path)
    assert len(read_records(path)) == 2 * len(first)
    assert {r["model_digest"] for r in first}.isdisjoint({r["model_digest"] for r in other})
    standard = dataclasses.replace(config(multiples=(8,)), data=DataConfig(task_style="standard"))
    rows = evaluate(model, standard, path)                           # 512 tokens: the standard format fits
    assert {r["style"] for r in rows} == {"standard"} and len(read_records(path)) == 2 * len(first) + len(rows)


def test_integer_depths_are_the_same_cells_as_their_float_spelling(model, tmp_path):
    path = tmp_path / "records.jsonl"
    evaluate(model, config(task_depths=(0, 1)), path)
    before = len(read_records(path))
    evaluate(model, config(task_depths=(0.0, 1.0)), path)
    assert len(read_records(path)) == before


def test_a_rope_model_gets_extension_rows_beyond_one_multiple_and_other_models_none(model, tmp_path):
    path = tmp_path / "records.jsonl"
    cfg = config(multiples=(1, 2), tasks=("copy",), task_depths=(0.5,))
    rows = evaluate(model, cfg, path, extensions=("yarn",))
    assert cells(rows) == sorted([("rope", 64, "copy", 0.5, m) for m in TASK_METRICS]
                                 + [("rope", 128, "copy", 0.5, m) for m in TASK_METRICS]
                                 + [("rope+yarn", 128, "copy", 0.5, m) for m in TASK_METRICS])
    yarn = [r for r in rows if r["method"] == "rope+yarn"]
    assert all(r["params"]["kind"] == "yarn" for r in yarn)
    rope = {r["metric"]: r["value"] for r in rows if r["method"] == "rope" and r["eval_len"] == 128}
    assert {r["metric"]: r["value"] for r in yarn}["answer_nll"] != rope["answer_nll"]   # another encoding
    alibi = decoder(kind="alibi")
    alibi_cfg = config({"kind": "alibi"}, multiples=(1, 2), tasks=("copy",), task_depths=(0.5,))
    rows = evaluate(alibi, alibi_cfg, path, extensions=("yarn",))
    assert {r["method"] for r in rows} == {"alibi"} and {r["eval_len"] for r in rows} == {64, 128}


def test_evaluate_task_jobs_records_the_common_fields_and_the_same_values(model, tmp_path):
    from hopekit.eval.lengths import Job
    from hopekit.eval.tasks import evaluate_task_jobs

    cfg = config(multiples=(1,), tasks=("copy",))
    ref = evaluate(model, cfg, tmp_path / "a.jsonl")
    job = Job(model, "mine", {"kind": "rope", "base": 10000.0}, TRAIN_LEN)
    common = {"train_len": TRAIN_LEN, "seed": 3, "model": "toy", "model_digest": "d0"}
    rows = evaluate_task_jobs([job], TOK, tmp_path / "b.jsonl", eval_config=cfg.eval, corpus="shakespeare",
                              style="compact", common=common, progress=False, log=lambda _: None)
    assert read_records(tmp_path / "b.jsonl") == rows
    assert [(r["method"], r["seed"], r["model_digest"], r["params"]) for r in rows] == [
        ("mine", 3, "d0", {"kind": "rope", "base": 10000.0})] * len(rows)
    assert [(r["depth"], r["metric"], r["value"]) for r in rows] == [(r["depth"], r["metric"], r["value"]) for r in ref]


def test_a_length_too_short_for_the_task_is_one_line_naming_it(model, tmp_path):
    with pytest.raises(ValueError, match=r"^eval\.tasks at the shortest evaluated length .*: task 'needle' in style "
                                         r"'compact' needs instances of >= 108 tokens, the shortest here is 64$") as info:
        evaluate(model, config(tasks=("needle",)), tmp_path / "records.jsonl")   # compact needle: ~100 tokens
    assert "\n" not in str(info.value)


# --- EvalConfig fields ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, exc, fragment", [
    ("tasks", ["passkey", "lookup"], ValueError, "unknown or repeated name(s) ['lookup']"),
    ("tasks", ["kv", "kv"], ValueError, "unknown or repeated name(s)"),
    ("tasks", [], TypeError, "expected a non-empty list of names"),
    ("tasks", "copy", TypeError, "expected a non-empty list of names"),
    ("task_depths", [0.5, 1.5], ValueError, "expected a non-empty list of numbers in [0, 1]"),
    ("task_depths", [-0.1], ValueError, "expected a non-empty list of numbers in [0, 1]"),
    ("task_depths", [], ValueError, "expected a non-empty list of numbers in [0, 1]"),
    ("task_depths", [True], ValueError, "expected a non-empty list of numbers in [0, 1]"),
    ("task_depths", 0.5, ValueError, "expected a non-empty list of numbers in [0, 1]"),
    ("task_depths", ["half"], ValueError, "expected a non-empty list of numbers in [0, 1]"),
    ("task_instances", 0, ValueError, "must be >= 1"),
    ("task_instances", 2.5, TypeError, "expected an int"),
    ("task_scoring", "exact", ValueError, "must be one of ('likelihood', 'generation')"),
])
def test_bad_eval_task_fields_are_one_line_naming_field_and_value(field, value, exc, fragment):
    with pytest.raises(exc) as info:
        EvalConfig(**{field: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"EvalConfig.{field}=")
    assert fragment in message
    assert repr(value) in message or (isinstance(value, list) and repr(tuple(value)) in message)


def test_eval_task_fields_from_yaml_overrides_and_their_defaults():
    from hopekit.config import load_config

    cfg = load_config("tiny", ["eval.tasks=[kv,needle]", "eval.task_depths=[0,0.5]", "eval.task_instances=3",
                               "eval.task_scoring=generation"])
    assert (cfg.eval.tasks, cfg.eval.task_depths, cfg.eval.task_instances, cfg.eval.task_scoring) == (
        ("kv", "needle"), (0, 0.5), 3, "generation")
    ev = EvalConfig()
    assert ev.tasks == ("passkey", "copy") and ev.task_depths == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert ev.task_instances == 8 and ev.task_scoring == "likelihood"
    assert set(ev.tasks) <= set(TASKS)


# --- config_differences against a config saved before a field existed -----------------------------

SECTIONS = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_field_absent_from_the_saved_side_is_no_difference_at_its_default(section):
    now = ExperimentConfig().resolved()
    for field in dataclasses.fields(SECTIONS[section]):
        saved = {**now, section: {k: v for k, v in now[section].items() if k != field.name}}
        assert config_differences(saved, now) == [], field.name
        # the same under a prefix, as a bench's saved experiment is compared
        assert config_differences({"experiment": saved}, {"experiment": now}) == [], field.name


@pytest.mark.parametrize("section, field, value, shown", [
    ("eval", "tasks", ("kv",), "['kv']"),
    ("eval", "task_depths", (0.5,), "[0.5]"),
    ("eval", "task_instances", 3, "3"),
    ("eval", "task_scoring", "generation", "'generation'"),
    ("data", "task_style", "compact", "'compact'"),
    ("train", "warmup_steps", 7, "7"),
])
def test_a_field_absent_from_the_saved_side_and_not_at_its_default_is_reported(section, field, value, shown):
    base = ExperimentConfig()
    now = dataclasses.replace(base, **{section: dataclasses.replace(getattr(base, section), **{field: value})})
    now = now.resolved()
    saved = {**now, section: {k: v for k, v in now[section].items() if k != field}}
    assert config_differences(saved, now) == [f"{section}.{field}: saved (absent), now {shown}"]
    assert config_differences({"experiment": saved}, {"experiment": now}, saved_as="checkpoint") == [
        f"experiment.{section}.{field}: checkpoint (absent), now {shown}"]


def test_only_data_train_and_eval_fields_are_forgiven():
    now = ExperimentConfig().resolved()
    saved = {k: v for k, v in now.items() if k != "name"}
    assert config_differences(saved, now) == [f"name: saved (absent), now {now['name']!r}"]
    saved = {**now, "pe": {k: v for k, v in now["pe"].items() if k != "base"}}
    assert config_differences(saved, now) == [f"pe.base: saved (absent), now {now['pe']['base']!r}"]
    # a present value that differs from today's is always reported, default or not
    saved = {**now, "eval": {**now["eval"], "task_instances": 3}}
    assert config_differences(saved, now) == ["eval.task_instances: saved 3, now 8"]
