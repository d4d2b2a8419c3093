"""Long-context tasks on pretrained transformers models (hopekit.eval.pretrained.evaluate_pretrained_tasks,
``hopekit eval --hf NAME --task``) on the tiny random Llama of tests/eval/_tiny_hf.py: the scores equal a
naive float64 scoring of the full logits, only the answer's rows reach the LM head, greedy decoding of
the model's own continuation is answered right by both scorings, records are written and a rerun skips
them, refusals. The real SmolLM2 (marked pretrained and slow) is checked the same way at 2048 tokens."""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from hopekit.cli import main  # noqa: E402
from hopekit.config import EvalConfig  # noqa: E402
from hopekit.eval.pretrained import HFLogits, evaluate_pretrained_tasks  # noqa: E402
from hopekit.eval.records import model_descriptor, read_records  # noqa: E402
from hopekit.eval.tasks import TaskInstance, score_generation, score_likelihood, task_instances  # noqa: E402
from hopekit.integrations import hf  # noqa: E402
from tests.eval._tiny_hf import BASE, WINDOW  # noqa: E402


@pytest.fixture
def lm(tiny_dir):
    return hf.load_pretrained(str(tiny_dir))


def naive_scores(model, instances):
    """(correct, token_accuracy, mean NLL, mean rank) of each instance from the full logits of a float64
    copy of ``model``, one instance at a time, token by token."""
    ref = copy.deepcopy(model).double()
    out = []
    for inst in instances:
        ids = torch.tensor([inst.prompt + inst.answer])
        with torch.no_grad():
            logits = ref(input_ids=ids[:, :-1], use_cache=False).logits[0].double()
        right, nll, ranks = [], [], []
        for j, token in enumerate(inst.answer):
            row = logits[len(inst.prompt) - 1 + j]
            logp = row - torch.logsumexp(row, 0)
            right.append(int(row.argmax()) == token)
            nll.append(-float(logp[token]))
            ranks.append(1 + sum(float(v) > float(logp[token]) for v in logp))
        out.append((all(right), sum(right) / len(right), sum(nll) / len(nll), sum(ranks) / len(ranks)))
    return out


def instances(lm, style="compact", lengths=(64, 96), tasks=("passkey", "copy")):
    return [inst for task in tasks for L in lengths for depth in (0.0, 0.5, 1.0)
            for inst in task_instances(task, lm.tokenizer, length=L, depth=depth, instances=2, corpus="shakespeare",
                                       split="test", style=style)]


@pytest.mark.parametrize("encoding", [None, {"kind": "yarn", "factor": 2}], ids=["own", "yarn"])
def test_likelihood_scores_equal_a_naive_float64_scoring_of_the_full_logits(lm, encoding):
    if encoding is not None:
        hf.patch_model(lm.model, hf.resolve_pe(encoding, lm.model))
    insts = instances(lm)
    scores = score_likelihood(HFLogits(lm.model), insts, batch_size=3)
    for s, (correct, token_accuracy, nll, rank) in zip(scores, naive_scores(lm.model, insts), strict=True):
        assert (s.correct, s.token_accuracy, s.mean_rank, s.nll) == \
            (correct, pytest.approx(token_accuracy), pytest.approx(rank), pytest.approx(nll, rel=1e-5))
    assert len({s.nll for s in scores}) > len(scores) // 2                   # distinct instances, distinct scores


def test_only_the_answers_rows_reach_the_lm_head(lm):
    insts = instances(lm, style="standard", lengths=(320,), tasks=("passkey", "copy"))
    rows = []
    hook = lm.model.get_output_embeddings().register_forward_hook(lambda m, args, out: rows.append(args[0].shape[:2]))
    try:
        score_likelihood(HFLogits(lm.model), insts, batch_size=4)
    finally:
        hook.remove()
    passkey, copy_ = len(insts[0].answer), len(insts[-1].answer)
    assert passkey != copy_ and sorted(rows) == sorted([(4, passkey), (2, passkey), (4, copy_), (2, copy_)])


