"""Sweeps: a bench method's ``grid`` (:mod:`hopekit.bench`) read back as perplexity against the swept
parameter, from records alone.

A grid ``hope_hyperbolic: {kind: hope_hyperbolic, grid: {penalty: [0.202, 0.3, 1.0]}}`` trains one method
per value, named ``hope_hyperbolic@penalty=0.202`` and so on; ``bench.json`` keeps the axes. Here:

* :func:`sweep_points`: the points of every grid in grid order (values of each axis from the rows'
  resolved parameters; every measured length's ``{seed: value}``);
* :func:`sweep_table`: per grid, one row per point — its parameter values, the number of seeds, and at
  each evaluated multiple of the training length (the in-distribution one first) the mean ± sd over
  seeds (:mod:`hopekit.eval.report`'s cells, the best mean of each column in bold);
* :func:`plot_sweep`: perplexity against one axis, one line per multiple (per value of the other axes
  too), with a ± sd band; a log x axis when the values span more than 10×;
* :func:`write_sweep_report`: ``sweep.md`` and one figure per grid axis in a run directory, drawn from its
  ``records.jsonl`` and ``bench.json`` only.

Without ``bench.json`` (or its ``grids``) the grids are read off the method names
(``name@field=value,field=value``), numeric values in ascending order.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..eval.records import read_records
from ..eval.report import (_cell, _figure, _finish, _header, _log_axis_ticks, _setup, _summary,
                           ppl_cells)

__all__ = ["SweepPoint", "sweep_points", "sweep_table", "plot_sweep", "write_sweep_report"]

#: a log x axis when a numeric axis spans more than this ratio
LOG_SPAN = 10.0


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: its grid (the base method name), its method name, the value of each axis, the
    training length, and ``cells``: ``{eval_len: {seed: value}}`` of the metric."""

    grid: str
    method: str
    values: dict[str, Any]
    train_len: int
    cells: dict[int, dict[Any, float]]

    def multiple(self, eval_len: int) -> float:
        return eval_len / self.train_len


def _lm_cells(records: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[str], dict]:
    """``(methods, {(method, eval_len): {seed: value}})`` of task "lm" rows of ``metric``, with the
    bench report's rules (the last row of a seed wins, a skipped measurement is left out)."""
    if not isinstance(metric, str) or not metric:
        raise ValueError(f"metric={metric!r}: expected a recorded metric name such as 'ppl' or 'nll'")
    rows = [dict(r, metric="ppl") for r in records if r.get("task") == "lm" and r.get("metric") == metric]
    methods, _, cells = ppl_cells(rows)
    return methods, cells


def _named_values(rest: str) -> dict[str, str] | None:
    """``{"penalty": "0.3", "omega_scale": "0.2"}`` for ``"penalty=0.3,omega_scale=0.2"`` (a value may hold
    commas, e.g. a list); None for text that is not of that form."""
    parts = re.split(r",(?=[A-Za-z_]\w*=)", rest)
    if not all(re.match(r"[A-Za-z_]\w*=", part) for part in parts):
        return None
    return dict(part.split("=", 1) for part in parts)


def _split_point(name: str) -> tuple[str, dict[str, str]] | None:
    """``("h", {"penalty": "0.3"})`` for ``"h@penalty=0.3"``; None for a name that is no grid point."""
    base, _, rest = name.partition("@")
    named = _named_values(rest) if base and rest else None
    return None if named is None else (base, named)


