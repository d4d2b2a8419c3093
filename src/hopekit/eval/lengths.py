"""Perplexity at multiples of the training length for one trained model, plus eval-time extensions
of a rope model — the measurement shared by ``hopekit eval`` and ``hopekit bench`` (published runs:
docs/results/).

A measurement already in the records file is skipped, so a killed evaluation resumes where it
stopped. "Already there" means a ``"ppl"`` row with the same :data:`KEY_FIELDS`, everything that
decides the number: the model's weights (``model_digest``), the method and its resolved parameters,
corpus, split, tokenizer, protocol, stride, window sampling, ``max_tokens`` and ``eval_len``. Another checkpoint,
split or budget is measured anew, and so is an extension row whose configuration changed (e.g. a
``dynamic_ntk`` row recorded with another ``factor``: its resolved parameters differ).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import pe as pe_lib
from ..config import ExperimentConfig
from .extensions import EXTENSIONS, check_longrope, extension_configs, extension_name, with_pe
from .perplexity import LengthLimitError, eval_kwargs, has_window, perplexity
from .records import append_records, model_descriptor, model_digest, ppl_records, read_records, record_key, skipped_records

__all__ = ["KEY_FIELDS", "test_documents", "evaluate_lengths", "measurement_jobs"]

#: the record fields that decide a perplexity number: a measurement is skipped when a "ppl" row
#: with the same values is already recorded
KEY_FIELDS = ("method", "params", "model_digest", "corpus", "split", "tokenizer", "protocol", "stride",
              "sampling", "max_tokens", "eval_len")


@functools.lru_cache(maxsize=4)
def _test_documents(data, split: str):
    from ..data import encode_documents, load_corpus_from_config, tokenizer_from_config

    tokenizer = tokenizer_from_config(data)
    return tokenizer, encode_documents(load_corpus_from_config(data, split), tokenizer)


def test_documents(config: ExperimentConfig):
    """``(tokenizer, [token tensor per document])`` of ``config.eval.split`` of ``config.data`` (with its
    ``hf:`` settings; cached per process)."""
    return _test_documents(config.data, config.eval.split)


@dataclasses.dataclass(frozen=True)
class Job:
    """One measurement: ``model`` (the trained one, or an extension swapped in) under ``method``."""

    model: nn.Module
    method: str
    params: dict[str, Any]      # the encoding's resolved parameters
    eval_len: int


def evaluate_lengths(model: nn.Module, config: ExperimentConfig, records_path: str | Path, *,
                     method: str, extensions: Sequence[str] | None = None,
                     longrope: Mapping[str, Any] | None = None, progress: bool = True,
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure ``model`` (trained with ``config``) at ``config.eval.multiples`` × ``train_len`` and
    append records; for a rope model also its eval-time ``extensions`` (default
    ``config.eval.extensions``; ``()`` for none) at multiples > 1, and with ``longrope`` (searched
    factors and the ``factor`` they were searched for; :func:`~hopekit.eval.extensions.check_longrope`)
    the ``longrope`` row at every multiple. Returns the records of this evaluation in order: the new
    ones, and for a measurement already recorded (same :data:`KEY_FIELDS`) the recorded rows — never a
    row of another model, split or budget.

    Refused before anything is measured or recorded: an unknown extension name, an extension
    configuration that does not validate, and a test split that gives no window at the longest
    length. ``progress``: a progress bar over the windows of each length (when stderr is a terminal).
    """
    jobs = measurement_jobs(model, config, method, extensions, longrope)
    tokenizer, docs = test_documents(config)
    _check_scorable(docs, config, tokenizer.eos_id, max(job.eval_len for job in jobs))
    records_path = Path(records_path)
    _check_writable(records_path)
    recorded: dict[str, list[dict[str, Any]]] = {}
    for row in read_records(records_path) if records_path.exists() else []:
        recorded.setdefault(_key(row), []).append(row)
    common = dict(train_len=config.train.train_len, seed=config.train.seed, model=model_descriptor(model),
                  model_digest=model_digest(model), corpus=config.data.corpus, split=config.eval.split,
                  tokenizer=tokenizer.name, max_tokens=config.eval.max_tokens, config=config.resolved())
    out: list[dict[str, Any]] = []
    for i, job in enumerate(jobs, 1):
        counter = f"  [{i}/{len(jobs)}] "   # measurement i of this evaluation
        kwargs = eval_kwargs(config.eval, config.train.train_len, job.eval_len)
        key = _key(dict(common, method=job.method, params=job.params, eval_len=job.eval_len,
                        protocol=kwargs["protocol"], stride=kwargs.get("stride"), sampling=kwargs["sampling"]))
        if any(r["metric"] == "ppl" for r in recorded.get(key, ())):
            log(f"{counter}{job.method:<20} eval_len {job.eval_len:>6}: already recorded")
            out.extend(recorded[key])
            continue
        rows = _measure(job, docs, tokenizer.eos_id, kwargs, common, progress, lambda m, c=counter: log(c + m))
        append_records(records_path, rows)
        recorded[key] = rows
        out.extend(rows)
    return out