def test_the_models_own_greedy_continuation_is_right_under_both_scorings(lm):
    """An oracle: answers set to the model's greedy continuation (hf.generate, recomputed without cache)
    are right under likelihood and generation scoring; one token changed, they are not."""
    model = lm.model
    hf.patch_model(model, hf.resolve_pe({"kind": "dynamic_ntk", "factor": 2}, model))   # the spectrum changes past the window
    oracle, wrong = [], []
    for inst in instances(lm, lengths=(64, 80), tasks=("passkey",))[::3]:
        n = len(inst.answer)
        prompt = torch.tensor([inst.prompt])
        greedy = hf.generate(model, prompt, n, use_cache=False)[0, prompt.shape[1]:].tolist()
        oracle.append(TaskInstance(**{**inst.__dict__, "answer": greedy}))
        bad = greedy[:-1] + [(greedy[-1] + 1) % 257]
        wrong.append(TaskInstance(**{**inst.__dict__, "answer": bad}))
    wrapped = HFLogits(model)
    for score in (score_likelihood, score_generation):
        assert all(s.correct and s.token_accuracy == 1 for s in score(wrapped, oracle, batch_size=2))
        assert not any(s.correct for s in score(wrapped, wrong, batch_size=2))
    assert all(s.mean_rank == 1 for s in score_likelihood(wrapped, oracle))
    with pytest.raises(ValueError, match="temperature=0.7"):
        wrapped.generate(torch.tensor([oracle[0].prompt]), 1, temperature=0.7)


def run(lm, path, **kw):
    kw.setdefault("lengths", [64, 96])
    kw.setdefault("style", "compact")
    kw.setdefault("eval_config", EvalConfig(tasks=("passkey", "copy"), task_depths=(0.0, 1.0), task_instances=2))
    return evaluate_pretrained_tasks(lm, path, progress=False, log=lambda _: None, **kw)


def test_records_equal_the_naive_scores_and_a_rerun_skips_them(lm, tmp_path):
    path = tmp_path / "records.jsonl"
    digest = None
    for encoding, method, impl in ((None, "rope", "transformers"), ({"kind": "yarn", "factor": 2}, "rope+yarn×2",
                                                                      "hopekit")):
        rows = run(lm, path, pe=encoding)
        assert len(rows) == 2 * 2 * 2 * 4                                     # tasks × lengths × depths × metrics
        naive = {}
        for r in rows:
            assert (r["method"], r["pe_impl"], r["dtype"], r["bos"], r["hf"], r["train_len"], r["tokenizer"]) == \
                (method, impl, "float32", False, lm.name, WINDOW, lm.tokenizer.name)
            assert r["params"]["base"] == BASE and r["model"] == model_descriptor(lm.model)
            assert (r["style"], r["scoring"], r["instances"], r["split"]) == ("compact", "likelihood", 2, "test")
            cell = (r["task"], r["eval_len"], r["depth"])
            if cell not in naive:
                insts = task_instances(r["task"], lm.tokenizer, length=r["eval_len"], depth=r["depth"], instances=2,
                                       corpus="shakespeare", split="test", style="compact")
                assert all(len(i.prompt) + len(i.answer) == r["eval_len"] for i in insts)
                naive[cell] = [sum(col) / len(col) for col in zip(*naive_scores(lm.model, insts))]
            expected = dict(zip(("accuracy", "token_accuracy", "answer_nll", "answer_rank"), naive[cell]))
            assert r["value"] == pytest.approx(expected[r["metric"]], rel=1e-5)
        digest = digest or rows[0]["model_digest"]
        assert rows[0]["model_digest"] == digest                              # the pretrained weights, unpatched
        size = path.stat().st_size
        assert run(lm, path, pe=encoding) == rows and path.stat().st_size == size   # resumed: nothing measured
    assert len(read_records(path)) == 2 * len(rows)


def test_generation_scoring_is_recorded_as_its_own_measurement(lm, tmp_path):
    path = tmp_path / "records.jsonl"
    likelihood = run(lm, path, lengths=[64])
    ev = EvalConfig(tasks=("passkey", "copy"), task_depths=(0.0, 1.0), task_instances=2, task_scoring="generation")
    generation = run(lm, path, lengths=[64], eval_config=ev)
    assert {r["metric"] for r in generation} == {"accuracy", "token_accuracy"}
    assert {r["scoring"] for r in generation} == {"generation"}
    verdicts = lambda rows: [r["per_instance"] for r in rows if r["metric"] == "accuracy"]  # noqa: E731
    assert verdicts(generation) == verdicts(likelihood)           # teacher-forced argmax is greedy's verdict
    assert len(read_records(path)) == len(likelihood) + len(generation)


