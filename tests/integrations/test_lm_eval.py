"""hopekit.integrations.lm_eval: lm-eval's LM interface on hopekit models, checked against naive
references computed from the model's own logits (a float64 log-softmax per request, one forward per
scored token for the rolling windows, Decoder.generate for greedy decoding), and lm-eval runs of the
local tasks in tests/integrations/lm_eval_tasks (offline: the datasets are the JSONL files there)."""

from __future__ import annotations

import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from hopekit import pe  # noqa: E402
from hopekit.checkpoint import FORMAT, FORMAT_VERSION, model_config_dict, save_checkpoint  # noqa: E402
from hopekit.config import ExperimentConfig  # noqa: E402
from hopekit.data import ByteTokenizer  # noqa: E402
from hopekit.integrations.lm_eval import HopekitLM  # noqa: E402
from hopekit.model import Decoder, ModelConfig  # noqa: E402

TASKS = Path(__file__).resolve().parent / "lm_eval_tasks"
TRAIN_LEN = 32
EOS = 256          # the byte tokenizer's <|endoftext|>: the document separator and the prefix token


class Latin1Tokenizer(ByteTokenizer):
    """The byte tokenizer, decoding every byte to one character: a random model's output decodes
    prefix by prefix to the same text, so a stop string found early is where the full text has it."""

    def decode(self, ids):
        return "".join(chr(i) if i < 256 else self.specials[i - 256] for i in map(int, ids))


def randomise(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Weights large enough that logits depend on the tokens and positions (the default init gives
    nearly uniform attention and one repeated greedy token)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("pe."):
                p.copy_((1.0 + 0.2 * torch.randn(p.shape, generator=g)) if "norm" in name
                        else 0.15 * torch.randn(p.shape, generator=g))
    return model.eval()


def decoder(pe_config: dict | None = None, seed: int = 1) -> Decoder:
    return randomise(Decoder(ModelConfig(vocab_size=257, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                         pe=pe_config or {"kind": "rope"})), seed)


def requests(kind: str, *args) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def naive_logprobs(model, ids: list[int]) -> torch.Tensor:
    """Float64 log-softmax of one unbatched forward of ``ids``: (len(ids), vocab)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0] if isinstance(model, Decoder) else model(torch.tensor([ids])).logits
    return logits[0].double().log_softmax(-1)


def naive_loglikelihood(model, context: list[int], continuation: list[int], max_length: int):
    """lm-eval's rule: context + continuation, cut on the left to max_length + 1 tokens, without the
    last; the continuation's log-probabilities summed, and whether each is its row's argmax."""
    tokens = (context + continuation)[-(max_length + 1):]
    rows = naive_logprobs(model, tokens[:-1])[-len(continuation):]
    target = torch.tensor(continuation)
    return float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all())


def naive_rolling(model, tokens: list[int], max_length: int, prefix: int = EOS) -> float:
    """Each token alone from its own forward: token t of chunk [s, s + L) (L = max_length) is predicted
    after the prefix token and tokens[:t] in the first chunk, after tokens[end − L − 1 : t] later
    (end = min(s + L, n): the last, partial chunk gets a full window of context), as in lm-eval's
    ``loglikelihood_rolling`` docstring."""
    total, n = 0.0, len(tokens)
    for t in range(n):
        start = (t // max_length) * max_length
        context = [prefix] + tokens[:t] if start == 0 else tokens[min(start + max_length, n) - max_length - 1:t]
        total += float(naive_logprobs(model, context)[-1, tokens[t]])
    return total


def greedy_text(model, tok, prompt: list[int], n: int, until: list[str]) -> str:
    """Decoder.generate's greedy tokens, cut at the separator, decoded, cut at the first stop string."""
    new = model.generate(torch.tensor([prompt]), n, temperature=0)[0, len(prompt):].tolist()
    text = tok.decode(new[:new.index(EOS)] if EOS in new else new)
    for stop in until:
        text = text.split(stop)[0]
    return text


def make_checkpoint(path: Path, pe_config: dict | None = None) -> Decoder:
    """A random decoder with the byte tokenizer saved with hopekit's checkpoint writer."""
    config = ExperimentConfig.from_dict({
        "name": "lm-eval-test", "pe": pe_config or {"kind": "rope", "base": 500.0}, "data": {"tokenizer": "byte"},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2},
        "train": {"train_len": TRAIN_LEN, "steps": 1, "warmup_steps": 0}})
    mc = config.model_config(257)
    model = randomise(Decoder(mc))
    save_checkpoint(path, {
        "format": FORMAT, "version": FORMAT_VERSION, "step": 0, "config": config.resolved(),
        "model_config": model_config_dict(mc), "model": model.state_dict(), "optimizer": {}, "rng": [],
        "data": {}, "data_hash": {}, "losses": [], "tokens": 0, "train_time": 0.0})
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm-eval") / "checkpoint.pt"
    return path, make_checkpoint(path)


