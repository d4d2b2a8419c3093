"""Synthetic long-context tasks with a controlled length and depth, and their two scorings.

::

    from hopekit.eval.tasks import make_task, score_likelihood, score_generation

    tok = ByteTokenizer()
    inst = make_task("passkey", tok, length=1024, depth=0.5, seed=3)       # exactly 1024 tokens
    inst.prompt, inst.answer                                               # token id lists
    score_likelihood(model, [inst])[0].correct                             # teacher-forced, one forward

Every instance is ``prompt + answer`` with ``len(prompt) + len(answer) == length``: scoring runs one
forward of ``length − 1`` positions (prompt and all but the last answer token), so the length under test
is exact. ``depth`` ∈ [0, 1] places the information (pass key, needle, copied span, the asked key)
that far through the filler. Instances are generated from ``seed`` alone (a :class:`random.Random`), so the
same arguments give the same ids on every machine.

Tasks (:data:`TASKS`):

* ``passkey`` — the format of Landmark Attention, YaRN and LongRoPE: an instruction, filler, the line
  "The pass key is N. Remember it. N is the pass key." at ``depth``, more filler, then "What is the pass
  key? The pass key is"; the answer is " N" (5 digits by default).
* ``copy`` — a span of the filler (``span`` characters, by default 32) is shown between markers at
  ``depth`` and asked for at the end ("Repeat the marked text: "); exact match and per-token accuracy
  measure in-context copying.
* ``needle`` — a text needle ("The best thing to do in <city> is <activity>.") at ``depth``; the question
  names the city and the answer is the activity.
* ``kv`` — ``pairs`` key–value pairs of random hexadecimal strings; the question asks for the value of
  the key at ``depth`` of the list (multi-key retrieval: the other keys are distractors).

Filler: ``"corpus"`` (the default) takes consecutive text of an embedded corpus' ``split`` (from an
offset drawn from the seed; documents joined by blank lines), ``"repeat"`` the classic "The grass is
green. The sky is blue. ..." sentences.

**Scorings.** :func:`score_likelihood`: one forward of the whole instance, the answer tokens' NLL, their
rank under the model, and whether each is the argmax; ``correct`` (every answer token is the argmax) is
exactly what greedy decoding of ``len(answer)`` tokens would give, without decoding.
:func:`score_generation`: greedy decoding through the model's KV cache (``Decoder.generate``), exact match
and per-token accuracy of the generated tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["TASKS", "FILLERS", "TaskInstance", "TaskScore", "make_task", "score_likelihood", "score_generation"]

TASKS = ("passkey", "copy", "needle", "kv")
FILLERS = ("corpus", "repeat")

_REPEAT = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_PASSKEY_INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
                  "I will quiz you about the important information there. ")
_CITIES = ("San Francisco", "Lisbon", "Kyoto", "Nairobi", "Oslo", "Lima", "Hanoi", "Tbilisi", "Quebec", "Perth")
_ACTIVITIES = ("eat a sandwich in the park", "walk along the river at dusk", "visit the old market",
               "climb the hill behind the harbour", "read in the public library", "ride the night tram",
               "swim in the cold lake", "listen to the street musicians")


@dataclasses.dataclass(frozen=True)
class TaskInstance:
    """One instance: ``prompt`` and ``answer`` token ids, ``len(prompt) + len(answer) == length``."""

    task: str
    prompt: list[int]
    answer: list[int]
    length: int
    depth: float
    seed: int
    #: where the information starts in the prompt (token index) and what it was, for checks and records
    position: int
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TaskScore:
    correct: bool                 # every answer token right (teacher-forced argmax, or generated)
    token_accuracy: float         # fraction of answer tokens right
    nll: float | None = None      # mean NLL of the answer tokens (likelihood scoring)
    mean_rank: float | None = None  # mean of 1 + the number of tokens scored above each answer token


# ---- filler -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _corpus_text(corpus: str, split: str) -> str:
    from ..data import load_corpus

    return "\n\n".join(d.text for d in load_corpus(corpus, split))


def _filler(kind: str, rng: random.Random, chars: int, corpus: str, split: str) -> str:
    if kind == "repeat":
        return (_REPEAT * (chars // len(_REPEAT) + 2))[:chars]
    if kind != "corpus":
        raise ValueError(f"filler={kind!r}: expected one of {FILLERS}")
    text = _corpus_text(corpus, split)
    if len(text) < chars:
        text = text * (chars // max(1, len(text)) + 1)
    start = rng.randrange(0, len(text) - chars + 1)
    return text[start:start + chars]


def _fit(encode: Callable[[str], list[int]], head: str, info: str, tail: str, answer: str, filler: str,
         length: int, depth: float) -> tuple[list[int], list[int], int, int, int]:
    """Prompt = head + filler[:a] + info + filler[a:b] + tail with exactly ``length − len(answer)`` tokens:
    the filler is cut (on a token boundary: it is tokenised on its own) so the whole fits, and the
    information sits at ``depth`` of the filler tokens."""
    ans = encode(answer)
    fixed = [encode(head), encode(info), encode(tail)]
    room = length - len(ans) - sum(len(f) for f in fixed)
    fill = encode(filler)
    if room < 0:
        raise ValueError(f"length={length}: too short for this task ({length - room} tokens without filler)")
    if len(fill) < room:
        raise ValueError(f"length={length}: not enough filler text ({len(fill)} tokens for {room})")
    fill = fill[:room]
    cut = int(round(depth * room))
    prompt = fixed[0] + fill[:cut] + fixed[1] + fill[cut:] + fixed[2]
    return prompt, ans, len(fixed[0]) + cut, room, cut


def make_task(task: str, tokenizer: Any, *, length: int, depth: float, seed: int, filler: str = "corpus",
              corpus: str = "shakespeare", split: str = "validation", digits: int = 5, span: int = 32,
              pairs: int = 16) -> TaskInstance:
    """One instance of ``task`` (:data:`TASKS`) of exactly ``length`` tokens with its information at
    ``depth``; see the module docstring. ``tokenizer``: hopekit's protocol (``encode``)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length={length!r}: expected an int >= 2")
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth!r}: expected a number in [0, 1]")
    rng = random.Random(f"{task}:{seed}")
    encode = tokenizer.encode
    chars = 8 * length + 256                      # enough characters for `length` tokens of any tokenizer here
    text = _filler(filler, rng, chars, corpus, split)
    meta: dict[str, Any] = {}
    if task == "passkey":
        key = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
        head, info = _PASSKEY_INTRO, f" The pass key is {key}. Remember it. {key} is the pass key. "
        tail, answer = " What is the pass key? The pass key is", f" {key}"
        meta["passkey"] = key
    elif task == "copy":
        start = rng.randrange(0, max(1, len(text) - span))
        piece = text[start:start + span]
        head, info = "", f" <copy>{piece}</copy> "
        tail, answer = " Repeat the marked text: <copy>", piece
        meta["span"] = piece
    elif task == "needle":
        city, activity = rng.choice(_CITIES), rng.choice(_ACTIVITIES)
        head, info = "", f" The best thing to do in {city} is to {activity}. "
        tail, answer = f" What is the best thing to do in {city}? The best thing to do in {city} is to", f" {activity}."
        meta.update(city=city, activity=activity)
    else:  # kv
        keys = [f"{rng.getrandbits(32):08x}" for _ in range(pairs)]
        values = [f"{rng.getrandbits(32):08x}" for _ in range(pairs)]
        asked = min(pairs - 1, int(depth * pairs))
        listing = " ".join(f"{k}: {v}." for k, v in zip(keys, values))
        head, info = "", f" Key-value pairs: {listing} "
        tail, answer = f" The value of key {keys[asked]} is", f" {values[asked]}"
        meta.update(key=keys[asked], value=values[asked], asked=asked)
    prompt, ans, position, room, before = _fit(encode, head, info, tail, answer, text, length, depth)
    meta.update(filler_tokens=room, filler_before=before)
    return TaskInstance(task=task, prompt=prompt, answer=ans, length=length, depth=float(depth), seed=seed,
                        position=position, meta=meta)