def _infer_grids(methods: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """The grids named by method names ``base@field=value,...``: each axis's values as written, ascending
    where they all read as numbers, else in first-seen order."""
    grids: dict[str, dict[str, list[Any]]] = {}
    for m in methods:
        split = _split_point(m)
        if split is None:
            continue
        axes = grids.setdefault(split[0], {})
        for field, text in split[1].items():
            values = axes.setdefault(field, [])
            if text not in values:
                values.append(text)
    for axes in grids.values():
        for field, values in axes.items():
            try:
                axes[field] = sorted(values, key=float)
            except ValueError:
                pass
    return grids


def _axis_index(axis: Sequence[Any], value: Any) -> int:
    """Where ``value`` stands on an axis (``len(axis)`` if absent); an axis read off names holds strings,
    so a value also matches its ``str``."""
    return next((i for i, v in enumerate(axis) if v == value or (isinstance(v, str) and v == str(value))), len(axis))


def sweep_points(records: Sequence[Mapping[str, Any]], *, grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
                 metric: str = "ppl") -> list[SweepPoint]:
    """The points of every grid measured in ``records``, grid by grid, each in the order of its axes.

    ``grids``: ``bench.json``'s ``grids`` (``{name: {field: [values]}}``); None: read off the method
    names. A point is a method named ``<grid>@...`` with rows of ``metric`` (task "lm"); the value of each
    axis is the one in the rows' resolved ``params`` (the name's text where the params lack the field)."""
    methods, cells = _lm_cells(records, metric)
    if grids is None:
        grids = _infer_grids(methods)
    params: dict[str, Mapping[str, Any]] = {}
    train_lens: dict[str, int] = {}
    for r in records:
        if r.get("task") == "lm" and r.get("metric") == metric and r.get("method") in methods:
            params.setdefault(r["method"], r.get("params") or {})
            train_lens[r["method"]] = min(int(r["train_len"]), train_lens.get(r["method"], int(r["train_len"])))
    out = []
    for grid, axes in grids.items():
        found = []
        for m in methods:
            named = _named_values(m[len(grid) + 1:]) if m.startswith(f"{grid}@") else None
            if named is None:
                continue
            values = {field: params[m].get(field, named.get(field)) for field in axes}
            key = tuple(_axis_index(list(axis), values[field]) for field, axis in axes.items())
            found.append((key, SweepPoint(grid, m, values, train_lens[m],
                                          {L: dict(v) for (mm, L), v in cells.items() if mm == m and v})))
        out += [p for _, p in sorted(found, key=lambda kp: kp[0])]   # stable: grid order, then records'
    return out


def _by_grid(points: Sequence[SweepPoint]) -> dict[str, list[SweepPoint]]:
    out: dict[str, list[SweepPoint]] = {}
    for p in points:
        out.setdefault(p.grid, []).append(p)
    return out


def _lengths(points: Sequence[SweepPoint], multiple: float | None, where: str) -> list[int]:
    """The eval lengths measured at any point, ascending (the in-distribution one first); with
    ``multiple``, that one alone."""
    lengths = sorted({L for p in points for L in p.cells})
    if multiple is None:
        return lengths
    chosen = [L for L in lengths if any(math.isclose(p.multiple(L), multiple) for p in points)]
    if not chosen:
        have = sorted({p.multiple(L) for p in points for L in p.cells})
        raise ValueError(f"{where}={multiple!r}: not measured; multiples measured: {[f'{m:g}' for m in have]}")
    return chosen


def sweep_table(records: Sequence[Mapping[str, Any]], *, metric: str = "ppl", multiple: float | None = None,
                grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> str:
    """Markdown: per grid, a heading and one row per point — the value of each axis, the seeds measured
    (``n``), and at each evaluated length (``multiple``: that multiple of the training length alone) the
    mean ± sd over seeds of ``metric``, the best (lowest) mean of each column in bold. ``grids``: as in
    :func:`sweep_points`."""
    points = sweep_points(records, grids=grids, metric=metric)
    if not points:
        return f"_no grid points with {metric} records_\n"
    return "\n".join(_grid_table(grid, pts, metric, multiple) for grid, pts in _by_grid(points).items())


def _grid_table(grid: str, pts: Sequence[SweepPoint], metric: str, multiple: float | None = None, level: int = 3) -> str:
    axes = list(pts[0].values)
    lengths = _lengths(pts, multiple, "multiple")
    seeds = max(len(v) for p in pts for v in p.cells.values())
    means = {(p.method, L): statistics.fmean(p.cells[L].values()) for p in pts for L in lengths if p.cells.get(L)}
    best = {L: min((v for (_, LL), v in means.items() if LL == L and math.isfinite(v)), default=None) for L in lengths}
    head = axes + ["n"] + _header(lengths, pts[0].train_len)
    what = "perplexity" if metric == "ppl" else metric
    lines = [f"{'#' * level} `{grid}`: {what} against {' × '.join(f'`{a}`' for a in axes)}\n",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in pts:
        counts = sorted({len(p.cells[L]) for L in lengths if p.cells.get(L)})
        n = "—" if not counts else "–".join(str(c) for c in sorted({counts[0], counts[-1]}))
        row = []
        for L in lengths:
            text = _cell(p.cells.get(L), seeds)
            mean = means.get((p.method, L))
            row.append(f"**{text}**" if mean is not None and mean == best[L] else text)
        lines.append("| " + " | ".join([str(p.values[a]) for a in axes] + [n] + row) + " |")
    return "\n".join(lines) + "\n"


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _log_x(values: Sequence[Any]) -> bool:
    """A log x axis: positive numbers spanning more than :data:`LOG_SPAN`."""
    return _numeric(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def plot_sweep(records: Sequence[Mapping[str, Any]], path: str | Path, *, param: str | None = None,
               multiples: Sequence[float] | None = None, grid: str | None = None,
               grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None, metric: str = "ppl",
               log_x: bool | None = None) -> Path:
    """``metric`` (mean over seeds, ± sd band) against the grid axis ``param``, one line per evaluated
    multiple of the training length (``multiples``: those alone) and per combination of the other axes'
    values; log y, and log x when ``log_x`` or (None) the values are positive numbers spanning more than
    10×; values that are not numbers are placed evenly in grid order. ``grid``: which grid (needed when
    the records hold several); ``param``: needed when the grid has several axes."""
    by = _by_grid(sweep_points(records, grids=grids, metric=metric))
    if not by:
        raise ValueError(f"records: no grid points with {metric} records (methods named name@field=value)")
    if grid is None:
        if len(by) > 1:
            raise ValueError(f"grid=None: the records hold several grids {list(by)}; name one")
        grid = next(iter(by))
    if grid not in by:
        raise ValueError(f"grid={grid!r}: no such grid in the records; grids: {list(by)}")
    pts = by[grid]
    axes = list(pts[0].values)
    if param is None:
        if len(axes) > 1:
            raise ValueError(f"param=None: grid {grid!r} sweeps {axes}; name one")
        param = axes[0]
    if param not in axes:
        raise ValueError(f"param={param!r}: not an axis of grid {grid!r}; its axes: {axes}")
    lengths = sorted({L for p in pts for L in p.cells})
    if multiples is not None:
        lengths = sorted({L for m in multiples for L in _lengths(pts, m, "multiples")})
    others = [a for a in axes if a != param]
    xs_all = list(dict.fromkeys(str(p.values[param]) for p in pts))   # grid order
    raw = {str(p.values[param]): p.values[param] for p in pts}
    numeric = _numeric(list(raw.values()))
    position = (lambda p: float(p.values[param])) if numeric else (lambda p: float(xs_all.index(str(p.values[param]))))
    if log_x is None:
        log_x = _log_x(list(raw.values()))
    if log_x and not (numeric and min(raw.values()) > 0):
        raise ValueError(f"log_x=True: the values of {param!r} are not all positive numbers ({list(raw.values())})")
    fig, ax = _figure()
    banded = False
    combos = list(dict.fromkeys(tuple(str(p.values[a]) for a in others) for p in pts))
    for L, combo in product(lengths, combos):
        line_pts = [p for p in pts if tuple(str(p.values[a]) for a in others) == combo and p.cells.get(L)]
        cells = [(position(p), _summary(p.cells[L])) for p in line_pts]
        cells = [(x, s) for x, s in cells if s is not None]
        if numeric:
            cells.sort(key=lambda xs: xs[0])
        if not cells:
            continue
        label = f"{L} ({L / pts[0].train_len:g}×)" + (
            " " + ", ".join(f"{a}={v}" for a, v in zip(others, combo)) if others else "")
        xs, ys = [x for x, _ in cells], [s.mean for _, s in cells]
        (line,) = ax.plot(xs, ys, "-", marker="o", markersize=3.5, label=label)
        if all(s.sd is not None for _, s in cells):
            ax.fill_between(xs, [s.mean - s.sd for _, s in cells], [s.mean + s.sd for _, s in cells],
                            color=line.get_color(), alpha=0.15, lw=0)
            banded = True
    if log_x:
        ax.set_xscale("log")
    ticks = [float(raw[x]) if numeric else float(i) for i, x in enumerate(xs_all)]
    ax.set_xticks(ticks)
    ax.set_xticklabels(xs_all, rotation=45 if len(xs_all) > 5 else 0, fontsize=8)
    if log_x:
        from matplotlib.ticker import NullFormatter, NullLocator

        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yscale("log")
    _log_axis_ticks(ax)
    ax.set_xlabel(f"{param}" + (" (log scale)" if log_x else "") + (f"; lines: {', '.join(others)}" if others else ""))
    what = "perplexity" if metric == "ppl" else metric
    ax.set_ylabel(f"{what} (log scale)" + ("; mean ± sd over seeds" if banded else ""))
    protocols = sorted({str(r.get("protocol", "?")) for r in records
                        if r.get("task") == "lm" and r.get("metric") == metric and r.get("method") in
                        {p.method for p in pts}})
    ax.set_title(f"{grid}: {what} vs {param}, by evaluation length [{', '.join(protocols)}]", fontsize=10)
    return _finish(fig, ax, path)


def _fixed_params(methods: Mapping[str, Mapping[str, Any]], pts: Sequence[SweepPoint]) -> str | None:
    """``field=value`` of every resolved parameter the grid's points share (bench.json's methods)."""
    configs = [methods[p.method] for p in pts if p.method in methods]
    if not configs:
        return None
    common = [(k, v) for k, v in configs[0].items() if k not in pts[0].values and all(c.get(k) == v for c in configs)]
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in common)


def _file_name(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text)


def write_sweep_report(run_dir: str | Path, *, metric: str = "ppl") -> tuple[Path, list[Path]]:
    """``sweep.md`` in ``run_dir`` and one figure per grid axis, ``sweep_<grid>_<field>.png``, drawn from
    its ``records.jsonl`` and ``bench.json`` (the axes; without it they are read off the method names).
    Returns the report and the figures."""
    run_dir = Path(run_dir)
    records_path = run_dir / "records.jsonl"
    if not records_path.exists():
        raise FileNotFoundError(f"{records_path}: no records to report (run `hopekit bench` first)")
    records = read_records(records_path)
    bench_path = run_dir / "bench.json"
    bench = json.loads(bench_path.read_text()) if bench_path.exists() else {}
    grids = bench.get("grids") or None
    points = sweep_points(records, grids=grids, metric=metric)
    if not points:
        raise ValueError(f"{run_dir}: no grid points with {metric} records (a bench method with a grid; "
                         f"methods named name@field=value)")
    names = {p.method for p in points}
    rows = [r for r in records if r.get("task") == "lm" and r.get("metric") == metric and r.get("method") in names]
    what = "perplexity" if metric == "ppl" else metric
    parts = [f"# {run_dir.name}: {what} across the sweep\n\n", _setup(records, rows), "\n",
             "Rows are the points of a grid (one method trained per combination of the swept values, the same "
             "data, budget and seeds); cells are mean ± sd over seeds (sample sd), `n` the seeds measured, "
             "the best mean of each column in **bold**. Columns are evaluation lengths, the training length "
             "(in distribution) first.\n"]
    pngs = []
    for grid, pts in _by_grid(points).items():
        parts.append("\n" + _grid_table(grid, pts, metric, level=2))
        fixed = _fixed_params(bench.get("methods") or {}, pts)
        if fixed:
            parts.append(f"\nThe same at every point: {fixed}.\n")
        for field in pts[0].values:
            png = plot_sweep(rows, run_dir / f"sweep_{_file_name(grid)}_{_file_name(field)}.png", param=field,
                             grid=grid, grids=grids, metric=metric)
            pngs.append(png)
            parts.append(f"\n![{grid}: {what} vs {field}]({png.name})\n")
    report = run_dir / "sweep.md"
    report.write_text("".join(parts))
    return report, pngs
