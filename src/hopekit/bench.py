"""``hopekit bench`` — the main job: train small decoders with each method, measure perplexity at
1×–16× the training length, add eval-time extensions of the rope model, and write a report.

A bench preset (``presets/bench_<name>.yaml``) holds one ``experiment`` (model, data, train, eval;
see :mod:`hopekit.config`), a ``methods`` mapping ``name -> pe config`` and ``seeds``, the number of
training seeds (``train.seed``, ``train.seed + 1``, …; ``--seeds N`` on the command line). Every method
is trained once per seed with the same data and budget, so methods are compared paired by seed (the
same seed gives the same initialisation stream and the same batches); a method's ``train_len``
parameter (hope_highfreq, yarn, ...) is the experiment's ``train.train_len`` (the config owns it, see
:mod:`hopekit.config`).

Outputs in ``results/<run>/``: ``bench.json`` (the resolved bench config), ``records.jsonl`` (one row
per measurement: perplexities, training time, loss curve and epochs per method and seed, the score
vs distance of each method's encoding, the wall time of each invocation), ``report.md`` and its plots
(:mod:`hopekit.eval.report`), and ``checkpoints/<method>/seed<k>/``. Seeds run in order, all methods of
one seed before the next. The run is resumable at every level: a finished method is not retrained
(its checkpoint is complete), a method killed mid-training resumes from its last checkpoint, and a
length already in the records is not re-measured. Re-running into a directory made with a different
config is refused; methods and seeds may be added, and another ``suite`` measured.

A method may carry a ``grid`` (``field -> list of values``): it stands for one method per combination
(the cartesian product, fields and values in the order written), each named
``<name>@<field>=<value>,<field>=<value>`` with ``str`` of each YAML value, and each trained, measured,
resumed and checked like any method::

    methods:
      rope: {kind: rope}
      hope_hyperbolic: {kind: hope_hyperbolic, omega_scale: 0.2, grid: {penalty: [0.202, 0.3, 1.0]}}

gives ``rope``, ``hope_hyperbolic@penalty=0.202``, ``hope_hyperbolic@penalty=0.3`` and
``hope_hyperbolic@penalty=1.0``. A list-valued field is swept by a list of lists. ``--methods`` takes a
grid's name (all its points) or a point's name; ``methods.<name>.grid.<field>=[...]`` overrides an axis,
and a value added to it later trains only the new point. ``bench.json`` holds the expanded methods and
the grids (:mod:`hopekit.analysis.sweep` reports a sweep from them).

``suite`` (the preset's key, ``--suite`` on the command line): ``ppl`` (the default) measures perplexity,
``tasks`` the long-context tasks of ``eval.tasks`` (:func:`hopekit.eval.tasks.evaluate_tasks`: accuracy by
length and depth, the rope model's extensions too), ``all`` both; the report has a section for each kind
of record it finds.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from . import pe as pe_lib
from .config import ExperimentConfig, apply_overrides, config_differences, load_yaml, preset_path

__all__ = ["BenchConfig", "load_bench", "run_bench", "bench_shape", "BENCH_PRESETS"]

BENCH_PRESETS = ("smoke", "default", "code", "gpu", "tasks", "hyperbolic_scale")  # presets/bench_<name>.yaml
#: what a bench measures: perplexity at every length, the long-context tasks (eval.tasks), or both
SUITES = ("ppl", "tasks", "all")


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """A bench: one experiment and the methods to train with it (name -> typed pe parameters; a grid's
    points by their expanded names), and the axes of each grid (``grids``: name -> field -> the values
    of the points in ``methods``)."""

    name: str
    experiment: ExperimentConfig
    methods: dict[str, pe_lib.Params]
    extensions_of: str = "rope"
    seeds: tuple[int, ...] = (0,)
    suite: str = "ppl"
    grids: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)

    def method_config(self, name: str, seed: int | None = None) -> ExperimentConfig:
        """The experiment of one method (with ``train.seed = seed`` when given)."""
        cfg = dataclasses.replace(self.experiment, name=name, pe=self.methods[name])
        if seed is None:
            return cfg
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))

    def resolved(self) -> dict[str, Any]:
        return {"name": self.name, "experiment": self.experiment.resolved(),
                "methods": {name: pe_lib.to_config(p) for name, p in self.methods.items()},
                "extensions_of": self.extensions_of, "seeds": list(self.seeds), "suite": self.suite,
                "grids": json.loads(json.dumps(self.grids))}


def load_bench(preset: str | Path = "default", overrides: list[str] | None = None,
               methods: list[str] | None = None, seeds: int | None = None, suite: str | None = None) -> BenchConfig:
    """A bench preset name (:data:`BENCH_PRESETS`) or YAML path, with ``experiment.*`` / ``methods.*``
    dotted overrides (``train.steps=50`` is shorthand for ``experiment.train.steps=50``;
    ``methods.<name>.grid.<field>=[...]`` sets a grid's axis; ``seeds=5`` sets the number of seeds, as
    does the ``seeds`` argument; ``suite`` (:data:`SUITES`) what is measured, default the preset's
    ``suite``, else ``ppl``). ``methods``: the subset to run, by name, a grid's name standing for all its
    points (consecutive items that a comma-split of a point's name left apart are joined back)."""
    path = preset_path(preset, prefix="bench_")
    raw = load_yaml(path)
    unknown = sorted(set(raw) - {"name", "experiment", "methods", "extensions_of", "seeds", "suite"})
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; a bench has name, experiment, methods, extensions_of, "
                         f"seeds, suite")
    sections = ("name", "model", "pe", "data", "train", "eval")
    expanded = [f"experiment.{o}" if o.split("=", 1)[0].split(".")[0] in sections else o for o in (overrides or [])]
    raw = apply_overrides(raw, expanded)
    if seeds is not None:
        raw["seeds"] = seeds
    if suite is not None:
        raw["suite"] = suite
    if raw.get("suite", "ppl") not in SUITES:
        raise ValueError(f"suite={raw.get('suite')!r}: expected one of {', '.join(SUITES)}")
    n_seeds = raw.get("seeds", 1)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise ValueError(f"seeds={n_seeds!r}: expected the number of training seeds, an int >= 1")
    experiment = ExperimentConfig.from_dict(raw.get("experiment", {}))
    all_methods = raw.get("methods") or {}
    if not isinstance(all_methods, Mapping) or not all_methods:
        raise ValueError(f"{path}: 'methods' must be a non-empty mapping name -> pe config")
    configs, points = _expand_grids(all_methods)
    if methods:
        configs = {m: configs[m] for m in _select(methods, configs, points, list(all_methods))}
    grids = {}
    for base, of_base in points.items():   # each grid's axes, restricted to the values of the selected points
        chosen = [values for point, values in of_base.items() if point in configs]
        if chosen:
            axes = all_methods[base]["grid"]
            grids[base] = {f: [v for v in axes[f] if any(c[f] == v for c in chosen)] for f in axes}
    parsed = {}
    for name, cfg in configs.items():
        try:  # parsed with the experiment's training length, and checked against the model's shape
            parsed[name] = dataclasses.replace(experiment, pe=cfg).pe
            dataclasses.replace(experiment, pe=parsed[name]).model_config(vocab_size=256)
        except (ValueError, TypeError) as e:
            raise type(e)(f"methods.{name}: {e}") from None
    first = experiment.train.seed
    return BenchConfig(name=str(raw.get("name", path.stem)), experiment=experiment, methods=parsed,
                       extensions_of=str(raw.get("extensions_of", "rope")),
                       seeds=tuple(range(first, first + n_seeds)), suite=str(raw.get("suite", "ppl")), grids=grids)