# ---- scoring ------------------------------------------------------------------------------------

def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters())).device


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """Eval mode and no gradients for the block; the model's mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def score_likelihood(model: nn.Module, instances: Sequence[TaskInstance]) -> list[TaskScore]:
    """Teacher-forced scoring: one forward of each instance (all tokens but the last), the answer tokens'
    NLL, rank and argmax (module docstring)."""
    out = []
    with _evaluating(model):
        for inst in instances:
            ids = torch.tensor(inst.prompt + inst.answer, dtype=torch.long, device=_device(model))
            x = ids[:-1][None]
            logits = model(x)
            logits = logits[0] if isinstance(logits, tuple) else logits
            a = len(inst.answer)
            # (a, V) rows predicting the answer, in float64: a search compares candidates closer than float32
            rows = logits[:, x.shape[1] - a:x.shape[1]].double()[0]
            target = ids[-a:]
            logp = torch.log_softmax(rows, dim=-1)
            true = logp.gather(1, target[:, None])[:, 0]
            rank = (logp > true[:, None]).sum(dim=-1) + 1                    # 1 + tokens scored higher
            right = rows.argmax(dim=-1) == target                             # greedy's choice (ties: lowest id)
            out.append(TaskScore(correct=bool(right.all()), token_accuracy=float(right.float().mean()),
                                 nll=float(-true.mean()), mean_rank=float(rank.float().mean())))
    return out


def score_generation(model: nn.Module, instances: Sequence[TaskInstance]) -> list[TaskScore]:
    """Greedy decoding of ``len(answer)`` tokens after each prompt through the model's KV cache
    (``model.generate(ids, n, temperature=0)``, :class:`hopekit.model.Decoder`'s contract)."""
    out = []
    with _evaluating(model):
        for inst in instances:
            ids = torch.tensor([inst.prompt], dtype=torch.long, device=_device(model))
            generated = model.generate(ids, len(inst.answer), temperature=0)[0, len(inst.prompt):].tolist()
            right = [g == a for g, a in zip(generated, inst.answer)]
            out.append(TaskScore(correct=all(right), token_accuracy=sum(right) / len(right)))
    return out
