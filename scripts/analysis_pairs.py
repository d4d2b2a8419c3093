#!/usr/bin/env python
"""The per-pair decomposition of trained RoPE logits against distance (hope_highfreq's "activated
components"): records, curves, figures and a page.

    OMP_NUM_THREADS=1 nice -n 15 python scripts/analysis_pairs.py --out docs/results/rope_pairs \\
        --page docs/results/rope_pairs.md                                  # measure new seeds, then the page
    python scripts/analysis_pairs.py --out docs/results/rope_pairs --page docs/results/rope_pairs.md --page-only
    python scripts/analysis_pairs.py ... --smollm2 4                       # also SmolLM2-135M on 4 windows of 2048

What it measures (``hopekit.analysis.pairs.pair_profiles``): for each checkpoint (default: the rope
decoders ``results/analysis/checkpoints/rope/seed*/checkpoint.pt``, made by
``hopekit bench --preset benchmarks/analysis.yaml --run-dir results/analysis``), ``--windows``
non-overlapping windows of ``train_len`` tokens taken at evenly spaced indices of all such windows of
the test split's documents (no window crosses a document), and for every layer, head and rotary pair
the mean logit term against Δ, against the key position for the last query, and its mean |·|.
Checkpoints whose weights are already in the records (same model digest) are skipped.

Written under ``--out``: ``records.jsonl`` (one row per seed, layer, head and component — a pair, a
period band's pairs summed, or the whole logit — metric ``pair_logit_magnitude``, value = mean |term|,
with the U-score parts alongside), ``curves.jsonl`` (metric ``pair_profile_delta`` /
``pair_profile_last_query``: each pair's curve), and the figures the page shows.
"""

from __future__ import annotations

import argparse
import glob
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hopekit.analysis.pairs import (BANDS, GROUPS, PairProfiles, _fig, pair_profiles, pair_records,  # noqa: E402
                                    plot_pair_heatmaps, u_parts)
from hopekit.eval.records import append_records, model_descriptor, model_digest, read_records  # noqa: E402

CHECKPOINTS = "results/analysis/checkpoints/rope/seed*/checkpoint.pt"
TASK = "pair_decomposition"
GROUP_LABEL = {"within": "P ≤ L", "activated": "L < P ≤ 2L", "beyond": "P > 2L", "above": "P > L (both)"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)




# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def spread_windows(docs: list[torch.Tensor], length: int, count: int) -> torch.Tensor:
    """``count`` windows of ``length`` tokens at evenly spaced indices of every non-overlapping window of
    every document (in document order)."""
    from hopekit.data.batching import eval_windows

    every = [w.input_ids for w in eval_windows("nonoverlapping", docs, length, per_document=True)]
    if len(every) < count:
        raise SystemExit(f"--windows {count}: the split has only {len(every)} windows of {length} tokens")
    picks = np.linspace(0, len(every) - 1, count).round().astype(int)
    return torch.stack([every[i] for i in picks])


def measure_checkpoint(path: str, out: Path, n_windows: int, batch_size: int) -> None:
    from hopekit import pe
    from hopekit.checkpoint import load_checkpoint
    from hopekit.eval.lengths import test_documents

    model, config, state = load_checkpoint(path)
    if int(state.get("step", -1)) < int(config.train.steps):
        log(f"{path}: step {state.get('step')} of {config.train.steps}, still training; skipped")
        return
    digest = model_digest(model)
    records = out / "records.jsonl"
    if records.exists() and any(r.get("model_digest") == digest for r in read_records(records)):
        log(f"{path}: already measured ({digest[:19]}), skipped")
        return
    L = int(config.train.train_len)
    _, docs = test_documents(config)
    windows = spread_windows(docs, L, n_windows)
    t0 = time.perf_counter()
    prof = pair_profiles(model, windows, train_len=L, batch_size=batch_size)
    log(f"{path}: {n_windows} windows of {L} in {time.perf_counter() - t0:.0f} s")
    common = dict(method=pe.name_of(model.pe.params),
                  params=pe.to_config(model.pe.params), train_len=L, eval_len=L, task=TASK,
                  seed=int(config.train.seed), model=model_descriptor(model), model_digest=digest,
                  corpus=config.data.corpus, split=config.eval.split, tokenizer=config.data.tokenizer,
                  windows=n_windows, checkpoint=str(path))
    rows, curves = pair_records(prof, common)
    append_records(out / "curves.jsonl", curves)
    append_records(records, rows)