def _expand_grids(methods: Mapping[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, dict]]]:
    """``(name -> pe config, grid name -> {point name -> {field: value}})``: every method in order, a
    method with a ``grid`` replaced by its points (the cartesian product of its axes, in the order
    written), each named ``name@field=value,...`` with ``str`` of the YAML values."""
    configs: dict[str, dict[str, Any]] = {}
    points: dict[str, dict[str, dict]] = {}
    origin: dict[str, str] = {}

    def add(name: str, cfg: dict[str, Any], where: str) -> None:
        if name in configs:
            raise ValueError(f"methods.{name}: named twice (by {origin[name]} and {where}); rename one")
        configs[name], origin[name] = cfg, where

    for name, cfg in methods.items():
        if not isinstance(cfg, Mapping) or "kind" not in cfg:
            raise ValueError(f"methods.{name}={cfg!r}: expected a pe config naming its kind")
        if "grid" not in cfg:
            add(name, dict(cfg), f"methods.{name}")
            continue
        grid, fixed = cfg["grid"], {k: v for k, v in cfg.items() if k != "grid"}
        if not isinstance(grid, Mapping) or not grid:
            raise ValueError(f"methods.{name}.grid={grid!r}: expected a non-empty mapping field -> list of values")
        try:
            valid = [f.name for f in dataclasses.fields(pe_lib.method_of(cfg["kind"]).params)]
        except ValueError as e:
            raise ValueError(f"methods.{name}: {e}") from None
        for field, values in grid.items():
            where = f"methods.{name}.grid.{field}"
            if field not in valid:
                raise ValueError(f"{where}: not a parameter of {cfg['kind']}; a grid sweeps one of {valid}")
            if field in fixed:
                raise ValueError(f"{where}: methods.{name}.{field}={fixed[field]!r} is given too; a field is either "
                                 f"fixed or swept")
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}={values!r}: expected a non-empty list of values (a list-valued field "
                                 f"is swept by a list of lists)")
            for i, v in enumerate(values):
                if any(v == w or str(v) == str(w) for w in values[:i]):
                    raise ValueError(f"{where}={values!r}: {v!r} is given twice")
        points[name] = {}
        for combo in itertools.product(*grid.values()):
            point = f"{name}@" + ",".join(f"{f}={v}" for f, v in zip(grid, combo))
            if "/" in point:
                raise ValueError(f"methods.{point}: a method name cannot hold '/' (it names a checkpoint folder)")
            add(point, {**fixed, **dict(zip(grid, combo))}, f"methods.{name}.grid")
            points[name][point] = dict(zip(grid, combo))
    return configs, points


