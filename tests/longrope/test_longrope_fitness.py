"""hopekit.longrope.fitness: how a candidate becomes LongRoPE parameters, and what a search minimises.

Oracles: hopekit's own ``perplexity(..., "truncate", bos=...)`` called by hand; a plain forward of the
reference decoder with ``F.cross_entropy`` on [BOS] + doc[:L′] (exp of the mean over documents of each
document's mean NLL, LongRoPE's fitness); for the needle fitness, the cross-entropy over the answer
positions computed by hand, and a model whose logits are corrupted everywhere except (or only at) the
answer positions. Models: a random 2-layer reference decoder with a fixed seed, 8 rotary pairs.
"""

from __future__ import annotations

import math
import random
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hopekit import pe
from hopekit.data import ByteTokenizer
from hopekit.eval.extensions import with_pe
from hopekit.eval.perplexity import perplexity
from hopekit.longrope import Candidate, SearchSpace
from hopekit.longrope.fitness import NeedleFitness, PerplexityFitness, Target, fitness_documents
from hopekit.model import Decoder, ModelConfig
from hopekit.pe.schedules import LongRoPEParams, longrope, longrope_attention_factor, rope_inv_freq
from tests.longrope._search_worker import synthetic_documents, tiny_decoder

PAIRS, L, S = 8, 16, 2.0
EVAL_LEN = int(L * S)
BOS = 0


def template(**kw) -> LongRoPEParams:
    fields = dict(base=10_000.0, train_len=L, factor=S, short_rescale=(1.0,) * PAIRS, long_rescale=(1.0,) * PAIRS)
    return LongRoPEParams(**{**fields, **kw})


def candidates(n: int, seed: int = 0, start_tokens=(0, 2)):
    space = SearchSpace(pairs=PAIRS, lambda_max=2.5, start_tokens=start_tokens)
    rng = random.Random(seed)
    return [Candidate(tuple(sorted(rng.randint(100, space.high) for _ in range(PAIRS))), rng.choice(start_tokens))
            for _ in range(n)]


@pytest.fixture(scope="module")
def model():
    return tiny_decoder()


def apply_to(model):
    return lambda p: with_pe(model, pe.to_config(p))


# ---- Target --------------------------------------------------------------------------------------

def test_a_long_target_fills_long_rescale_and_keeps_the_rest():
    t = Target(template(short_rescale=tuple(1.0 + 0.01 * i for i in range(PAIRS))))
    for c in candidates(20):
        p = t.params(c)
        assert p.long_rescale == c.factors() and p.short_rescale == t.template.short_rescale
        assert p.start_tokens == c.start_tokens
        assert (p.base, p.train_len, p.factor, p.attention_factor) == (10_000.0, L, S, "su")


def test_a_short_target_fills_short_rescale_and_keeps_the_long_set():
    long = tuple(1.0 + 0.25 * i for i in range(PAIRS))
    t = Target(template(long_rescale=long), "short")
    for c in candidates(20):
        p = t.params(c)
        assert p.short_rescale == c.factors() and p.long_rescale == long and p.start_tokens == c.start_tokens


def test_a_progressive_target_multiplies_the_existing_factors_element_wise():
    existing = tuple(1.0 + 0.37 * i for i in range(PAIRS))
    t = Target(template(long_rescale=existing, factor=4.0), "long", multiply=existing)
    for c in candidates(20):
        assert t.params(c).long_rescale == tuple(m * (v / 100) for m, v in zip(existing, c.rescale))


