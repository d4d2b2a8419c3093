"""docs/results/score_distance.md — C1: "RoPE's scores oscillate with distance while hope_hyperbolic's
decay monotonically", measured on score-vs-distance curves.

    python scripts/analysis_distance.py --out docs/results/score_distance --page docs/results/score_distance.md
    python scripts/analysis_distance.py --out docs/results/score_distance --page docs/results/score_distance.md --page-only

The first form measures (rewrites ``<out>/records.jsonl``; it takes seconds), then writes the page and
its PNGs **from the records alone**; ``--page-only`` skips the measurement.

What is measured: rope, hope_hyperbolic, hope_highfreq and alibi as the default bench builds them
(``hopekit.bench.bench_shape("default")``: head_dim 32, 4 heads, train_len 128; head 0 reported), at
every integer distance 0 … 16384 (128× train_len; the bench evaluates to 16× = 2048), with q and k

* the aligned probe (every pair (1, 0)), one deterministic curve per method;
* i.i.d. N(0, 1) q and k (:data:`SAMPLES` pairs per seed, seeds :data:`SEEDS`): each metric is averaged
  over the pairs of a seed, and the page shows mean ± sd of those averages across the seeds.

Metrics (hopekit.analysis.metrics): sign changes, total variation and TV / |net change| per window;
the share of monotone steps; hope_hyperbolic per eigenbasis channel and per pair (float64 closed form
with the encoding's own rates); the post-softmax weight of a query at m on keys more than 128 back.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

METHODS = ("rope", "hope_hyperbolic", "hope_highfreq", "alibi")
SEEDS = (0, 1, 2)
SAMPLES = 32
MAX_DISTANCE = 16384
#: oscillation windows (closed intervals; adjacent windows share their boundary sample), then the wholes
WINDOWS = ((0, 128), (128, 512), (512, 2048), (2048, 16384))
WHOLE = ((0, 2048), (0, 16384))
#: queries at these positions m (keys at every position 0 … m) for the post-softmax metrics
QUERIES = (512, 2048, 16384)
BEYOND = 128
HEAD = 0
TASK = "score_distance"


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------


def _encodings() -> tuple[dict[str, Any], dict[str, int]]:
    from hopekit.bench import bench_shape, load_bench

    bench = load_bench("default")
    shape = bench_shape("default")
    encs = {}
    for name in METHODS:
        cfg = bench.method_config(name)
        encs[name] = cfg.model_config(vocab_size=256).build_pe()
        assert encs[name].head_dim == shape["head_dim"] and encs[name].num_heads == shape["num_heads"]
    return encs, shape


def _abel_factor(q, k) -> float:
    """max_i |h_{i+1} − h_i| with h_i = q̂_i conj(k̂_i) (half-split pairs) and h_{d/2} = 0: the factor of
    RoFormer's bound for this q, k."""
    import torch

    half = q.shape[-1] // 2
    h = torch.complex(q[:half].double(), q[half:].double()) * torch.complex(k[:half].double(), k[half:].double()).conj()
    return float((torch.cat([h[1:], torch.zeros(1, dtype=h.dtype)]) - h).abs().max())


PAIR_FIGURE_MAX = 512
PAIR_FIGURE_PAIRS = 4


def pair_figure_records(record, name: str, ch: dict, distances) -> None:
    """The first Gaussian sample whose score is not monotone on Δ 0–128: its total and its
    :data:`PAIR_FIGURE_PAIRS` largest pairs (float64, every Δ up to :data:`PAIR_FIGURE_MAX`)."""
    from hopekit.analysis.metrics import monotone_fraction

    n = PAIR_FIGURE_MAX + 1
    bumpy = [j for j in range(ch["score"].shape[0]) if monotone_fraction(ch["score"][j, :129], "either") < 1]
    if not bumpy:
        return
    ext = ch["pair_extremum"]
    visible = (ext > 0) & (ext < 128)                                   # NaN compares False
    pick = next((j for j in bumpy if bool(visible[j].any())), bumpy[0])
    pairs = ch["pair_curves"][pick, :, :n]
    # the pairs with an extremum below Δ = 128 first, then the largest
    order = sorted(range(pairs.shape[0]), key=lambda i: (not bool(visible[pick, i]), -float(pairs[i].abs().max())))
    top = sorted(order[:PAIR_FIGURE_PAIRS])
    common = dict(source="gaussian", seed=SEEDS[0], sample=pick, distances=distances[:n].tolist(), eval_len=n)
    record(name, "pair_curve", ch["score"][pick, :n].tolist(), label="whole score", pair=None, **common)
    for i in top:
        ext = float(ch["pair_extremum"][pick, i])
        label = f"pair {i}" + (" (monotone)" if not math.isfinite(ext) else f" (extremum at Δ = {ext:.0f})"
                               if ext <= PAIR_FIGURE_MAX else f" (extremum at Δ = {ext:.0f}, off the plot)")
        record(name, "pair_curve", pairs[i].tolist(), label=label, pair=i, pair_extremum=ext if math.isfinite(ext) else None,
               **common)


