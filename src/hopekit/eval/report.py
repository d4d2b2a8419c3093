"""Reports and plots made from records alone (never from models).

``write_report(run_dir)`` reads ``records.jsonl`` and writes ``report.md`` (perplexity per method ×
evaluation length, plus the in-distribution delta against rope) and ``ppl_vs_length.png``.
Published runs: docs/results/. Figures are drawn on a ``matplotlib.figure.Figure`` with the Agg
canvas, so the caller's matplotlib backend (and pyplot's figure list) is never touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .records import read_records

__all__ = ["ppl_table", "markdown_table", "plot_ppl_vs_length", "plot_loss_by_position", "write_report"]


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}" if x < 1000 else f"{x:.3g}"


def ppl_table(records: list[dict[str, Any]], protocol: str | None = None) -> tuple[list[str], list[int], dict]:
    """(methods in first-seen order, eval lengths, {(method, eval_len): ppl}) for task "lm", metric "ppl".

    If a (method, eval_len) was measured more than once (e.g. a resumed run re-measured), the last
    record wins.
    """
    rows = [r for r in records if r.get("task") == "lm" and r.get("metric") == "ppl"
            and (protocol is None or r.get("protocol") == protocol)]
    methods: list[str] = []
    lengths: set[int] = set()
    table: dict[tuple[str, int], float] = {}
    for r in rows:
        if r["method"] not in methods:
            methods.append(r["method"])
        lengths.add(int(r["eval_len"]))
        table[(r["method"], int(r["eval_len"]))] = r["value"] if r["value"] is not None else float("nan")
    return methods, sorted(lengths), table


def markdown_table(records: list[dict[str, Any]], *, baseline: str = "rope", protocol: str | None = None) -> str:
    methods, lengths, table = ppl_table(records, protocol)
    if not methods:
        return "_no perplexity records_\n"
    train_lens = {r["method"]: int(r["train_len"]) for r in records if r.get("metric") == "ppl"}
    t0 = min(train_lens.values())
    head = ["method"] + [f"{L} ({L / t0:g}×)" for L in lengths] + [f"Δ vs {baseline} @ {t0}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = table.get((baseline, t0))
    for m in methods:
        cells = [_fmt(table.get((m, L))) for L in lengths]
        own = table.get((m, t0))
        delta = "—" if base is None or own is None or m == baseline else f"{own - base:+.2f}"
        lines.append("| " + " | ".join([f"`{m}`"] + cells + [delta]) + " |")
    return "\n".join(lines) + "\n"


def _figure():
    """A figure and its axes on the Agg canvas, outside pyplot (no backend switch, nothing to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _finish(fig, ax, path: str | Path) -> Path:
    """Grid, legend, tight layout, save as PNG."""
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_ppl_vs_length(records: list[dict[str, Any]], path: str | Path, *, protocol: str | None = None,
                       title: str = "Perplexity vs evaluation length") -> Path:
    methods, lengths, table = ppl_table(records, protocol)
    fig, ax = _figure()
    for m in methods:
        xs = [L for L in lengths if (m, L) in table and math.isfinite(table[(m, L)])]
        ys = [table[(m, L)] for L in xs]
        style = "--" if "+" in m else "-"        # eval-time extensions of the rope model: dashed
        ax.plot(xs, ys, style, marker="o", markersize=3.5, label=m)
    train_lens = sorted({int(r["train_len"]) for r in records if r.get("metric") == "ppl"})
    for L in train_lens:
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(lengths, [str(L) for L in lengths])
    ax.set_xlabel("evaluation length (tokens); dotted: training length")
    ax.set_ylabel("perplexity (log scale)")
    protocols = sorted({r.get("protocol", "?") for r in records if r.get("metric") == "ppl"})
    ax.set_title(f"{title} [{', '.join(protocols)}]", fontsize=10)
    return _finish(fig, ax, path)


def plot_loss_by_position(records: list[dict[str, Any]], path: str | Path, *,
                          eval_len: int | None = None) -> Path | None:
    """Mean loss vs position inside the window (binned), one line per method, at ``eval_len``
    (default: the longest length measured). Returns None if there are no such records."""
    rows = [r for r in records if r.get("metric") == "loss_by_position" and r.get("value")]
    if not rows:
        return None
    eval_len = eval_len or max(int(r["eval_len"]) for r in rows)
    latest = {r["method"]: r for r in rows if int(r["eval_len"]) == eval_len}   # last record wins
    fig, ax = _figure()
    for method, r in latest.items():
        centres = [(a + b) / 2 for a, b in zip(r["bin_start"], r["bin_end"])]
        ax.plot(centres, r["value"], "--" if "+" in method else "-", label=method)
    for L in sorted({int(r["train_len"]) for r in latest.values()}):
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"position inside a window of {eval_len} tokens; dotted: training length")
    ax.set_ylabel("mean next-token loss (nats)")
    ax.set_title("Loss by position", fontsize=10)
    return _finish(fig, ax, path)