def measure_smollm2(out: Path, n_windows: int, length: int) -> None:
    from hopekit import pe
    from hopekit.analysis.pairs import hf_capture_qk, hf_rope_encoding
    from hopekit.eval.pretrained import pretrained_text
    from hopekit.integrations import hf

    lm = hf.load_pretrained("smollm2")
    digest = model_digest(lm.model)
    records = out / "records.jsonl"
    if records.exists() and any(r.get("model_digest") == digest and r.get("eval_len") == length
                                for r in read_records(records)):
        log("smollm2: already measured, skipped")
        return
    cfg = lm.model.config
    enc = hf_rope_encoding(cfg)
    L = int(cfg.max_position_embeddings)
    text = pretrained_text(lm.tokenizer)
    windows = spread_windows(text.documents, length, n_windows)
    t0 = time.perf_counter()
    # the U-score reads the measured window (Δ < length), so the bands are relative to it too
    prof = pair_profiles(lm.model, windows, train_len=length, enc=enc, capture=hf_capture_qk, batch_size=1,
                         query_chunk=16, magnitude_queries=64)
    log(f"smollm2: {n_windows} windows of {length} in {time.perf_counter() - t0:.0f} s")
    common = dict(method="rope", params=pe.to_config(enc.params), train_len=L, eval_len=length, task=TASK, seed=0,
                  model=model_descriptor(lm.model), model_digest=digest, hf="smollm2", corpus=text.corpus,
                  split=text.split, tokenizer=text.tokenizer, windows=n_windows, magnitude_queries=64,
                  band_len=length)
    rows, curves = pair_records(prof, common, per_head=False)
    append_records(out / "curves.jsonl", curves)
    append_records(records, rows)


# --------------------------------------------------------------------------------------------------
# The page (from records and curves only)
# --------------------------------------------------------------------------------------------------


def _ms(values: list[float], fmt: str = "{:.3f}") -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.fmean(values))} ± {fmt.format(statistics.stdev(values))}"


def _seed_stat(rows: list[dict], seeds: list[int], pick, stat) -> list[float]:
    """``stat`` of the rows ``pick`` keeps, once per seed."""
    out = []
    for s in seeds:
        sel = [r for r in rows if r["seed"] == s and pick(r)]
        if sel:
            out.append(stat(sel))
    return out


def _in_group(r: dict, group: str) -> bool:
    return r.get("band") in BANDS[1:] if group == "above" else r.get("band") == group