def _select(wanted: Sequence[str], configs: Mapping[str, Any], points: Mapping[str, Mapping[str, Any]],
            preset_names: list[str]) -> list[str]:
    """The methods named in ``wanted`` (a grid's name: all its points), in that order, each once."""
    known = lambda m: m in configs or m in points  # noqa: E731
    items, out, missing, i = list(wanted), [], [], 0
    while i < len(items):   # "a@x=1,y=2" split at its comma by a comma-separated list: joined back
        j = next((j for j in range(len(items), i, -1) if known(",".join(items[i:j]))), i + 1)
        name = ",".join(items[i:j])
        if not known(name):
            missing.append(name)
        for m in points[name] if name in points else [name]:
            if m not in out:
                out.append(m)
        i = j
    if missing:
        grid_points = [p for of_base in points.values() for p in of_base]
        raise ValueError(f"--methods: {missing} not in the preset; available: {preset_names}"
                         + (f" (a grid's name selects all its points: {grid_points})" if grid_points else ""))
    return out


def bench_shape(preset: str | Path = "default") -> dict[str, int]:
    """The attention shape a bench trains: ``head_dim``, ``num_heads``, ``d_model``, ``train_len`` and
    ``factor``, its longest evaluated multiple (what ``hopekit methods`` and docs/methods.md describe
    defaults at)."""
    exp = load_bench(preset).experiment
    model = exp.model_config(vocab_size=256)
    return {"head_dim": model.head_dim, "num_heads": model.n_heads, "d_model": model.d_model,
            "train_len": exp.train.train_len, "factor": max(exp.eval.multiples)}