def measure(out: Path) -> Path:
    import torch

    from hopekit import pe
    from hopekit.analysis.distance import (attention_weight_vs_distance, gaussian_qk, rope_decay_bound,
                                           score_vs_distance)
    from hopekit.analysis.metrics import (channel_monotonicity, curve_far_mass, monotone_fraction, oscillation,
                                          sign_changes)
    from hopekit.analysis.plots import bin_curve, log_bins
    from hopekit.eval.records import append_records, make_record

    torch.set_num_threads(1)
    encs, shape = _encodings()
    head_dim, train_len = shape["head_dim"], shape["train_len"]
    scale = 1.0 / math.sqrt(head_dim)
    distances = torch.arange(0, MAX_DISTANCE + 1)
    windows = list(WINDOWS) + list(WHOLE)
    edges = {m: log_bins(m) for m in (2048, MAX_DISTANCE)}
    rows: list[dict[str, Any]] = []

    def record(name: str, metric: str, value: Any, **fields: Any) -> None:
        fields.setdefault("eval_len", MAX_DISTANCE + 1)
        rows.append(make_record(method=name, params=pe.to_config(encs[name].params), train_len=train_len, task=TASK,
                                metric=metric, value=value, model=None, corpus=None, head=HEAD, head_dim=head_dim,
                                num_heads=shape["num_heads"], **fields))

    def curve_metrics(scores: torch.Tensor) -> dict[tuple[str, tuple[int, int]], float]:
        """{(metric, window): value} for one curve over ``distances``."""
        got = {}
        for row in oscillation(scores, distances, windows):
            w = tuple(int(x) for x in row["window"])
            got[("oscillation_sign_changes", w)] = float(row["sign_changes"])
            got[("oscillation_total_variation", w)] = row["total_variation"]
            got[("oscillation_net_change", w)] = row["net_change"]
            got[("oscillation_tv_ratio", w)] = row["tv_ratio"]
            part = scores[w[0]:w[1] + 1]
            got[("monotone_fraction_decreasing", w)] = monotone_fraction(part, "decreasing")
            got[("monotone_fraction", w)] = monotone_fraction(part, "either")
            got[("monotone_share", w)] = float(got[("monotone_fraction", w)] == 1.0)
            got[("direction_changes", w)] = float(sign_changes(part.diff())[0])   # local extrema
        for m in QUERIES:
            weights = attention_weight_vs_distance(scores[: m + 1], scale=scale)
            got[("far_mass", (m, BEYOND))] = curve_far_mass(weights, distances[: m + 1], BEYOND)
        return got

    def plot_curve(name: str, source: str, scores: torch.Tensor, m: int, seed: Any, *, spread=None, bound=None) -> None:
        b = bin_curve(scores[: m + 1], distances[: m + 1], edges[m])
        w = bin_curve(attention_weight_vs_distance(scores[: m + 1], scale=scale), distances[: m + 1], edges[m])
        extra = {"score_lo": b["min"], "score_hi": b["max"], "weight": w["mean"]}
        if spread is not None:
            extra["spread"] = bin_curve(spread[: m + 1], distances[: m + 1], edges[m])["mean"]
        if bound is not None:
            extra["bound"] = bin_curve(bound[: m + 1], distances[: m + 1], edges[m])["max"]
        record(name, "score_curve", b["mean"], distances=b["distances"], source=source, seed=seed, query_pos=m,
               eval_len=m + 1, binned="mean per bin; score_lo/score_hi: min/max; weight: mean per key", **extra)

    for name, enc in encs.items():
        bound = None
        if isinstance(enc, pe.RotaryEncoding):
            inv_freq = enc.spectrum().inv_freq
            record(name, "rotating_pairs", int((inv_freq > 0).sum()), source=None, seed=None, pairs=int(inv_freq.numel()))
            if bool((inv_freq > 0).all()):   # RoFormer's bound is about rotating pairs; a position-free pair adds a floor
                bound = rope_decay_bound(inv_freq, distances) * inv_freq.numel()
        if hasattr(enc, "slopes"):
            slopes = enc.slopes().tolist()
            record(name, "bias_slope", slopes[HEAD], source=None, seed=None, slopes=slopes)
        if hasattr(enc, "rates"):
            record(name, "slowest_decay_rate", float(enc.rates()[HEAD % enc.rates().shape[0]].min()), source=None,
                   seed=None)
        # ----- the aligned probe
        s = score_vs_distance(enc, distances, head=HEAD)
        for (metric, w), v in curve_metrics(s).items():
            extra = {"query_pos": w[0], "beyond": w[1], "eval_len": w[0] + 1} if metric == "far_mass" else {"window": list(w)}
            record(name, metric, v, source="aligned", seed=None, **extra)
        for m in (2048, MAX_DISTANCE):
            plot_curve(name, "aligned", s, m, None, bound=bound)
        if bound is not None:
            record(name, "decay_bound_ratio_max", float((s.abs() / bound).max()), source="aligned", seed=None,
                   window=[0, MAX_DISTANCE], reduce="max over Δ of |s(Δ)| / ((d/2)·B(Δ))")
        if hasattr(enc, "rates"):
            ch = channel_monotonicity(enc, distances, head=HEAD)
            assert float((ch["score"][0] - s).abs().max()) < 1e-5 * float(s.abs().max())  # float32 path vs float64
            record(name, "channel_monotone_fraction", float(ch["channel_monotone"].min()), source="aligned",
                   seed=None, window=[0, MAX_DISTANCE], reduce="min over channels")
            record(name, "pair_monotone_fraction", float(ch["pair_monotone"].min()), source="aligned",
                   seed=None, window=[0, MAX_DISTANCE], reduce="min over pairs")
            record(name, "pairs_with_interior_extremum", float((~ch["pair_extremum"].isnan()).float().mean()),
                   source="aligned", seed=None, window=[0, MAX_DISTANCE], reduce="share of pairs")
        # ----- Gaussian q, k
        for seed in SEEDS:
            s = score_vs_distance(enc, distances, source="gaussian", samples=SAMPLES, seed=seed, head=HEAD)
            per_sample = defaultdict(list)
            for j in range(SAMPLES):
                for key, v in curve_metrics(s[j]).items():
                    per_sample[key].append(v)
            for (metric, w), values in per_sample.items():
                extra = {"query_pos": w[0], "beyond": w[1], "eval_len": w[0] + 1} if metric == "far_mass" else {"window": list(w)}
                finite = [v for v in values if math.isfinite(v)]
                value = statistics.fmean(finite) if finite else math.inf
                record(name, metric, value, source="gaussian", seed=seed, samples=SAMPLES,
                       reduce=f"mean over the samples (finite values: {len(finite)} of {len(values)})", **extra)
            q, k = gaussian_qk(head_dim, samples=SAMPLES, seed=seed)   # the draws behind source="gaussian"
            sd = s.std(0)
            for delta in (0, train_len, 2048, MAX_DISTANCE):
                record(name, "score_sd", float(sd[delta]), source="gaussian", seed=seed, samples=SAMPLES,
                       distance=delta, reduce="sd over the samples at this Δ")
            if bound is not None:
                ratio = max(float((s[j].abs() / (bound * _abel_factor(q[j], k[j]))).max()) for j in range(SAMPLES))
                record(name, "decay_bound_ratio_max", ratio, source="gaussian", seed=seed, samples=SAMPLES,
                       window=[0, MAX_DISTANCE], reduce="max over samples and Δ of |s(Δ)| / (max|Δh|·(d/2)·B(Δ))")
            if seed == SEEDS[0]:
                b0 = bound * _abel_factor(q[0], k[0]) if bound is not None else None
                for m in (2048, MAX_DISTANCE):
                    plot_curve(name, "gaussian", s[0], m, seed, spread=sd, bound=b0)
            if hasattr(enc, "rates"):
                ch = channel_monotonicity(enc, distances, q=q, k=k, head=HEAD)
                scale_ref = s.abs().amax(-1, keepdim=True)
                assert float(((ch["score"] - s).abs() / scale_ref).max()) < 1e-5
                order = ch["rates"].argsort()
                w_sorted = torch.sign(ch["weights"][:, order])
                descartes = (w_sorted[:, 1:] != w_sorted[:, :-1]).sum(-1).double()
                common = dict(source="gaussian", seed=seed, samples=SAMPLES, window=[0, MAX_DISTANCE])
                record(name, "channel_monotone_fraction", float(ch["channel_monotone"].min()),
                       reduce="min over samples and channels", **common)
                record(name, "pair_monotone_fraction", float(ch["pair_monotone"].mean()),
                       reduce="mean over samples and pairs", **common)
                record(name, "pairs_with_interior_extremum", float((~ch["pair_extremum"].isnan()).double().mean()),
                       reduce="share of (sample, pair)s", **common)
                early = (ch["pair_extremum"] < train_len).double().mean()            # NaN compares False
                record(name, "pairs_with_extremum_below_train_len", float(early),
                       reduce=f"share of (sample, pair)s with an interior extremum at Δ* < {train_len}", **common)
                ext = ch["pair_extremum"][~ch["pair_extremum"].isnan()]
                record(name, "pair_extremum_median", float(ext.median()) if ext.numel() else None,
                       reduce="median Δ* over (sample, pair)s with an interior extremum", **common)
                record(name, "descartes_sign_change_bound", float(descartes.mean()),
                       reduce="mean over samples of the sign changes of the channel weights ordered by rate "
                              "(an upper bound on the curve's zeros)", **common)
                # the bound, checked on the float64 curves (the float32 ones underflow to exact 0 far out)
                zeros64 = torch.tensor([oscillation(row, distances)[0]["sign_changes"] for row in ch["score"]],
                                       dtype=torch.float64)
                assert (zeros64 <= descartes).all()
                record(name, "oscillation_sign_changes_float64", float(zeros64.mean()),
                       reduce="mean over samples, float64 closed form", **common)
                if seed == SEEDS[0]:
                    pair_figure_records(record, name, ch, distances)
    path = out / "records.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    append_records(path, rows)
    print(f"{len(rows)} records -> {path}")
    return path