# --- the model type ------------------------------------------------------------------------------

def test_registered_next_to_the_harness_own_types():
    assert get_model("hopekit") is HopekitLM
    assert get_model("dummy").__name__ == "DummyLM"  # registering first did not hide lm-eval's own models


def test_checkpoint_loads_with_its_tokenizer_and_train_len(checkpoint):
    path, model = checkpoint
    lm = HopekitLM(checkpoint=str(path), device="cpu")
    assert (lm.max_length, lm.batch_size, lm.max_gen_toks) == (TRAIN_LEN, 1, 256)
    assert isinstance(lm.tokenizer, ByteTokenizer) and lm.eot_token_id == lm.prefix_token_id == EOS
    ids = torch.randint(0, 257, (1, 20))
    assert torch.equal(lm.model(ids)[0], model(ids)[0])
    assert HopekitLM(checkpoint=str(path), device="cpu", max_length="48", batch_size="3").max_length == 48


def test_checkpoint_with_an_eval_time_encoding(checkpoint):
    path, model = checkpoint
    lm = HopekitLM(checkpoint=str(path), pe="yarn", factor=4, device="cpu")  # pe.factor=4 is the same
    expected = pe.make_params("yarn", base=500.0, factor=4.0, train_len=TRAIN_LEN)
    assert lm.model.config.pe == expected == HopekitLM(checkpoint=str(path), pe="yarn", **{"pe.factor": 4}).model.config.pe
    fresh = Decoder(ModelConfig(**{**model_config_dict(model.config), "pe": pe.to_config(expected)}))
    fresh.load_state_dict(model.state_dict())
    ids = torch.randint(0, 257, (1, 3 * TRAIN_LEN))
    assert torch.equal(lm.model(ids)[0], fresh.eval()(ids)[0])
    assert not torch.allclose(lm.model(ids)[0], model(ids)[0])  # the encoding did change


@pytest.mark.parametrize("args, name", [
    ({}, "checkpoint / hf"),
    ({"checkpoint": "x.pt", "hf": "smollm2"}, "checkpoint / hf"),
    ({"checkpoint": "x.pt", "factor": 2}, "factor"),
    ({"checkpoint": "x.pt", "pe": "yarnn"}, "pe='yarnn'"),
    ({"checkpoint": "x.pt", "pe": "yarn", "factr": 2}, "factr"),
    ({"checkpoint": "x.pt", "pe": "yarn", "pe_file": "x.json"}, "pe='yarn' and pe_file"),
    ({"checkpoint": "x.pt", "max_length": 0}, "max_length=0"),
    ({"checkpoint": "x.pt", "batch_size": "auto"}, "batch_size='auto'"),
    ({"checkpoint": "x.pt", "max_batch_size": 8}, "max_batch_size=8"),
    ({"checkpoint": "x.pt", "dtype": "float64"}, "dtype='float64'"),
    ({"checkpoint": "x.pt", "device": "tpu"}, "device='tpu'"),
])
def test_a_bad_argument_is_one_line_naming_it(args, name):
    with pytest.raises(ValueError) as info:
        HopekitLM(**{"device": "cpu", **args})
    assert str(info.value).startswith(name) and "\n" not in str(info.value)


def test_a_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        HopekitLM(checkpoint=str(tmp_path / "none.pt"), device="cpu")


# --- loglikelihood -------------------------------------------------------------------------------

PAIRS = [("The cat sat on", " the mat"), ("", "Hello"), ("x", "y"), ("To be, or not to be, that is the", " question"),
         ("Once upon a time there was a very long context indeed, longer than the window", " end"),
         ("Q: 2+2?\nA:", " 4\n")]