def run_bench(preset: str | Path = "default", *, run_dir: str | Path | None = None, overrides: list[str] | None = None,
              methods: list[str] | None = None, seeds: int | None = None, suite: str | None = None,
              progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) a bench; returns the run directory holding records, report and plots. The run
    directory is locked for the duration (a second bench on it is refused, naming the holder)."""
    from .checkpoint import prepare_run_dir

    bench = load_bench(preset, overrides, methods, seeds, suite)
    run_dir = Path(run_dir) if run_dir is not None else Path("results") / bench.name
    lock = prepare_run_dir(run_dir, files=())
    try:
        _run_bench(bench, run_dir, progress=progress, log=log)
    finally:
        lock.release()
    return run_dir


def _run_bench(bench: BenchConfig, run_dir: Path, *, progress: bool, log: Callable[[str], None]) -> None:
    from .eval.lengths import evaluate_lengths
    from .eval.report import write_report
    from .eval.tasks import evaluate_tasks
    from .train import corpus_batches, train

    exp = bench.experiment
    if bench.suite in ("tasks", "all"):   # refused before anything trains
        from .data import tokenizer_from_config
        from .eval.tasks import check_fits

        check_fits(exp.eval.tasks, tokenizer_from_config(exp.data), min(exp.eval.multiples) * exp.train.train_len,
                   style=exp.data.task_style, where=f"--suite {bench.suite}: eval.tasks at eval.multiples × "
                                                    f"train.train_len = {min(exp.eval.multiples) * exp.train.train_len}")
    _save_config(bench, run_dir)
    n_runs = len(bench.methods) * len(bench.seeds)
    log(f"bench {bench.name}: {len(bench.methods)} methods × {len(bench.seeds)} seeds × "
        f"{len(exp.eval.multiples)} lengths → {run_dir}")
    log("config: " + json.dumps(bench.resolved()))
    records_path = run_dir / "records.jsonl"
    started = time.perf_counter()
    _record_score_vs_distance(bench, records_path)
    rows_before = _count_rows(records_path)

    run = 0
    for seed in bench.seeds:
        batches, vocab = corpus_batches(bench.method_config(next(iter(bench.methods)), seed))
        for name in bench.methods:
            run += 1
            cfg = bench.method_config(name, seed)
            tag = f"[{run}/{n_runs} {name} seed {seed}]"
            t0 = time.perf_counter()
            log(f"{tag} training {cfg.train.steps} steps ({pe_lib.to_config(cfg.pe)})")
            result = train(cfg, run_dir / "checkpoints" / name / f"seed{seed}", resume=True, batches=batches,
                           vocab_size=vocab, progress=progress, log=log)
            model = result.model.eval()
            _record_training(records_path, name, cfg, model, result, batches)
            log(f"{tag} trained in {time.perf_counter() - t0:.1f}s; evaluating")
            extensions = exp.eval.extensions if name == bench.extensions_of else ()
            if bench.suite in ("ppl", "all"):
                evaluate_lengths(model, cfg, records_path, method=name, extensions=extensions, progress=progress,
                                 log=log)
            if bench.suite in ("tasks", "all"):
                evaluate_tasks(model, cfg, records_path, method=name, extensions=extensions, progress=progress, log=log)

    from .eval.records import append_records, make_record

    wall = time.perf_counter() - started
    if _count_rows(records_path) > rows_before:   # this invocation trained or measured something
        append_records(records_path, [make_record(
            method=None, params={}, train_len=exp.train.train_len, eval_len=None, task="bench",
            metric="bench_seconds", value=wall, seed=None, model=None, corpus=exp.data.corpus,
            environment=environment(), methods=list(bench.methods), seeds=list(bench.seeds))])
    report, plot = write_report(run_dir)
    log(f"done in {wall:.1f}s: {report}, {plot}")
    if bench.grids and bench.suite in ("ppl", "all"):   # a sweep: its table and figures (hopekit analyze sweep)
        from .analysis.sweep import write_sweep_report

        sweep, _ = write_sweep_report(run_dir)
        log(f"sweep: {sweep}")


def _count_rows(path: Path) -> int:
    return sum(1 for line in path.read_bytes().splitlines() if line.strip()) if path.exists() else 0


def _save_config(bench: BenchConfig, run_dir: Path) -> None:
    """Write ``bench.json``; a directory made with another config is refused (methods and seeds may be
    added, never changed)."""
    config_path = run_dir / "bench.json"
    resolved = bench.resolved()
    if config_path.exists():
        saved = json.loads(config_path.read_text())
        common = [m for m in resolved["methods"] if m in saved.get("methods", {})]
        pick = lambda d: {**d, "methods": {m: d["methods"][m] for m in common}, "seeds": None,  # noqa: E731
                          "suite": None, "grids": None}
        diffs = config_differences(pick(saved), pick(resolved))
        if diffs:
            raise ValueError(f"{run_dir}: holds a bench made with a different config ({config_path}); use another "
                             f"--run-dir or delete it. Differences: " + "; ".join(diffs))
        resolved["methods"] = {**saved["methods"], **resolved["methods"]}
        resolved["seeds"] = sorted(set(saved.get("seeds", [])) | set(resolved["seeds"]))
        resolved["grids"] = _merge_grids(saved.get("grids") or {}, resolved["grids"])
    config_path.write_text(json.dumps(resolved, indent=2) + "\n")


def _merge_grids(saved: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """The axes of both: each grid's fields, each field's saved values then the new ones."""
    out = {base: {f: list(v) for f, v in axes.items()} for base, axes in saved.items()}
    for base, axes in now.items():
        merged = out.setdefault(base, {})
        for field, values in axes.items():
            have = merged.setdefault(field, [])
            have += [v for v in values if v not in have]
    return out


def environment() -> dict[str, Any]:
    """Where a bench ran: torch and Python versions, the CPU (or GPU) and the threads torch uses."""
    import os
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
           "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def _loss_curve(losses: Sequence[float], points: int = 100) -> tuple[list[int], list[float]]:
    """``(steps, mean loss)`` of the per-step losses in ``points`` equal bins (step = a bin's last step + 1)."""
    n = len(losses)
    bins = min(points, n)
    edges = [(i * n) // bins for i in range(bins + 1)]
    means = [sum(losses[a:b]) / (b - a) for a, b in zip(edges[:-1], edges[1:])]
    return edges[1:], means


def _record_training(records_path: Path, name: str, cfg: ExperimentConfig, model: Any, result: Any,
                     batches: Any) -> None:
    """The training rows of one (method, seed), once: seconds, final loss, tokens/s, epochs, loss curve."""
    from .eval import read_records
    from .eval.records import append_records, make_record, model_descriptor

    seed = cfg.train.seed
    records = read_records(records_path) if records_path.exists() else []
    if any(r.get("method") == name and r.get("seed") == seed and r.get("metric") == "train_seconds" for r in records):
        return
    t = cfg.train
    sampler = batches.__self__          # corpus_batches gives a TrainBatches' bound ``batch``
    common = dict(method=name, params=pe_lib.to_config(cfg.pe), train_len=t.train_len, eval_len=t.train_len,
                  task="bench", model=model_descriptor(model), seed=seed, corpus=cfg.data.corpus,
                  config=cfg.resolved(), environment=environment(), train_tokens=sampler.num_tokens)
    steps, curve = _loss_curve(result.losses) if result.losses else ([], [])
    append_records(records_path, [
        make_record(metric="train_seconds", value=result.total_train_time, **common),
        make_record(metric="final_train_loss", value=result.losses[-1] if result.losses else None, **common),
        make_record(metric="tokens_per_s", value=result.tokens_per_s, **common),
        make_record(metric="epochs", value=sampler.epochs(t.steps), **common),
        make_record(metric="train_loss_curve", value=curve, steps=steps, **common)])


def _record_score_vs_distance(bench: BenchConfig, records_path: Path) -> None:
    """Each method's pre-softmax score against query–key distance (the aligned probe of
    :func:`hopekit.analysis.score_vs_distance`, head 0) out to the longest evaluation length, once per
    method: the ``hopekit demo`` numbers, which the report draws."""
    import torch

    from .analysis import score_vs_distance
    from .eval import read_records
    from .eval.records import append_records, make_record

    exp = bench.experiment
    records = read_records(records_path) if records_path.exists() else []
    done = {r["method"] for r in records if r.get("metric") == "score_vs_distance"}
    longest = max(exp.eval.multiples) * exp.train.train_len
    step = max(1, longest // 512)
    distances = torch.arange(0, longest + 1, step)
    rows = []
    for name in bench.methods:
        if name in done:
            continue
        cfg = bench.method_config(name)
        enc = cfg.model_config(vocab_size=256).build_pe()
        if enc.uses_embed and any(True for _ in enc.parameters()):
            continue  # a learned table: random until trained (and it may not reach the longest length)
        scores = score_vs_distance(enc, distances)
        rows.append(make_record(method=name, params=pe_lib.to_config(cfg.pe), train_len=exp.train.train_len,
                                eval_len=longest, task="bench", metric="score_vs_distance", value=scores.tolist(),
                                distances=distances.tolist(), seed=None, model=None, corpus=exp.data.corpus,
                                probe="aligned q = k, head 0"))
    if rows:
        append_records(records_path, rows)