# --------------------------------------------------------------------------------------------------
# Page
# --------------------------------------------------------------------------------------------------


def _cell(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if any(isinstance(v, str) or not math.isfinite(v) for v in values):
        return "∞" if all(isinstance(v, str) or math.isinf(v) for v in values) else "∞ (some seeds)"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} ± {statistics.stdev(values):.2g}"


def _num(v: Any) -> float:
    return math.inf if v == "inf" else (-math.inf if v == "-inf" else float(v))


def page(out: Path, page_path: Path) -> Path:
    from hopekit.analysis.plots import plot_score_curves
    from hopekit.eval.records import read_records

    records = read_records(out / "records.jsonl")
    if not records:
        sys.exit(f"{out / 'records.jsonl'}: no records; run without --page-only first")
    methods = [m for m in METHODS if any(r["method"] == m for r in records)]
    table: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r["metric"] in ("score_curve", "pair_curve") or r["value"] is None:
            continue
        if "window" in r:
            key = tuple(r["window"])
        elif "beyond" in r:
            key = (r["query_pos"], r["beyond"])
        elif "distance" in r:
            key = ("Δ", r["distance"])
        else:
            key = ()
        table[(r["method"], r["source"], r["metric"], key)].append(_num(r["value"]))
        if r["metric"] == "rotating_pairs":
            table[(r["method"], None, "pairs", ())].append(float(r["pairs"]))
        table[(r["method"], None, "head_dim", ())] = [float(r["head_dim"])]
        table[(r["method"], None, "train_len", ())] = [float(r["train_len"])]

    def get(method: str, source: str, metric: str, window: tuple) -> list[float]:
        return table.get((method, source, metric, window), [])

    # ----- figures, from the score_curve records
    rel = Path(out.name)
    figures = []
    for source, m, title in (("aligned", 2048, "aligned probe, to 16× train_len; weights of a query at m = 2048"),
                             ("aligned", MAX_DISTANCE, "aligned probe, to 128× train_len; weights of a query at m = 16384"),
                             ("gaussian", 2048, "one Gaussian q, k pair (seed 0, sample 0), query at m = 2048; "
                                                "dotted: ± sd over the seed's samples")):
        curves = [r for r in records if r["metric"] == "score_curve" and r["source"] == source and r["query_pos"] == m]
        if curves:
            for c in curves:
                c["label"] = c["method"]
            png = plot_score_curves(curves, out / f"{source}_{m}.png", title=f"Score vs distance: {title}")
            figures.append((title, rel / png.name))
    pair_rows = [r for r in records if r["metric"] == "pair_curve"]
    if pair_rows:
        sample = pair_rows[0]["sample"]
        title = (f"hope_hyperbolic, Gaussian q, k (seed {pair_rows[0]['seed']}, sample {sample}): a non-monotone\n"
                 f"score and its pairs (with an extremum below Δ = 128 first, then the largest)")
        png = plot_score_curves(pair_rows, out / "hope_hyperbolic_pairs.png", title=title, yscale="linear",
                                weight_panel=False)
        figures.append((title.replace("\n", " "), rel / png.name))

    any_r = records[0]
    params = {r["method"]: r["params"] for r in records}
    lines = [
        "# C1: score vs distance — does RoPE oscillate and hope_hyperbolic decay monotonically?",
        "",
        f"Generated by `python scripts/analysis_distance.py --out docs/results/score_distance --page "
        f"docs/results/score_distance.md` from `{rel}/records.jsonl` (commit `{any_r['commit']}`). "
        "Everything here is a property of the encodings alone (no trained model): q and k are either the "
        "aligned probe or random.",
        "",
        "## Setup",
        "",
        f"* Shape of the default bench: head_dim {any_r['head_dim']}, {any_r['num_heads']} heads, train_len "
        f"{any_r['train_len']}; head {any_r['head']}"
        + "".join(f" ({r['method']}'s slope there: {r['value']:g} of {[round(x, 4) for x in r['slopes']]})"
                  for r in records if r["metric"] == "bias_slope") + ".",
        "* Methods, as the bench builds them:",
        *[f"  * `{m}`: `{params[m]}`" for m in methods],
        f"* Distances: every integer Δ = 0 … {MAX_DISTANCE} (16× train_len = 2048 is the bench's longest "
        "evaluation). The query is at m = max Δ, keys at m − Δ, scored by each encoding's own hooks (float32, as "
        "in a model; hope_hyperbolic's per-channel figures use the float64 closed form with the encoding's own "
        "rates, checked against the float32 curve to 1e-5 of its scale).",
        "* Sources of q and k: **aligned** — fixed q = k with every pair (1, 0), |q| = |k| = √(d/2) (the probe of "
        "RoFormer's decay argument and of the fixed-q/k score plots), "
        f"one curve; **gaussian** — i.i.d. N(0, 1) q and k, {SAMPLES} pairs per seed, seeds {list(SEEDS)} "
        "(the hope_hyperbolic paper's Gaussian-q/k setting, Fig. 5). A Gaussian metric is the mean over the seed's pairs; cells give mean ± sd of "
        "those means across the seeds.",
        "* Windows are closed intervals of Δ; adjacent windows share their boundary sample, so their total "
        "variations add up. A sign change is a pair of consecutive non-zero samples of opposite sign "
        "(exact zeros — hope_hyperbolic's float32 score underflows to 0 beyond Δ ≈ 10⁴ — are skipped). "
        "TV ratio = total variation / |net change|: 1 for a monotone window, large for a curve that swings "
        "while going nowhere. Monotone fraction: the share of steps in the curve's own direction "
        "(the larger of the decreasing and increasing shares; for the aligned probe the decreasing share is "
        "given too).",
        "",
    ]

    def section(title: str, metric: str, windows: list[tuple], header: list[str], digits: int = 3,
                sources: tuple[str, ...] = ("aligned", "gaussian")) -> list[str]:
        out_lines = [f"### {title}", "", "| method | q, k | " + " | ".join(header) + " |",
                     "|---|---|" + "---|" * len(header)]
        for m in methods:
            for src in sources:
                cells = [_cell(get(m, src, metric, w), digits) for w in windows]
                if all(c == "—" for c in cells):
                    continue
                out_lines.append(f"| {m} | {src} | " + " | ".join(cells) + " |")
        return out_lines + [""]

    wl = [f"Δ {a}–{b}" for a, b in WINDOWS]
    lines += ["## Oscillation", ""]
    lines += section("Sign changes per window", "oscillation_sign_changes", list(WINDOWS), wl, digits=4)
    lines += section("Total variation per window (score units; the probe's score at Δ = 0 is d/2 = 16)",
                     "oscillation_total_variation", list(WINDOWS), wl)
    lines += section("TV ratio = total variation / |net change| (1 = monotone)", "oscillation_tv_ratio",
                     list(WINDOWS), wl)
    lines += section("Direction changes (local extrema) per window", "direction_changes", list(WINDOWS), wl, digits=4)
    lines += ["## Monotonicity", ""]
    mw = list(WINDOWS) + list(WHOLE)
    ml = wl + [f"Δ {a}–{b}" for a, b in WHOLE]
    lines += section("Monotone fraction (share of steps in the curve's direction)", "monotone_fraction", mw, ml)
    lines += section("Decreasing fraction, aligned probe", "monotone_fraction_decreasing", mw, ml,
                     sources=("aligned",))
    lines += section("Share of curves entirely monotone in the window", "monotone_share", mw, ml,
                     sources=("gaussian",))
    ch_window = [(0, MAX_DISTANCE)]
    hyp = [m for m in methods if get(m, "aligned", "channel_monotone_fraction", ch_window[0])]
    if hyp:
        lines += ["### hope_hyperbolic per eigenbasis channel and per pair (Δ 0–16384, float64)", "",
                  "| method | q, k | channel monotone fraction (min) | pair monotone fraction | pairs with an "
                  "interior extremum | … at Δ* < train_len | median Δ* | sign changes of the whole curve | "
                  "Descartes bound (weight sign changes by rate) |", "|---|---|---|---|---|---|---|---|---|"]
        for m in hyp:
            for src in ("aligned", "gaussian"):
                w = ch_window[0]
                lines.append(f"| {m} | {src} | {_cell(get(m, src, 'channel_monotone_fraction', w))} | "
                             f"{_cell(get(m, src, 'pair_monotone_fraction', w))} | "
                             f"{_cell(get(m, src, 'pairs_with_interior_extremum', w))} | "
                             f"{_cell(get(m, src, 'pairs_with_extremum_below_train_len', w))} | "
                             f"{_cell(get(m, src, 'pair_extremum_median', w))} | "
                             f"{_cell(get(m, src, 'oscillation_sign_changes_float64', w) or get(m, src, 'oscillation_sign_changes', w))} | "
                             f"{_cell(get(m, src, 'descartes_sign_change_bound', w))} |")
        lines.append("")
    lines += ["## Far-token mass", "",
              f"Post-softmax weight (scale 1/√{any_r['head_dim']}) that a query at m puts on keys more than "
              f"{BEYOND} tokens back, its keys at every position 0 … m. Uniform attention would put "
              + ", ".join(f"{(m - BEYOND) / (m + 1):.3f} at m = {m}" for m in QUERIES) + ".", ""]
    lines += section(f"Weight beyond Δ = {BEYOND}", "far_mass", [(m, BEYOND) for m in QUERIES],
                     [f"m = {m}" for m in QUERIES])

    lines += ["## Verdict", ""] + verdict(get, methods) + [""]
    lines += ["## Figures", "",
              "Left: pre-softmax score (line: mean per log-spaced bin; band: the bin's min–max, so an "
              "oscillation too fast to draw shows as a filled band; dashed: ± RoFormer's bound "
              "max|h_{i+1} − h_i|·(d/2)·(1/(d/2))Σ_j|S_j| for the rotary methods). Right: post-softmax weight "
              "per key (log). Dotted grey: train_len.", ""]
    for title, png in figures:
        lines += [f"![{title}]({png.as_posix()})", ""]
    page_path.write_text("\n".join(lines))
    print(f"page -> {page_path}")
    return page_path


