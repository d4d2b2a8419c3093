"""``hopekit analyze distance``: score-vs-distance curves and their oscillation / monotonicity figures for
any set of encodings (a bench preset's ``methods`` map, grids included, or one ``--pe``), written as
records and drawn from them.

The study of the seeds' claim C1 (docs/results/score_distance.md, ``scripts/analysis_distance.py``)
goes further (per-channel figures, the Descartes bound); this is the command a user runs on their own
encodings and shapes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from hopekit import pe as pe_lib

__all__ = ["distance_windows", "analyze_distance", "distance_table", "plot_distance"]

TASK = "score_vs_distance"


def distance_windows(train_len: int, max_distance: int) -> list[tuple[int, int]]:
    """Windows of Δ: inside the training window, then 1–4× and 4–16× it (as far as ``max_distance``)."""
    edges = [0] + [m * train_len for m in (1, 4, 16, 64, 256) if m * train_len < max_distance] + [max_distance]
    return list(zip(edges[:-1], edges[1:]))


def analyze_distance(methods: Mapping[str, pe_lib.Params], *, head_dim: int, num_heads: int, train_len: int,
                     max_distance: int, out: str | Path, sources: Sequence[str] = ("aligned", "gaussian"),
                     seeds: Sequence[int] = (0, 1, 2), samples: int = 32, head: int = 0,
                     log: Callable[[str], None] = print) -> Path:
    """Score curves of every method, per source (aligned probe; i.i.d. Gaussian q/k with ``samples`` draws
    per seed), with per-window sign changes, total-variation ratio and monotone fraction, and the
    post-softmax weight on keys more than ``train_len`` back for a query at ``max_distance``. Appends
    ``out/records.jsonl`` (a (method, source, seed) already recorded with the same parameters is skipped)
    and draws ``out/score_vs_distance.png`` from the records. Returns the records path."""
    from .distance import attention_weight_vs_distance, score_vs_distance
    from .metrics import curve_far_mass, monotone_fraction, oscillation
    from .plots import bin_curve, log_bins
    from hopekit.eval.records import append_records, make_record, read_records, record_key

    for name, value in (("head_dim", head_dim), ("num_heads", num_heads), ("train_len", train_len),
                        ("max_distance", max_distance), ("samples", samples)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: expected an int >= 1")
    bad = [s for s in sources if s not in ("aligned", "gaussian")]
    if bad or not sources:
        raise ValueError(f"sources={list(sources)!r}: expected 'aligned' and/or 'gaussian'")
    if not methods:
        raise ValueError("methods: nothing to analyse")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    key_fields = ("method", "params", "source", "seed", "head_dim", "num_heads", "train_len", "eval_len", "head")
    done = {record_key(r, key_fields) for r in (read_records(path) if path.exists() else [])
            if r.get("metric") == "score_curve"}
    distances = torch.arange(0, max_distance + 1)
    windows = distance_windows(train_len, max_distance)
    edges = log_bins(max_distance)
    scale = 1.0 / math.sqrt(head_dim)
    for name, params in methods.items():
        enc = pe_lib.build(params, head_dim=head_dim, num_heads=num_heads, d_model=head_dim * num_heads)
        if any(True for _ in enc.parameters()) and not hasattr(enc, "rates"):
            log(f"{name}: skipped (its positions are learned weights; analyse a trained model instead)")
            continue
        runs = [("aligned", None)] * ("aligned" in sources) + [("gaussian", s) for s in seeds] * ("gaussian" in sources)
        for source, seed in runs:
            common = dict(method=name, params=pe_lib.to_config(params), train_len=train_len, eval_len=max_distance + 1,
                          task=TASK, model=None, corpus=None, source=source, seed=seed, head=head,
                          head_dim=head_dim, num_heads=num_heads)
            if record_key(common, key_fields) in done:
                continue
            if source == "aligned":
                curves = score_vs_distance(enc, distances, head=head)[None]
            else:
                curves = score_vs_distance(enc, distances, source="gaussian", samples=samples, seed=seed, head=head)
            rows = []
            per_window: dict[tuple[str, tuple[int, int]], list[float]] = {}
            far = []
            for c in curves:
                for w, row in zip(windows, oscillation(c, distances, windows)):
                    part = c[w[0]:w[1] + 1]
                    for metric, v in (("sign_changes", row["sign_changes"]), ("tv_ratio", row["tv_ratio"]),
                                      ("monotone_fraction", monotone_fraction(part, "either"))):
                        per_window.setdefault((metric, w), []).append(float(v))
                far.append(curve_far_mass(attention_weight_vs_distance(c, scale=scale), distances, train_len))
            reduce = "mean over the samples" if len(curves) > 1 else None
            for (metric, w), values in per_window.items():
                finite = [v for v in values if math.isfinite(v)]
                rows.append(make_record(metric=metric, value=sum(finite) / len(finite) if finite else math.inf,
                                        window=list(w), reduce=reduce, **common))
            rows.append(make_record(metric="far_token_mass", value=sum(far) / len(far), beyond=train_len,
                                    query_pos=max_distance, reduce=reduce, **common))
            b = bin_curve(curves[0], distances, edges)
            w = bin_curve(attention_weight_vs_distance(curves[0], scale=scale), distances, edges)
            rows.append(make_record(metric="score_curve", value=b["mean"], distances=b["distances"],
                                    score_lo=b["min"], score_hi=b["max"], weight=w["mean"],
                                    binned="mean per bin (score_lo/score_hi: min/max); the first sample", **common))
            append_records(path, rows)
            log(f"{name} ({source}{'' if seed is None else f', seed {seed}'}): recorded")
    plot_distance(read_records(path), out / "score_vs_distance.png")
    return path


def distance_table(records: Sequence[Mapping[str, Any]]) -> str:
    """A markdown table from the records of :func:`analyze_distance`: per method and source, sign changes
    and monotone fraction per window (mean ± sd over seeds for Gaussian q/k) and the far-token mass."""
    from hopekit.eval.report import _cell

    rows = [r for r in records if r.get("task") == TASK]
    windows = sorted({tuple(r["window"]) for r in rows if r.get("window")})
    keys = list(dict.fromkeys((r["method"], r["source"]) for r in rows))
    head = ["method", "q, k"] + [f"sign changes Δ {a}–{b}" for a, b in windows] + \
           [f"monotone Δ {a}–{b}" for a, b in windows] + ["far-token mass"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, source in keys:
        mine = [r for r in rows if r["method"] == method and r["source"] == source]

        def cell(metric: str, window: tuple[int, int] | None = None) -> str:
            values = {r["seed"]: r["value"] for r in mine if r["metric"] == metric
                      and (window is None or tuple(r.get("window") or ()) == window)}
            return _cell(values)

        lines.append("| " + " | ".join([f"`{method}`", source] + [cell("sign_changes", w) for w in windows]
                                       + [cell("monotone_fraction", w) for w in windows]
                                       + [cell("far_token_mass")]) + " |")
    return "\n".join(lines)


def plot_distance(records: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Every method's score and post-softmax weight curve (the aligned probe, else the first Gaussian
    seed) from the records."""
    from .plots import plot_score_curves

    curves: dict[str, Mapping[str, Any]] = {}
    for r in records:
        if r.get("metric") == "score_curve" and r.get("task") == TASK:
            if r["method"] not in curves or r.get("source") == "aligned":
                curves[r["method"]] = r
    return plot_score_curves(list(curves.values()), path)