def plot_scatter(rows: list[dict], model: str, path: Path, *, length: str = "L",
                 what: str = "every seed, layer, head and pair") -> None:
    sel = [r for r in rows if r["model"] == model and r["component"] == "pair"]
    L = sel[0]["train_len"]
    fig, axes = _fig(1, 3, 14, 4)
    colors = {"within": "tab:blue", "activated": "tab:red", "beyond": "tab:gray"}
    for ax, key, label in zip(axes[0], ("u_score", "u_score_last", "share"),
                              ("U-score of the Δ-profile", "U-score over key positions (last query)",
                               "share of the head's Σ mean |term|")):
        rng = np.random.default_rng(0)
        for band, color in colors.items():
            pts = [(r["period"] * math.exp(rng.normal(0, 0.04)), r[key]) for r in sel if r["band"] == band]
            if pts:
                x, y = zip(*pts)
                ax.scatter(x, y, s=6, alpha=0.5, color=color,
                           label=f"{GROUP_LABEL[band].replace('L', length)} ({len(pts)})")
        ax.axvline(L, color="k", lw=1)
        ax.axvline(2 * L, color="k", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel(f"period 2π/θ (tokens); lines: {length}, 2{length}")
        ax.set_ylabel(label)
        ax.axhline(0, color="k", lw=0.5)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{model}: {what}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_band_profiles(curves: list[dict], seed: int, model: str, path: Path) -> None:
    sel = [c for c in curves if c["seed"] == seed and c["model"] == model and c["component"] == "pair"]
    layers = sorted({c["layer"] for c in sel})
    fig, axes = _fig(2, len(layers), 3.4 * len(layers), 5.6)
    colors = {"within": "tab:blue", "activated": "tab:red", "beyond": "tab:gray"}
    for row, metric in enumerate(("pair_profile_delta", "pair_profile_last_query")):
        for j, layer in enumerate(layers):
            ax = axes[row][j]
            for h in sorted({c["head"] for c in sel}):
                for band, color in colors.items():
                    vs = [c["value"] for c in sel if c["metric"] == metric and c["layer"] == layer and c["head"] == h
                          and c["band"] == band]
                    if vs:
                        ax.plot(np.sum(vs, 0), color=color, lw=0.8, alpha=0.8,
                                label=GROUP_LABEL[band] if h == 0 else None)
            ax.set_title(f"layer {layer}", fontsize=8)
            ax.set_xlabel("Δ" if row == 0 else "key position n (query T−1)", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0][0].set_ylabel("band's summed mean term", fontsize=7)
    axes[1][0].set_ylabel("band's summed term, last query", fontsize=7)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"{model}, seed {seed}: each band's pairs summed, one line per head", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def lift_share(rows: list[dict], seed: int, group: str | int, end: str = "far", view: str = "") -> float:
    """The share of the far-end (or near-end) lift above the middle, Σ (end − mid) over the heads whose
    whole-logit profile has end > mid, that the pairs of ``group`` supply (end, mid are linear in the
    profile, so the bands' lifts add up to the head's). ``group``: a band (:data:`GROUPS`) or a pair index."""
    e, m = f"{end}{view}", f"mid{view}"
    lifted = {(t["layer"], t["head"]) for t in rows if t["seed"] == seed and t["component"] == "total" and t[e] > t[m]}
    total = sum(t[e] - t[m] for t in rows if t["seed"] == seed and t["component"] == "total"
                and (t["layer"], t["head"]) in lifted)
    mine = ((lambda r: r["component"] == "pair" and r["pair"] == group) if isinstance(group, int)
            else (lambda r: r["component"] == "band" and r["band"] == group))
    part = sum(r[e] - r[m] for r in rows if r["seed"] == seed and mine(r) and (r["layer"], r["head"]) in lifted)
    return part / total if total > 0 else float("nan")


def verdict(rows: list[dict], seeds: list[int]) -> tuple[str, str]:
    """C5 (mechanism): the pairs whose period exceeds L carry the global U. Rule (fixed after a 32-window
    pilot on seed 0, before the study's windows and the other seeds were measured), on the Δ-profiles:
    (a) the activated pairs (L < P ≤ 2L) have a higher mean U-score than the P ≤ L pairs, in every seed;
    (b) the P > L pairs supply at least half of the far-end lift (the initial tokens / largest Δ above the
    middle) summed over the heads that have one, in every seed. Both: holds; neither in any seed: does
    not hold; otherwise: depends."""
    def mean_u(s: int, pick) -> float:
        return statistics.fmean(r["u_score"] for r in rows if r["seed"] == s and r["component"] == "pair" and pick(r))

    a = [mean_u(s, lambda r: r["band"] == "activated") > mean_u(s, lambda r: r["band"] == "within") for s in seeds]
    b = [lift_share(rows, s, "above") >= 0.5 for s in seeds]
    why = (f"(a) activated pairs' mean U-score above the P ≤ L pairs': {sum(a)}/{len(seeds)} seeds; "
           f"(b) P > L pairs supply ≥ half of the far-end lift: {sum(b)}/{len(seeds)} seeds")
    if all(a) and all(b):
        return "holds", why
    if not any(a) and not any(b):
        return "does not hold", why
    return "depends", why


def write_page(out: Path, page: Path, command: str) -> str:
    records, curves = read_records(out / "records.jsonl"), read_records(out / "curves.jsonl")
    dec = [r for r in records if r.get("hf") is None]
    if not dec:
        raise SystemExit(f"{out / 'records.jsonl'}: no decoder records; measure first")
    model = dec[0]["model"]
    seeds = sorted({r["seed"] for r in dec})
    L = dec[0]["train_len"]
    pairs = [r for r in dec if r["component"] == "pair"]
    bands = [r for r in dec if r["component"] == "band"]
    totals = [r for r in dec if r["component"] == "total"]
    periods = {r["pair"]: r["period"] for r in pairs}
    n_pairs = len(periods)
    windows = sorted({r["windows"] for r in dec})
    layers, heads = sorted({r["layer"] for r in dec}), sorted({r["head"] for r in dec})
    fig_dir = out
    plot_pair_heatmaps(curves, seeds[0], model, "pair_profile_delta", fig_dir / "heatmap_delta.png",
                  f"{model}, seed {seeds[0]}: mean term vs Δ per pair (each row / its max |·|); "
                  f"solid: period = L, dashed: 2L")
    plot_pair_heatmaps(curves, seeds[0], model, "pair_profile_last_query", fig_dir / "heatmap_last_query.png",
                  f"{model}, seed {seeds[0]}: term of the last query vs key position (each row / its max |·|)")
    plot_scatter(dec, model, fig_dir / "u_vs_period.png")
    plot_band_profiles(curves, seeds[0], model, fig_dir / "band_profiles.png")
    v, why = verdict(dec, seeds)

    def band_table() -> list[str]:
        lines = ["| pairs | per head | share of Σ mean \\|term\\| | mean \\|term\\| per pair | U-score (Δ) | U>0 (Δ) "
                 "| U-score (last query) | spread/mean \\|term\\| | band sum U-shaped (Δ) | band sum u_depth (Δ) |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
        for g in GROUPS:
            pr = [r for r in pairs if _in_group(r, g)]
            br = [r for r in bands if r["band"] == g]
            if not pr:
                continue
            per_head = len({r["pair"] for r in pr})
            lines.append("| " + " | ".join([
                GROUP_LABEL[g], str(per_head),
                _ms(_seed_stat(br, seeds, lambda r: True, lambda s: statistics.fmean(r["share"] for r in s))),
                _ms(_seed_stat(pr, seeds, lambda r: True, lambda s: statistics.fmean(r["value"] for r in s))),
                _ms(_seed_stat(pr, seeds, lambda r: True, lambda s: statistics.fmean(r["u_score"] for r in s))),
                _ms(_seed_stat(pr, seeds, lambda r: True, lambda s: statistics.fmean(r["u_score"] > 0 for r in s)), "{:.2f}"),
                _ms(_seed_stat(pr, seeds, lambda r: True, lambda s: statistics.fmean(r["u_score_last"] for r in s))),
                _ms(_seed_stat(pr, seeds, lambda r: True,
                               lambda s: statistics.fmean(r["spread"] / r["value"] for r in s if r["value"] > 0)), "{:.2f}"),
                _ms(_seed_stat(br, seeds, lambda r: True, lambda s: statistics.fmean(r["u_depth"] > 0 for r in s)), "{:.2f}"),
                _ms(_seed_stat(br, seeds, lambda r: True, lambda s: statistics.fmean(r["u_depth"] for r in s))),
            ]) + " |")
        return lines

    def pair_table() -> list[str]:
        lines = ["| pair | period | band | share | U-score (Δ) | U-score (last query) | spread/mean \\|term\\| "
                 "| far-end lift share (Δ) | initial-key lift share (last query) |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for p in sorted(periods):
            pr = [r for r in pairs if r["pair"] == p]
            lines.append("| " + " | ".join([
                str(p), f"{periods[p]:.0f}", GROUP_LABEL[pr[0]["band"]],
                _ms(_seed_stat(pr, seeds, lambda r: True, lambda s: statistics.fmean(r["share"] for r in s))),
                _ms(_seed_stat(pr, seeds, lambda r: True, lambda s: statistics.fmean(r["u_score"] for r in s))),
                _ms(_seed_stat(pr, seeds, lambda r: True, lambda s: statistics.fmean(r["u_score_last"] for r in s))),
                _ms(_seed_stat(pr, seeds, lambda r: True,
                               lambda s: statistics.fmean(r["spread"] / r["value"] for r in s if r["value"] > 0)), "{:.2f}"),
                _ms([lift_share(dec, s, p) for s in seeds], "{:.2f}"),
                _ms([lift_share(dec, s, p, view="_last") for s in seeds], "{:.2f}"),
            ]) + " |")
        return lines

    def head_table() -> list[str]:
        lines = ["| | heads U-shaped | mean u_depth | mean U-score | mean \\|logit\\| |", "|---|---|---|---|---|"]
        for key, label in (("", "Δ-profile of the whole logit"), ("_last", "last query over key positions")):
            lines.append("| " + " | ".join([
                label,
                _ms(_seed_stat(totals, seeds, lambda r: True, lambda s: statistics.fmean(r[f"u_depth{key}"] > 0 for r in s)), "{:.2f}"),
                _ms(_seed_stat(totals, seeds, lambda r: True, lambda s: statistics.fmean(r[f"u_depth{key}"] for r in s))),
                _ms(_seed_stat(totals, seeds, lambda r: True, lambda s: statistics.fmean(r[f"u_score{key}"] for r in s))),
                _ms(_seed_stat(totals, seeds, lambda r: True, lambda s: statistics.fmean(r["value"] for r in s))),
            ]) + " |")
        return lines

    def reading() -> list[str]:
        """Sentences whose numbers come from the records."""
        def band_mean(group: str, key: str) -> str:
            return _ms(_seed_stat(pairs, seeds, lambda r: _in_group(r, group), lambda s: statistics.fmean(r[key] for r in s)))

        def band_pos(group: str) -> str:
            return _ms(_seed_stat(pairs, seeds, lambda r: _in_group(r, group),
                                  lambda s: statistics.fmean(r["u_score"] > 0 for r in s)), "{:.2f}")

        lifts = {p: statistics.fmean(lift_share(dec, s, p) for s in seeds) for p in periods}
        top = sorted(lifts, key=lifts.get, reverse=True)[:3]
        act = [p for p in periods if L < periods[p] <= 2 * L]
        slow = [p for p in periods if periods[p] > 2 * L]
        flat = [p for p in slow if 2 * math.pi * L / periods[p] < 0.5]  # θL < 0.5 rad
        ratio = lambda ps: _ms(_seed_stat(pairs, seeds, lambda r: r["pair"] in ps,  # noqa: E731
                                          lambda s: statistics.fmean(r["spread"] / r["value"] for r in s)), "{:.2f}")
        share_of = lambda g: _ms(_seed_stat(bands, seeds, lambda r: r["band"] == g,  # noqa: E731
                                            lambda s: statistics.fmean(r["share"] for r in s)))
        mean_of = lambda g, k="u_score": statistics.fmean(  # noqa: E731
            _seed_stat(pairs, seeds, lambda r: _in_group(r, g), lambda s: statistics.fmean(r[k] for r in s)))
        within_lift = statistics.fmean(lift_share(dec, s, "within") for s in seeds)
        beyond_lift = [lift_share(dec, s, "beyond") for s in seeds]
        more = mean_of("activated") > mean_of("within")
        return [
            "**Reading.** "
            f"The activated pair{'s' if len(act) > 1 else ''} ({', '.join(f'pair {p}, P = {periods[p]:.0f}' for p in act)}) "
            f"{'are' if len(act) > 1 else 'is'} U-shaped over Δ {'more' if more else 'less'} than the rotating P ≤ L "
            f"pairs (U-score {band_mean('activated', 'u_score')} vs {band_mean('within', 'u_score')}; U > 0 in "
            f"{band_pos('activated')} vs {band_pos('within')} of the profiles){', as hope_highfreq describes' if more else ''}; "
            f"over key positions for the last query: {band_mean('activated', 'u_score_last')} vs "
            f"{band_mean('within', 'u_score_last')}. The P > 2L pairs: U-score {band_mean('beyond', 'u_score')} "
            f"(U > 0 in {band_pos('beyond')}); all P > L pairs together: {band_mean('above', 'u_score')}. "
            f"The lift of the far end (the largest Δ, i.e. the initial keys) above the middle comes "
            f"{'mostly from pairs with P ≤ L' if within_lift > 0.5 else 'mostly from pairs with P > L'} "
            f"({within_lift:.2f} of it); the largest shares by pair: "
            + ", ".join(f"pair {p} (P = {periods[p]:.0f}) {lifts[p]:.2f}" for p in top)
            + " (with half a turn or more inside the window, cos(θΔ − φ) comes back up at Δ ≈ L for a suitable phase φ); the P > 2L pairs "
            f"supply {_ms(beyond_lift, '{:.2f}')}{' (they pull it down)' if max(beyond_lift) < 0 else ''}. Magnitude: the "
            f"P > L pairs carry {share_of('above')} of Σ mean |term| (activated {share_of('activated')}, P > 2L "
            f"{share_of('beyond')}) with {len(act) + len(slow)} of {n_pairs} pairs. The mean term of the P > 2L pairs "
            f"changes with Δ by spread/mean |term| {ratio(slow)} against {ratio([p for p in periods if periods[p] <= L])} "
            f"for the P ≤ L pairs; for the {len(flat)} pairs with θL < 0.5 rad that change cannot come from the "
            "rotation (cos θΔ moves by < 0.13 over the window): it is the content's own dependence on Δ and on the "
            "first keys, i.e. these pairs act as content channels.",
            "",
        ]

    def lift_table() -> list[str]:
        lines = ["| end | view | " + " | ".join(GROUP_LABEL[g] for g in GROUPS) + " | heads with a lift |",
                 "|---|---|" + "---|" * (len(GROUPS) + 1)]
        for end in ("far", "near"):
            for view, label in (("", "Δ-profile"), ("_last", "last query")):
                n_heads = [statistics.fmean(t[f"{end}{view}"] > t[f"mid{view}"] for t in totals if t["seed"] == s)
                           for s in seeds]
                lines.append(f"| {end} | {label} | " + " | ".join(
                    _ms([lift_share(dec, s, g, end, view) for s in seeds], "{:.2f}") for g in GROUPS)
                    + f" | {_ms(n_heads, '{:.2f}')} |")
        return lines

    above_share = _seed_stat(bands, seeds, lambda r: r["band"] == "above",
                             lambda s: statistics.fmean(r["share"] for r in s))
    u_within = _seed_stat(pairs, seeds, lambda r: r["band"] == "within", lambda s: statistics.fmean(r["u_score"] for r in s))
    u_above = _seed_stat(pairs, seeds, lambda r: _in_group(r, "above"), lambda s: statistics.fmean(r["u_score"] for r in s))
    text = [
        "# Per-pair decomposition of trained RoPE logits (hope_highfreq's activated components)",
        "",
        f"Generated by `{command}` from `rope_pairs/records.jsonl` and `rope_pairs/curves.jsonl` "
        "(every row: the encoding's parameters, seed, model digest, commit).",
        "",
        f"**Models**: {model} (rope, base {dec[0]['params'].get('base'):g}, {n_pairs} pairs per head), trained at "
        f"L = {L} on {dec[0]['corpus']} ({dec[0]['tokenizer']} tokens), seeds {', '.join(map(str, seeds))}; "
        f"{len(layers)} layers × {len(heads)} heads. **Data**: {'/'.join(map(str, windows))} windows of {L} tokens "
        f"per seed at evenly spaced indices of all non-overlapping windows of the {dec[0]['split']} split "
        "(no window crosses a document).",
        "",
        "**Measured** (`hopekit.analysis.pairs`): the logit of query m and key n is a sum over the half-split "
        "rotary pairs, logit(m, n) = Σ_i c_i(m, n), c_i = q_rot^(i)(m)·k_rot^(i)(n)/√d (tested: the terms sum to "
        "the model's logits). Per layer, head and pair: the mean term against Δ = m − n over causal queries and "
        "windows (the Δ-profile), the term of the last query (m = L − 1) against key position n averaged over "
        "windows (the position-dependent view: the paper's U over key positions), and the mean |term| "
        "(magnitude; share = its fraction of the head's Σ over pairs). Bands by period P = 2π/θ: P ≤ L (turns "
        "inside the window), L < P ≤ 2L (\"activated\": more than half a turn), P > 2L (less than half a turn).",
        "",
        "**U-score** of a profile p over Δ = 0 … L − 1, ends of w = L/8 tokens: near = mean p[0, w), far = mean "
        "p[L − w, L), mid = mean of the rest; u_depth = min(near, far) − mid (logit units: how far *both* ends rise "
        "above the middle), U-score = u_depth / (max p − min p) ∈ [−1, 1]: 1 for a flat-bottomed U, 0 for a "
        "one-sided step (decay alone), ≈ −0.5 for a half cosine cos(πΔ/L). A band's profile is the sum of its "
        "pairs' (near/mid/far are linear). spread/mean |term| = (max p − min p) / mean |c|: how much of a pair's "
        "term depends on Δ on average, against its size (a pure content channel has ≈ 0).",
        "",
        f"## Verdict (C5, mechanism): **{v}**",
        "",
        f"{why}. Holds if both, does not hold if neither in any seed, depends otherwise (the rule was fixed "
        "after a 32-window pilot on seed 0, before this measurement and before seeds 1–2 existed).",
        "",
        f"- U-score of the Δ-profiles: pairs with P > L {_ms(u_above)}, pairs with P ≤ L {_ms(u_within)} "
        "(mean over layers, heads and pairs; ± sd over seeds).",
        f"- Share of the logit magnitude (Σ mean |term|) carried by the P > L pairs: {_ms(above_share)} "
        f"({sum(1 for p in periods.values() if p > L)} of {n_pairs} pairs).",
        "- Share of the far-end lift (largest Δ above the middle) supplied by the P > L pairs: "
        f"{_ms([lift_share(dec, s, 'above') for s in seeds], '{:.2f}')} (Δ-profile), "
        f"{_ms([lift_share(dec, s, 'above', view='_last') for s in seeds], '{:.2f}')} (last query: initial keys "
        "above the middle).",
        "",
        *reading(),
        "## By band (mean over layers and heads; ± sd over seeds)",
        "",
        *band_table(),
        "",
        "\"U>0\": the fraction of pair profiles with a positive U-score; \"band sum U-shaped\": the fraction of "
        "heads whose band-summed Δ-profile has u_depth > 0.",
        "",
        "## Who lifts the ends (share of the heads' summed lift; ± sd over seeds)",
        "",
        *lift_table(),
        "",
        "Far end: Δ ≥ 7L/8 in the Δ-profile, keys n < L/8 (the initial tokens) for the last query; near end: Δ < L/8, "
        "the most recent keys. A band's lift is its (end − mid); the bands' lifts add up to the head's, so "
        "shares sum to 1 (a negative share: that band pulls the end down). Heads whose whole-logit end is not "
        "above its middle are left out.",
        "",
        "## The whole logit, per head",
        "",
        *head_table(),
        "",
        "## By pair (mean over layers and heads; ± sd over seeds)",
        "",
        *pair_table(),
        "",
        "## Figures",
        "",
        f"![mean term vs Δ](rope_pairs/heatmap_delta.png)",
        "",
        f"![last query vs key position](rope_pairs/heatmap_last_query.png)",
        "",
        f"![U-score vs period](rope_pairs/u_vs_period.png)",
        "",
        f"![band profiles](rope_pairs/band_profiles.png)",
        "",
    ]
    text += smollm2_section(records, out)
    page.write_text("\n".join(text))
    return "\n".join(text)


def smollm2_section(records: list[dict], out: Path) -> list[str]:
    rows = [r for r in records if r.get("hf") == "smollm2"]
    if not rows:
        return ["## SmolLM2-135M", "", "Not measured (optional; run with `--smollm2 N`).", ""]
    L, T = rows[0]["train_len"], rows[0]["eval_len"]
    pairs = [r for r in rows if r["component"] == "pair"]
    band_rows = [r for r in rows if r["component"] == "band"]
    plot_scatter([dict(r, train_len=T) for r in pairs], rows[0]["model"], out / "smollm2_u_vs_period.png",
                 length="T", what=f"one point per layer and pair (mean over heads); T = {T}, the measured window")
    n_layers, n_heads = len({r["layer"] for r in pairs}), pairs[0]["heads"]
    lines = ["## SmolLM2-135M-Instruct (transformers; the Q4_1 GGUF weights de-quantised)", "",
             f"{rows[0]['windows']} windows of T = {T} tokens of {rows[0]['corpus']}/{rows[0]['split']} (its own "
             f"tokenizer), its own rope (base {rows[0]['params'].get('base'):g}, "
             f"{len({r['pair'] for r in pairs})} pairs per head), {n_layers} layers × {n_heads} heads; mean |term| over "
             f"{rows[0]['magnitude_queries']} evenly spaced query rows per window. Bands here are relative to the "
             f"measured window T = {T} (a U-score over Δ < T sees only shapes inside it); the model's own window is "
             f"{L}, beyond which pairs with P > {L} never turn. One model, so no ± over seeds; means over layers and heads.",
             "",
             "| pairs (P vs T) | pairs per head | share of Σ mean \\|term\\| | U-score (Δ) | U>0 (Δ) | U-score (last query) "
             "| far-end lift share (Δ) | initial-key lift share (last query) |",
             "|---|---|---|---|---|---|---|---|"]
    for g in GROUPS:
        pr = [r for r in pairs if _in_group(r, g)]
        br = [r for r in band_rows if r["band"] == g]
        if pr:
            lines.append(f"| {GROUP_LABEL[g].replace('L', 'T')} | {len({r['pair'] for r in pr})} | "
                         f"{statistics.fmean(r['share'] for r in br):.3f} | "
                         f"{statistics.fmean(r['u_score'] for r in pr):.3f} | "
                         f"{statistics.fmean(r['u_positive'] for r in pr):.2f} | "
                         f"{statistics.fmean(r['u_score_last'] for r in pr):.3f} | "
                         f"{lift_share(rows, rows[0]['seed'], g):.2f} | "
                         f"{lift_share(rows, rows[0]['seed'], g, view='_last'):.2f} |")
    totals = [r for r in rows if r["component"] == "total"]
    lines += ["", "Band lift shares far from [0, 1] mean the bands' lifts largely cancel: the whole logit's far end "
              "is barely above its middle.", "",
              f"Whole logit: {statistics.fmean(t['u_depth'] > 0 for t in totals):.2f} of the heads U-shaped over Δ "
              f"(mean U-score {statistics.fmean(t['u_score'] for t in totals):.3f}), "
              f"{statistics.fmean(t['u_depth_last'] > 0 for t in totals):.2f} over key positions for the last query.",
              "", "![SmolLM2 U-score vs period](rope_pairs/smollm2_u_vs_period.png)", "",
              "(One point per layer and pair: the mean over its heads; lines at T and 2T.)", ""]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "rope_pairs")
    ap.add_argument("--page", type=Path, default=ROOT / "docs" / "results" / "rope_pairs.md")
    ap.add_argument("--checkpoints", default=CHECKPOINTS, help="a glob of checkpoint files")
    ap.add_argument("--windows", type=int, default=512, help="windows per checkpoint")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--smollm2", type=int, default=0, help="also SmolLM2-135M on this many windows (0: skip)")
    ap.add_argument("--smollm2-length", type=int, default=2048)
    ap.add_argument("--page-only", action="store_true", help="only regenerate the page from the records")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.page_only:
        paths = sorted(glob.glob(args.checkpoints))
        if not paths:
            raise SystemExit(f"--checkpoints {args.checkpoints}: no such files")
        for path in paths:
            measure_checkpoint(path, args.out, args.windows, args.batch_size)
        if args.smollm2:
            measure_smollm2(args.out, args.smollm2, args.smollm2_length)
    # the command that measured what the records hold (a --page-only run names the measuring one)
    hf_rows = [r for r in read_records(args.out / "records.jsonl") if r.get("hf") == "smollm2"]
    command = ("python scripts/analysis_pairs.py --out docs/results/rope_pairs --page docs/results/rope_pairs.md"
               + (f" --smollm2 {hf_rows[0]['windows']}" if hf_rows else ""))
    write_page(args.out, args.page, command)
    log(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