def _oscillates(get, method: str, source: str, window: tuple) -> bool:
    """The page's criterion: at least 2 sign changes per curve, or total variation at least twice the
    net change (the curve travels twice as far as it gets)."""
    sc = get(method, source, "oscillation_sign_changes", window)
    ratio = [v for v in get(method, source, "oscillation_tv_ratio", window) if math.isfinite(v)]
    return bool(sc) and (statistics.fmean(sc) >= 2 or (bool(ratio) and statistics.fmean(ratio) >= 2))


def verdict(get, methods: list[str]) -> list[str]:
    """The C1 verdict, written from the numbers: every statement below is chosen by, or quotes, them."""
    def mean(method, source, metric, key):
        v = get(method, source, metric, key)
        return statistics.fmean(v) if v else math.nan

    whole = (0, MAX_DISTANCE)
    windows = list(WINDOWS)
    wtxt = ", ".join(f"{a}–{b}" for a, b in windows)
    rope_osc = {src: [_oscillates(get, "rope", src, w) for w in windows] for src in ("aligned", "gaussian")}
    rope_all = all(rope_osc["aligned"]) and all(rope_osc["gaussian"])
    hyp_al_mono = all(mean("hope_hyperbolic", "aligned", "monotone_fraction_decreasing", w) == 1.0
                      for w in windows + list(WHOLE))
    hyp_channels = min(get("hope_hyperbolic", "gaussian", "channel_monotone_fraction", whole)
                       + get("hope_hyperbolic", "aligned", "channel_monotone_fraction", whole)) == 1.0
    shares = [mean("hope_hyperbolic", "gaussian", "monotone_share", w) for w in windows]
    hyp_g_osc = [_oscillates(get, "hope_hyperbolic", "gaussian", w) for w in windows]
    bumpy = [w for w, sh in zip(windows, shares) if sh < 1.0]
    beyond = max((w[1] for w in bumpy), default=0)
    all_mono_beyond = all(sh == 1.0 for w, sh in zip(windows, shares) if w[0] >= beyond)
    # the share of non-monotone random curves below `beyond` is a measured number only when that is one window
    bump = (f"{100 * (1 - shares[0]):.0f} % of the random curves" if beyond == windows[0][1]
            else "some random curves")

    out = []
    if rope_all and hyp_al_mono and not bumpy:
        out.append("**C1 holds**, for the aligned probe and for random q, k alike.")
    elif rope_all and hyp_al_mono and hyp_channels and not any(hyp_g_osc) and all_mono_beyond:
        out.append(f"**C1 holds for the fixed, aligned q/k probe and per eigenbasis channel; for the "
                   f"whole score with random q, k it depends on the distance: hope_hyperbolic never oscillates, "
                   f"but below Δ = {beyond}, {bump} change direction before they decay.**")
    else:
        out.append("**C1 does not hold as stated**: "
                   + ("RoPE does not oscillate in every window" if not rope_all else
                      "hope_hyperbolic's aligned score is not monotone" if not hyp_al_mono else
                      "hope_hyperbolic's random-q/k score oscillates somewhere" if any(hyp_g_osc) else
                      "hope_hyperbolic's random-q/k score is not monotone beyond its first window")
                   + " (tables above).")
    out.append("")
    out.append(f"The criterion: a curve *oscillates* in a window when it has at least 2 sign changes or its total "
               f"variation is at least twice its net change; it *decays monotonically* when every step goes one "
               f"way. Windows: Δ {wtxt}.")
    out.append("")
    sc_al = [mean("rope", "aligned", "oscillation_sign_changes", w) for w in windows]
    tv_al = [mean("rope", "aligned", "oscillation_tv_ratio", w) for w in windows]
    sc_g = [mean("rope", "gaussian", "oscillation_sign_changes", w) for w in windows]
    sd = [mean("rope", "gaussian", "score_sd", ("Δ", d)) for d in (0, 128, 2048, MAX_DISTANCE)]
    bound_al = mean("rope", "aligned", "decay_bound_ratio_max", whole)
    bound_g = mean("rope", "gaussian", "decay_bound_ratio_max", whole)
    head_dim = get("rope", None, "head_dim", ())
    out.append(
        (f"* **RoPE oscillates in every window, with both kinds of q, k**." if rope_all else
         f"* **RoPE does not oscillate in every window** (aligned: {rope_osc['aligned']}, Gaussian: {rope_osc['gaussian']}).")
        + f" Aligned probe: {', '.join(f'{v:.0f}' for v in sc_al)} sign "
        f"changes and TV ratios {', '.join(f'{v:.3g}' for v in tv_al)}"
        + (f" (the probe's score keeps its sign up to Δ = {windows[0][1]} but already swings there)" if sc_al[0] == 0 else "")
        + f". Gaussian q, k: {', '.join(f'{v:.0f}' for v in sc_g)} sign changes per "
        f"curve. With random q, k nothing decays: the sd over samples is "
        f"{', '.join(f'{v:.2f}' for v in sd)} at Δ = 0, 128, 2048, {MAX_DISTANCE} (√d = "
        f"{math.sqrt(head_dim[0]):.2f}: rotations keep norms). RoFormer's long-term-decay bound is an envelope, "
        f"and a loose one at this head_dim: |s| reaches at most {100 * bound_al:.0f} % of it for the aligned probe "
        f"and {100 * bound_g:.0f} % for Gaussian q, k.")
    rate = mean("hope_hyperbolic", None, "slowest_decay_rate", ())
    ch = min(get("hope_hyperbolic", "gaussian", "channel_monotone_fraction", whole) or [math.nan])
    out.append(
        f"* **hope_hyperbolic's aligned-probe score decays monotonically** ({'every' if hyp_al_mono else 'not every'} "
        f"step decreasing, Δ 0–{MAX_DISTANCE}; 0 sign changes). **Per eigenbasis channel it is monotone for every "
        f"q, k** (smallest channel monotone fraction over all Gaussian samples: {ch:.3g}): a channel is "
        f"w_c e^{{−r_cΔ}}, one exponential.")
    pairs_ext = mean("hope_hyperbolic", "gaussian", "pairs_with_interior_extremum", whole)
    pairs_early = mean("hope_hyperbolic", "gaussian", "pairs_with_extremum_below_train_len", whole)
    sc_hyp = [mean("hope_hyperbolic", "gaussian", "oscillation_sign_changes", w) for w in windows]
    dc_hyp = [mean("hope_hyperbolic", "gaussian", "direction_changes", w) for w in windows]
    dc_rope = [mean("rope", "gaussian", "direction_changes", w) for w in windows]
    sc64 = mean("hope_hyperbolic", "gaussian", "oscillation_sign_changes_float64", whole)
    desc = mean("hope_hyperbolic", "gaussian", "descartes_sign_change_bound", whole)
    half_life = math.log(2) / rate if rate == rate and rate > 0 else math.nan
    train_len = int(get("hope_hyperbolic", None, "train_len", ())[0])
    where = (f"below Δ = {beyond}, {bump} are not monotone; from Δ = {beyond} on, every one is"
             if bumpy and all_mono_beyond else "the random curves are not monotone in some windows")
    out.append(
        f"* **With random q, k the whole hope_hyperbolic score is not always monotone**: {where} "
        f"(share entirely monotone per window: {', '.join(f'{100 * v:.0f} %' for v in shares)}). The score is "
        f"Σ_c w_c e^{{−r_cΔ}} with weights of both signs: channels of different rates and opposite signs — within "
        f"a pair (slow λ − ω_i against fast λ + ω_i: {100 * pairs_ext:.0f} % of the Gaussian (sample, pair)s have "
        f"an interior extremum, {100 * pairs_early:.0f} % one below Δ = {train_len}; papers/hope_hyperbolic.md "
        f"\"Monotone per channel only\") or across pairs (the figure) — make it change direction before the "
        f"slowest channel takes over. It is a bump, not an oscillation: {', '.join(f'{v:.2g}' for v in dc_hyp)} "
        f"direction changes per curve in the windows (RoPE: {', '.join(f'{v:.0f}' for v in dc_rope)}), "
        f"{', '.join(f'{v:.2g}' for v in sc_hyp)} sign changes ({sc64:.2g} over Δ 0–{MAX_DISTANCE} in float64, "
        f"never more than the sign changes of the channel weights ordered by rate, {desc:.3g} on average: "
        f"Descartes' rule for exponential sums, checked for every sample). Past the bump only the slowest "
        f"channel is left (rate λ − ω₀ = {rate:.3g}, half-life {half_life:.0f} tokens), which is monotone.")
    kept = get("hope_highfreq", None, "rotating_pairs", ())
    hf_sc = [mean("hope_highfreq", "aligned", "oscillation_sign_changes", w) for w in windows]
    hf_tv = [mean("hope_highfreq", "aligned", "oscillation_tv_ratio", w) for w in windows]
    hf_osc = [_oscillates(get, "hope_highfreq", "aligned", w) for w in windows]
    if kept:
        total = int(get("hope_highfreq", None, "pairs", ())[0]) if get("hope_highfreq", None, "pairs", ()) else None
        out.append(
            f"* hope_highfreq (not part of C1, shown for contrast) keeps {int(kept[0])} rotating pairs"
            + (f" of {total}" if total else "")
            + f"; its aligned score has {', '.join(f'{v:.0f}' for v in hf_sc)} sign changes (the position-free "
            f"pairs give it a constant floor) but TV ratios {', '.join(f'{v:.3g}' for v in hf_tv)}: it "
            f"{'oscillates in every window' if all(hf_osc) else 'oscillates in some windows'} around that floor, "
            f"with no long-term decay, as its paper intends.")
    far = {m: mean(m, "aligned", "far_mass", (2048, BEYOND)) for m in methods}
    far_g = {m: mean(m, "gaussian", "far_mass", (2048, BEYOND)) for m in methods}
    uniform = (2048 - BEYOND) / 2049
    out.append(
        f"* Post-softmax (a query at m = 2048, scale 1/√d), a monotone pre-softmax decay does not make attention "
        f"local. The weight on keys more than {BEYOND} back is, for the aligned probe, "
        + ", ".join(f"{m} {far[m]:.3f}" for m in methods)
        + f"; uniform attention would give {uniform:.3f}, and Gaussian q, k give "
        + ", ".join(f"{m} {far_g[m]:.3f}" for m in methods)
        + ". hope_hyperbolic's scores tend to 0, not −∞, so the far keys share the mass; only ALiBi's linear bias "
        "makes them negligible. How much mass is diluted depends on the scale of q and k (the probe's logit at "
        "Δ = 0 is only √d/2): a trained model's own figure is the dilution study's.")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "score_distance",
                    help="directory of records.jsonl and the PNGs")
    ap.add_argument("--page", type=Path, default=ROOT / "docs" / "results" / "score_distance.md")
    ap.add_argument("--page-only", action="store_true", help="write the page and PNGs from existing records")
    args = ap.parse_args(argv)
    if not args.page_only:
        measure(args.out)
    page(args.out, args.page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