def measurement_jobs(model: nn.Module, config: ExperimentConfig, method: str, extensions: Sequence[str] | None,
          longrope: Mapping[str, Any] | None) -> list[Job]:
    """Every measurement in order: the trained model at each multiple, then for a rope model each
    eval-time extension at each multiple > 1 (longrope at 1× too; the others *are* rope there).
    Names and configurations are checked here, before anything is loaded or measured."""
    kinds = _extension_kinds(config.eval.extensions if extensions is None else extensions, longrope)
    t_len = config.train.train_len
    trained_pe = pe_lib.to_config(config.pe)
    jobs = [Job(model, method, trained_pe, m * t_len) for m in config.eval.multiples]
    if trained_pe.get("kind") == "longrope" and longrope is not None:
        # a LongRoPE model (e.g. fine-tuned with searched factors) with factors searched on it: swapped in whole
        searched = {**trained_pe, **check_longrope(longrope)}
        swapped = with_pe(model, searched)
        jobs += [Job(swapped, f"{method}+searched", pe_lib.to_config(swapped.config.pe), m * t_len)
                 for m in config.eval.multiples]
        return jobs
    if trained_pe.get("kind") != "rope":
        if longrope is not None:
            raise ValueError(f"--longrope: searched factors apply to a rope or longrope model; this one is "
                             f"{trained_pe.get('kind')!r}")
        return jobs
    for multiple in config.eval.multiples:
        configs = extension_configs(trained_pe, t_len, multiple * t_len, kinds=kinds, longrope=longrope)
        for kind, ext in configs.items():
            if kind != "rope" and (multiple > 1 or kind == "longrope"):
                swapped = with_pe(model, ext)
                jobs.append(Job(swapped, extension_name(kind), pe_lib.to_config(swapped.config.pe), multiple * t_len))
    return jobs


def _extension_kinds(kinds: Sequence[str], longrope: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The checked extension names, plus ``"longrope"`` when its factors are given."""
    if isinstance(kinds, str):
        raise TypeError(f"extensions={kinds!r}: expected a sequence of names, e.g. ('yarn',)")
    unknown = [k for k in kinds if k not in EXTENSIONS]
    if unknown:
        raise ValueError(f"extensions={tuple(kinds)!r}: unknown name(s) {unknown}; known: "
                         f"{', '.join(EXTENSIONS)} (an empty sequence for none)")
    kinds = tuple(kinds)
    return (*kinds, "longrope") if longrope is not None and "longrope" not in kinds else kinds


def _check_writable(path: Path) -> None:
    """Refuse an unwritable records file now, not after the first measurement."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):
            pass
    except OSError as e:
        raise PermissionError(f"records file {path}: cannot be written ({e.strerror or e})") from None


def _check_scorable(docs: Sequence[torch.Tensor], config: ExperimentConfig, separator: int | None,
                    eval_len: int) -> None:
    """Refuse a test split that would give no number: no tokens, or no window of ``eval_len``."""
    where = f"eval.split={config.eval.split!r} of corpus {config.data.corpus!r}"
    tokens = sum(d.numel() for d in docs)
    if not tokens:
        raise ValueError(f"{where} holds no tokens ({len(docs)} documents): nothing to evaluate "
                         f"(a corpus needs several works to fill a test split)")
    kwargs = eval_kwargs(config.eval, config.train.train_len, eval_len)
    if not has_window(docs, eval_len, kwargs["protocol"], stride=kwargs.get("stride"), separator=separator,
                      sampling=kwargs["sampling"]):
        need = "the joined stream" if kwargs["sampling"] == "prefix" and kwargs["protocol"] != "truncate" \
            else "one document"
        raise ValueError(f"{where} ({len(docs)} documents, {tokens} tokens) gives no window at eval_len={eval_len}: "
                         f"protocol {kwargs['protocol']!r} needs {eval_len + 1} tokens in {need}; "
                         f"lower eval.multiples or use a larger corpus")


def _key(fields: Mapping[str, Any]) -> str:
    """The :data:`KEY_FIELDS` of a record (or of a planned one) as one comparable string."""
    return record_key(fields, KEY_FIELDS)


def _measure(job: Job, docs: Sequence[torch.Tensor], separator: int | None, kwargs: Mapping[str, Any],
             common: Mapping[str, Any], progress: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """The record rows of one measurement: ppl / nll / loss curve, or a skip for a length limit."""
    t0 = time.perf_counter()
    label = f"{job.method} @ {job.eval_len}" if progress else None
    try:
        res = perplexity(job.model, docs, job.eval_len, separator=separator, progress=label, **kwargs)
    except LengthLimitError as e:
        log(f"{job.method:<20} eval_len {job.eval_len:>6}: skipped ({e})")
        return skipped_records(method=job.method, params=job.params, eval_len=job.eval_len, protocol=kwargs["protocol"],
                               stride=kwargs.get("stride"), sampling=kwargs["sampling"], reason=str(e), **common)
    log(f"{job.method:<20} eval_len {job.eval_len:>6}: ppl {res.ppl:10.3f}  ({res.tokens} tokens, "
        f"{res.documents} documents, {time.perf_counter() - t0:.1f}s)")
    return ppl_records(res, method=job.method, params=job.params, seconds=res.seconds, **common)
