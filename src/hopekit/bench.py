"""``hopekit bench`` — the main job: train small decoders with each method, measure perplexity at
1×–16× the training length, add eval-time extensions of the rope model, and write a report.

A bench preset (``presets/bench_<name>.yaml``) holds one ``experiment`` (model, data, train, eval;
see :mod:`hopekit.config`) and a ``methods`` mapping ``name -> pe config``. Every method is trained
with the same seed, data and budget; a method's ``train_len`` parameter (hope_highfreq, yarn, ...)
is the experiment's ``train.train_len`` (the config owns it, see :mod:`hopekit.config`).

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
from .config import ExperimentConfig, apply_overrides, config_differences, load_yaml, preset_path

__all__ = ["BenchConfig", "load_bench", "run_bench", "BENCH_PRESETS"]

BENCH_PRESETS = ("smoke", "default", "gpu")  # presets/bench_<name>.yaml


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A bench: one experiment and the methods to train with it (name -> typed pe parameters)."""

    name: str
    experiment: ExperimentConfig
    methods: dict[str, pe_lib.Params]
    extensions_of: str = "rope"

    def method_config(self, name: str) -> ExperimentConfig:
        """The experiment of one method."""
        return dataclasses.replace(self.experiment, name=name, pe=self.methods[name])

    def resolved(self) -> dict[str, Any]:
        return {"name": self.name, "experiment": self.experiment.resolved(),
                "methods": {name: pe_lib.to_config(p) for name, p in self.methods.items()},
                "extensions_of": self.extensions_of}


def load_bench(preset: str | Path = "default", overrides: list[str] | None = None,
               methods: list[str] | None = None) -> BenchConfig:
    """A bench preset name (smoke, default, gpu) or YAML path, with ``experiment.*`` / ``methods.*``
    dotted overrides (``train.steps=50`` is shorthand for ``experiment.train.steps=50``)."""
    path = preset_path(preset, prefix="bench_")
    raw = load_yaml(path)
    unknown = sorted(set(raw) - {"name", "experiment", "methods", "extensions_of"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a bench has name, experiment, methods, extensions_of")
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
            raise ValueError(f"--methods: {missing} not in the preset; available: {list(all_methods)}")
        all_methods = {m: all_methods[m] for m in methods}
    parsed = {}
    for name, cfg in all_methods.items():
        if not isinstance(cfg, Mapping) or "kind" not in cfg:
            raise ValueError(f"methods.{name}={cfg!r}: expected a pe config naming its kind")
        try:  # parsed with the experiment's training length, and checked against the model's shape
            parsed[name] = dataclasses.replace(experiment, pe=cfg).pe
            dataclasses.replace(experiment, pe=parsed[name]).model_config(vocab_size=256)
        except (ValueError, TypeError) as e:
            raise type(e)(f"methods.{name}: {e}") from None
    return BenchConfig(name=str(raw.get("name", path.stem)), experiment=experiment, methods=parsed,
                       extensions_of=str(raw.get("extensions_of", "rope")))


def run_bench(preset: str | Path = "default", *, run_dir: str | Path | None = None, overrides: list[str] | None = None,
              methods: list[str] | None = None, progress: bool = True,
              log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a bench; returns the run directory holding records, report and plot. The run
    directory is locked for the duration (a second bench on it is refused, naming the holder)."""
    from .checkpoint import prepare_run_dir

    bench = load_bench(preset, overrides, methods)
    run_dir = Path(run_dir) if run_dir is not None else Path("results") / bench.name
    lock = prepare_run_dir(run_dir, files=())
    try:
        _run_bench(bench, run_dir, progress=progress, log=log)
    finally:
        lock.release()
    return run_dir


def _run_bench(bench: BenchConfig, run_dir: Path, *, progress: bool, log: Callable[[str], None]) -> None:
    from .eval import read_records
    from .eval.lengths import evaluate_lengths
    from .eval.records import append_records, make_record, model_descriptor
    from .eval.report import write_report
    from .train import corpus_batches, train

    config_path = run_dir / "bench.json"
    resolved = bench.resolved()
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        # methods may be added to a run (or left out with --methods), never changed
        common = [m for m in resolved["methods"] if m in saved.get("methods", {})]
        diffs = config_differences({**saved, "methods": {m: saved["methods"][m] for m in common}},
                                   {**resolved, "methods": {m: resolved["methods"][m] for m in common}})
        if diffs:
            raise ValueError(f"{run_dir}: holds a bench made with a different config ({config_path}); use another "
                             f"--run-dir or delete it. Differences: " + "; ".join(diffs))
        resolved["methods"] = {**saved["methods"], **resolved["methods"]}
    config_path.write_text(json.dumps(resolved, indent=2) + "\n")

    exp = bench.experiment
    log(f"bench {bench.name}: {len(bench.methods)} methods × {len(exp.eval.multiples)} lengths → {run_dir}")
    log("config: " + json.dumps(resolved))
    t_len = exp.train.train_len
    batches, vocab = corpus_batches(exp)
    records_path = run_dir / "records.jsonl"
    started = time.perf_counter()

    for i, name in enumerate(bench.methods, 1):
        cfg = bench.method_config(name)
        params = pe_lib.to_config(cfg.pe)
        t0 = time.perf_counter()
        log(f"[{i}/{len(bench.methods)} {name}] training {cfg.train.steps} steps ({params})")
        result = train(cfg, run_dir / "checkpoints" / name, resume=True, batches=batches, vocab_size=vocab,
                       progress=progress, log=log)
        model = result.model.eval()
        records = read_records(records_path) if records_path.exists() else []
        if not any(r.get("method") == name and r.get("metric") == "train_seconds" for r in records):
            common = dict(method=name, params=params, train_len=t_len, eval_len=t_len, task="bench",
                          model=model_descriptor(model), seed=exp.train.seed, corpus=exp.data.corpus,
                          config=cfg.resolved())
            append_records(records_path, [
                make_record(metric="train_seconds", value=result.total_train_time, **common),
                make_record(metric="final_train_loss", value=result.losses[-1] if result.losses else None, **common),
                make_record(metric="tokens_per_s", value=result.tokens_per_s, **common)])
        log(f"[{i}/{len(bench.methods)} {name}] trained in {time.perf_counter() - t0:.1f}s; evaluating")
        extensions = exp.eval.extensions if name == bench.extensions_of else ()
        evaluate_lengths(model, cfg, records_path, method=name, extensions=extensions, progress=progress, log=log)

    report, plot = write_report(run_dir)
    log(f"done in {time.perf_counter() - started:.1f}s: {report}, {plot}")
