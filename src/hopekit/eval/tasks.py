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

**Styles** (:data:`STYLES`): ``"standard"`` is the formats above; ``"compact"`` is short templates
that fit a training window of ~100 bytes (pass key: " The pass key is #N. " ... " What is the pass key?
#" → "N"; copy: " <span> " ... " Copy: <" → "span", 8 characters; needle: " In <city>, <activity>. " ...
" In <city>," → " <activity>."; kv: 4 pairs of 4-digit hexadecimal keys and values).

Filler: ``"corpus"`` takes consecutive text of an embedded corpus' ``split`` (from an offset drawn from
the seed; documents joined by blank lines), ``"repeat"`` the classic "The grass is green. The sky is
blue. ..." sentences; ``"auto"`` (the default) is ``repeat`` for the pass key (its published format) and
``corpus`` for the others.

**Scorings.** :func:`score_likelihood`: one forward of the whole instance, the answer tokens' NLL, their
rank under the model, and whether each is the argmax; ``correct`` (every answer token is the argmax) is
exactly what greedy decoding of ``len(answer)`` tokens would give, without decoding — for encodings whose
spectrum does not depend on the length. A length-dependent one (dynamic NTK; LongRoPE across train_len)
is scored with the spectrum of the whole instance at every answer token, as a windowed evaluation does,
where greedy decoding re-derives it at each step; the two can then differ.
:func:`score_generation`: greedy decoding through the model's KV cache (``Decoder.generate``), exact match
and per-token accuracy of the generated tokens.

