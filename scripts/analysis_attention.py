#!/usr/bin/env python
"""Where trained models attend on real text: the U-shape study (C6) and the far-token dilution of
hope_hyperbolic (D1), each a page made from records.

    OMP_NUM_THREADS=1 nice -n 15 python scripts/analysis_attention.py --study ushape \\
        --out docs/results/ushape --page docs/results/ushape.md
    OMP_NUM_THREADS=1 nice -n 15 python scripts/analysis_attention.py --study dilution \\
        --out docs/results/dilution --page docs/results/dilution.md

Both read trained checkpoints ``RUNS/<method>/seed<k>/checkpoint.pt`` (``--runs``; the bench's decoders:
d_model 128, 4 layers, 4 heads, bytes, Shakespeare, train_len 128). A checkpoint whose training has not
reached its last step is skipped (named in the log). Every stage appends records to ``OUT/records.jsonl``
and skips what is recorded already (same weights, method, length and settings), so a rerun measures only
what is new.

**ushape** (:func:`hopekit.analysis.attention.attention_profile`): stage ``models``: each checkpoint on
``--windows`` test-split windows of train_len tokens; stage ``smollm2``: SmolLM2-135M (transformers, eager
attention, float32) on ``--hf-windows`` test-split windows of ``--hf-len`` tokens in its own tokenizer,
no BOS; stage ``page``. Groups: first = 4 keys, near = T/8 keys (16 at 128, 256 at 2048); SmolLM2 is also
measured with near = 16 (the sensitivity to the rule).

**dilution** (:func:`hopekit.analysis.attention.far_mass_vs_length`): stage ``far``: the far-token mass
(weight on keys more than ``--beyond`` back) of the last quarter of queries at 1×–16× train_len, for rope,
alibi and hope_hyperbolic, and hope_hyperbolic with ``logit_scale="log_length"`` switched on at
evaluation time on the same weights (when the encoding has that option); stage ``ppl``: perplexity of
hope_hyperbolic with and without it, and of rope and alibi for scale (:func:`hopekit.eval.lengths.evaluate_lengths`, the checkpoint's own
eval settings: the same test windows for both); stage ``page``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hopekit import pe as pe_lib  # noqa: E402
from hopekit.analysis.attention import (DENSITY_METRICS, attention_profile, attention_profiles, far_mass_records,  # noqa: E402
                                        far_mass_vs_length, plot_attention_by_key, plot_far_mass, plot_u_heatmap,
                                        profile_records, text_windows, uniform_far_mass)
from hopekit.eval.records import append_records, model_descriptor, model_digest, read_records  # noqa: E402
from hopekit.eval.stats import paired_ratio, summarize  # noqa: E402

RUNS = Path("results/analysis/checkpoints")  # hopekit bench --preset benchmarks/analysis.yaml --run-dir results/analysis
METHODS = ("rope", "learned", "alibi", "hope_highfreq", "hope_hyperbolic")
DILUTION_METHODS = ("rope", "alibi", "hope_hyperbolic")
REMEDY = "log_length"
FIRST = 4               # the first group: 4 keys at every length (where attention sinks sit)
NEAR_FRACTION = 8       # the near group: the last T/8 keys (16 at 128, 256 at 2048)
HF_NAME = "smollm2"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def near_for(length: int) -> int:
    return max(1, length // NEAR_FRACTION)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def checkpoints(runs: Path, methods: tuple[str, ...]) -> list[tuple[str, int, Path, int]]:
    """(method, seed, path, train_len) of every finished checkpoint under ``runs``, in method then seed
    order."""
    from hopekit.checkpoint import read_checkpoint

    out = []
    for method in methods:
        for d in sorted((runs / method).glob("seed*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1):
            path = d / "checkpoint.pt"
            if not path.is_file():
                continue
            ckpt = read_checkpoint(path)
            steps = ckpt["config"]["train"]["steps"]
            if ckpt["step"] < steps:
                log(f"{method} {d.name}: training at step {ckpt['step']} of {steps}; skipped")
                continue
            out.append((method, int(d.name[4:]), path, int(ckpt["config"]["train"]["train_len"])))
    return out


def load(path: Path, pe_changes: dict[str, Any] | None = None):
    """``(model, config)`` of a checkpoint; with ``pe_changes`` the decoder is rebuilt with those encoding
    parameters and loaded with the same state dict (an evaluation-time switch of a parameter-free option)."""
    from hopekit.checkpoint import load_checkpoint, read_checkpoint
    from hopekit.config import ExperimentConfig
    from hopekit.model import Decoder, ModelConfig

    if not pe_changes:
        model, config, _ = load_checkpoint(path)
        return model, config
    ckpt = read_checkpoint(path)
    pe_cfg = {**ckpt["model_config"]["pe"], **pe_changes}
    model = Decoder(ModelConfig(**{**ckpt["model_config"], "pe": pe_cfg}))
    model.load_state_dict(ckpt["model"])
    config = ExperimentConfig.from_dict({**ckpt["config"], "pe": pe_cfg})
    return model.eval(), config


def has_log_length() -> bool:
    from hopekit.pe.hope_hyperbolic import HyperbolicParams

    return any(f.name == "logit_scale" for f in dataclasses.fields(HyperbolicParams))


def remedy_changes(train_len: int) -> dict[str, Any]:
    return {"logit_scale": REMEDY, "train_len": train_len}


def recorded(records_path: Path, metric: str, **match: Any) -> bool:
    if not records_path.exists():
        return False
    return any(r.get("metric") == metric and all(r.get(k) == v for k, v in match.items())
               for r in read_records(records_path))


def _fields(model, config, method: str, path: Path | None) -> dict[str, Any]:
    from hopekit.eval.lengths import test_documents

    tokenizer, _ = test_documents(config)
    return dict(method=method, params=pe_lib.to_config(model.config.pe), train_len=config.train.train_len,
                seed=config.train.seed, model=model_descriptor(model), model_digest=model_digest(model),
                corpus=config.data.corpus, split="test", tokenizer=tokenizer.name,
                checkpoint=None if path is None else str(path))


# --------------------------------------------------------------------------------------------------
# U-shape study
# --------------------------------------------------------------------------------------------------


def ushape_models(args: argparse.Namespace, out: Path) -> None:
    from hopekit.eval.lengths import test_documents

    records = out / "records.jsonl"
    for method, seed, path, _ in checkpoints(Path(args.runs), METHODS):
        model, config = load(path)
        T = config.train.train_len
        fields = _fields(model, config, method, path)
        if recorded(records, "u_shape_index", model_digest=fields["model_digest"], eval_len=T, windows=args.windows):
            log(f"{method} seed{seed}: recorded")
            continue
        _, docs = test_documents(config)
        windows = text_windows(docs, T, args.windows)
        t0 = time.perf_counter()
        prof = attention_profile(model, windows, first=FIRST, near=near_for(T), batch=16)
        append_records(records, profile_records(prof, **fields, group_rule=f"first={FIRST}, near=T/{NEAR_FRACTION}"))
        log(f"{method} seed{seed}: U index {float(prof.u_index.mean()):+.3f} (mean over layers, heads, "
            f"{prof.windows} windows; {time.perf_counter() - t0:.0f}s)")


def ushape_hf(args: argparse.Namespace, out: Path) -> None:
    from hopekit.eval.pretrained import pretrained_text
    from hopekit.integrations.hf import load_pretrained

    records = out / "records.jsonl"
    T = args.hf_len
    todo = [n for n in (near_for(T), 16) if not recorded(records, "u_shape_index", method=HF_NAME, eval_len=T,
                                                         windows=args.hf_windows, near=n)]
    if not todo:
        log(f"{HF_NAME}: recorded")
        return
    t0 = time.perf_counter()
    lm = load_pretrained(HF_NAME, attn_implementation="eager")
    text = pretrained_text(lm.tokenizer)
    windows = text_windows(text.documents, T, args.hf_windows)
    log(f"{HF_NAME}: loaded in {time.perf_counter() - t0:.0f}s; {windows.shape[0]} windows of {T} tokens")
    fields = dict(method=HF_NAME, params={"kind": "rope", "impl": "transformers",
                                          "base": float(getattr(lm.model.config, "rope_theta", float("nan")))},
                  train_len=int(lm.model.config.max_position_embeddings), seed=0, model=model_descriptor(lm.model),
                  model_digest=model_digest(lm.model), corpus=text.corpus, split=text.split,
                  tokenizer=text.tokenizer, hf=HF_NAME, bos=False, single_model=True)
    t0 = time.perf_counter()
    profs = attention_profiles(lm.model, windows, [(FIRST, near) for near in todo], batch=1)
    for prof in profs:
        rule = (f"first={FIRST}, near=T/{NEAR_FRACTION}" if prof.near == near_for(T)
                else f"first={FIRST}, near=16 (fixed)")
        append_records(records, profile_records(prof, **fields, group_rule=rule, curves=prof.near == near_for(T)))
        log(f"{HF_NAME} near={prof.near}: U index {float(prof.u_index.mean()):+.3f}")
    log(f"{HF_NAME}: {time.perf_counter() - t0:.0f}s")


def _per_seed(rows: list[dict[str, Any]]) -> dict[Any, float]:
    """Per seed: the mean over its rows (layers × heads) of the window-mean values."""
    acc: dict[Any, list[float]] = defaultdict(list)
    for r in rows:
        acc[r["seed"]].append(float(r["value"]))
    return {s: statistics.fmean(v) for s, v in sorted(acc.items())}


def _fmt(values: list[float], digits: int = 2, pct: bool = False) -> str:
    if not values:
        return "—"
    k = 100.0 if pct else 1.0
    if len(values) == 1:
        return f"{k * values[0]:+.{digits}f}" if not pct else f"{k * values[0]:.{digits}f}"
    s = summarize(values)
    sign = "+" if not pct else ""
    return f"{k * s.mean:{sign}.{digits}f} ± {k * s.sd:.{digits}f}"


def _interval(values: list[float]) -> str:
    if len(values) < 2:
        return "—"
    s = summarize(values)
    return f"[{s.low:+.2f}, {s.high:+.2f}]"


def _log_ratio(rows: list[dict], num: str, den: str) -> dict[tuple, float]:
    """Per (seed, layer, head): ln(density num / density den) of the window-mean densities."""
    val = {(r["metric"], r["seed"], r["layer"], r["head"]): float(r["value"]) for r in rows
           if r["metric"] in (num, den)}
    out = {}
    for (metric, s, l, h), v in val.items():
        if metric == num and (den, s, l, h) in val and val[(den, s, l, h)] > 0 and v > 0:
            out[(s, l, h)] = math.log(v / val[(den, s, l, h)])
    return out


def ushape_page(out: Path, page: Path, args: argparse.Namespace) -> None:
    rows = read_records(out / "records.jsonl") if (out / "records.jsonl").exists() else []
    rel = os.path.relpath(out, page.parent)
    T0 = 128
    bench = [r for r in rows if r["method"] != HF_NAME]
    methods = [m for m in METHODS if any(r["method"] == m for r in bench)]
    by = defaultdict(list)
    for r in rows:
        by[(r["method"], r["metric"], r.get("near"))].append(r)
    lines = [
        "# Where trained models attend: local decay and a global U-shape (C6)", "",
        f"Generated by `python scripts/analysis_attention.py --study ushape --out {out} --page {page}` from "
        f"the records in `{out}/records.jsonl`.", "",
        "## Setup", "",
        "- **Models**: the bench's decoders (d_model 128, 4 layers, 4 heads, byte-level Shakespeare, train_len 128, "
        "400 steps of 16 × 128 tokens), one per method and seed; and SmolLM2-135M (30 layers, 9 heads, "
        "transformers' own eager attention, float32) — **one model, no seeds**: its numbers are mean ± sd over "
        "windows, not over seeds.",
        "- **Text**: windows of the test split (the held-out plays), chosen evenly across it (none crosses a "
        f"document boundary): {args.windows} windows of 128 tokens per bench model; {args.hf_windows} windows of "
        f"{args.hf_len} tokens in SmolLM2's own tokenizer, without BOS (a window starts mid-text).",
        "- **Queries**: the last quarter of each window's rows (positions 96–127 at 128; 1536–2047 at 2048), the "
        "queries that see the most context.",
        f"- **Groups**: a query at m splits its keys into *first* (n < {FIRST}), *near* (Δ = m − n < T/{NEAR_FRACTION}: "
        "16 keys at 128, 256 at 2048) and *middle* (the rest). Rule: the first group is a fixed 4 keys at every "
        "length (attention sinks sit on the first token or few, whatever the window), the near group a fixed share of "
        "the window (an eighth) so that it spans the same fraction of context at every length. SmolLM2 is "
        "also shown with near = 16 (the bench's absolute size), to show how much the verdict depends on the rule.",
        "- **Index**: each group's density is its post-softmax mass per key, averaged over the queries of a window; "
        "**U index = ln(min(first, near) / middle)**: > 0 iff both ends are denser than the middle (a U), 0 for "
        "uniform attention, < 0 when one end (usually the first keys) gets less than the middle. "
        "**Local decay = ln(near / middle)**, **sink = ln(first / middle)**. Each is computed per (layer, head) "
        "and window, averaged over windows; a model's value is the mean over its layers and heads; a method's "
        "cell is mean ± sd over seeds (n in the table), with the 95 % t interval over seeds.", "",
    ]
    if methods:
        lines += ["## Bench models at the training length (128 tokens)", "",
                  "| method | seeds | U index | 95 % interval | local decay ln(near/middle) | sink ln(first/middle) | "
                  "(layer, head) with U > 0 in every seed |", "|---|---|---|---|---|---|---|"]
        verdicts = {}
        for m in methods:
            u_rows = [r for r in by[(m, "u_shape_index", near_for(T0))] if r["eval_len"] == T0]
            dens = [r for k in DENSITY_METRICS for r in by[(m, k, near_for(T0))] if r["eval_len"] == T0]
            u = list(_per_seed(u_rows).values())
            loc = _log_ratio(dens, DENSITY_METRICS[2], DENSITY_METRICS[1])
            sink = _log_ratio(dens, DENSITY_METRICS[0], DENSITY_METRICS[1])
            seeds = sorted({r["seed"] for r in u_rows})
            loc_s = [statistics.fmean(v for (s, _, _), v in loc.items() if s == sd) for sd in seeds]
            sink_s = [statistics.fmean(v for (s, _, _), v in sink.items() if s == sd) for sd in seeds]
            cells = defaultdict(list)
            for r in u_rows:
                cells[(r["layer"], r["head"])].append(float(r["value"]))
            always = sum(1 for v in cells.values() if len(v) == len(seeds) and min(v) > 0)
            lines.append(f"| `{m}` | {len(seeds)} | {_fmt(u)} | {_interval(u)} | {_fmt(loc_s)} | {_fmt(sink_s)} | "
                         f"{always} / {len(cells)} |")
            verdicts[m] = (u, loc_s, sink_s, always, len(cells))
        lines += ["", "### Per layer (mean over heads, then mean ± sd over seeds)", "",
                  "| method | " + " | ".join(f"layer {l}" for l in range(4)) + " |", "|---|" + "---|" * 4]
        for m in methods:
            u_rows = [r for r in by[(m, "u_shape_index", near_for(T0))] if r["eval_len"] == T0]
            layers = sorted({r["layer"] for r in u_rows})
            cells = [_fmt(list(_per_seed([r for r in u_rows if r["layer"] == l]).values())) for l in layers]
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        lines += ["", f"![U index heat maps]({rel}/u_heatmap.png)", "",
                  f"![last query vs key position]({rel}/by_key_last.png)", "",
                  f"![weight vs distance]({rel}/by_distance.png)", ""]
    hf = [r for r in rows if r["method"] == HF_NAME]
    if hf:
        T = hf[0]["eval_len"]
        lines += [f"## SmolLM2-135M at {T} tokens (one model; ± is the sd over {hf[0]['windows']} windows)", "",
                  "| groups | U index (mean over layers, heads) | local decay | sink | (layer, head) with U > 0 |",
                  "|---|---|---|---|---|"]
        for near in sorted({r["near"] for r in hf}, reverse=True):
            sel = [r for r in hf if r["near"] == near]
            u = [r for r in sel if r["metric"] == "u_shape_index"]
            loc = _log_ratio(sel, DENSITY_METRICS[2], DENSITY_METRICS[1])
            sink = _log_ratio(sel, DENSITY_METRICS[0], DENSITY_METRICS[1])
            mean_u = statistics.fmean(float(r["value"]) for r in u)
            sd_w = statistics.fmean(float(r["sd_windows"] or 0) for r in u)
            pos = sum(1 for r in u if float(r["value"]) > 0)
            lines.append(f"| first {FIRST}, near {near} | {mean_u:+.2f} (head-mean sd over windows {sd_w:.2f}) | "
                         f"{statistics.fmean(loc.values()):+.2f} | {statistics.fmean(sink.values()):+.2f} | "
                         f"{pos} / {len(u)} |")
        lines += ["", f"Per layer (mean over the 9 heads; near = {near_for(T)}):", "",
                  "| layer | U index | local decay | sink | heads with U > 0 |", "|---|---|---|---|---|"]
        sel = [r for r in hf if r["near"] == near_for(T)]
        loc = _log_ratio(sel, DENSITY_METRICS[2], DENSITY_METRICS[1])
        sink = _log_ratio(sel, DENSITY_METRICS[0], DENSITY_METRICS[1])
        for layer in sorted({r["layer"] for r in sel}):
            u = [float(r["value"]) for r in sel if r["metric"] == "u_shape_index" and r["layer"] == layer]
            lo = [v for (_, l, _), v in loc.items() if l == layer]
            si = [v for (_, l, _), v in sink.items() if l == layer]
            lines.append(f"| {layer} | {statistics.fmean(u):+.2f} | {statistics.fmean(lo):+.2f} | "
                         f"{statistics.fmean(si):+.2f} | {sum(v > 0 for v in u)} / {len(u)} |")
        lines += ["", f"![SmolLM2 U index]({rel}/u_heatmap_smollm2.png)", "",
                  f"![SmolLM2 last query]({rel}/by_key_last_smollm2.png)", ""]
    lines += ["## Verdict on C6 (\"trained models show local decay plus a global U-shape\")", "",
              "Rule: a method shows a property when the 95 % t interval over its seeds of the model-mean value "
              "excludes 0 on the positive side; SmolLM2 (one model) when the value is positive in most layers.", ""]
    if methods:
        for m, (u, loc_s, sink_s, always, n) in verdicts.items():
            def pos(v):
                s = summarize(v) if len(v) > 1 else None
                return s is not None and s.low > 0
            def neg(v):
                s = summarize(v) if len(v) > 1 else None
                return s is not None and s.high < 0
            local = "local decay" if pos(loc_s) else ("no local decay" if neg(loc_s) else "local decay undecided")
            ushape = ("a U-shape" if pos(u) else "no U-shape" if neg(u) else "U-shape undecided")
            lines.append(f"- `{m}`: {local}, {ushape} on average (U index {_fmt(u)}, n = {len(u)}); "
                         f"{always} of {n} (layer, head) pairs are U-shaped in every seed.")
    u_methods, local_methods = [], []
    if methods:
        for m, (u, loc_s, _, _, _) in verdicts.items():
            if len(u) > 1 and summarize(u).low > 0:
                u_methods.append(f"`{m}`")
            if len(loc_s) > 1 and summarize(loc_s).low > 0:
                local_methods.append(f"`{m}`")
    hf_line = ""
    if hf:
        sel = [r for r in hf if r["near"] == near_for(hf[0]["eval_len"]) and r["metric"] == "u_shape_index"]
        by_layer = defaultdict(list)
        for r in sel:
            by_layer[r["layer"]].append(float(r["value"]))
        pos_layers = [l for l, v in sorted(by_layer.items()) if statistics.fmean(v) > 0]
        neg_layers = [l for l, v in sorted(by_layer.items()) if statistics.fmean(v) <= 0]
        lines.append(f"- SmolLM2-135M (one model): {len(pos_layers)} of {len(by_layer)} layers have a positive "
                     f"head-mean U index at {hf[0]['eval_len']} tokens (not: layers {', '.join(map(str, neg_layers)) or 'none'}).")
        hf_line = (f" SmolLM2-135M shows both in {len(pos_layers)} of its {len(by_layer)} layers (a strong sink on the "
                   f"first keys plus local decay; its first layers are local only).")
    if methods:
        lines += ["", f"**Overall: depends.** Local decay holds for {', '.join(local_methods) or 'no method'} "
                  f"(n = seeds as in the table). A global U-shape on top of it holds on average only for "
                  f"{', '.join(u_methods) or 'no bench method'} among the bench models at 128 tokens; the others "
                  f"put no extra weight on the first keys (sink ≈ 0 or < 0).{hf_line}"]
        hyp = verdicts.get("hope_hyperbolic")
        if hyp and hyp[2] and abs(statistics.fmean(hyp[2])) < 0.1:
            lines += ["", f"hope_hyperbolic's first keys get the middle's density (sink {_fmt(hyp[2])}): past its "
                      "local window its logits have decayed to ≈ 0 whatever the key, so every far key gets the same "
                      "weight — the flat plateau of the distance plot, and the far-token dilution of "
                      "[dilution.md](dilution.md)."]
    lines.append("")
    page.write_text("\n".join(lines))
    fig_dir = out
    if methods:
        plot_u_heatmap(bench, fig_dir / "u_heatmap.png", methods=methods, eval_len=T0)
        plot_attention_by_key(bench, fig_dir / "by_key_last.png", methods=methods)
        plot_attention_by_key(bench, fig_dir / "by_distance.png", methods=methods, metric="attention_by_distance")
    if hf:
        main_hf = [r for r in hf if r["near"] == near_for(hf[0]["eval_len"])]
        plot_u_heatmap(main_hf, fig_dir / "u_heatmap_smollm2.png", clip=6.0)
        plot_attention_by_key(main_hf, fig_dir / "by_key_last_smollm2.png")
    log(f"wrote {page}")


# --------------------------------------------------------------------------------------------------
# Dilution study
# --------------------------------------------------------------------------------------------------


def _variants(args: argparse.Namespace):
    """(method label, seed, path, pe changes) of every model of the dilution study."""
    remedy = has_log_length()
    if not remedy:
        log("hope_hyperbolic has no logit_scale option in this checkout: the remedy is not measured")
    for method, seed, path, train_len in checkpoints(Path(args.runs), DILUTION_METHODS):
        yield method, seed, path, None
        if method == "hope_hyperbolic" and remedy:
            yield f"{method}+{REMEDY}", seed, path, remedy_changes(train_len)


def dilution_far(args: argparse.Namespace, out: Path) -> None:
    from hopekit.eval.lengths import test_documents

    records = out / "records.jsonl"
    for method, seed, path, changes in _variants(args):
        model, config = load(path, changes)
        fields = _fields(model, config, method, path)
        lengths = [m * config.train.train_len for m in config.eval.multiples]
        todo = [L for L in lengths if not recorded(records, "far_token_mass", method=method,
                                                   model_digest=fields["model_digest"], eval_len=L,
                                                   windows=args.far_windows, beyond=args.beyond)]
        if not todo:
            log(f"{method} seed{seed}: recorded")
            continue
        _, docs = test_documents(config)
        for L in todo:   # one length at a time, recorded as it finishes
            t0 = time.perf_counter()
            res = far_mass_vs_length(model, docs, [L], beyond=args.beyond, windows=args.far_windows)
            append_records(records, far_mass_records(res, **fields))
            log(f"{method} seed{seed} @ {L}: far mass {float(res[L].mass.mean()):.3f} "
                f"(uniform {uniform_far_mass(L, args.beyond):.3f}; {time.perf_counter() - t0:.0f}s)")


def dilution_ppl(args: argparse.Namespace, out: Path) -> None:
    from hopekit.eval.lengths import evaluate_lengths

    if not has_log_length():
        log("ppl: no logit_scale option in this checkout; nothing to compare")
        return
    for method, seed, path, changes in _variants(args):   # rope and alibi too: the scale of the comparison
        model, config = load(path, changes)
        log(f"ppl: {method} seed{seed}")
        evaluate_lengths(model, config, out / "records.jsonl", method=method, extensions=(), progress=False,
                         log=lambda m: log("  " + m.strip()))


def _model_mean(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int], float]:
    """(method, eval_len, seed) -> far mass averaged over layers and heads."""
    acc: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    for r in rows:
        if r["metric"] == "far_token_mass":
            acc[(r["method"], r["eval_len"], r["seed"])].append(float(r["value"]))
    return {k: statistics.fmean(v) for k, v in acc.items()}


def _dilution_verdict(far: dict, ppl: dict, lengths: list[int], rem: str) -> list[str]:
    """The verdict lines, from the numbers: the dilution at the longest length, and whether the remedy
    lowers the far mass and the perplexity (paired 95 % intervals excluding 0)."""
    out = ["## Verdict", ""]
    if not far or not lengths:
        return out + ["_no far-token records yet_", ""]
    Lmax = lengths[-1]
    plain = [v for (m, L, _), v in far.items() if m == "hope_hyperbolic" and L == Lmax]
    if plain:
        out.append(f"- **Dilution (D1)**: at {Lmax} tokens ({Lmax // 128}× train_len) hope_hyperbolic's last queries "
                   f"put {_fmt(plain, pct=True, digits=1)} % of their weight on keys more than 128 back (n = {len(plain)} "
                   f"seeds; uniform attention: {100 * uniform_far_mass(Lmax, 128):.1f} %). The claim's 50–62 % "
                   f"{'is reproduced' if 50 <= 100 * statistics.fmean(plain) <= 62 else 'is not reproduced'}.")
    def seeds_of(m, L, table):
        return {s for (mm, LL, s) in table if mm == m and LL == L}
    far_help, ppl_help, ppl_open = [], [], []
    for L in lengths[1:]:
        common = sorted(seeds_of("hope_hyperbolic", L, far) & seeds_of(rem, L, far))
        if len(common) > 1:
            d = summarize([far[(rem, L, s)] - far[("hope_hyperbolic", L, s)] for s in common])
            if d.high < 0:
                far_help.append(f"{L} ({100 * d.mean:+.1f} points)")
        a, b = ppl.get((rem, L), {}), ppl.get(("hope_hyperbolic", L), {})
        common = sorted(set(a) & set(b))
        if len(common) > 1:
            r = paired_ratio([a[k][1] for k in common], [b[k][1] for k in common])
            (ppl_help if r.high < 0 else ppl_open).append(f"{L} ({r.mean:+.1f} %, [{r.low:+.1f}, {r.high:+.1f}] %, "
                                                          f"n = {r.n})")
    if any(k[0] == rem for k in far):
        out.append(f"- **Remedy, far mass**: `logit_scale=\"{REMEDY}\"` lowers the far mass with a paired 95 % "
                   f"interval excluding 0 at {', '.join(far_help) or 'no length'}.")
    if ppl:
        out.append(f"- **Remedy, perplexity**: lower with the interval excluding 0 at "
                   f"{', '.join(ppl_help) or 'no length'}; not separated at {', '.join(ppl_open) or 'no length'}. "
                   f"At 128 it is the same model (s(m) = 1 inside the training window).")
    return out + [""]


def dilution_page(out: Path, page: Path, args: argparse.Namespace) -> None:
    rows = read_records(out / "records.jsonl") if (out / "records.jsonl").exists() else []
    rel = os.path.relpath(out, page.parent)
    far = _model_mean(rows)
    methods = [m for m in (*DILUTION_METHODS, f"hope_hyperbolic+{REMEDY}") if any(k[0] == m for k in far)]
    lengths = sorted({k[1] for k in far})
    t0 = 128
    beyond = next((r["beyond"] for r in rows if r["metric"] == "far_token_mass"), args.beyond)
    lines = [
        "# The dilution of hope_hyperbolic at long lengths (D1), and a log-length logit scale", "",
        f"Generated by `python scripts/analysis_attention.py --study dilution --out {out} --page {page}` from the "
        f"records in `{out}/records.jsonl`.", "",
        "## Setup", "",
        "- **Models**: the bench's decoders (d_model 128, 4 layers, 4 heads, byte-level Shakespeare, train_len 128, "
        "400 steps), rope, alibi and hope_hyperbolic (default: omega_scale 0.2, λ = 0.21), seeds 0, 1, 2.",
        f"- **Far-token mass**: the post-softmax weight a query puts on keys more than {beyond} tokens back "
        "(Δ > 128), averaged over the last quarter of a window's queries, over the layers and heads, over "
        f"{args.far_windows} test-split windows per length; then mean ± sd over seeds. *Uniform* is what attention "
        "spread evenly over the causal keys would give. At 128 it is 0 by construction (no key is that far).",
        f"- **Remedy** (`hope_hyperbolic+{REMEDY}`): the same weights with `logit_scale=\"{REMEDY}\"` switched on at "
        "evaluation time: a query at position m has its logits multiplied by s(m) = max(1, ln(m+1)/ln 128). "
        "It is 1 inside the training window, so the in-distribution model is unchanged; past it, it sharpens "
        "the softmax so that the near keys keep their share as the number of far keys grows. Compared paired by "
        "seed (the same weights).",
        "- **Perplexity**: `hopekit.eval.lengths.evaluate_lengths` with each checkpoint's own eval settings "
        "(non-overlapping windows spread over the test split, 16,384 scored tokens per length): the same "
        "tokens for both variants. The change is the paired one: 100·(exp(mean over seeds of the NLL "
        "difference) − 1) %, with its 95 % t interval (n = 3, t = 4.30).", "",
    ]
    if far:
        lines += ["## Far-token mass of the last queries (mean over layers and heads; mean ± sd over seeds)", "",
                  "| method | n | " + " | ".join(f"{L} ({L // t0}×)" for L in lengths) + " |",
                  "|---|---|" + "---|" * len(lengths)]
        for m in methods:
            seeds = sorted({k[2] for k in far if k[0] == m})
            cells = [_fmt([far[(m, L, s)] for s in seeds if (m, L, s) in far], pct=True, digits=1) for L in lengths]
            lines.append(f"| `{m}` | {len(seeds)} | " + " | ".join(f"{c} %" if c != "—" else c for c in cells) + " |")
        lines.append("| uniform attention | — | " + " | ".join(f"{100 * uniform_far_mass(L, beyond):.1f} %"
                                                            for L in lengths) + " |")
        # per layer, hope_hyperbolic and its remedy
        lines += ["", "### Per layer at the longest length (mean over heads, mean ± sd over seeds)", "",
                  "| method | " + " | ".join(f"layer {l}" for l in range(4)) + " |", "|---|" + "---|" * 4]
        Lmax = lengths[-1]
        for m in methods:
            acc = defaultdict(lambda: defaultdict(list))
            for r in rows:
                if r["metric"] == "far_token_mass" and r["method"] == m and r["eval_len"] == Lmax:
                    acc[r["layer"]][r["seed"]].append(float(r["value"]))
            cells = [_fmt([statistics.fmean(v) for v in acc[l].values()], pct=True, digits=1) + " %" for l in sorted(acc)]
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        lines += ["", f"![far-token mass vs length]({rel}/far_mass.png)", ""]
        rem = f"hope_hyperbolic+{REMEDY}"
        if rem in methods:
            lines += ["## Does the log-length scale reduce the far mass? (paired by seed)", "",
                      "| length | remedy − plain (points) | 95 % interval | n |", "|---|---|---|---|"]
            for L in lengths:
                seeds = [s for s in (0, 1, 2, *range(3, 10)) if ("hope_hyperbolic", L, s) in far and (rem, L, s) in far]
                if len(seeds) < 2 or L == t0:
                    continue
                d = summarize([100 * (far[(rem, L, s)] - far[("hope_hyperbolic", L, s)]) for s in seeds])
                lines.append(f"| {L} | {d.mean:+.1f} | [{d.low:+.1f}, {d.high:+.1f}] | {d.n} |")
            lines.append("")
    ppl = defaultdict(dict)
    for r in rows:
        if r.get("metric") == "ppl" and r.get("value") is not None:
            ppl[(r["method"], r["eval_len"])][r["seed"]] = (float(r["value"]), float(r["nll"]) if "nll" in r
                                                             else math.log(float(r["value"])))
    rem = f"hope_hyperbolic+{REMEDY}"
    if ppl:
        p_lengths = sorted({k[1] for k in ppl})
        lines += ["## Perplexity with and without the log-length scale (rope and alibi for scale; mean ± sd over seeds)", "",
                  "| method | " + " | ".join(f"{L} ({L // t0}×)" for L in p_lengths) + " |",
                  "|---|" + "---|" * len(p_lengths)]
        for m in (*DILUTION_METHODS, rem):
            if not any(k[0] == m for k in ppl):
                continue
            cells = []
            for L in p_lengths:
                v = [x[0] for x in ppl.get((m, L), {}).values()]
                cells.append("—" if not v else (f"{summarize(v).mean:.3f} ± {summarize(v).sd:.3f}" if len(v) > 1
                                                else f"{v[0]:.3f}"))
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        lines += ["", "| length | perplexity change, remedy vs plain (paired) | 95 % interval | n |", "|---|---|---|---|"]
        for L in p_lengths:
            a, b = ppl.get((rem, L), {}), ppl.get(("hope_hyperbolic", L), {})
            seeds = sorted(set(a) & set(b))
            if len(seeds) < 2:
                continue
            s = paired_ratio([a[k][1] for k in seeds], [b[k][1] for k in seeds])
            lines.append(f"| {L} | {s.mean:+.2f} % | [{s.low:+.2f}, {s.high:+.2f}] % | {s.n} |")
        lines.append("")
    lines += _dilution_verdict(far, ppl, lengths, rem)
    page.write_text("\n".join(lines))
    if far:
        plot_far_mass([r for r in rows if r["metric"] == "far_token_mass"], out / "far_mass.png", methods=methods)
    log(f"wrote {page}")


# --------------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", choices=("ushape", "dilution"), default="ushape")
    ap.add_argument("--out", default=None, help="records and figures (default docs/results/<study>)")
    ap.add_argument("--page", default=None, help="the page (default docs/results/<study>.md)")
    ap.add_argument("--stages", default=None, help="ushape: models,smollm2,page; dilution: far,ppl,page")
    ap.add_argument("--runs", default=str(RUNS), help="checkpoints RUNS/<method>/seed<k>/checkpoint.pt")
    ap.add_argument("--windows", type=int, default=256, help="ushape: test windows of train_len per bench model")
    ap.add_argument("--hf-len", type=int, default=2048, help="ushape: SmolLM2's window length")
    ap.add_argument("--hf-windows", type=int, default=3, help="ushape: SmolLM2's windows")
    ap.add_argument("--far-windows", type=int, default=8, help="dilution: test windows per length")
    ap.add_argument("--beyond", type=int, default=128, help="dilution: far means Δ > beyond")
    args = ap.parse_args()
    out = Path(args.out or f"docs/results/{args.study}")
    page = Path(args.page or f"docs/results/{args.study}.md")
    out.mkdir(parents=True, exist_ok=True)
    stages = (args.stages or ("models,smollm2,page" if args.study == "ushape" else "far,ppl,page")).split(",")
    torch.set_num_threads(1)
    run, page_of = ({"models": ushape_models, "smollm2": ushape_hf}, ushape_page) if args.study == "ushape" else \
        ({"far": dilution_far, "ppl": dilution_ppl}, dilution_page)
    for st in stages:
        if st == "page":
            page_of(out, page, args)
        elif st in run:
            run[st](args, out)
        else:
            raise SystemExit(f"--stages: unknown stage {st!r} for {args.study} ({', '.join(run)}, page)")


if __name__ == "__main__":
    main()