@pytest.mark.parametrize("slot", ["long", "short"])
def test_the_attention_factor_comes_from_the_template_factor_in_both_slots(slot):
    t = Target(template(factor=3.0), slot)
    su = math.sqrt(1 + math.log(3.0) / math.log(L))
    for c in candidates(5):
        p = t.params(c)
        assert longrope_attention_factor(p) == pytest.approx(su, rel=1e-15)
        for length in (L // 2, L, EVAL_LEN):                     # the same at every length
            assert longrope(p, 2 * PAIRS, seq_len=length).attn_scale == pytest.approx(su, rel=1e-15)
    explicit = Target(template(attention_factor=1.3), slot)
    assert longrope_attention_factor(explicit.params(candidates(1)[0])) == 1.3


def test_the_slot_is_the_set_the_encoding_uses_at_its_length():
    """At L′ > L the long set divides θ_i; at L′ ≤ L the short one does (the HF switching rule)."""
    plain = rope_inv_freq(10_000.0, 2 * PAIRS)
    for c in candidates(5):
        lam = torch.tensor(c.factors(), dtype=torch.float64)
        long = longrope(Target(template()).params(c), 2 * PAIRS, seq_len=EVAL_LEN).inv_freq
        short = longrope(Target(template(), "short").params(c), 2 * PAIRS, seq_len=L).inv_freq
        assert torch.allclose(long, plain / lam, rtol=1e-15) and torch.allclose(short, plain / lam, rtol=1e-15)


def test_target_refuses_bad_settings():
    with pytest.raises(TypeError, match="Target.template="):
        Target({"kind": "longrope"})
    with pytest.raises(ValueError, match="Target.slot='middle'"):
        Target(template(), "middle")
    with pytest.raises(ValueError, match="Target.multiply: has 3 entries, the candidate 8"):
        Target(template(), multiply=(1.0, 2.0, 3.0)).params(candidates(1)[0])


# ---- fitness documents ---------------------------------------------------------------------------

def _docs(lengths):
    return [torch.arange(1, n + 1) for n in lengths]


def test_fitness_documents_are_the_first_long_enough_ones_cut_to_one_window():
    docs = _docs([10, 40, 32, 50, 33, 60])
    with_bos = fitness_documents(docs, 32, 3, bos=BOS)                # BOS + 32 tokens: 32 needed
    assert [d.tolist() for d in with_bos] == [list(range(1, 33))] * 3
    assert [d.data_ptr() for d in with_bos] == [docs[i].data_ptr() for i in (1, 2, 3)]
    without = fitness_documents(docs, 32, 3, bos=None)                # 33 needed
    assert [d.data_ptr() for d in without] == [docs[i].data_ptr() for i in (1, 3, 4)]
    assert all(d.numel() == 33 for d in without)
    assert len(fitness_documents(docs, 32, 99, bos=None)) == 4        # fewer than asked: all there are


def test_fitness_documents_refuse_when_none_is_long_enough_naming_eval_len():
    with pytest.raises(ValueError, match=r"eval_len=64: .*64 tokens.*longest of 3 has 50") as e:
        fitness_documents(_docs([10, 50, 20]), 64, 2, bos=BOS)
    assert "\n" not in str(e.value)
    for count in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="documents="):
            fitness_documents(_docs([100]), 32, count, bos=None)


# ---- perplexity fitness --------------------------------------------------------------------------

def oracle_ppl(model: nn.Module, docs, eval_len: int, bos: int | None) -> float:
    """exp(mean over documents of the mean NLL), one plain forward of exactly eval_len per document."""
    nlls = []
    with torch.no_grad():
        for d in docs:
            ids = torch.cat([torch.tensor([bos]), d[:eval_len]]) if bos is not None else d[:eval_len + 1]
            assert ids.numel() == eval_len + 1
            logits, _ = model(ids[None, :-1])
            nlls.append(F.cross_entropy(logits[0].double(), ids[1:]).item())
    return math.exp(sum(nlls) / len(nlls))


@pytest.mark.parametrize("bos", [BOS, None])
def test_perplexity_fitness_is_truncated_perplexity_at_exactly_l_prime(model, bos):
    docs = fitness_documents(synthetic_documents(4), EVAL_LEN, 3, bos=bos)
    t = Target(template())
    fit = PerplexityFitness(apply_to(model), t, docs, EVAL_LEN, bos=bos)
    values = []
    for c in candidates(4, seed=1):
        scored = with_pe(model, pe.to_config(t.params(c)))
        by_hand = perplexity(scored, docs, EVAL_LEN, "truncate", bos=bos).ppl
        value = fit(c)
        assert value == pytest.approx(by_hand, rel=1e-6)
        assert value == pytest.approx(oracle_ppl(scored, docs, EVAL_LEN, bos), rel=1e-5)
        values.append(value)
    assert len(set(values)) == len(values)                              # the factors reach the model
    assert fit.describe() == {"kind": "ppl", "eval_len": EVAL_LEN, "documents": 3, "bos": bos}


def test_perplexity_fitness_of_a_short_target_scores_the_short_set_at_l(model):
    docs = fitness_documents(synthetic_documents(3), L, 3, bos=BOS)
    long = tuple(1.0 + 0.5 * i for i in range(PAIRS))
    t = Target(template(long_rescale=long), "short")
    fit = PerplexityFitness(apply_to(model), t, docs, L, bos=BOS)
    for c in candidates(3, seed=2, start_tokens=(0,)):
        scored = with_pe(model, pe.to_config(t.params(c)))
        assert fit(c) == pytest.approx(oracle_ppl(scored, docs, L, BOS), rel=1e-5)
    # the long set is not used at L: changing it leaves the fitness unchanged
    other = PerplexityFitness(apply_to(model), Target(template(long_rescale=(3.0,) * PAIRS), "short"), docs, L,
                              bos=BOS)
    assert other(candidates(1, seed=3)[0]) == fit(candidates(1, seed=3)[0])


# ---- needle fitness ------------------------------------------------------------------------------

NEEDLE_L, NEEDLE_S = 64, 3.0
NEEDLE_LEN = int(NEEDLE_L * NEEDLE_S)                                    # 192 tokens: room for ~55 of text
TOKENIZER = ByteTokenizer(specials=("<|endoftext|>", "<|bos|>"))


@pytest.fixture(scope="module")
def byte_model():
    torch.manual_seed(1)
    return Decoder(ModelConfig(vocab_size=TOKENIZER.vocab_size, d_model=32, n_layers=2, n_heads=2,
                               pe={"kind": "rope"})).eval()


