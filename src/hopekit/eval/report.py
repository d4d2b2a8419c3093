"""Reports and plots made from records alone (never from models).

``write_report(run_dir)`` reads ``records.jsonl`` and writes ``report.md`` and its figures:

* the setup: corpus, split, window sampling, scored tokens and documents per length, model size,
  seeds, the rule of each eval-time extension row (:func:`extension_rules`, from the rows' resolved
  parameters), hardware, torch version, epochs and total time, all read from the records;
* per protocol, perplexity per method × evaluation length as **mean ± sd over seeds** (the best mean of
  each column in bold), the 95 % Student-t interval of every cell, and the change against the baseline
  (``rope``) **paired by seed** at every length, with its interval (:mod:`hopekit.eval.stats`);
* which orderings hold at 95 % (adjacent methods whose paired interval excludes 0), and the window
  bootstrap next to the seed spread (is the evaluation budget large enough?);
* training time, final loss, epochs; figures ``ppl_vs_length.png`` (mean with a ± sd band),
  ``loss_by_position.png``, ``train_curve.png`` and ``score_vs_distance.png``.

Published runs: docs/results/. Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas,
so the caller's matplotlib backend (and pyplot's figure list) is never touched.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .records import read_records
from .stats import Summary, paired_ratio, summarize

__all__ = ["ppl_table", "ppl_cells", "markdown_table", "interval_table", "delta_table", "orderings", "extension_rules",
           "plot_ppl_vs_length", "plot_loss_by_position", "plot_train_curves", "plot_score_vs_distance",
           "write_report"]

#: training beyond this many passes over the train split is flagged in the report
MANY_EPOCHS = 4.0


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}" if abs(x) < 1000 else f"{x:.3g}"


def _ppl_rows(records: list[dict[str, Any]], protocol: str | None) -> list[dict[str, Any]]:
    return [r for r in records if r.get("task") == "lm" and r.get("metric") == "ppl"
            and (protocol is None or r.get("protocol") == protocol)]


def ppl_cells(records: list[dict[str, Any]], protocol: str | None = None
              ) -> tuple[list[str], list[int], dict[tuple[str, int], dict[Any, float]]]:
    """(methods in first-seen order, eval lengths, {(method, eval_len): {seed: ppl}}) for task "lm",
    metric "ppl". A measurement recorded twice for one seed (a re-measured resume): the last row wins.
    A skipped measurement (value None) is left out."""
    methods: list[str] = []
    lengths: set[int] = set()
    cells: dict[tuple[str, int], dict[Any, float]] = defaultdict(dict)
    for r in _ppl_rows(records, protocol):
        if r["method"] not in methods:
            methods.append(r["method"])
        lengths.add(int(r["eval_len"]))
        if r["value"] is not None:
            cells[(r["method"], int(r["eval_len"]))][r.get("seed")] = float(r["value"])
        else:
            cells[(r["method"], int(r["eval_len"]))].pop(r.get("seed"), None)
    return methods, sorted(lengths), dict(cells)


def ppl_table(records: list[dict[str, Any]], protocol: str | None = None) -> tuple[list[str], list[int], dict]:
    """(methods in first-seen order, eval lengths, {(method, eval_len): mean ppl over seeds})."""
    methods, lengths, cells = ppl_cells(records, protocol)
    return methods, lengths, {k: statistics.fmean(v.values()) for k, v in cells.items() if v}


def _summary(values: dict[Any, float]) -> Summary | None:
    finite = [v for v in values.values() if math.isfinite(v)]
    return summarize(finite) if finite and len(finite) == len(values) else None


def _cell(values: dict[Any, float] | None, seeds: int = 1) -> str:
    """``mean ± sd``; ``(n=k)`` added when the cell has fewer seeds than the run (a skipped or failed
    measurement is never averaged away silently)."""
    if not values:
        return "—"
    s = _summary(values)
    text = _fmt(statistics.fmean(values.values())) if s is None else (
        _fmt(s.mean) if s.sd is None else f"{_fmt(s.mean)} ± {_fmt(s.sd)}")
    return text + (f" (n={len(values)})" if len(values) < seeds else "")


def _seed_count(records: list[dict[str, Any]], protocol: str | None) -> int:
    """The number of seeds the run measured (any method, any length)."""
    return len({r.get("seed") for r in _ppl_rows(records, protocol)})


def _train_len(records: list[dict[str, Any]]) -> int:
    return min(int(r["train_len"]) for r in records if r.get("metric") == "ppl")


def _header(lengths: list[int], t0: int) -> list[str]:
    return [f"{L} ({L / t0:g}×)" for L in lengths]


def markdown_table(records: list[dict[str, Any]], *, baseline: str = "rope", protocol: str | None = None) -> str:
    """Perplexity per method × eval_len: the value, or with several seeds mean ± sd; the best (lowest)
    mean of each column in bold; the last column is the in-distribution difference to ``baseline``
    (mean over seeds)."""
    methods, lengths, cells = ppl_cells(records, protocol)
    if not methods:
        return "_no perplexity records_\n"
    t0 = _train_len(records)
    means = {k: statistics.fmean(v.values()) for k, v in cells.items() if v}
    best = {L: min((means[(m, L)] for m in methods if (m, L) in means), default=None) for L in lengths}
    head = ["method"] + _header(lengths, t0) + [f"Δ vs {baseline} @ {t0}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = means.get((baseline, t0))
    seeds = _seed_count(records, protocol)
    for m in methods:
        row = []
        for L in lengths:
            text = _cell(cells.get((m, L)), seeds)
            mean = means.get((m, L))
            row.append(f"**{text}**" if mean is not None and mean == best[L] and math.isfinite(mean) else text)
        own = means.get((m, t0))
        delta = "—" if base is None or own is None or m == baseline else f"{own - base:+.2f}"
        lines.append("| " + " | ".join([f"`{m}`"] + row + [delta]) + " |")
    return "\n".join(lines) + "\n"


def interval_table(records: list[dict[str, Any]], *, protocol: str | None = None) -> str:
    """The 95 % Student-t interval over seeds of every cell (``n`` seeds; "—" with one seed)."""
    methods, lengths, cells = ppl_cells(records, protocol)
    t0 = _train_len(records)
    lines = ["| method | seeds | " + " | ".join(_header(lengths, t0)) + " |", "|" + "---|" * (len(lengths) + 2)]
    for m in methods:
        row, counts = [], set()
        for L in lengths:
            s = _summary(cells.get((m, L)) or {})
            if cells.get((m, L)):
                counts.add(len(cells[(m, L)]))
            row.append("—" if s is None or s.low is None else f"[{_fmt(s.low)}, {_fmt(s.high)}]")
        n = "—" if not counts else "–".join(str(c) for c in sorted({min(counts), max(counts)}))
        lines.append("| " + " | ".join([f"`{m}`", n] + row) + " |")
    return "\n".join(lines) + "\n"


def _paired(cells: dict, method: str, other: str, L: int) -> Summary | None:
    a, b = cells.get((method, L)) or {}, cells.get((other, L)) or {}
    seeds = sorted(set(a) & set(b), key=str)
    if not seeds or not all(math.isfinite(a[s]) and math.isfinite(b[s]) for s in seeds):
        return None
    return paired_ratio([math.log(a[s]) for s in seeds], [math.log(b[s]) for s in seeds])


def _pct(x: float) -> str:
    return f"{x:+.1f}" if abs(x) >= 1 or x == 0 else f"{x:+.2g}"


def delta_table(records: list[dict[str, Any]], *, baseline: str = "rope", protocol: str | None = None) -> str:
    """The change in perplexity against ``baseline`` at every length, paired by seed, in percent: the
    mean and its 95 % interval; ``*`` where the interval excludes 0."""
    methods, lengths, cells = ppl_cells(records, protocol)
    t0 = _train_len(records)
    lines = ["| method | " + " | ".join(_header(lengths, t0)) + " |", "|" + "---|" * (len(lengths) + 1)]
    for m in methods:
        if m == baseline:
            continue
        row = []
        for L in lengths:
            d = _paired(cells, m, baseline, L)
            if d is None:
                row.append("—")
            elif d.low is None:
                row.append(f"{_pct(d.mean)} %")
            else:
                row.append(f"{_pct(d.mean)} % [{_pct(d.low)}, {_pct(d.high)}]" + ("*" if d.separated() else ""))
        lines.append("| " + " | ".join([f"`{m}`"] + row) + " |")
    return "\n".join(lines) + "\n"


def orderings(records: list[dict[str, Any]], *, protocol: str | None = None) -> dict[int, str]:
    """Per eval_len, the methods sorted by mean log perplexity over seeds (the quantity the paired test
    uses), joined by ``<`` where the paired 95 % interval of the two neighbours lies above 0 (the second
    is worse) and ``≈`` where it does not (``?`` without seeds to pair). Only neighbours are compared;
    :func:`delta_table` gives every method against the baseline."""
    methods, lengths, cells = ppl_cells(records, protocol)
    out = {}
    for L in lengths:
        ranked = sorted((statistics.fmean(math.log(v) for v in cells[(m, L)].values()), m) for m in methods
                        if cells.get((m, L)) and all(math.isfinite(v) and v > 0 for v in cells[(m, L)].values()))
        if not ranked:
            continue
        text = f"`{ranked[0][1]}`"
        for (_, a), (_, b) in zip(ranked, ranked[1:]):
            d = _paired(cells, b, a, L)
            sign = "?" if d is None or d.low is None else ("<" if d.low > 0 else "≈")
            text += f" {sign} `{b}`"
        out[L] = text
    return out


def _noise_table(records: list[dict[str, Any]], protocol: str) -> str | None:
    """Per eval_len, in like terms: the window bootstrap's sd (its 95 % half-width / 1.96, in % of the
    perplexity; median over rows) against the seed sd (in % of the mean; median over methods)."""
    methods, lengths, cells = ppl_cells(records, protocol)
    boot: dict[int, list[float]] = defaultdict(list)
    for r in _ppl_rows(records, protocol):
        ci = r.get("ppl_window_ci95")
        if ci and r["value"]:
            boot[int(r["eval_len"])].append(50.0 * (ci[1] - ci[0]) / r["value"] / 1.96)
    lines = []
    for L in lengths:
        sds = [100.0 * s.sd / s.mean for m in methods if (s := _summary(cells.get((m, L)) or {})) and s.sd is not None]
        if boot.get(L) and sds:
            lines.append(f"| {L} | {statistics.median(boot[L]):.1f} % | {statistics.median(sds):.1f} % |")
    if not lines:
        return None
    return ("| eval_len | window bootstrap sd (95 % half-width / 1.96; median over rows) | seed sd (median over "
            "methods) |\n"
            "|---|---|---|\n" + "\n".join(lines) + "\n")


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (7.5, 4.8)):
    """A figure and its axes on the Agg canvas, outside pyplot (no backend switch, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=nrows * ncols == 1)


