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
        return {"name": self.name, "experiment": self.experiment.resolved(),
                "methods": {name: pe_lib.resolve(cfg) for name, cfg in self.methods.items()},
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


def run_bench(preset: str | Path = "default", *, run_dir: str | Path | None = None, overrides: list[str] | None = None,
              methods: list[str] | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a bench; returns the run directory holding records, report and plot."""
    from .eval import read_records
    from .eval.lengths import evaluate_lengths
    from .eval.perplexity import model_descriptor
    from .eval.records import append_records, make_record
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
    records_path = run_dir / "records.jsonl"
    started = time.perf_counter()

    for name, pe_config in bench.methods.items():
        cfg = dataclasses.replace(exp, name=name, pe=pe_config)
        t0 = time.perf_counter()
        log(f"[{name}] training {cfg.train.steps} steps ({pe_config})")
        result = train(cfg, run_dir / "checkpoints" / name, resume=True, batches=batches, vocab_size=vocab,
                       progress=progress)
        model = result.model.eval()
        records = read_records(records_path) if records_path.exists() else []
        if not any(r.get("method") == name and r.get("metric") == "train_seconds" for r in records):
            common = dict(method=name, params=pe_lib.resolve(pe_config), train_len=t_len, eval_len=t_len, task="bench",
                          model=model_descriptor(model), seed=exp.train.seed, corpus=exp.data.corpus,
                          config=cfg.resolved())
            append_records(records_path, [
                make_record(metric="train_seconds", value=result.total_train_time, **common),
                make_record(metric="final_train_loss", value=result.losses[-1] if result.losses else None, **common),
                make_record(metric="tokens_per_s", value=result.tokens_per_s, **common)])
        log(f"[{name}] trained in {time.perf_counter() - t0:.1f}s; evaluating")
        extensions = exp.eval.extensions if name == bench.extensions_of else ()
        evaluate_lengths(model, cfg, records_path, method=name, extensions=extensions, log=log)

    report, plot = write_report(run_dir)
    log(f"done in {time.perf_counter() - started:.1f}s: {report}, {plot}")
    return run_dir
