"""Evaluation of pretrained transformers models (hopekit.eval.pretrained) on tiny random Llama models:
the wrapped perplexity equals the model's own ``labels=`` loss (its mean NLL) window for window, for
its own encoding, a patched rotary method and a patched bias method; records, resume and refusals. The
real SmolLM2 (marked pretrained) is checked the same way."""

from __future__ import annotations

import copy

import json
import math

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from hopekit import pe  # noqa: E402
from hopekit.eval.perplexity import perplexity  # noqa: E402
from hopekit.eval.pretrained import (HFLogits, default_lengths, evaluate_pretrained, method_name,  # noqa: E402
                                     pretrained_text)
from hopekit.eval.records import model_descriptor, read_records  # noqa: E402
from hopekit.integrations import hf  # noqa: E402
from tests.eval._tiny_hf import BASE, WINDOW, words  # noqa: E402


@pytest.fixture
def lm(tiny_dir):
    return hf.load_pretrained(str(tiny_dir))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in words()))
    return path


def own_losses(model, window: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The model's own ``labels=`` loss on one window of ``L + 1`` tokens, and its per-position NLL."""
    with torch.no_grad():
        out = model(input_ids=window[None], labels=window[None], use_cache=False)
    per_position = F.cross_entropy(out.logits[0, :-1].double(), window[1:], reduction="none")
    return float(out.loss), per_position


@pytest.mark.parametrize("encoding", [None, {"kind": "yarn", "factor": 2}, {"kind": "alibi"}],
                         ids=["own", "yarn", "alibi"])
def test_wrapped_perplexity_equals_the_models_own_labels_loss(lm, encoding):
    model = lm.model
    if encoding is not None:
        hf.patch_model(model, hf.resolve_pe(encoding, model))
    L, n = 24, 3
    stream = torch.randint(0, 256, (n * L + 5,), generator=torch.Generator().manual_seed(3))
    res = perplexity(HFLogits(model), stream, L, max_tokens=n * L)
    assert (res.windows, res.tokens) == (n, n * L)
    means, curves = zip(*(own_losses(model, stream[i * L:(i + 1) * L + 1]) for i in range(n)))
    assert res.nll == pytest.approx(sum(means) / n, rel=1e-5)          # equal windows: the mean of the means
    torch.testing.assert_close(res.loss_by_position(), torch.stack(curves).mean(0), rtol=1e-5, atol=1e-6)


def test_the_logits_are_computed_in_row_chunks_equal_to_the_full_head(lm):
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        lazy = HFLogits(lm.model)(x)
        full = lm.model(input_ids=x, use_cache=False).logits
    assert tuple(lazy.shape) == tuple(full.shape) and lazy.device == full.device
    torch.testing.assert_close(torch.cat([lazy[:, a:a + 7] for a in range(0, 20, 7)], dim=1), full)
    torch.testing.assert_close(lazy.materialize(), full)
    for index in (0, (slice(None), 3), (slice(0, 1), slice(0, 5)), (slice(None), slice(0, 8, 2))):
        with pytest.raises(TypeError, match="row slices"):
            lazy[index]
    with pytest.raises(ValueError, match="seq_len=16"):
        HFLogits(lm.model)(x, seq_len=16)


def test_a_patched_method_keeps_the_models_base_and_window(lm):
    yarn = hf.resolve_pe({"kind": "yarn", "factor": 2}, lm.model)
    assert (yarn.base, yarn.train_len, yarn.factor) == (BASE, WINDOW, 2.0)
    assert hf.resolve_pe({"kind": "linear", "factor": 4, "base": 1e4}, lm.model).base == 1e4  # given: kept
    assert pe.to_config(hf.resolve_pe({"kind": "alibi"}, lm.model)) == pe.resolve({"kind": "alibi"})
    with pytest.raises(ValueError, match="kind='nosuch'"):
        hf.resolve_pe({"kind": "nosuch"}, lm.model)
    with pytest.raises(TypeError, match="pe.nosuch: not a parameter of yarn"):
        hf.resolve_pe({"kind": "yarn", "nosuch": 1}, lm.model)


def test_method_names():
    own = pe.parse({"kind": "rope", "base": BASE})
    assert method_name(own, own) == "rope"
    assert method_name(own, pe.parse({"kind": "yarn", "factor": 2.0}, train_len=WINDOW)) == "rope+yarn×2"
    assert method_name(own, pe.parse({"kind": "alibi"})) == "rope+alibi"


def test_descriptor_and_default_lengths(lm):
    n = sum(p.numel() for p in lm.model.parameters())
    assert model_descriptor(lm.model) == f"llama-d32-l2-h4-kv2-v257-{n / 1e3:.1f}k"
    assert default_lengths(lm.model) == [8, 16, 32, 64]


def test_text_from_a_file_is_tokenized_whole_with_the_models_tokenizer(lm, text_file):
    text = pretrained_text(lm.tokenizer, text=text_file)
    assert text.corpus == f"file:{text_file.resolve()}" and text.split is None
    assert [d.tolist() for d in text.documents] == [lm.tokenizer.encode(t) for t in words()]
    assert text.separator == text.bos_id == 256
    other = text_file.with_name("other.jsonl")
    other.write_text(text_file.read_text().replace("king", "kink"))
    assert pretrained_text(lm.tokenizer, text=other).digest != text.digest
    assert pretrained_text(lm.tokenizer, text=text_file).digest == text.digest
    with pytest.raises(FileNotFoundError, match="absent.txt"):
        pretrained_text(lm.tokenizer, text=text_file.with_name("absent.txt"))


def run(lm, text, path, **kw):
    kw.setdefault("lengths", [16, 32])
    return evaluate_pretrained(lm, text, path, progress=False, log=lambda _: None, **kw)


def test_records_say_what_was_measured_and_a_rerun_skips(lm, text_file, tmp_path):
    text = pretrained_text(lm.tokenizer, text=text_file)
    path = tmp_path / "records.jsonl"
    own = run(lm, text, path)
    ppl = [r for r in own if r["metric"] == "ppl"]
    assert [r["eval_len"] for r in ppl] == [16, 32]
    r = ppl[0]
    assert (r["method"], r["params"], r["pe_impl"], r["dtype"], r["bos"]) == \
        ("rope", {"kind": "rope", "base": BASE, "rotary_fraction": 1.0}, "transformers", "float32", False)
    assert (r["hf"], r["train_len"], r["corpus"], r["model"]) == (str(lm.name), WINDOW, text.corpus,
                                                                  model_descriptor(lm.model))
    assert r["seconds"] > 0 and r["tokens"] >= 1 and r["tokens_digest"] == text.digest
    assert r["value"] == pytest.approx(math.exp(next(x for x in own if x["metric"] == "nll")["value"]))
    size = path.stat().st_size
    assert run(lm, text, path) == own and path.stat().st_size == size          # resumed: nothing re-measured
    yarn = run(lm, text, path, pe={"kind": "yarn", "factor": 2})
    y = next(r for r in yarn if r["metric"] == "ppl")
    assert (y["method"], y["pe_impl"], y["params"]["base"], y["params"]["train_len"]) == \
        ("rope+yarn×2", "hopekit", BASE, WINDOW)
    assert y["model_digest"] == r["model_digest"]                             # the same pretrained weights
    with_bos = run(lm, text, path, pe={"kind": "yarn", "factor": 2}, bos=True)  # another measurement
    assert [x["bos"] for x in with_bos] == [True] * len(with_bos)
    assert len(read_records(path)) == len(own) + len(yarn) + len(with_bos)


def test_bos_starts_every_scored_document(lm, text_file, tmp_path):
    from hopekit.config import EvalConfig

    text = pretrained_text(lm.tokenizer, text=text_file)
    rows = run(lm, text, tmp_path / "r.jsonl", lengths=[16], bos=True,
               eval_config=EvalConfig(protocol="truncate"))
    nll = next(r["value"] for r in rows if r["metric"] == "nll")
    own = [own_losses(lm.model, torch.cat([torch.tensor([text.bos_id]), d[:16]]))[0] for d in text.documents]
    assert nll == pytest.approx(sum(own) / len(own), rel=1e-5)


def test_refused_before_anything_is_recorded(lm, text_file, tmp_path):
    text = pretrained_text(lm.tokenizer, text=text_file)
    path = tmp_path / "records.jsonl"
    with pytest.raises(ValueError, match=rf"{text.tokens} tokens in 3 document\(s\).*eval_len=100000"):
        run(lm, text, path, lengths=[16, 100000])
    with pytest.raises(ValueError, match="lengths: 0 is not an int"):
        run(lm, text, path, lengths=[16, 0])
    with pytest.raises(TypeError, match="pe.factors: not a parameter of yarn"):
        run(lm, text, path, pe={"kind": "yarn", "factors": 2})
    assert not path.exists() and hf.encoding_of(lm.model) is None
    with pytest.raises(ValueError, match="pe.kind='sinusoidal': adds absolute position vectors"):
        run(lm, text, path, pe={"kind": "sinusoidal"})                    # patch_model's refusal
    assert not path.exists()


@pytest.mark.pretrained
def test_smollm2_perplexity_equals_its_own_labels_loss(smollm2):
    text = pretrained_text(smollm2.tokenizer)                              # the embedded test split
    stream = torch.cat([torch.cat([d, torch.tensor([text.separator])]) for d in text.documents[:1]])
    L, n = 256, 3
    res = perplexity(HFLogits(smollm2.model), text.documents, L, separator=text.separator, max_tokens=n * L,
                     sampling="prefix")                                 # the first windows of the first play
    means, curves = zip(*(own_losses(smollm2.model, stream[i * L:(i + 1) * L + 1]) for i in range(n)))
    assert res.tokens == n * L
    assert res.nll == pytest.approx(sum(means) / n, rel=1e-5)
    torch.testing.assert_close(res.loss_by_position(), torch.stack(curves).mean(0), rtol=1e-4, atol=1e-5)


def test_the_forward_passes_no_quadratic_mask(lm, monkeypatch):
    """Without an attention_mask, transformers 4.x looks for packed documents and hands the attention a
    (B, 1, T, T) boolean mask; the wrapper passes an all-ones mask, so a causal forward gets None."""
    from hopekit.integrations.hf import patch as patch_module

    seen = []
    real = patch_module.attention
    monkeypatch.setattr(patch_module, "attention", lambda *a, **k: seen.append(k["mask"]) or real(*a, **k))
    model = hf.patch_model(copy.deepcopy(lm.model), {"kind": "alibi"})
    with torch.no_grad():
        HFLogits(model)(torch.randint(0, model.config.vocab_size, (2, 40)))
    assert seen and all(m is None for m in seen)
