"""What a LongRoPE search minimises, and how a candidate becomes an encoding.

**Target** (:class:`Target`): a candidate's factors go into one slot of a LongRoPE configuration —
``long_rescale`` for a search at a target length L′ > L (the usual case), ``short_rescale`` for the
short-context readjustment at L′ ≤ L — and, for progressive extension, they *multiply* factors a model was
already fine-tuned with (the paper's second search: "the new vector multiplies the fine-tuned factors
element-wise"). The attention factor follows transformers' rule: it comes from the configuration's
``factor`` (the target ratio the long set is for), is the same at every length, and applies to both sets;
so a short-set search scores its candidates with the attention factor they will be deployed with.

**Fitness** (:class:`PerplexityFitness`), as LongRoPE measures it: perplexity at exactly L′ on a fixed
set of long documents of the *validation* split — the first ``documents`` of them with at least L′
tokens (the public code takes the first 5 PG19 validation books ≥ 128k tokens) — each cut to one window
with a BOS token in front where the tokenizer has one (``perplexity(..., protocol="truncate", bos=…)``:
BOS + the first L′ document tokens, one forward of exactly L′ positions, every document token scored),
PPL = exp(mean over documents of the per-document mean NLL). :class:`NeedleFitness` is LongRoPE2's
needle-driven variant: a 7-digit pass key bound to a two-word name is stated at the start of each document
and asked for at the end, and only the answer tokens are scored.
"""

from __future__ import annotations

import dataclasses
import math
import random
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..eval.perplexity import perplexity
from ..eval.tasks import TaskInstance, score_likelihood
from ..pe.schedules import LongRoPEParams
from .genome import Candidate

__all__ = ["Target", "fitness_documents", "PerplexityFitness", "NeedleFitness", "SLOTS"]

SLOTS = ("long", "short")


@dataclasses.dataclass(frozen=True)
class Target:
    """``template``: the LongRoPE parameters a candidate completes (base, train_len L, factor s, the other
    set); ``slot``: which set the candidate fills; ``multiply``: factors the candidate multiplies
    (progressive extension), else None."""

    template: LongRoPEParams
    slot: str = "long"
    multiply: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.template, LongRoPEParams):
            raise TypeError(f"Target.template={self.template!r}: expected LongRoPEParams")
        if self.slot not in SLOTS:
            raise ValueError(f"Target.slot={self.slot!r}: expected one of {SLOTS}")
        if self.multiply is not None:
            object.__setattr__(self, "multiply", tuple(float(v) for v in self.multiply))

    def factors(self, c: Candidate) -> tuple[float, ...]:
        f = c.factors()
        if self.multiply is None:
            return f
        if len(self.multiply) != len(f):
            raise ValueError(f"Target.multiply: has {len(self.multiply)} entries, the candidate {len(f)}")
        return tuple(m * v for m, v in zip(self.multiply, f))

    def params(self, c: Candidate) -> LongRoPEParams:
        field = "long_rescale" if self.slot == "long" else "short_rescale"
        return dataclasses.replace(self.template, **{field: self.factors(c)}, start_tokens=c.start_tokens)