_PRETRAINED = ("Rows are one pretrained model (`hopekit eval --hf`): its own encoding, and rows named "
               "`<own>+<method>` with that encoding patched in at evaluation time, without fine-tuning (rows "
               "named `finetuned:<method>` are a model fine-tuned with it, `hopekit train --hf`). Lengths "
               "are shown as multiples of the model's window; the last column is the perplexity at the window "
               "minus the model's own.\n")


def write_report(run_dir: str | Path, *, baseline: str = "rope") -> tuple[Path, Path]:
    """Regenerate ``report.md`` and ``ppl_vs_length.png`` in ``run_dir`` from its ``records.jsonl``
    (a malformed row is refused by :func:`~hopekit.eval.records.read_records`, naming file and line)."""
    run_dir = Path(run_dir)
    records_path = run_dir / "records.jsonl"
    if not records_path.exists():
        raise FileNotFoundError(f"{records_path}: no records to report (run `hopekit bench` first)")
    records = read_records(records_path)
    ppl = [r for r in records if r.get("metric") == "ppl"]
    protocols = sorted({r.get("protocol", "?") for r in ppl})
    corpora = sorted({str(r.get("corpus")) for r in ppl})
    commits = sorted({str(r.get("commit")) for r in ppl})
    seeds = sorted({str(r.get("seed")) for r in ppl})
    parts = [f"# {run_dir.name}: perplexity vs evaluation length\n",
             f"Corpus: {', '.join(corpora)}; protocol: {', '.join(protocols)}; seeds: {', '.join(seeds)}; "
             f"commit(s): {', '.join(commits)}.\n",
             _PRETRAINED if any("hf" in r for r in ppl) else
             "Rows are methods trained from scratch with the same data, seed and budget; rows named "
             "`rope+<method>` are the rope model evaluated with that encoding swapped in at evaluation "
             "time, without fine-tuning. The last column is the in-distribution (1×) perplexity minus "
             f"`{baseline}`'s.\n"]
    for proto in protocols:
        parts.append(f"\n## Protocol: {proto}\n\n" + markdown_table(records, baseline=baseline, protocol=proto))
    extra = [r for r in records if r.get("task") == "bench" and r.get("metric") == "train_seconds"]
    if extra:
        parts.append("\n## Training\n\n| method | train seconds | final train loss |\n|---|---|---|\n")
        losses = {r["method"]: r["value"] for r in records
                  if r.get("task") == "bench" and r.get("metric") == "final_train_loss"}
        for r in extra:
            loss = losses.get(r["method"])
            parts.append(f"| `{r['method']}` | {r['value']:.1f} | {_fmt(loss) if loss is not None else '—'} |\n")
    plot = plot_ppl_vs_length(ppl, run_dir / "ppl_vs_length.png")
    by_position = plot_loss_by_position(records, run_dir / "loss_by_position.png")
    figures = "\n![ppl vs length](ppl_vs_length.png)\n"
    if by_position is not None:
        figures += "\n![loss by position](loss_by_position.png)\n"
    report = run_dir / "report.md"
    report.write_text("".join(parts) + figures)
    return report, plot