def _plain_ticks(axis) -> None:
    """Tick labels as plain numbers (``128``, ``7``), not ``2^7`` or ``10^0.8``, also on log axes."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_axis_ticks(ax) -> None:
    """Plain-number ticks on a log y axis at round values inside its range (a narrow range of a log axis
    otherwise gets no labelled tick at all)."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    lo, hi = ax.get_ylim()
    ticks: list[float] = []
    for mantissas in ((1, 1.5, 2, 3, 4, 5, 6, 7, 8), (1, 2, 3, 5, 7), (1, 2, 5), (1,)):   # fewest that fit ~10
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        ticks = [m * 10.0 ** k for k in decades for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(ticks) <= 10:
            break
    if len(ticks) < 3:   # a narrow range: round values inside it
        ticks = [t for t in MaxNLocator(nbins=7, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if lo <= t <= hi and t > 0]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    _plain_ticks(ax.yaxis)


def _finish(fig, ax, path: str | Path) -> Path:
    """Grid, legend, tight layout, save as PNG."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _style(method: str) -> str:
    return "--" if "+" in method else "-"        # eval-time extensions of a trained model: dashed


def plot_ppl_vs_length(records: list[dict[str, Any]], path: str | Path, *, protocol: str | None = None,
                       title: str = "Perplexity vs evaluation length") -> Path:
    """Mean perplexity over seeds against eval_len, one line per method, with a ± sd band where there are
    several seeds; log-log axes with plain tick labels."""
    methods, lengths, cells = ppl_cells(records, protocol)
    fig, ax = _figure()
    banded = False
    for m in methods:
        pts = [(L, _summary(cells[(m, L)])) for L in lengths if cells.get((m, L))]
        pts = [(L, s) for L, s in pts if s is not None]
        xs, ys = [L for L, _ in pts], [s.mean for _, s in pts]
        (line,) = ax.plot(xs, ys, _style(m), marker="o", markersize=3.5, label=m)
        if pts and all(s.sd is not None for _, s in pts):
            ax.fill_between(xs, [s.mean - s.sd for _, s in pts], [s.mean + s.sd for _, s in pts],
                            color=line.get_color(), alpha=0.15, lw=0)
            banded = True
    for L in sorted({int(r["train_len"]) for r in records if r.get("metric") == "ppl"}):
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths)
    _plain_ticks(ax.xaxis)
    _log_axis_ticks(ax)
    ax.set_xlabel("evaluation length (tokens); dotted: training length")
    ax.set_ylabel("perplexity (log scale)" + ("; mean ± sd over seeds" if banded else ""))
    protocols = sorted({str(r.get("protocol", "?")) for r in _ppl_rows(records, protocol)})
    ax.set_title(f"{title} [{', '.join(protocols)}]", fontsize=10)
    return _finish(fig, ax, path)


def plot_loss_by_position(records: list[dict[str, Any]], path: str | Path, *,
                          eval_len: int | None = None) -> Path | None:
    """Mean loss vs position inside the window (binned, averaged over seeds), one line per method, at
    ``eval_len`` (default: the longest length measured); titled with the length and the protocol.
    Returns None if there are no such records."""
    rows = [r for r in records if r.get("metric") == "loss_by_position" and r.get("value")]
    if not rows:
        return None
    eval_len = eval_len or max(int(r["eval_len"]) for r in rows)
    latest: dict[str, dict[Any, dict]] = defaultdict(dict)      # method -> seed -> row (last wins)
    for r in rows:
        if int(r["eval_len"]) == eval_len:
            latest[r["method"]][r.get("seed")] = r
    fig, ax = _figure()
    for method, by_seed in latest.items():
        first = next(iter(by_seed.values()))
        centres = [(a + b) / 2 for a, b in zip(first["bin_start"], first["bin_end"])]
        curves = [r["value"] for r in by_seed.values() if len(r["value"]) == len(centres)]
        mean = [statistics.fmean(v for v in col if v is not None) if any(v is not None for v in col) else math.nan
                for col in zip(*curves)]
        ax.plot(centres, mean, _style(method), label=method)
    for L in sorted({int(r["train_len"]) for by_seed in latest.values() for r in by_seed.values()}):
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    seeds = max(len(v) for v in latest.values())
    protocols = sorted({str(r.get("protocol")) for v in latest.values() for r in v.values()})
    t0 = min(int(r["train_len"]) for v in latest.values() for r in v.values())
    ax.set_xlabel(f"position inside the window (tokens); dotted: training length")
    ax.set_ylabel("mean next-token loss (nats)")
    ax.set_title(f"Loss by position, eval_len {eval_len} ({eval_len / t0:g}× train_len), {', '.join(protocols)}"
                 + (f", mean of {seeds} seeds" if seeds > 1 else ""), fontsize=10)
    return _finish(fig, ax, path)


def plot_train_curves(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Training loss against step (binned means), one line per method averaged over seeds with a min–max
    band; None without ``train_loss_curve`` records."""
    rows = [r for r in records if r.get("metric") == "train_loss_curve" and r.get("value")]
    if not rows:
        return None
    by_method: dict[str, dict[Any, dict]] = defaultdict(dict)
    for r in rows:
        by_method[r["method"]][r.get("seed")] = r
    fig, ax = _figure()
    for method, by_seed in by_method.items():
        steps = next(iter(by_seed.values()))["steps"]
        curves = [r["value"] for r in by_seed.values() if r["steps"] == steps]
        mean = [statistics.fmean(col) for col in zip(*curves)]
        (line,) = ax.plot(steps, mean, label=method)
        if len(curves) > 1:
            ax.fill_between(steps, [min(c) for c in zip(*curves)], [max(c) for c in zip(*curves)],
                            color=line.get_color(), alpha=0.15, lw=0)
    seeds = max(len(v) for v in by_method.values())
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss (nats), binned mean")
    ax.set_title("Training loss" + (f", mean of {seeds} seeds (band: min–max)" if seeds > 1 else ""), fontsize=10)
    return _finish(fig, ax, path)


def plot_score_vs_distance(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """One panel per method: its encoding's pre-softmax score against query–key distance (the aligned
    probe recorded by the bench); None without ``score_vs_distance`` records."""
    rows = {r["method"]: r for r in records if r.get("metric") == "score_vs_distance" and r.get("value")}
    if not rows:
        return None
    n = len(rows)
    cols = min(3, n)
    nrows = -(-n // cols)
    fig, axes = _figure(nrows, cols, size=(3.4 * cols, 2.5 * nrows + 0.4))
    flat = list(axes.flat) if hasattr(axes, "flat") else [axes]
    for ax, (method, r) in zip(flat, rows.items()):
        ax.plot(r["distances"], r["value"], lw=0.9)
        ax.axvline(int(r["train_len"]), color="grey", lw=0.8, ls=":")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_title(method, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.3)
    for ax in flat[n:]:
        ax.set_visible(False)
    probe = next(iter(rows.values())).get("probe", "aligned q and k")
    fig.suptitle(f"Pre-softmax score vs query–key distance ({probe}); dotted: training length", fontsize=10)
    fig.supxlabel("distance (tokens)", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


_PRETRAINED = ("Rows are one pretrained model (`hopekit eval --hf`): its own encoding, and rows named "
               "`<own>+<method>` with that encoding patched in at evaluation time, without fine-tuning (rows "
               "named `finetuned:<method>` are a model fine-tuned with it, `hopekit train --hf`). Lengths "
               "are shown as multiples of the model's window; the last column is the perplexity at the window "
               "minus the model's own.\n")


def _values(rows: list[dict[str, Any]], field: str) -> list[str]:
    return sorted({str(r.get(field)) for r in rows if r.get(field) is not None})


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _factor_rule(rows: list[dict[str, Any]]) -> str | None:
    """How a row's ``factor`` was set over its lengths: ``"ℓ/L"`` when it is the evaluated length over the
    training length at every one of several lengths, the value when it is one constant, else the values."""
    pairs = [(r["params"].get("factor"), int(r["eval_len"]) / int(r["train_len"])) for r in rows]
    if not pairs or not all(_number(f) for f, _ in pairs):
        return None
    if len({s for _, s in pairs}) > 1 and all(math.isclose(f, s, rel_tol=1e-12) for f, s in pairs):
        return "ℓ/L"
    return ", ".join(f"{v:g}" for v in sorted({float(f) for f, _ in pairs}))


def _rule(kind: str, rows: list[dict[str, Any]]) -> str:
    """One extension row's rule in words, from its resolved parameters (``kind`` and ``factor``)."""
    factor = _factor_rule(rows)
    params = rows[-1]["params"]
    if factor is None:
        return kind
    if kind == "dynamic_ntk":
        if factor == "ℓ/L":
            return "transformers' dynamic rule with factor s = ℓ/L (effective NTK factor s² − s + 1 at ℓ = s·L)"
        if factor == "1":
            return ("transformers' dynamic rule with factor 1 (effective NTK factor ℓ/L; with one forward per "
                    "window the same spectrum as static NTK with factor ℓ/L)")
        if "," not in factor:
            return (f"transformers' dynamic rule with factor {factor} (effective NTK factor "
                    f"{factor}·ℓ/L − {float(factor) - 1:g})")
        return f"transformers' dynamic rule with factor {factor}"
    if kind == "longrope":
        if factor == "ℓ/L" or "," in factor:
            return f"LongRoPE, factor {factor} (attention factor follows the factor), short set at ℓ ≤ L, long set beyond"
        from .. import pe as pe_lib

        try:
            attn = pe_lib.schedules.longrope_attention_factor(
                pe_lib.make_params("longrope", **{k: v for k, v in params.items() if k != "kind"}))
        except (TypeError, ValueError):
            attn = None
        attn_text = "" if attn is None else f", attention factor {attn:.4g} at every length"
        return f"LongRoPE, searched factors for factor {factor}{attn_text}; short set at ℓ ≤ L, long set beyond"
    names = {"linear": "Position Interpolation", "ntk": "static NTK-aware base scaling", "yarn": "YaRN",
             "llama3": "Llama-3.1 wavelength bands"}
    text = f"{names.get(kind, kind)}, factor {factor}"
    if kind == "yarn" and all(params.get(k) is None for k in ("attention_factor", "mscale", "mscale_all_dim")):
        text += " (attention factor 0.1·ln factor + 1)"
    return text


def extension_rules(records: list[dict[str, Any]]) -> dict[str, str]:
    """``{method: rule}`` for every eval-time extension row (``<model>+<kind>``) of the perplexity
    records, in first-seen order: the method's rule in words, derived from the resolved parameters
    each row carries (ℓ: the evaluated length, L: the training length), so records measured under
    another rule describe themselves. Only the rows the tables show count: a measurement recorded twice
    (re-measured under a new rule) is described by its last row, as :func:`ppl_cells` uses it."""
    last: dict[tuple, dict[str, Any]] = {}
    for r in records:
        if r.get("metric") == "ppl" and "+" in str(r.get("method")) and isinstance(r.get("params"), dict):
            last[(r["method"], r.get("eval_len"), r.get("seed"), r.get("protocol"))] = r
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in last.values():
        by_method.setdefault(r["method"], []).append(r)
    out = {}
    for method, rows in by_method.items():
        kinds = {str(r["params"].get("kind")) for r in rows}
        out[method] = " / ".join(_rule(k, [r for r in rows if str(r["params"].get("kind")) == k]) for k in sorted(kinds))
    return out


def _setup(records: list[dict[str, Any]], ppl: list[dict[str, Any]]) -> str:
    """The setup section: what was measured, on what, with what, and how long it took."""
    lines = []
    corpora = ", ".join(_values(ppl, "corpus"))
    splits = ", ".join(_values(ppl, "split")) or "?"
    sampling = ", ".join(_values(ppl, "sampling")) or "prefix"
    lines.append(f"- **Data**: corpus {corpora}, split {splits}; windows: {sampling} "
                 + ("(evenly spaced over the whole split, every document windowed on its own)" if sampling == "spread"
                    else
                    "(in order from the start of the split)" if sampling == "prefix" else "") + ".")
    per_length = defaultdict(set)
    for r in ppl:
        if r.get("tokens") is not None:
            per_length[int(r["eval_len"])].add((r["tokens"], r.get("documents"), r.get("windows")))
    if per_length:
        parts = []
        for L in sorted(per_length):
            toks = sorted({t for t, _, _ in per_length[L]})
            docs = sorted({d for _, d, _ in per_length[L] if d is not None})
            tok_text = f"{toks[0]:,}" if len(toks) == 1 else f"{toks[0]:,}–{toks[-1]:,}"
            doc_text = "?" if not docs else (f"{docs[0]}" if len(docs) == 1 else f"{docs[0]}–{docs[-1]}")
            parts.append(f"{L}: {tok_text} tokens from {doc_text} documents")
        lines.append("- **Scored per measurement**: " + "; ".join(parts) + ".")
    lines.append(f"- **Models**: {', '.join(_values(ppl, 'model'))}.")
    rules = extension_rules(ppl)
    if rules:
        lines.append("- **Eval-time extensions** (ℓ: the evaluated length, L: the training length): "
                     + "; ".join(f"`{m}`: {rule}" for m, rule in rules.items()) + ".")
    seeds = _values(ppl, "seed")
    lines.append(f"- **Seeds**: {len(seeds)} ({', '.join(seeds)}); every method trained once per seed, compared "
                 "paired by seed.")
    env = next((r["environment"] for r in reversed(records) if isinstance(r.get("environment"), dict)), None)
    if env:
        where = env.get("gpu") or f"{env.get('cpu')} ({env.get('cpu_count')} cores, {env.get('threads')} threads)"
        lines.append(f"- **Hardware**: {where}; torch {env.get('torch')}, Python {env.get('python')}.")
    epochs = [r["value"] for r in records if r.get("metric") == "epochs" and r.get("value") is not None]
    if epochs:
        many = max(epochs) > MANY_EPOCHS
        lines.append(f"- **Epochs** over the train split: {min(epochs):.3g}–{max(epochs):.3g}"
                     + (f". **Warning: more than {MANY_EPOCHS:g} epochs — the models see the same text many times; "
                        "the numbers may reflect memorisation more than modelling.**" if many else "."))
    walls = [r["value"] for r in records if r.get("metric") == "bench_seconds" and r.get("value") is not None]
    train_s = sum(r["value"] for r in records if r.get("metric") == "train_seconds" and r.get("value") is not None)
    eval_s = sum(r.get("seconds") or 0.0 for r in ppl)
    if walls or train_s or eval_s:
        text = f"- **Time**: training {train_s / 60:.1f} min, evaluation {eval_s / 60:.1f} min"
        if walls:
            text += (f"; wall {sum(walls) / 60:.1f} min over {len(walls)} invocation"
                     + ("s (resumed)" if len(walls) > 1 else ""))
        lines.append(text + ".")
    lines.append(f"- **Commit(s)**: {', '.join(_values(ppl, 'commit'))}.")
    return "\n".join(lines) + "\n"


def _training_table(records: list[dict[str, Any]]) -> str | None:
    by: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("task") == "bench" and r.get("metric") in ("train_seconds", "final_train_loss", "epochs") \
                and r.get("value") is not None:
            by[r["method"]][r["metric"]].append(float(r["value"]))
    if not by:
        return None
    lines = ["| method | seeds | train seconds (mean) | final train loss | epochs |", "|---|---|---|---|---|"]
    for m, metrics in by.items():
        loss = metrics.get("final_train_loss", [])
        ls = summarize(loss) if loss else None
        loss_text = "—" if ls is None else (_fmt(ls.mean) if ls.sd is None else f"{_fmt(ls.mean)} ± {_fmt(ls.sd)}")
        secs = metrics.get("train_seconds", [])
        ep = metrics.get("epochs", [])
        lines.append(f"| `{m}` | {len(secs)} | {_fmt(statistics.fmean(secs)) if secs else '—'} | {loss_text} | "
                     f"{f'{statistics.fmean(ep):.3g}' if ep else '—'} |")
    return "\n".join(lines) + "\n"


def write_report(run_dir: str | Path, *, baseline: str = "rope") -> tuple[Path, Path]:
    """Regenerate ``report.md`` and its figures in ``run_dir`` from its ``records.jsonl`` (a malformed row
    is refused by :func:`~hopekit.eval.records.read_records`, naming file and line). Returns the report
    and the perplexity plot (the task accuracy plot for records of long-context tasks alone). Task
    records add their section (:func:`hopekit.eval.task_report.task_section`)."""
    from .task_report import task_section

    run_dir = Path(run_dir)
    records_path = run_dir / "records.jsonl"
    if not records_path.exists():
        raise FileNotFoundError(f"{records_path}: no records to report (run `hopekit bench` first)")
    records = read_records(records_path)
    ppl = [r for r in records if r.get("metric") == "ppl"]
    if not ppl:   # a task evaluation alone (hopekit eval --task)
        tasks = task_section(records, run_dir, heading="#", title=f"{run_dir.name}: long-context tasks")
        if not tasks:
            raise ValueError(f"{records_path}: no perplexity or task records to report")
        training = _training_table(records)
        report = run_dir / "report.md"
        report.write_text(tasks.lstrip("\n") + ("\n## Training\n\n" + training if training else ""))
        return report, run_dir / "tasks_accuracy.png"
    protocols = sorted({str(r.get("protocol", "?")) for r in ppl})
    pretrained = any("hf" in r for r in ppl)
    parts = [f"# {run_dir.name}: perplexity vs evaluation length\n\n", _setup(records, ppl), "\n",
             _PRETRAINED if pretrained else
             "Rows are methods trained from scratch with the same data and budget, once per seed; rows named "
             "`rope+<method>` are the rope model of each seed evaluated with that encoding swapped in at "
             "evaluation time, without fine-tuning. Cells are mean ± sd over seeds (sample sd), the best mean "
             f"of each column in **bold**; the last column is the in-distribution (1×) perplexity minus "
             f"`{baseline}`'s.\n"]
    for proto in protocols:
        parts.append(f"\n## Protocol: {proto}\n\n" + markdown_table(records, baseline=baseline, protocol=proto))
        seeds = {r.get("seed") for r in _ppl_rows(records, proto)}
        if len(seeds) > 1:
            parts.append("\n### 95 % intervals over seeds (Student t)\n\n" + interval_table(records, protocol=proto))
        if any(m == baseline for m in ppl_cells(records, proto)[0]):
            parts.append(f"\n### Change against `{baseline}`, paired by seed\n\n"
                         f"Relative change in perplexity, mean over seeds of the log ratio, with its 95 % interval; "
                         f"`*`: the interval excludes 0.\n\n" + delta_table(records, baseline=baseline, protocol=proto))
        if len(seeds) > 1:
            order = orderings(records, protocol=proto)
            parts.append("\n### Orderings that hold at 95 %\n\nMethods by mean log perplexity over seeds, best "
                         "first; `<`: the paired interval of the two neighbours lies above 0, `≈`: it does not (no "
                         "ranking between them). Only neighbours are compared.\n\n"
                         + "".join(f"- {L}: {text}\n" for L, text in order.items()))
        noise = _noise_table(records, proto)
        if noise:
            parts.append("\n### Evaluation noise against seed noise\n\nHow much a number moves with other windows "
                         "of the same split (bootstrap over windows, treated as independent) and with another "
                         "training seed. Every method and seed is scored on the same windows, so the window noise "
                         "is shared by the rows being compared.\n\n" + noise)
    parts.append(task_section(records, run_dir))
    training = _training_table(records)
    if training:
        parts.append("\n## Training\n\n" + training)
    plot = plot_ppl_vs_length(ppl, run_dir / "ppl_vs_length.png")
    figures = "\n![ppl vs length](ppl_vs_length.png)\n"
    for name, drawn in (("loss by position", plot_loss_by_position(records, run_dir / "loss_by_position.png")),
                        ("training loss", plot_train_curves(records, run_dir / "train_curve.png")),
                        ("score vs distance", plot_score_vs_distance(records, run_dir / "score_vs_distance.png"))):
        if drawn is not None:
            figures += f"\n![{name}]({drawn.name})\n"
    report = run_dir / "report.md"
    report.write_text("".join(parts) + figures)
    return report, plot