def fitness_documents(documents: Sequence[torch.Tensor], eval_len: int, count: int, *,
                      bos: int | None) -> list[torch.Tensor]:
    """The first ``count`` documents long enough for one window at ``eval_len`` (``eval_len`` tokens after
    a BOS, else ``eval_len + 1``), each cut to exactly that. Fewer than ``count`` is allowed (all there
    are); none is an error."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValueError(f"documents={count!r}: expected the number of fitness documents, an int >= 1")
    need = eval_len if bos is not None else eval_len + 1
    chosen = [d[:need] for d in documents if d.numel() >= need][:count]
    if not chosen:
        longest = max((d.numel() for d in documents), default=0)
        raise ValueError(f"eval_len={eval_len}: no fitness document has {need} tokens (the longest of "
                         f"{len(documents)} has {longest}); use a shorter target or another split")
    return chosen


class PerplexityFitness:
    """``fitness(candidate)`` = perplexity at ``eval_len`` of ``apply(target.params(candidate))`` on
    ``documents`` (module docstring). ``apply`` turns typed LongRoPE parameters into a model to score
    (``with_pe`` for the reference decoder, a patched transformers model, ...)."""

    def __init__(self, apply: Callable[[LongRoPEParams], nn.Module], target: Target,
                 documents: Sequence[torch.Tensor], eval_len: int, *, bos: int | None,
                 device: torch.device | str | None = None):
        self.apply, self.target, self.eval_len, self.bos, self.device = apply, target, eval_len, bos, device
        self.documents = list(documents)
        self.tokens = sum(min(d.numel(), eval_len) for d in self.documents)

    def __call__(self, c: Candidate) -> float:
        model = self.apply(self.target.params(c))
        res = perplexity(model, self.documents, self.eval_len, "truncate", bos=self.bos, max_tokens=None,
                         sampling="prefix", batch_size=1, device=self.device)
        return float(res.ppl)

    def describe(self) -> dict[str, Any]:
        return {"kind": "ppl", "eval_len": self.eval_len, "documents": len(self.documents), "bos": self.bos}


#: the two-word names of needle pass keys (LongRoPE2: "a random two-word key")
_WORDS = ("amber", "basil", "cedar", "delta", "ember", "fable", "garnet", "harbor", "indigo", "juniper", "kettle",
          "lantern", "meadow", "nectar", "orchid", "pepper", "quartz", "raven", "saffron", "thistle", "umber",
          "velvet", "willow", "yarrow", "zephyr", "copper", "silver", "marble", "falcon", "walnut")


class NeedleFitness:
    """LongRoPE2's needle-driven perplexity: for each document, ``"The pass key for <w1 w2> is <7 digits>.
    Remember it. "`` + document text + ``" What is the pass key for <w1 w2>? The pass key for <w1 w2> is "``
    + the 7 digits, cut to exactly ``eval_len + 1`` tokens (BOS first where there is one) by trimming the
    document text; the loss is taken on the answer tokens only. Keys are drawn from ``seed``, so every
    candidate sees the same needles. ``encode``: text -> token ids."""

    def __init__(self, apply: Callable[[LongRoPEParams], nn.Module], target: Target,
                 documents: Sequence[torch.Tensor], eval_len: int, *, encode: Callable[[str], list[int]],
                 bos: int | None, seed: int = 0):
        self.apply, self.target, self.eval_len, self.bos = apply, target, eval_len, bos
        rng = random.Random(seed)
        self.inputs: list[torch.Tensor] = []
        self.answer_lens: list[int] = []
        for doc in documents:
            name = " ".join(rng.sample(_WORDS, 2))
            value = str(rng.randint(1_000_000, 9_999_999))
            head = encode(f"The pass key for {name} is {value}. Remember it. ")
            tail = encode(f" What is the pass key for {name}? The pass key for {name} is ")
            answer = encode(value)
            start = [bos] if bos is not None else []
            room = eval_len + 1 - len(start) - len(head) - len(tail) - len(answer)
            if room < 1:
                raise ValueError(f"eval_len={eval_len}: too short for a needle ({eval_len + 1 - room} tokens "
                                 f"without any document text)")
            if doc.numel() < room:
                continue
            ids = torch.tensor(start + head, dtype=torch.long)
            ids = torch.cat([ids, doc[:room].long(), torch.tensor(tail + answer, dtype=torch.long)])
            self.inputs.append(ids)
            self.answer_lens.append(len(answer))
        if not self.inputs:
            raise ValueError(f"eval_len={eval_len}: no fitness document is long enough for a needle window")

    def answer_nll(self, model: nn.Module) -> list[float]:
        """Mean NLL of each document's answer tokens (one teacher-forced forward each)."""
        instances = [TaskInstance(task="needle", prompt=ids[:-a].tolist(), answer=ids[-a:].tolist(),
                                  length=len(ids), depth=0.0, seed=0, position=0)
                     for ids, a in zip(self.inputs, self.answer_lens)]
        return [s.nll for s in score_likelihood(model, instances)]

    def __call__(self, c: Candidate) -> float:
        nll = self.answer_nll(self.apply(self.target.params(c)))
        return math.exp(sum(nll) / len(nll))

    def describe(self) -> dict[str, Any]:
        return {"kind": "needle", "eval_len": self.eval_len, "documents": len(self.inputs), "bos": self.bos}
