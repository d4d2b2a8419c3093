"""Tables and figures of the long-context tasks (:mod:`hopekit.eval.tasks`), made from records alone.

A task record is one metric of one cell: ``task`` (passkey, copy, ...), ``method``, ``seed``, ``eval_len``
and ``depth``, with ``metric`` ``accuracy`` (share of instances answered whole), ``token_accuracy``,
``answer_nll`` or ``answer_rank``. Where a cell was measured more than once (the same method, seed,
task, length and depth, e.g. after a re-evaluation), the last row counts.

* :func:`task_cells` — per (task, method, eval_len): the seed → mean over depths of one metric.
* :func:`task_table` — method × length, mean ± sd over seeds in %, the best mean of a column in bold.
* :func:`plot_task_accuracy` — accuracy against length, one panel per task, ± sd bands over seeds.
* :func:`plot_task_heatmap` — length × depth, one panel per method, the mean over seeds in each cell.
* :func:`task_section` — all of them as a markdown section (``hopekit report``, the bench report).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from .stats import summarize
from .tasks import TASKS

__all__ = ["task_rows", "task_cells", "task_table", "plot_task_accuracy", "plot_task_heatmap", "task_section"]


#: what must be the same for every row of a task for its cells to be compared in one table
SETTINGS = ("style", "filler", "scoring", "split", "corpus", "tokenizer")


def task_rows(records: list[dict[str, Any]], metric: str = "accuracy") -> list[dict[str, Any]]:
    """The rows of ``metric`` of every task cell, the last one where a cell was measured twice. A task
    measured under different :data:`SETTINGS` in one file is refused (one line naming the setting)."""
    last: dict[tuple, dict[str, Any]] = {}
    seen: dict[tuple[str, str], set] = {}
    for r in records:
        if r.get("task") in TASKS and r.get("metric") == metric and r.get("value") is not None:
            last[(r["task"], r["method"], r.get("seed"), r["eval_len"], float(r["depth"]))] = r
            for field in SETTINGS:
                seen.setdefault((r["task"], field), set()).add(repr(r.get(field)))
    for (task, field), values in seen.items():
        if len(values) > 1:
            raise ValueError(f"{task} records with several {field} values ({', '.join(sorted(values))}): one table "
                             f"compares one setting; report them from separate records files")
    return list(last.values())


def task_cells(records: list[dict[str, Any]], metric: str = "accuracy"
               ) -> tuple[list[str], list[str], list[int], dict[tuple[str, str, int], dict[Any, float]]]:
    """``(tasks, methods, lengths, cells)``: ``cells[(task, method, eval_len)]`` maps each seed to the mean
    of ``metric`` over the depths measured (methods in order of appearance, lengths ascending)."""
    by_seed: dict[tuple, list[float]] = defaultdict(list)
    tasks, methods, lengths = [], [], set()
    for r in task_rows(records, metric):
        if r["task"] not in tasks:
            tasks.append(r["task"])
        if r["method"] not in methods:
            methods.append(r["method"])
        lengths.add(int(r["eval_len"]))
        by_seed[(r["task"], r["method"], int(r["eval_len"]), r.get("seed"))].append(float(r["value"]))
    cells: dict[tuple[str, str, int], dict[Any, float]] = defaultdict(dict)
    for (task, method, L, seed), values in by_seed.items():
        cells[(task, method, L)][seed] = statistics.fmean(values)
    return tasks, methods, sorted(lengths), dict(cells)


def _train_len(records: list[dict[str, Any]]) -> int | None:
    lens = [int(r["train_len"]) for r in task_rows(records) if isinstance(r.get("train_len"), int)]
    return min(lens) if lens else None


def _pct_cell(values: dict[Any, float] | None) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{100 * next(iter(values.values())):.1f}"
    s = summarize(list(values.values()))
    return f"{100 * s.mean:.1f} ± {100 * s.sd:.1f}"


def task_table(records: list[dict[str, Any]], task: str, metric: str = "accuracy") -> str:
    """Method × eval_len of one task: ``metric`` (``accuracy`` or ``token_accuracy``) in %, mean over
    depths, then mean ± sd over seeds; the highest mean of each column in bold."""
    if metric not in ("accuracy", "token_accuracy"):
        raise ValueError(f"metric={metric!r}: task_table shows accuracy or token_accuracy (higher is better)")
    _, methods, lengths, cells = task_cells(records, metric)
    methods = [m for m in methods if any((task, m, L) in cells for L in lengths)]
    if not methods:
        return f"_no {task} records_\n"
    t0 = _train_len(records)
    means = {k: statistics.fmean(v.values()) for k, v in cells.items() if k[0] == task and v}
    best = {L: max((means[(task, m, L)] for m in methods if (task, m, L) in means), default=None) for L in lengths}
    head = ["method"] + [f"{L} ({L / t0:g}×)" if t0 else str(L) for L in lengths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = []
        for L in lengths:
            text = _pct_cell(cells.get((task, m, L)))
            mean = means.get((task, m, L))
            row.append(f"**{text}**" if mean is not None and mean == best[L] and mean > 0 else text)
        lines.append("| " + " | ".join([f"`{m}`"] + row) + " |")
    return "\n".join(lines) + "\n"


def plot_task_accuracy(records: list[dict[str, Any]], path: str | Path, metric: str = "accuracy") -> Path | None:
    """Accuracy (mean over depths) against length, one panel per task, a line per method with a ± sd
    band over seeds; None without task records."""
    from .report import _figure, _style

    tasks, methods, lengths, cells = task_cells(records, metric)
    if not tasks:
        return None
    fig, axes = _figure(1, len(tasks), size=(5.2 * len(tasks), 4.2))
    axes = list(axes.flat) if hasattr(axes, "flat") else [axes]
    seeds = len({r.get("seed") for r in task_rows(records, metric)})
    for ax, task in zip(axes, tasks):
        for m in methods:
            pts = [(L, list(cells[(task, m, L)].values())) for L in lengths if cells.get((task, m, L))]
            if not pts:
                continue
            xs = [L for L, _ in pts]
            ys = [100 * statistics.fmean(v) for _, v in pts]
            (line,) = ax.plot(xs, ys, _style(m), marker="o", markersize=3.5, label=m)
            if any(len(v) > 1 for _, v in pts):
                sd = [100 * statistics.stdev(v) if len(v) > 1 else 0.0 for _, v in pts]
                ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                                color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.minorticks_off()
        ax.set_ylim(-3, 103)
        ax.set_xlabel("evaluation length (tokens)")
        ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
        ax.set_title(f"{task} ({seeds} seed{'s' if seeds != 1 else ''}, mean over depths)")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_task_heatmap(records: list[dict[str, Any]], task: str, path: str | Path,
                      metric: str = "accuracy") -> Path | None:
    """Length (x) × depth (y) of one task, one panel per method, each cell the mean over seeds of
    ``metric`` in % (written in the cell); None without records of ``task``."""
    rows = [r for r in task_rows(records, metric) if r["task"] == task]
    if not rows:
        return None
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({int(r["eval_len"]) for r in rows})
    depths = sorted({float(r["depth"]) for r in rows})
    values: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        values[(r["method"], int(r["eval_len"]), float(r["depth"]))].append(float(r["value"]))
    from .report import _figure

    cols = min(4, len(methods))
    nrows = math.ceil(len(methods) / cols)
    fig, axes = _figure(nrows, cols, size=(3.3 * cols + 0.8, 2.9 * nrows + 0.3))
    axes = list(axes.flat) if hasattr(axes, "flat") else [axes]
    image = None
    for ax, m in zip(axes, methods):
        grid = [[100 * statistics.fmean(values[(m, L, d)]) if values.get((m, L, d)) else math.nan for L in lengths]
                for d in depths]
        image = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis", aspect="auto", origin="lower")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=6.5,
                            color="white" if v < 60 else "black")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths], fontsize=7, rotation=45)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.set_xlabel("length", fontsize=8)
        ax.set_ylabel("depth", fontsize=8)
    for ax in axes[len(methods):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=axes[:len(methods)], shrink=0.8, label=f"{metric.replace('_', ' ')} (%)")
    seeds = len({r.get("seed") for r in rows})
    fig.suptitle(f"{task}: {metric.replace('_', ' ')} by length and depth (mean of {seeds} seed"
                 f"{'s' if seeds != 1 else ''})", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


_SCORING = {"likelihood": "teacher-forced: right when every answer token is the model's argmax given the true "
                           "prefix, greedy decoding's verdict in one forward (for length-dependent encodings such as "
                           "dynamic NTK, with the spectrum of the whole instance at every answer token)",
            "generation": "greedy decoding through the KV cache"}


def task_section(records: list[dict[str, Any]], run_dir: str | Path, *, heading: str = "##",
                 title: str = "Long-context tasks") -> str:
    """The tasks part of a report under ``heading title`` (tables per task and metric one level below, the
    figures written into ``run_dir``); ``""`` without task records."""
    tasks, methods, lengths, _ = task_cells(records)
    if not tasks:
        return ""
    run_dir = Path(run_dir)
    rows = task_rows(records)
    first = rows[0]
    depths = sorted({float(r["depth"]) for r in rows})
    parts = [f"\n{heading} {title}\n\n"
             f"Instances of exactly the evaluated length in the `{first.get('style', '?')}` format, filler from the "
             f"`{first.get('split', '?')}` split of `{first.get('corpus', '?')}`, "
             f"{' or '.join(str(n) for n in sorted({r.get('instances') for r in rows}, key=str))} "
             f"instances per length and depth (the same instances for every method and seed) at depths "
             f"{', '.join(f'{d:g}' for d in depths)}, scored by `{first.get('scoring', '?')}` "
             f"({_SCORING.get(first.get('scoring'), '?')}). Cells: accuracy in % (the share of instances answered "
             "whole), mean over depths, then mean ± sd over seeds (the same instances for every seed, so the sd is "
             "training noise only); the highest mean of each column in **bold**. Token accuracy: the share of "
             "answer tokens right.\n"]
    for task in tasks:
        parts.append(f"\n{heading}# {task}: accuracy (%)\n\n" + task_table(records, task))
        parts.append(f"\n{heading}# {task}: token accuracy (%)\n\n" + task_table(records, task, "token_accuracy"))
        drawn = plot_task_heatmap(records, task, run_dir / f"tasks_{task}_heatmap.png")
        if drawn is not None:
            parts.append(f"\n![{task} by length and depth]({drawn.name})\n")
    drawn = plot_task_accuracy(records, run_dir / "tasks_accuracy.png")
    if drawn is not None:
        parts.append(f"\n![task accuracy vs length]({drawn.name})\n")
    return "".join(parts)
