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

__all__ = ["distance_windows", "analyze_distance", "distance_table", "plot_distance", "load_for_analysis",
           "analyze_attention", "attention_table", "analyze_pairs", "pairs_table"]

TASK = "score_vs_distance"


def distance_windows(train_len: int, max_distance: int) -> list[tuple[int, int]]:
    """Windows of Δ: inside the training window, then 1–4× and 4–16× it (as far as ``max_distance``)."""
    edges = [0] + [m * train_len for m in (1, 4, 16, 64, 256) if m * train_len < max_distance] + [max_distance]
    return list(zip(edges[:-1], edges[1:]))


def _check_ints(*checks: tuple[str, Any, int], optional: bool = True) -> None:
    """``(name, value, low)``: each value an int >= low (or None, unset, when ``optional``), else one line
    naming it."""
    for name, value, low in checks:
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: expected an int >= {low}")


def _check_sources(sources: Sequence[str], hf: bool, length: int | None) -> None:
    """Checkpoints (or one pretrained model) to measure, all checked before anything is measured."""
    if not sources:
        raise ValueError("checkpoints: give at least one (or --hf NAME)")
    if hf and length is None:
        raise ValueError("--length: give the window for a pretrained model (at its full window the attention "
                         "weights of every layer rarely fit in memory)")
    missing = [] if hf else [s for s in sources if not Path(s).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {missing[0]}: no such file")


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

    _check_ints(("head_dim", head_dim, 1), ("num_heads", num_heads, 1), ("train_len", train_len, 1),
                ("max_distance", max_distance, 1), ("samples", samples, 1), optional=False)
    bad = [s for s in sources if s not in ("aligned", "gaussian")]
    if bad or not sources:
        raise ValueError(f"sources={list(sources)!r}: expected 'aligned' and/or 'gaussian'")
    if not methods:
        raise ValueError("methods: nothing to analyse")
    if "gaussian" in sources and not list(seeds):
        raise ValueError(f"seeds={list(seeds)!r}: Gaussian q, k need at least one seed")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    key_fields = ("method", "params", "source", "seed", "samples", "head_dim", "num_heads", "train_len", "eval_len",
                  "head")
    done = {record_key(r, key_fields) for r in (read_records(path) if path.exists() else [])
            if r.get("metric") == "score_curve"}
    distances = torch.arange(0, max_distance + 1)
    windows = distance_windows(train_len, max_distance)
    edges = log_bins(max_distance)
    scale = 1.0 / math.sqrt(head_dim)
    for name, params in methods.items():
        enc = pe_lib.build(params, head_dim=head_dim, num_heads=num_heads, d_model=head_dim * num_heads)
        scored = enc.inter if enc.uses_tokens else enc    # BiPE: the inter-segment encoding is what is scored
        if any(True for _ in scored.parameters()) and not hasattr(scored, "rates"):
            log(f"{name}: skipped (its positions are learned weights; analyse a trained model instead)")
            continue
        gaussian = "gaussian" in sources
        if gaussian and enc.uses_embed and not enc.uses_tokens:
            log(f"{name}: Gaussian q, k skipped (it adds to the input, not to q and k: only the aligned probe's "
                f"PE(m)·PE(n) is defined)")
            gaussian = False
        runs = [("aligned", None)] * ("aligned" in sources) + [("gaussian", s) for s in seeds] * gaussian
        for source, seed in runs:
            common = dict(method=name, params=pe_lib.to_config(params), train_len=train_len, eval_len=max_distance + 1,
                          task=TASK, model=None, corpus=None, source=source, seed=seed, head=head,
                          head_dim=head_dim, num_heads=num_heads, samples=samples if source == "gaussian" else None)
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
    if not path.exists():
        raise ValueError(f"methods {list(methods)}: nothing to analyse (every one was skipped)")
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


# --------------------------------------------------------------------------------------------------
# hopekit analyze attention: a trained model's attention on real text
# --------------------------------------------------------------------------------------------------


def load_for_analysis(source: str, *, hf: bool = False, pe_overrides: Sequence[str] = ()) -> tuple[Any, dict, list]:
    """``(model, record fields, test documents)`` of a checkpoint (``hf=False``) or a pretrained transformers
    model (``hf=True``: smollm2, a directory, a .gguf or a hub id, loaded with eager attention).
    ``pe_overrides`` (``pe.FIELD=VALUE``) switch a checkpoint's encoding at evaluation time on the same
    weights (e.g. ``pe.logit_scale=log_length``); refused for a pretrained model."""
    from hopekit.eval.records import model_descriptor, model_digest

    if hf:
        if pe_overrides:
            raise ValueError(f"{list(pe_overrides)}: encoding overrides apply to hopekit checkpoints only")
        from hopekit.eval.pretrained import pretrained_text
        from hopekit.integrations.hf import load_pretrained

        lm = load_pretrained(source, attn_implementation="eager")
        text = pretrained_text(lm.tokenizer)
        cfg = lm.model.config
        fields = dict(method=source, params={"kind": "rope", "impl": "transformers",
                                             "base": float(getattr(cfg, "rope_theta", float("nan")))},
                      train_len=int(cfg.max_position_embeddings), seed=None, model=model_descriptor(lm.model),
                      model_digest=model_digest(lm.model), corpus=text.corpus, split=text.split,
                      tokenizer=text.tokenizer, hf=source)
        return lm.model, fields, list(text.documents)
    from hopekit.checkpoint import load_checkpoint
    from hopekit.config import ExperimentConfig, apply_overrides
    from hopekit.eval.extensions import with_pe
    from hopekit.eval.lengths import test_documents

    model, config, _ = load_checkpoint(source)
    if pe_overrides:
        bad = [o for o in pe_overrides if not o.startswith("pe.")]
        if bad:
            raise ValueError(f"{bad[0]}: only pe.FIELD=VALUE overrides switch the encoding at evaluation time")
        config = ExperimentConfig.from_dict(apply_overrides(config.resolved(), list(pe_overrides)))
        model = with_pe(model, pe_lib.to_config(config.pe))
    tokenizer, docs = test_documents(config)
    fields = dict(method=config.name if config.name != "experiment" else pe_lib.name_of(config.pe),
                  params=pe_lib.to_config(config.pe), train_len=config.train.train_len, seed=config.train.seed,
                  model=model_descriptor(model), model_digest=model_digest(model), corpus=config.data.corpus,
                  split=config.eval.split, tokenizer=tokenizer.name, checkpoint=str(source))
    if pe_overrides:
        fields["method"] += "+" + ",".join(o.split("=", 1)[0][3:] + "=" + o.split("=", 1)[1] for o in pe_overrides)
    return model.eval(), fields, docs


#: refuse a measurement whose attention weights alone would take more than this (they are built whole)
MAX_WEIGHTS_GIB = 12.0


def _weights_gib(model: Any, length: int, hf: bool, batch: int) -> float:
    """GiB a measurement's attention tensors peak at, float32. A transformers model returns every layer's
    weights at once (``output_attentions``) and :func:`hf_attention` stacks a copy: 2 × layers × heads ×
    T² per window. A hopekit decoder holds one layer at a time, but the logits, their masked copy, the
    weights and the next layer's logits overlap: about 4 × heads × T² per window of the batch."""
    cfg = model.config
    heads = getattr(cfg, "n_heads", None) or getattr(cfg, "num_attention_heads", 1)
    copies = 2 * getattr(cfg, "num_hidden_layers", 1) if hf else 4
    return copies * batch * heads * float(length) ** 2 * 4 / 2**30

def analyze_attention(sources: Sequence[str], *, out: str | Path, hf: bool = False, length: int | None = None,
                      windows: int = 64, first: int = 4, near: int | None = None, far_lengths: Sequence[int] = (),
                      beyond: int | None = None, pe_overrides: Sequence[str] = (),
                      log: Callable[[str], None] = print) -> Path:
    """The U-shape index per layer and head (attention on the first ``first`` keys, the middle and the
    nearest ``near``, default length/8) of each model on ``windows`` test windows of ``length`` tokens
    (default its training length), and, at each of ``far_lengths``, the far-token mass of the last queries
    (weight on keys more than ``beyond`` back, default the training length). A model whose rows are
    already in ``out/records.jsonl`` (same weights, encoding, length and groups) is not measured again.
    Draws ``u_index.png``, ``attention_by_key.png`` and, with ``far_lengths``, ``far_mass.png`` from the
    records. Returns the records path."""
    from .attention import (attention_profile, far_mass_records, far_mass_vs_length, plot_attention_by_key,
                            plot_far_mass, plot_u_heatmap, profile_records, text_windows)
    from hopekit.eval.records import append_records, read_records

    _check_sources(sources, hf, length)
    _check_ints(("windows", windows, 1), ("first", first, 1), ("near", near, 1), ("length", length, 2),
                ("beyond", beyond, 0))
    bad = [L for L in far_lengths if isinstance(L, bool) or not isinstance(L, int) or L < 2]
    if bad:
        raise ValueError(f"far_lengths: {bad[0]!r} is not a length >= 2 (got {list(far_lengths)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "records.jsonl"
    measured: set[tuple[int, int, int, int]] = set()   # (length, first, near, windows) of this call: the figures
    u_batch = 1 if hf else 8
    for source in sources:
        model, fields, docs = load_for_analysis(source, hf=hf, pe_overrides=pe_overrides)
        T = length or fields["train_len"]
        n_near = near if near is not None else max(1, T // 8)
        for L, batch in [(T, u_batch), *((L, 1) for L in far_lengths)]:
            gib = _weights_gib(model, L, hf, batch)
            if gib > MAX_WEIGHTS_GIB:
                raise ValueError(f"length {L}: the attention tensors would take about {gib:.0f} GiB (more than "
                                 f"{MAX_WEIGHTS_GIB:g} GiB); use a shorter --length / --far-lengths")
        measured.add((T, first, n_near, windows))
        records = read_records(path) if path.exists() else []
        same = lambda r, metric: (r.get("metric") == metric and r.get("model_digest") == fields["model_digest"]  # noqa: E731
                                  and r.get("params") == fields["params"] and r.get("method") == fields["method"]
                                  and r.get("windows_requested") == windows)
        if any(same(r, "u_shape_index") and r.get("eval_len") == T and r.get("first") == first
               and r.get("near") == n_near for r in records):
            log(f"{fields['method']}: U index at {T} already recorded")
        else:
            prof = attention_profile(model, text_windows(docs, T, windows), first=first, near=n_near,
                                     batch=1 if hf else 8)
            append_records(path, profile_records(prof, **fields, windows_requested=windows))
            log(f"{fields['method']}: U index {float(prof.u_index.mean()):+.3f} (mean over layers and heads of "
                f"{prof.windows} windows of {T})")
        far_beyond = beyond if beyond is not None else fields["train_len"]
        todo = [L for L in far_lengths if not any(same(r, "far_token_mass") and r.get("eval_len") == L
                                                  and r.get("beyond") == far_beyond for r in records)]
        if todo:
            result = far_mass_vs_length(model, docs, list(todo), beyond=far_beyond, windows=max(1, min(windows, 8)))
            append_records(path, far_mass_records(result, **fields, windows_requested=windows))
            log(f"{fields['method']}: far-token mass at {list(todo)} recorded")
    rows = read_records(path)
    # the figures show this call's measurements (one length and group rule), never a mix of settings
    shown = [r for r in rows if (r.get("eval_len"), r.get("first"), r.get("near"), r.get("windows_requested"))
             in measured]
    lengths = {T for T, _, _, _ in measured}
    if len(lengths) == 1:
        plot_u_heatmap(shown, out / "u_index.png", eval_len=next(iter(lengths)))
        plot_attention_by_key(shown, out / "attention_by_key.png")
    else:
        log(f"figures u_index.png, attention_by_key.png not drawn: the models were measured at lengths "
            f"{sorted(lengths)} (give --length)")
    far_rows = [r for r in rows if r.get("metric") == "far_token_mass" and r.get("windows_requested") == windows]
    if far_rows:
        plot_far_mass(far_rows, out / "far_mass.png")
    return path


def attention_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Per model and layer: the U-shape index (mean over heads of the window means) and, per length, the
    far-token mass (mean over layers and heads), from the records of :func:`analyze_attention`."""
    rows = [r for r in records if r.get("task") == "attention"]
    lines = ["| model | length | first, near | windows | layer | U index (mean over heads) | ln(near/middle) | "
             "ln(first/middle) |", "|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        if r["metric"] in ("u_shape_index", "attention_density_first", "attention_density_middle",
                           "attention_density_near"):
            g = groups.setdefault((r["method"], r.get("seed"), r["eval_len"], r.get("first"), r.get("near"),
                                   r.get("windows_requested"), r["layer"]), {})
            g.setdefault(r["metric"], []).append(r["value"])
    for (method, seed, T, first, near, n_windows, layer), g in groups.items():
        u = sum(g["u_shape_index"]) / len(g["u_shape_index"])
        mid = [max(x, 1e-30) for x in g.get("attention_density_middle", [])]
        ratio = lambda key: (sum(math.log(max(a, 1e-30) / b) for a, b in zip(g[key], mid)) / len(mid)  # noqa: E731
                             if mid and key in g else math.nan)
        label = method if seed is None else f"{method} (seed {seed})"
        lines.append(f"| `{label}` | {T} | {first}, {near} | {n_windows} | {layer} | {u:+.3f} | "
                     f"{ratio('attention_density_near'):+.2f} | "
                     f"{ratio('attention_density_first'):+.2f} |")
    far: dict[tuple, list[float]] = {}
    for r in rows:
        if r["metric"] == "far_token_mass":
            key = (r["method"], r.get("seed"), r["eval_len"], r.get("beyond"), r.get("uniform"), r.get("windows_requested"))
            far.setdefault(key, []).append(r["value"])
    if far:
        lines += ["", "| model | length | windows | far-token mass (beyond) | uniform attention would give |",
                  "|---|---|---|---|---|"]
        for (method, seed, L, b, uniform, n_windows), v in far.items():
            label = method if seed is None else f"{method} (seed {seed})"
            lines.append(f"| `{label}` | {L} | {n_windows} | {sum(v) / len(v):.3f} (>{b}) | {uniform:.3f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# hopekit analyze pairs: a rotary model's logits, pair by pair
# --------------------------------------------------------------------------------------------------


def analyze_pairs(sources: Sequence[str], *, out: str | Path, hf: bool = False, length: int | None = None,
                  windows: int = 64, log: Callable[[str], None] = print) -> Path:
    """Each layer's logits split into one term per rotary pair (:mod:`hopekit.analysis.pairs`) on
    ``windows`` test windows of ``length`` tokens (default the training length): per layer, head and pair
    the mean |term|, its share of the logit, and the U-score of its mean term against Δ (over key positions
    for the last query too), pairs grouped by period: ≤ L, in (L, 2L] (hope_highfreq's "activated"), > 2L,
    with L the training length or the measured window if shorter. A transformers model's rows are means
    over a layer's heads. Appends ``out/records.jsonl`` and ``out/curves.jsonl`` (skipping a model already
    measured the same way) and draws ``pairs_delta.png`` (pair × Δ heat maps) of the last model."""
    from .attention import text_windows
    from .pairs import hf_capture_qk, hf_rope_encoding, pair_profiles, pair_records, plot_pair_heatmaps
    from hopekit.eval.records import append_records, read_records

    _check_sources(sources, hf, length)
    _check_ints(("windows", windows, 1), ("length", length, 8))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path, curves_path = out / "records.jsonl", out / "curves.jsonl"
    last = None
    for source in sources:
        model, fields, docs = load_for_analysis(source, hf=hf)
        enc = hf_rope_encoding(model.config) if hf else model.pe
        if not getattr(enc, "uses_rotate", False) or not hasattr(enc, "spectrum"):
            raise ValueError(f"{source}: its encoding {fields['params'].get('kind')!r} has no rotary pairs to "
                             f"decompose (rope-family methods and hope_highfreq have)")
        T = length or fields["train_len"]
        band_len = min(T, fields["train_len"])
        common = dict(fields, eval_len=T, task="pair_decomposition", windows_requested=windows, band_len=band_len)
        done = path.exists() and any(r.get("model_digest") == fields["model_digest"] and r.get("eval_len") == T
                                     and r.get("windows_requested") == windows and r.get("params") == fields["params"]
                                     for r in read_records(path))
        if done:
            log(f"{fields['method']}: pairs at {T} already recorded")
        else:
            ids = text_windows(docs, T, windows)
            long = T > 512
            prof = pair_profiles(model, ids, train_len=band_len, enc=enc, capture=hf_capture_qk if hf else None,
                                 batch_size=1 if hf else 8, query_chunk=16 if long else None,
                                 magnitude_queries=64 if long else None)
            rows, curves = pair_records(prof, common, per_head=not hf)
            append_records(curves_path, curves)
            append_records(path, rows)
            log(f"{fields['method']}: {ids.shape[0]} windows of {T} decomposed into {len(prof.names)} components")
        last = common
    curves = [c for c in (read_records(curves_path) if curves_path.exists() else [])
              if c.get("model_digest") == last["model_digest"] and c.get("eval_len") == last["eval_len"]
              and c.get("windows_requested") == windows]
    if curves:
        plot_pair_heatmaps(curves, last.get("seed"), curves[0]["model"], "pair_profile_delta", out / "pairs_delta.png",
                           f"{last['method']}: each pair's mean logit term against Δ (scaled per pair)")
    return path


def pairs_table(records: Sequence[Mapping[str, Any]]) -> str:
    """Per model and band (period ≤ L, in (L, 2L], > 2L, and every pair with period > L): the share of
    the logit magnitude and the mean U-score over Δ, averaged over layers and heads."""
    rows = [r for r in records if r.get("task") == "pair_decomposition" and r.get("component") in ("band", "total")]
    acc: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        key = (r["method"], r.get("seed"), r["eval_len"], r.get("band_len"), r.get("band") or "whole logit")
        a = acc.setdefault(key, {"share": [], "u": []})
        a["share"].append(r["share"])
        a["u"].append(r["u_score"])
    lines = ["| model | length | band (L = band_len) | share of the logit magnitude | U-score of the band's summed term over Δ |",
             "|---|---|---|---|---|"]
    labels = {"within": "period ≤ L", "activated": "L < period ≤ 2L", "beyond": "period > 2L", "above": "period > L"}
    for (method, seed, T, L, band), a in acc.items():
        label = method if seed is None else f"{method} (seed {seed})"
        lines.append(f"| `{label}` | {T} | {labels.get(band, band)} (L = {L}) | {sum(a['share']) / len(a['share']):.3f} | "
                     f"{sum(a['u']) / len(a['u']):+.3f} |")
    return "\n".join(lines)