def needle_docs(n=3, seed=4, length=300):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(32, 127, (length,), generator=g) for _ in range(n)]       # printable bytes


def needle_target():
    return Target(template(train_len=NEEDLE_L, factor=NEEDLE_S))


def make_needle(model, docs=None, seed=0, eval_len=NEEDLE_LEN):
    return NeedleFitness(apply_to(model), needle_target(), docs if docs is not None else needle_docs(), eval_len,
                         encode=TOKENIZER.encode, bos=TOKENIZER.bos_id, seed=seed)


def test_needle_windows_state_the_key_at_the_start_and_ask_for_it_at_the_end(byte_model):
    docs = needle_docs()
    fit = make_needle(byte_model, docs)
    assert len(fit.inputs) == 3 and fit.answer_lens == [7, 7, 7]
    names = set()
    for ids, doc in zip(fit.inputs, docs):
        assert ids.numel() == NEEDLE_LEN + 1 and ids[0].item() == TOKENIZER.bos_id
        text = TOKENIZER.decode(ids[1:].tolist())
        m = re.fullmatch(r"The pass key for (\w+ \w+) is (\d{7})\. Remember it\. (.*) What is the pass key for "
                         r"(\w+ \w+)\? The pass key for (\w+ \w+) is (\d{7})", text, re.S)
        assert m, text
        name, value, filler, asked, again, answer = m.groups()
        assert name == asked == again and value == answer and TOKENIZER.decode(ids[-7:].tolist()) == value
        assert torch.equal(torch.tensor(TOKENIZER.encode(filler)), doc[:len(filler)])   # the document's opening
        names.add(name)
    assert len(names) == 3
    # the needles come from the seed: the same for every candidate and every instance with that seed
    assert all(torch.equal(a, b) for a, b in zip(make_needle(byte_model, docs).inputs, fit.inputs))
    assert not all(torch.equal(a, b) for a, b in zip(make_needle(byte_model, docs, seed=1).inputs, fit.inputs))


def hand_answer_ppl(model, fit) -> float:
    nll = []
    with torch.no_grad():
        for ids, a in zip(fit.inputs, fit.answer_lens):
            logits, _ = model(ids[None, :-1])
            nll.append(F.cross_entropy(logits[0, -a:].double(), ids[-a:]).item())
    return math.exp(sum(nll) / len(nll))


def test_needle_fitness_is_the_perplexity_of_the_answer_tokens(byte_model):
    fit = make_needle(byte_model)
    t = needle_target()
    values = []
    for c in candidates(3, seed=5):
        scored = with_pe(byte_model, pe.to_config(t.params(c)))
        values.append(fit(c))
        assert values[-1] == pytest.approx(hand_answer_ppl(scored, fit), rel=1e-5)
    assert len(set(values)) == 3
    assert fit.describe() == {"kind": "needle", "eval_len": NEEDLE_LEN, "documents": 3, "bos": TOKENIZER.bos_id}


class Corrupt(nn.Module):
    """``model``'s logits with noise added at the positions ``rows`` selects from (T, a)."""

    def __init__(self, model, rows):
        super().__init__()
        self.model, self.rows = model, rows

    def forward(self, idx):
        logits, loss = self.model(idx)
        T = idx.shape[1]
        noise = torch.zeros_like(logits)
        rows = self.rows(T)
        noise[:, rows] = 10 * torch.randn(noise[:, rows].shape, generator=torch.Generator().manual_seed(0))
        return logits + noise, loss


def test_needle_fitness_reads_only_the_answer_positions(byte_model):
    fit = make_needle(byte_model)
    c = candidates(1, seed=6)[0]
    scored = with_pe(byte_model, pe.to_config(needle_target().params(c)))
    clean = math.exp(sum(fit.answer_nll(scored)) / 3)
    before_answer = Corrupt(scored, lambda T: slice(0, T - 7))
    assert math.exp(sum(fit.answer_nll(before_answer)) / 3) == clean
    at_answer = Corrupt(scored, lambda T: slice(T - 7, T - 6))
    assert abs(math.exp(sum(fit.answer_nll(at_answer)) / 3) - clean) > 1e-3
    # … yet the whole window is context: other filler text changes the answer's loss
    other = make_needle(byte_model, needle_docs(seed=9))
    assert other(c) != fit(c)


def test_needle_fitness_refuses_a_window_with_no_room_and_documents_too_short(byte_model):
    with pytest.raises(ValueError, match=r"eval_len=100: too short for a needle"):
        make_needle(byte_model, eval_len=100)
    with pytest.raises(ValueError, match=r"eval_len=192: no fitness document is long enough"):
        make_needle(byte_model, docs=needle_docs(length=20))


def test_needle_fitness_restores_the_training_mode(byte_model):
    fit = make_needle(byte_model)
    scored = with_pe(byte_model, pe.to_config(needle_target().params(candidates(1)[0])))
    scored.train()
    fit.answer_nll(scored)
    assert scored.training
    scored.eval()
