"""``hopekit bench`` — the main job: train small decoders with each method, measure perplexity at
1×–16× the training length, add eval-time extensions of the rope model, and write a report.

A bench preset (``presets/bench_<name>.yaml``) holds one ``experiment`` (model, data, train, eval;
see :mod:`hopekit.config`) and a ``methods`` mapping ``name -> pe config``. Every method is trained
with the same seed, data and budget; a method's ``train_len`` parameter (hope_highfreq, yarn, ...)
defaults to the experiment's ``train.train_len``.

Outputs in ``results/<run>/``: ``bench.json`` (the resolved bench config), ``records.jsonl`` (one row
per measurement), ``report.md``, ``ppl_vs_length.png``, and ``checkpoints/<method>/``. The run is
resumable at every level: a finished method is not retrained (its checkpoint is complete), a
method killed mid-training resumes from its last checkpoint, and a length already in the records
is not re-measured. Re-running into a directory made with a different config is refused.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import pe as pe_lib
from .config import CONFIG_DIR, ExperimentConfig, apply_overrides

__all__ = ["BenchConfig", "load_bench", "run_bench", "BENCH_PRESETS"]

BENCH_PRESETS = ("smoke", "default", "gpu")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    name: str
    experiment: ExperimentConfig
    methods: dict[str, dict[str, Any]]
    extensions_of: str = "rope"

    def resolved(self) -> dict[str, Any]:
        return {"name": self.name, "experiment": self.experiment.resolved(), "methods": self.methods,
                "extensions_of": self.extensions_of}


def _fill_train_len(pe_config: Mapping[str, Any], train_len: int) -> dict[str, Any]:
    """Give ``train_len`` to methods whose parameters have one, unless set (BiPE: to its inter method)."""
    out = dict(pe_config)
    kind = out.get("kind")
    if kind == "bipe" and isinstance(out.get("inter"), Mapping):
        out["inter"] = _fill_train_len(out["inter"], train_len)
        return out
    if kind in pe_lib.REGISTRY:
        fields = {f.name for f in dataclasses.fields(pe_lib.REGISTRY[kind].params)}
        if "train_len" in fields and out.get("train_len") is None and "keep_fraction" not in out:
            out["train_len"] = train_len
    return out


def load_bench(preset: str | Path = "default", overrides: list[str] | None = None,
               methods: list[str] | None = None) -> BenchConfig:
    """A bench preset name (smoke, default, gpu) or YAML path, with ``experiment.*`` / ``methods.*``
    dotted overrides (``train.steps=50`` is shorthand for ``experiment.train.steps=50``)."""
    import yaml

    path = Path(preset)
    if not (path.suffix in (".yaml", ".yml") or path.exists()):
        path = CONFIG_DIR / f"bench_{preset}.yaml"
        if not path.exists():
            raise ValueError(f"preset={str(preset)!r}: not a file and not a bench preset; presets: {list(BENCH_PRESETS)}")
    raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - {"name", "experiment", "methods", "extensions_of"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}")
    sections = ("name", "model", "pe", "data", "train", "eval")
    expanded = [f"experiment.{o}" if o.split("=", 1)[0].split(".")[0] in sections else o for o in (overrides or [])]
    raw = apply_overrides(raw, expanded)
    experiment = ExperimentConfig.from_dict(raw.get("experiment", {}))
    all_methods = raw.get("methods") or {}
    if not isinstance(all_methods, Mapping) or not all_methods:
        raise ValueError(f"{path}: 'methods' must be a non-empty mapping name -> pe config")
    if methods:
        missing = [m for m in methods if m not in all_methods]
        if missing:
            raise ValueError(f"methods: {missing} not in the preset; available: {list(all_methods)}")
        all_methods = {m: all_methods[m] for m in methods}
    resolved = {}
    for name, cfg in all_methods.items():
        if not isinstance(cfg, Mapping) or "kind" not in cfg:
            raise ValueError(f"methods.{name}={cfg!r}: expected a pe config naming its kind")
        resolved[name] = _fill_train_len(cfg, experiment.train.train_len)
        dataclasses.replace(experiment, pe=resolved[name]).model_config(vocab_size=256)  # validate before training
    return BenchConfig(name=str(raw.get("name", path.stem)), experiment=experiment, methods=resolved,
                       extensions_of=str(raw.get("extensions_of", "rope")))


def _done(records: list[dict], method: str, eval_len: int, protocol: str) -> bool:
    return any(r.get("method") == method and r.get("eval_len") == eval_len and r.get("metric") == "ppl"
               and r.get("protocol") == protocol for r in records)


def run_bench(preset: str | Path = "default", *, run_dir: str | Path | None = None, overrides: list[str] | None = None,
              methods: list[str] | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a bench; returns the run directory holding records, report and plot."""
    from .data import encode_documents, load_corpus, load_tokenizer
    from .eval import append_records, read_records
    from .eval.extensions import extension_configs, extension_name, with_pe
    from .eval.perplexity import LengthLimitError, eval_kwargs, model_descriptor, perplexity, ppl_records, skipped_records
    from .eval.records import make_record
    from .eval.report import write_report
    from .train import corpus_batches, train

    bench = load_bench(preset, overrides, methods)
    run_dir = Path(run_dir) if run_dir is not None else Path("results") / bench.name
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "bench.json"
    resolved = bench.resolved()
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        if {k: v for k, v in saved.items() if k != "methods"} != {k: v for k, v in resolved.items() if k != "methods"} \
                or any(saved["methods"].get(m, v) != v for m, v in resolved["methods"].items()):
            raise ValueError(f"{run_dir}: holds a bench made with a different config ({config_path}); "
                             f"use another --run-dir or delete it")
        resolved["methods"] = {**saved["methods"], **resolved["methods"]}
    config_path.write_text(json.dumps(resolved, indent=2) + "\n")

    exp = bench.experiment
    log(f"bench {bench.name}: {len(bench.methods)} methods × {len(exp.eval.multiples)} lengths → {run_dir}")
    log("config: " + json.dumps(resolved))
    t_len = exp.train.train_len
    batches, vocab = corpus_batches(exp)
    spec = f"bpe:{exp.data.vocab_size}" if exp.data.tokenizer == "bpe" else exp.data.tokenizer
    tokenizer = load_tokenizer(spec, corpus=exp.data.corpus)
    test_docs = encode_documents(load_corpus(exp.data.corpus, exp.eval.split, text_field=exp.data.text_column),
                                 tokenizer)
    records_path = run_dir / "records.jsonl"
    records = read_records(records_path) if records_path.exists() else []
    protocol = exp.eval.protocol
    common = dict(seed=exp.train.seed, corpus=exp.data.corpus, tokenizer=tokenizer.name)
    started = time.perf_counter()

    def evaluate(model, name: str, params: Mapping[str, Any], eval_len: int) -> None:
        if _done(records, name, eval_len, protocol):
            return
        t0 = time.perf_counter()
        try:
            res = perplexity(model, test_docs, eval_len, separator=tokenizer.eos_id,
                             **eval_kwargs(exp.eval, t_len, eval_len))
            rows = ppl_records(res, method=name, params=params, train_len=t_len, model=model_descriptor(model),
                               **common)
            log(f"  {name:<20} eval_len {eval_len:>6}: ppl {res.ppl:10.3f}  ({res.tokens} tokens, "
                f"{time.perf_counter() - t0:.1f}s)")
        except LengthLimitError as e:
            rows = skipped_records(method=name, params=params, train_len=t_len, eval_len=eval_len,
                                   protocol=protocol, model=model_descriptor(model), reason=str(e), **common)
            log(f"  {name:<20} eval_len {eval_len:>6}: skipped ({e})")
        append_records(records_path, rows)
        records.extend(rows)

    for name, pe_config in bench.methods.items():
        cfg = dataclasses.replace(exp, name=name, pe=pe_config)
        common["config"] = cfg.resolved()
        t0 = time.perf_counter()
        log(f"[{name}] training {cfg.train.steps} steps ({pe_config})")
        result = train(cfg, run_dir / "checkpoints" / name, resume=True, batches=batches, vocab_size=vocab,
                       progress=progress)
        model = result.model.eval()
        if not any(r.get("method") == name and r.get("metric") == "train_seconds" for r in records):
            train_rows = [make_record(method=name, params=pe_config, train_len=t_len, eval_len=t_len, task="bench",
                                      metric=metric, value=value, model=model_descriptor(model), **common)
                          for metric, value in (("train_seconds", result.wall_time),
                                                ("final_train_loss", result.losses[-1] if result.losses else None),
                                                ("tokens_per_s", result.tokens_per_s))]
            append_records(records_path, train_rows)
            records.extend(train_rows)
        log(f"[{name}] trained in {time.perf_counter() - t0:.1f}s; evaluating")
        with torch.no_grad():
            for multiple in exp.eval.multiples:
                evaluate(model, name, pe_config, multiple * t_len)
            if name == bench.extensions_of and pe_config.get("kind") == "rope" and exp.eval.extensions:
                for multiple in exp.eval.multiples:
                    if multiple == 1:
                        continue  # every extension reduces to rope at 1× (tested in tests/pe)
                    configs = extension_configs(pe_config, t_len, multiple * t_len, kinds=exp.eval.extensions)
                    for kind, ext in configs.items():
                        evaluate(with_pe(model, ext), extension_name(kind), ext, multiple * t_len)

    report, plot = write_report(run_dir)
    log(f"done in {time.perf_counter() - started:.1f}s: {report}, {plot}")
    return run_dir