@pytest.mark.parametrize("batch_size", [1, 4])
def test_loglikelihood_equals_a_naive_log_softmax_sum(batch_size):
    model, tok = decoder(), ByteTokenizer()
    lm = HopekitLM.from_model(model, tok, max_length=TRAIN_LEN, batch_size=batch_size)
    got = lm.loglikelihood(requests("loglikelihood", *PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        ctx = tok.encode(context) if context else [EOS]               # an empty context is the prefix token
        want_logprob, want_greedy = naive_loglikelihood(model, ctx, tok.encode(continuation), TRAIN_LEN)
        assert logprob == pytest.approx(want_logprob, abs=1e-4) and greedy == want_greedy


def test_is_greedy_exactly_when_the_continuation_is_greedy_decoding():
    model, tok = decoder(), ByteTokenizer()
    lm = HopekitLM.from_model(model, tok, max_length=TRAIN_LEN, batch_size=3)
    context = tok.encode("In the beginning")
    greedy = model.generate(torch.tensor([context]), 4, temperature=0)[0, len(context):].tolist()
    other = greedy[:-1] + [(greedy[-1] + 1) % 257]
    got = lm._loglikelihood_tokens([(None, context, greedy), (None, context, other), (None, context, greedy[:1])])
    assert [g for _, g in got] == [True, False, True]
    assert got[0][0] > got[1][0]  # the argmax token has the larger probability


def test_length_dependent_spectra_batch_only_equal_lengths():
    # dynamic NTK at train_len 8: the spectrum follows the length, so a padded batch would change it
    model, tok = decoder({"kind": "dynamic_ntk", "factor": 1.0, "train_len": 8}), ByteTokenizer()
    lm = HopekitLM.from_model(model, tok, max_length=TRAIN_LEN, batch_size=6)
    got = lm.loglikelihood(requests("loglikelihood", *PAIRS))
    for (context, continuation), (logprob, _) in zip(PAIRS, got):
        ctx = tok.encode(context) if context else [EOS]
        assert logprob == pytest.approx(naive_loglikelihood(model, ctx, tok.encode(continuation), TRAIN_LEN)[0],
                                        abs=1e-4)


def test_loglikelihood_rolling_equals_a_naive_per_token_sum():
    model, tok = decoder(), ByteTokenizer()
    docs = ["short", "exactly sixteen.", "a document of forty-one bytes, three wins", ""]
    lm = HopekitLM.from_model(model, tok, max_length=16, batch_size=4)
    got = lm.loglikelihood_rolling(requests("loglikelihood_rolling", *[(d,) for d in docs]))
    want = [naive_rolling(model, tok.encode(d), 16) for d in docs]
    assert got == pytest.approx(want, abs=1e-4) and got[-1] == 0.0


# --- generation ----------------------------------------------------------------------------------

def test_generate_until_stops_at_until_and_matches_decoder_generate():
    model, tok = decoder(seed=3), Latin1Tokenizer()
    lm = HopekitLM.from_model(model, tok, max_length=256)
    prompt = "The quick brown fox"
    full = greedy_text(model, tok, tok.encode(prompt), 60, [])
    assert len(set(full)) > 3, "the random model should not repeat one token"
    stop = full[40:42]                     # past the first generation chunk (16 tokens)
    want = full.split(stop)[0]
    assert len(want) <= 40
    got = lm.generate_until(requests("generate_until", (prompt, {"until": [stop, "never"], "max_gen_toks": 60}),
                                     (prompt, {"until": [], "max_gen_toks": 37}),
                                     (prompt, {"until": stop, "max_gen_toks": 5, "do_sample": False,
                                               "temperature": 0.0})))
    assert got == [want, full[:37], full[:5].split(stop)[0]]


def test_generate_until_stops_at_the_separator():
    model, tok = decoder(seed=3), Latin1Tokenizer()
    prompt = "The quick brown fox"
    tokens = model.generate(torch.tensor([tok.encode(prompt)]), 60, temperature=0)[0, len(prompt):].tolist()
    k = next(k for k in range(17, 60) if tokens[k] not in tokens[:k])  # a token first made past the first chunk
    tok.eos_id = tokens[k]                                             # ... is this tokenizer's separator
    lm = HopekitLM.from_model(model, tok, max_length=256)
    got = lm.generate_until(requests("generate_until", (prompt, {"until": [], "max_gen_toks": 60})))
    assert got == [tok.decode(tokens[:k])]


def test_generate_until_truncates_a_long_context_like_lm_eval():
    model, tok = decoder(seed=3), Latin1Tokenizer()
    lm = HopekitLM.from_model(model, tok, max_length=24)
    prompt = tok.encode("a context that is longer than the window allows")
    got = lm.generate_until(requests("generate_until", (tok.decode(prompt), {"until": [], "max_gen_toks": 8})))
    assert got == [greedy_text(model, tok, prompt[-16:], 8, [])]  # the last max_length − max_gen_toks tokens
    for settings, name in [({"max_gen_toks": 24}, "max_gen_toks=24"), ({"do_sample": True}, "do_sample=True"),
                           ({"num_beams": 4}, "num_beams=4"), ({"penalty_alpha": 0.6}, "generation setting penalty_alpha")]:
        with pytest.raises(ValueError) as info:
            lm.generate_until(requests("generate_until", (tok.decode(prompt), settings)))
        assert str(info.value).startswith(name)


# --- lm-eval end to end --------------------------------------------------------------------------

def test_simple_evaluate_runs_the_local_tasks_offline(checkpoint, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)   # everything is local: tasks, data, model
    path, model = checkpoint
    tok = ByteTokenizer()
    results = lm_eval.simple_evaluate(
        model="hopekit", model_args=f"checkpoint={path},batch_size=3", device="cpu",
        tasks=["hopekit_tiny_mc", "hopekit_tiny_rolling", "hopekit_tiny_gen"], log_samples=True,
        task_manager=TaskManager(include_path=str(TASKS), include_defaults=False), verbosity="ERROR")
    samples = {task: sorted(s, key=lambda s: s["doc_id"]) for task, s in results["samples"].items()}
    # multiple choice: each choice's log-likelihood after "Question: ...\nAnswer:", acc from their argmax
    right = []
    for s in samples["hopekit_tiny_mc"]:
        context = tok.encode(f"Question: {s['doc']['question']}\nAnswer:")
        lls = [naive_loglikelihood(model, context, tok.encode(f" {c}"), TRAIN_LEN)[0] for c in s["doc"]["choices"]]
        assert [r[0][0] for r in s["resps"]] == pytest.approx(lls, abs=1e-4)
        right.append(max(range(len(lls)), key=lls.__getitem__) == s["doc"]["answer"])
    assert results["results"]["hopekit_tiny_mc"]["acc,none"] == pytest.approx(sum(right) / len(right))
    # perplexity: each document's rolling log-likelihood in windows of train_len
    for s in samples["hopekit_tiny_rolling"]:
        assert s["resps"][0][0] == pytest.approx(naive_rolling(model, tok.encode(s["doc"]["text"]), TRAIN_LEN), abs=1e-4)
    assert math.isfinite(results["results"]["hopekit_tiny_rolling"]["word_perplexity,none"])
    # generation: greedy, 12 tokens at most, cut at the first newline, after the last 32 − 12 context tokens
    for s in samples["hopekit_tiny_gen"]:
        context = tok.encode(s["doc"]["prompt"])[-(TRAIN_LEN - 12):]
        assert s["resps"][0][0] == greedy_text(model, tok, context, 12, ["\n"])
    assert "exact_match,none" in results["results"]["hopekit_tiny_gen"]


def test_simple_evaluate_takes_an_instance(checkpoint):
    path, _ = checkpoint
    lm = HopekitLM(checkpoint=str(path), device="cpu")
    results = lm_eval.simple_evaluate(model=lm, tasks=["hopekit_tiny_mc"], limit=2, verbosity="ERROR",
                                      task_manager=TaskManager(include_path=str(TASKS), include_defaults=False))
    assert 0.0 <= results["results"]["hopekit_tiny_mc"]["acc,none"] <= 1.0


@pytest.mark.slow
def test_command_line_registers_the_model_type(checkpoint, tmp_path):
    path, _ = checkpoint
    cmd = [sys.executable, "-m", "hopekit.integrations.lm_eval", "--model", "hopekit", "--tasks", "hopekit_tiny_mc",
           "--include_path", str(TASKS), "--device", "cpu", "--limit", "3"]
    env = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([*cmd, "--model_args", f"checkpoint={path},max_length=48"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "hopekit_tiny_mc" in out.stdout and "acc" in out.stdout
    bad = subprocess.run([*cmd, "--model_args", f"checkpoint={path},factor=2"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("lm_eval --model hopekit: error: factor: not an argument")


# --- Hugging Face models -------------------------------------------------------------------------

def test_hf_model_with_a_patched_encoding(tiny_dir):
    from hopekit.integrations import hf
    from tests.eval._tiny_hf import BASE, WINDOW

    lm = HopekitLM(hf=str(tiny_dir), pe="yarn", factor=2, device="cpu", batch_size=4)
    assert lm.max_length == WINDOW                                     # the pre-training window
    assert hf.encoding_of(lm.model).params == pe.make_params("yarn", base=BASE, factor=2, train_len=WINDOW)
    tok = lm.tokenizer
    got = lm.loglikelihood(requests("loglikelihood", *PAIRS))
    for (context, continuation), (logprob, greedy) in zip(PAIRS, got):
        ctx = tok.encode(context) if context else [lm.prefix_token_id]
        want = naive_loglikelihood(lm.model, ctx, tok.encode(continuation), WINDOW)
        assert logprob == pytest.approx(want[0], abs=1e-4) and greedy == want[1]
    long = HopekitLM.from_model(lm.model, tok, max_length=2 * WINDOW)     # windows past the pre-training length
    doc = "the king doth speak and the queen is fair so foul a day " * 2
    assert long.loglikelihood_rolling(requests("loglikelihood_rolling", (doc,)))[0] == pytest.approx(
        naive_rolling(lm.model, tok.encode(doc), 2 * WINDOW, prefix=lm.prefix_token_id), abs=1e-4)
    prompt = tok.encode("the king")
    new = hf.generate(lm.model, torch.tensor([prompt]), 10)[0, len(prompt):].tolist()
    want = tok.decode(new[:new.index(tok.eos_id)] if tok.eos_id in new else new)
    assert lm.generate_until(requests("generate_until", ("the king", {"until": [], "max_gen_toks": 10}))) == [want]


def test_fine_tuned_pretrained_checkpoint(tiny_dir, tmp_path):
    from hopekit.integrations import hf
    from hopekit.train import train
    from tests.eval._tiny_hf import words

    (tmp_path / "corpus" / "train").mkdir(parents=True)
    for i, text in enumerate(words()):
        (tmp_path / "corpus" / "train" / f"doc{i}.txt").write_text(text)
    config = ExperimentConfig.from_dict({
        "name": "ft", "hf": str(tiny_dir), "pe": {"kind": "yarn", "factor": 2.0},
        "data": {"corpus": str(tmp_path / "corpus"), "tokenizer": "model"},
        "train": {"train_len": 24, "batch_size": 2, "steps": 1, "warmup_steps": 0, "checkpoint_every": 1}})
    train(config, tmp_path / "run", progress=False, log=None)
    lm = HopekitLM(checkpoint=str(tmp_path / "run" / "checkpoint.pt"), device="cpu", batch_size=2)
    assert lm.max_length == 24 and lm.tokenizer.encode("the king") == hf.load_tokenizer(str(tiny_dir)).encode("the king")
    assert hf.encoding_of(lm.model).params.kind == "yarn"
    context, continuation = lm.tokenizer.encode("the queen is"), lm.tokenizer.encode(" fair")
    got = lm.loglikelihood(requests("loglikelihood", ("the queen is", " fair")))[0]
    assert got[0] == pytest.approx(naive_loglikelihood(lm.model, context, continuation, 24)[0], abs=1e-4)
    with pytest.raises(ValueError, match="^pe='alibi': checkpoint .* is a fine-tuned"):
        HopekitLM(checkpoint=str(tmp_path / "run" / "checkpoint.pt"), pe="alibi", device="cpu")


@pytest.mark.slow
@pytest.mark.pretrained
def test_smollm2_with_yarn(smollm2):
    import copy

    from hopekit.integrations import hf

    model = hf.patch_model(copy.deepcopy(smollm2.model), {"kind": "yarn", "factor": 2})
    lm = HopekitLM.from_model(model, smollm2.tokenizer, batch_size=2)
    assert lm.max_length == 8192 and lm.prefix_token_id == lm.eot_token_id  # <|endoftext|>, its pre-training window
    context = "The capital of France is"
    got = lm.loglikelihood(requests("loglikelihood", (context, " Paris"), (context, " Rome")))
    assert got[0][0] > got[1][0] + 1.0                                     # it still knows
    tok = lm.tokenizer
    assert got[0][0] == pytest.approx(naive_loglikelihood(model, tok.encode(context), tok.encode(" Paris"), 8192)[0],
                                      abs=1e-3)
    prompt = tok.encode(context)
    new = hf.generate(model, torch.tensor([prompt]), 20)[0, len(prompt):].tolist()
    want = tok.decode(new[:new.index(tok.eos_id)] if tok.eos_id in new else new).split(".")[0]
    assert lm.generate_until(requests("generate_until", (context, {"until": ["."], "max_gen_toks": 20}))) == [want]