def test_refused_before_anything_is_recorded_or_patched(lm, tmp_path):
    path = tmp_path / "records.jsonl"
    with pytest.raises(ValueError, match="style='long'"):
        run(lm, path, style="long")
    with pytest.raises(ValueError, match="lengths: 0 is not an int"):
        run(lm, path, lengths=[64, 0])
    with pytest.raises(ValueError, match=r"^--lengths: task 'passkey' in style 'compact' needs instances of >= \d+ "
                                         r"tokens, the shortest here is 32$"):
        run(lm, path, lengths=[32, 64], pe={"kind": "yarn", "factor": 2})
    with pytest.raises(TypeError, match="pe.factors: not a parameter of yarn"):
        run(lm, path, pe={"kind": "yarn", "factors": 2})
    assert not path.exists() and hf.encoding_of(lm.model) is None


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_measures_the_tasks_of_a_pretrained_model_and_resumes(tiny_dir, tmp_path, capsys):
    records = tmp_path / "run" / "records.jsonl"
    argv = ("eval", "--hf", str(tiny_dir), "--task", "passkey,copy", "--lengths", "64,96", "--records", str(records),
            "--pe", "yarn", "pe.factor=2", "eval.task_depths=[0,1]", "eval.task_instances=1", "data.task_style=compact")
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    assert "passkey: accuracy (%), mean over depths 0, 1" in out and "copy: accuracy" in out
    assert "| `rope+yarn×2` |" in out and "64 (2×)" in out
    rows = read_records(records)
    assert {(r["task"], r["eval_len"], r["depth"], r["style"]) for r in rows} == \
        {(t, L, d, "compact") for t in ("passkey", "copy") for L in (64, 96) for d in (0.0, 1.0)}
    size = records.stat().st_size
    code, out, err = cli(capsys, *argv)
    assert code == 0 and err.count("already recorded") + out.count("already recorded") == 4
    assert records.stat().st_size == size
    code, out, err = cli(capsys, "report", str(records.parent))
    assert code == 0, err
    assert "rope+yarn×2" in (records.parent / "report.md").read_text()


@pytest.mark.parametrize("argv, message", [
    (("--task", "passkey", "data.task_style=long"), "task_style"),
    (("data.task_style=compact",), "data.task_style=compact: with --hf only pe"),
    (("--task", "passkey", "--bos"), "--text / --bos are for perplexity"),
    (("--task", "passkee"), "--task passkee: expected"),
])
def test_cli_refusals(tiny_dir, tmp_path, capsys, argv, message):
    code, out, err = cli(capsys, "eval", "--hf", str(tiny_dir), "--lengths", "64", "--records",
                         str(tmp_path / "r.jsonl"), *argv)
    assert code != 0 and message in err and not (tmp_path / "r.jsonl").exists()


@pytest.mark.pretrained
@pytest.mark.slow
def test_smollm2_passkey_scores_equal_the_full_logits_and_greedy_decoding(smollm2, tmp_path):
    """SmolLM2 at 2048 tokens: the wrapper's scores equal those of its full logits (float64 metrics),
    instances hold exactly 2048 tokens without BOS, and greedy decoding gives the same verdict."""
    model = copy.deepcopy(smollm2.model)
    insts = task_instances("passkey", smollm2.tokenizer, length=2048, depth=0.5, instances=1, corpus="shakespeare",
                           split="test", style="standard")
    inst = insts[0]
    assert len(inst.prompt) + len(inst.answer) == 2048 and inst.prompt[0] != smollm2.tokenizer.bos_id
    assert smollm2.tokenizer.decode(inst.answer) == f" {inst.meta['passkey']}"
    (s,) = score_likelihood(HFLogits(model), insts)
    (c, token_accuracy, nll, rank) = naive_scores_float32_model(model, inst)
    assert (s.correct, s.token_accuracy, s.mean_rank) == (c, pytest.approx(token_accuracy), pytest.approx(rank))
    # two float32 forwards of a 30-layer model that differ in the LM head's matmul shape (answer rows only
    # against all rows) and in thread count: ~5e-6 relative apart in the NLL (measured), so float32's tolerance
    assert s.nll == pytest.approx(nll, rel=1e-4)
    (g,) = score_generation(HFLogits(model), insts)
    assert g.correct == s.correct


def naive_scores_float32_model(model, inst):
    """The scores from the full float32 logits of a (135M) model, the metrics in float64."""
    ids = torch.tensor([inst.prompt + inst.answer])
    with torch.no_grad():
        logits = model(input_ids=ids[:, :-1], use_cache=False).logits[0, -len(inst.answer):].double()
    logp = torch.log_softmax(logits, -1)
    target = torch.tensor(inst.answer)
    true = logp[torch.arange(len(target)), target]
    right = logits.argmax(-1) == target
    rank = (logp > true[:, None]).sum(-1) + 1
    return bool(right.all()), float(right.float().mean()), float(-true.mean()), float(rank.float().mean())
