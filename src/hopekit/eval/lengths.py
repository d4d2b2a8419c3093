"""Perplexity at multiples of the training length for one trained model, plus eval-time extensions
of a rope model — the measurement shared by ``hopekit eval`` and ``hopekit bench``.

Finished measurements (same method, length and protocol already in the records file) are skipped,
so a killed evaluation resumes where it stopped.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .. import pe as pe_lib
from ..config import ExperimentConfig
from .extensions import extension_configs, extension_name, with_pe
from .perplexity import LengthLimitError, eval_kwargs, model_descriptor, perplexity, ppl_records, skipped_records
from .records import append_records, read_records

__all__ = ["test_documents", "evaluate_lengths"]


@functools.lru_cache(maxsize=4)
def _test_documents(corpus: str, split: str, text_column: str, tokenizer_spec: str):
    from ..data import encode_documents, load_corpus, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_spec, corpus=corpus)
    return tokenizer, encode_documents(load_corpus(corpus, split, text_field=text_column), tokenizer)


def test_documents(config: ExperimentConfig):
    """``(tokenizer, [token tensor per document])`` of ``config.eval.split`` (cached per process)."""
    d = config.data
    spec = f"bpe:{d.vocab_size}" if d.tokenizer == "bpe" else d.tokenizer
    return _test_documents(d.corpus, config.eval.split, d.text_column, spec)


def evaluate_lengths(model: nn.Module, config: ExperimentConfig, records_path: str | Path, *,
                     method: str, extensions: tuple[str, ...] | None = None,
                     longrope: Mapping[str, Any] | None = None,
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Measure ``model`` (trained with ``config``) at ``config.eval.multiples`` × ``train_len`` and
    append records; for a rope model also its eval-time ``extensions`` (default ``config.eval.extensions``)
    at multiples > 1. Returns the new records."""
    tokenizer, docs = test_documents(config)
    t_len, protocol = config.train.train_len, config.eval.protocol
    records_path = Path(records_path)
    old = read_records(records_path) if records_path.exists() else []
    done = {(r.get("method"), r.get("eval_len"), r.get("protocol")) for r in old if r.get("metric") == "ppl"}
    common = dict(seed=config.train.seed, corpus=config.data.corpus, tokenizer=tokenizer.name,
                  config=config.resolved())
    new: list[dict[str, Any]] = []

    def measure(m: nn.Module, name: str, params: Mapping[str, Any], eval_len: int) -> None:
        if (name, eval_len, protocol) in done:
            return
        t0 = time.perf_counter()
        params = pe_lib.resolve(params)  # every default filled in
        try:
            res = perplexity(m, docs, eval_len, separator=tokenizer.eos_id, **eval_kwargs(config.eval, t_len, eval_len))
            rows = ppl_records(res, method=name, params=params, train_len=t_len, model=model_descriptor(m), **common)
            log(f"  {name:<20} eval_len {eval_len:>6}: ppl {res.ppl:10.3f}  ({res.tokens} tokens, "
                f"{time.perf_counter() - t0:.1f}s)")
        except LengthLimitError as e:
            rows = skipped_records(method=name, params=params, train_len=t_len, eval_len=eval_len, protocol=protocol,
                                   model=model_descriptor(m), reason=str(e), **common)
            log(f"  {name:<20} eval_len {eval_len:>6}: skipped ({e})")
        append_records(records_path, rows)
        new.extend(rows)

    pe_config = pe_lib.to_config(config.pe)
    kinds = config.eval.extensions if extensions is None else extensions
    if longrope is not None and "longrope" not in kinds:
        kinds = (*kinds, "longrope")
    with torch.no_grad():
        for multiple in config.eval.multiples:
            measure(model, method, pe_config, multiple * t_len)
        if pe_config.get("kind") == "rope" and kinds:
            for multiple in config.eval.multiples:
                if multiple == 1 and "longrope" not in kinds:
                    continue  # every other extension reduces to rope at 1× (tested in tests/pe)
                configs = extension_configs(pe_config, t_len, multiple * t_len, kinds=kinds, longrope=longrope)
                for kind, ext in configs.items():
                    if kind == "rope" or (multiple == 1 and kind != "longrope"):
                        continue
                    measure(with_pe(model, ext), extension_name(kind), ext, multiple * t_len)
    return new