**Measurement** (:func:`evaluate_tasks`, ``hopekit eval --task``, ``hopekit bench --suite tasks``): every
``eval.tasks`` × length × ``eval.task_depths`` cell, ``eval.task_instances`` instances each (seeds
0 … n − 1, the same for every model), one record per metric (:data:`TASK_METRICS`) and cell; reports
in :mod:`hopekit.eval.task_report`. Training on instances: :func:`training_instance`
(``data.task_fraction``, :class:`hopekit.data.TaskMixture`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["TASKS", "FILLERS", "STYLES", "SCORINGS", "TaskInstance", "TaskScore", "make_task", "min_length", "check_fits",
           "training_instance",
           "score_likelihood", "score_generation"]

TASKS = ("passkey", "copy", "needle", "kv")
FILLERS = ("auto", "corpus", "repeat")
STYLES = ("standard", "compact")
SCORINGS = ("likelihood", "generation")

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
    if kind not in FILLERS or kind == "auto":
        raise ValueError(f"filler={kind!r}: expected one of {FILLERS}")
    if kind == "repeat":
        return (_REPEAT * (chars // len(_REPEAT) + 2))[:chars]
    if kind != "corpus":
        raise ValueError(f"filler={kind!r}: expected one of {FILLERS}")
    text = _corpus_text(corpus, split)
    if len(text) < chars:
        text = text * (chars // max(1, len(text)) + 1)
    start = rng.randrange(0, len(text) - chars + 1)
    return text[start:start + chars]


def _copy_span(rng: random.Random, filler: str, span: int, corpus: str, split: str, tries: int = 100) -> str:
    """``span`` characters of the corpus' ``split`` that occur nowhere in ``filler`` (the text the filler is
    cut from) and hold no ``<``/``>`` (the markers), so the marked copy is the only place the answer is."""
    text = _corpus_text(corpus, split)
    for _ in range(tries):
        start = rng.randrange(0, max(1, len(text) - span))
        piece = text[start:start + span]
        if len(piece) == span and piece not in filler and "<" not in piece and ">" not in piece:
            return piece
    raise ValueError(f"span={span}: no span of the {split!r} split of {corpus!r} absent from the filler in {tries} "
                     f"draws")


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


def make_task(task: str, tokenizer: Any, *, length: int, depth: float, seed: int, filler: str = "auto",
              corpus: str = "shakespeare", split: str = "validation", style: str = "standard", digits: int = 5,
              span: int | None = None, pairs: int | None = None, needle: tuple[str, str] | None = None) -> TaskInstance:
    """One instance of ``task`` (:data:`TASKS`) of exactly ``length`` tokens with its information at
    ``depth``; see the module docstring. ``tokenizer``: hopekit's protocol (``encode``). ``style``
    (:data:`STYLES`): ``"standard"`` (the published formats) or ``"compact"`` (short templates that fit
    a training window of ~100 bytes). ``span`` (copy; default 32 standard, 8 compact) and ``pairs``
    (kv; default 16 standard, 4 compact) size the information; ``needle``: a given (city, activity)
    instead of one drawn. The compact pass key and copy mark their information with bytes prose never
    holds (``#``, ``<``), so one byte locates it."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if style not in STYLES:
        raise ValueError(f"style={style!r}: expected one of {STYLES}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length={length!r}: expected an int >= 2")
    if isinstance(depth, bool) or not isinstance(depth, (int, float)) or not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth={depth!r}: expected a number in [0, 1]")
    compact = style == "compact"
    span = (8 if compact else 32) if span is None else span
    pairs = (4 if compact else 16) if pairs is None else pairs
    for name, value in (("span", span), ("pairs", pairs), ("digits", digits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an int >= 1")
    rng = random.Random(f"{task}:{seed}")
    encode = tokenizer.encode
    chars = 8 * length + 256                      # enough characters for `length` tokens of any tokenizer here
    filler = resolved_filler(task, filler)
    text = _filler(filler, rng, chars, corpus, split)
    meta: dict[str, Any] = {}
    if task == "passkey":
        key = str(rng.randint(10 ** (digits - 1), 10 ** digits - 1))
        if compact:   # "#" marks the key: a byte prose never holds, so one match finds it
            head, info, tail, answer = "", f" The pass key is #{key}. ", " What is the pass key? #", key
        else:
            head, info = _PASSKEY_INTRO, f" The pass key is {key}. Remember it. {key} is the pass key. "
            tail, answer = " What is the pass key? The pass key is", f" {key}"
        meta["passkey"] = key
    elif task == "copy":
        piece = _copy_span(rng, text, span, corpus, split)
        head = ""
        info, tail = (f" <{piece}> ", " Copy: <") if compact else (f" <copy>{piece}</copy> ",
                                                                   " Repeat the marked text: <copy>")
        answer = piece
        meta["span"] = piece
    elif task == "needle":
        city, activity = rng.choice(_CITIES), rng.choice(_ACTIVITIES)
        city, activity = needle or (city, activity)
        head = ""
        if compact:
            info, tail, answer = f" In {city}, {activity}. ", f" In {city},", f" {activity}."
        else:
            info = f" The best thing to do in {city} is to {activity}. "
            tail = f" What is the best thing to do in {city}? The best thing to do in {city} is to"
            answer = f" {activity}."
        meta.update(city=city, activity=activity)
    else:  # kv
        width = 4 if compact else 8
        keys = [f"{k:0{width}x}" for k in rng.sample(range(16 ** width), pairs)]    # distinct keys
        values = [f"{rng.getrandbits(4 * width):0{width}x}" for _ in range(pairs)]
        asked = min(pairs - 1, int(depth * pairs))
        listing = " ".join(f"{k}: {v}." for k, v in zip(keys, values))
        head, info = "", (f" {listing} " if compact else f" Key-value pairs: {listing} ")
        tail = f" {keys[asked]}:" if compact else f" The value of key {keys[asked]} is"
        answer = f" {values[asked]}"
        meta.update(key=keys[asked], value=values[asked], asked=asked)
    try:
        prompt, ans, position, room, before = _fit(encode, head, info, tail, answer, text, length, depth)
    except ValueError as e:
        raise ValueError(f"task {task!r} in style {style!r}: {e}") from None
    meta.update(filler=filler, filler_tokens=room, filler_before=before)
    return TaskInstance(task=task, prompt=prompt, answer=ans, length=length, depth=float(depth), seed=seed,
                        position=position, meta=meta)


def resolved_filler(task: str, filler: str) -> str:
    """``filler`` with ``"auto"`` resolved: ``repeat`` for the pass key (its published format), else ``corpus``."""
    return ("repeat" if task == "passkey" else "corpus") if filler == "auto" else filler


@functools.lru_cache(maxsize=64)
def _min_length(task: str, tokenizer: Any, style: str) -> int:
    fixed = []
    draws = ([{"needle": (c, a)} for c in _CITIES for a in _ACTIVITIES] if task == "needle"
             else [{"seed": k} for k in range(32)])
    for draw in draws:
        inst = make_task(task, tokenizer, length=4096, depth=0.5, seed=draw.get("seed", 0), filler="repeat",
                         style=style, needle=draw.get("needle"))
        fixed.append(inst.length - inst.meta["filler_tokens"])
    return max(fixed) + 1


def min_length(task: str, tokenizer: Any, *, style: str = "standard") -> int:
    """The shortest ``length`` at which every instance of ``task`` fits with at least one filler token:
    the template and answer at their longest (every needle; 32 seeds of the others, whose length
    varies only with how the tokenizer splits digits and hexadecimal)."""
    return _min_length(task, tokenizer, style)


def check_fits(tasks: Sequence[str], tokenizer: Any, length: int, *, style: str, where: str) -> None:
    """Refuse, in one line naming ``where`` (the settings to change), a task that cannot fit ``length``."""
    for task in tasks:
        need = min_length(task, tokenizer, style=style)
        if length < need:
            raise ValueError(f"{where}: task {task!r} in style {style!r} needs instances of >= {need} tokens, the "
                             f"shortest here is {length}" + ("; data.task_style='compact' is shorter"
                                                             if style == "standard" else ""))


def training_instance(tokenizer: Any, seed: int, *, tasks: Sequence[str], length: int, corpus: str,
                      split: str = "train", style: str = "standard", filler: str = "auto") -> list[int]:
    """The ``length`` token ids (prompt and answer) of one task instance for training on: the task
    drawn from ``tasks`` and the depth uniform in [0, 1], both from ``seed``, the filler from
    ``split`` of ``corpus`` (the task mixture of ``data.task_fraction``)."""
    rng = random.Random(f"train-task:{seed}")
    inst = make_task(tasks[rng.randrange(len(tasks))], tokenizer, length=length, depth=rng.random(), seed=seed,
                     filler=filler, corpus=corpus, split=split, style=style)
    return inst.prompt + inst.answer


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


def _logits(out: Any) -> torch.Tensor:
    """Logits of a forward: hopekit's decoder returns them (or a tuple starting with them), a
    transformers model an output with ``.logits``."""
    out = out[0] if isinstance(out, tuple) else out
    return getattr(out, "logits", out)


def _groups(instances: Sequence[TaskInstance], key: Callable[[TaskInstance], int], batch_size: int):
    """``(indices, instances)`` chunks of at most ``batch_size`` instances sharing ``key`` (a length)."""
    by_key: dict[int, list[int]] = {}
    for i, inst in enumerate(instances):
        by_key.setdefault(key(inst), []).append(i)
    for idx in by_key.values():
        for lo in range(0, len(idx), batch_size):
            chunk = idx[lo:lo + batch_size]
            yield chunk, [instances[i] for i in chunk]


def score_likelihood(model: nn.Module, instances: Sequence[TaskInstance], *, batch_size: int = 8) -> list[TaskScore]:
    """Teacher-forced scoring: one forward of each instance (all tokens but the last), the answer tokens'
    NLL, rank and argmax (module docstring). Instances of one length and answer length are batched,
    ``batch_size`` at a time; the scores come back in the order given."""
    out: list[TaskScore | None] = [None] * len(instances)
    device = _device(model)
    with _evaluating(model):
        for idx, chunk in _groups(instances, lambda i: (i.length, len(i.answer)), batch_size):
            ids = torch.tensor([inst.prompt + inst.answer for inst in chunk], dtype=torch.long, device=device)
            x = ids[:, :-1]
            a = len(chunk[0].answer)
            # (B, a, V) rows predicting the answer, in float64: a search compares candidates closer than float32
            rows = _logits(model(x))[:, x.shape[1] - a:x.shape[1]].double()
            target = ids[:, -a:]
            logp = torch.log_softmax(rows, dim=-1)
            true = logp.gather(2, target[..., None])[..., 0]
            rank = (logp > true[..., None]).sum(dim=-1) + 1                  # 1 + tokens scored higher
            right = rows.argmax(dim=-1) == target                             # greedy's choice (ties: lowest id)
            for b, i in enumerate(idx):
                out[i] = TaskScore(correct=bool(right[b].all()), token_accuracy=float(right[b].float().mean()),
                                   nll=float(-true[b].mean()), mean_rank=float(rank[b].float().mean()))
    return out  # type: ignore[return-value]


def score_generation(model: nn.Module, instances: Sequence[TaskInstance], *, batch_size: int = 8) -> list[TaskScore]:
    """Greedy decoding of ``len(answer)`` tokens after each prompt through the model's KV cache
    (``model.generate(ids, n, temperature=0)``, :class:`hopekit.model.Decoder`'s contract), batched over
    instances of one prompt and answer length."""
    out: list[TaskScore | None] = [None] * len(instances)
    device = _device(model)
    with _evaluating(model):
        for idx, chunk in _groups(instances, lambda i: (len(i.prompt), len(i.answer)), batch_size):
            ids = torch.tensor([inst.prompt for inst in chunk], dtype=torch.long, device=device)
            generated = model.generate(ids, len(chunk[0].answer), temperature=0)[:, ids.shape[1]:].tolist()
            for b, i in enumerate(idx):
                right = [g == a for g, a in zip(generated[b], instances[i].answer)]
                out[i] = TaskScore(correct=all(right), token_accuracy=sum(right) / len(right))
    return out  # type: ignore[return-value]


# ---- measurement at multiples of the training length, with records ------------------------------

#: the record fields that decide a task number: a cell is skipped when an "accuracy" row with the same
#: values is already recorded
TASK_KEY_FIELDS = ("method", "params", "model_digest", "corpus", "split", "tokenizer", "task", "style", "filler",
                   "scoring", "eval_len", "depth", "instances")
#: the metrics of one (task, length, depth) cell; ``accuracy`` is the share of instances answered whole
TASK_METRICS = ("accuracy", "token_accuracy", "answer_nll", "answer_rank")


def task_instances(task: str, tokenizer: Any, *, length: int, depth: float, instances: int, corpus: str, split: str,
                   style: str, filler: str = "auto") -> list[TaskInstance]:
    """The ``instances`` instances of one cell, seeds 0 … instances − 1: the same for every model and
    method, so they are compared paired."""
    return [make_task(task, tokenizer, length=length, depth=depth, seed=j, filler=filler, corpus=corpus, split=split,
                      style=style) for j in range(instances)]


def evaluate_tasks(model: nn.Module, config: Any, records_path: str | Any, *, method: str,
                   extensions: Sequence[str] | None = None, longrope: Any = None, tokenizer: Any = None,
                   progress: bool = True, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """``config.eval.tasks`` at ``config.eval.multiples`` × ``train_len`` and every ``eval.task_depths``,
    ``eval.task_instances`` instances per cell (format ``data.task_style``, filler from ``eval.split``
    of ``data.corpus``), scored by ``eval.task_scoring``; for a rope model also its eval-time
    ``extensions`` at multiples > 1, as :func:`hopekit.eval.lengths.evaluate_lengths` does for
    perplexity (the same jobs). See :func:`evaluate_task_jobs` for the records."""
    from ..data import tokenizer_from_config
    from .lengths import measurement_jobs
    from .records import model_descriptor, model_digest

    jobs = measurement_jobs(model, config, method, extensions, longrope)
    tokenizer = tokenizer_from_config(config.data) if tokenizer is None else tokenizer
    common = dict(train_len=config.train.train_len, seed=config.train.seed, model=model_descriptor(model),
                  model_digest=model_digest(model), config=config.resolved())
    return evaluate_task_jobs(jobs, tokenizer, records_path, eval_config=config.eval, corpus=config.data.corpus,
                              style=config.data.task_style, filler=config.data.task_filler, common=common,
                              progress=progress, log=log)


def evaluate_task_jobs(jobs: Sequence[Any], tokenizer: Any, records_path: str | Any, *, eval_config: Any, corpus: str,
                       style: str, common: dict[str, Any], filler: str = "auto", progress: bool = True,
                       log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every ``eval_config.tasks`` × ``eval_config.task_depths`` cell of each job (``model``, ``method``,
    ``params``, ``eval_len``: :class:`hopekit.eval.lengths.Job`), appended to ``records_path``: one row
    per metric (:data:`TASK_METRICS`) and cell, with ``common`` (``train_len``, ``seed``, ``model``,
    ``model_digest``, ...) and the cell's fields. A cell already recorded (same :data:`TASK_KEY_FIELDS`)
    is not measured again. Returns this evaluation's rows in order (recorded ones for cells skipped)."""
    import json
    import time
    from pathlib import Path

    from .records import append_records, make_record, read_records, record_key

    ev = eval_config
    if jobs:
        check_fits(ev.tasks, tokenizer, min(job.eval_len for job in jobs), style=style,
                   where="eval.tasks at the shortest evaluated length (eval.multiples × train.train_len)")
    records_path = Path(records_path)
    records_path.parent.mkdir(parents=True, exist_ok=True)
    key = lambda r: record_key(r, TASK_KEY_FIELDS)  # noqa: E731
    recorded: dict[str, list[dict[str, Any]]] = {}
    for row in read_records(records_path) if records_path.exists() else []:
        if row.get("task") in TASKS:
            recorded.setdefault(key(row), []).append(row)
    common = dict(common, corpus=corpus, split=ev.split, tokenizer=tokenizer.name, style=style,
                  scoring=ev.task_scoring, instances=ev.task_instances)
    score = score_likelihood if ev.task_scoring == "likelihood" else score_generation
    out: list[dict[str, Any]] = []
    bar = _bar(len(jobs) * len(ev.tasks) * len(ev.task_depths), progress, "tasks")
    for job in jobs:
        for task in ev.tasks:
            t0, accuracies, cached = time.perf_counter(), [], 0
            for depth in ev.task_depths:
                fields = dict(common, method=job.method, params=job.params, eval_len=job.eval_len, task=task,
                              depth=depth, filler=resolved_filler(task, filler))
                k = key(fields)
                rows = list(recorded.get(k, ()))
                if any(r["metric"] == "accuracy" for r in rows):
                    cached += 1
                else:
                    rows = _measure_cell(job.model, score, fields, tokenizer, ev.batch_size, make_record)
                    append_records(records_path, rows)
                    recorded[k] = rows
                out.extend(rows)
                accuracies.append(next(r["value"] for r in rows if r["metric"] == "accuracy"))
                bar.update()
            note = "already recorded" if cached == len(ev.task_depths) else f"{time.perf_counter() - t0:.1f}s"
            log(f"  {job.method:<20} {task:<8} eval_len {job.eval_len:>6}: accuracy "
                f"{sum(accuracies) / len(accuracies):.3f} over {len(accuracies)} depths ({note})")
    bar.close()
    return out


def _measure_cell(model: nn.Module, score: Callable[..., list[TaskScore]], fields: dict[str, Any], tokenizer: Any,
                  batch_size: int, make_record: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of one (task, length, depth) cell: its instances scored, one row per metric."""
    import time

    t0 = time.perf_counter()
    insts = task_instances(fields["task"], tokenizer, length=fields["eval_len"], depth=fields["depth"],
                           instances=fields["instances"], corpus=fields["corpus"], split=fields["split"],
                           style=fields["style"], filler=fields["filler"])
    scores = score(model, insts, batch_size=batch_size)
    values = {"accuracy": sum(s.correct for s in scores) / len(scores),
              "token_accuracy": sum(s.token_accuracy for s in scores) / len(scores),
              "answer_nll": _mean([s.nll for s in scores]), "answer_rank": _mean([s.mean_rank for s in scores])}
    seconds = time.perf_counter() - t0
    return [make_record(metric=m, value=values[m], seconds=seconds, per_instance=[s.correct for s in scores], **fields)
            for m in TASK_METRICS if values[m] is not None]


def _mean(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(values) / len(values)  # type: ignore[arg-type]


def _bar(total: int, progress: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="cell")
