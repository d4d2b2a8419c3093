"""The LongRoPE experiment on the bench's RoPE decoders: docs/results/longrope.md and its plot.

    python scripts/longrope_experiment.py --bench results/default --out docs/results/longrope \
        --report docs/results/longrope.md --hf-search docs/results/longrope/smollm2-search

Needs a finished default bench (``hopekit bench``: rope checkpoints ``checkpoints/rope/seed<k>/``).
Stages, each resumable (searches from their state files, measurements skipped when recorded):

1. **search** LongRoPE long factors at 8× and 16× the training length for each seed's rope model
   (``--budget``: ``reduced`` P 32 / 16 parents / 8 + 8 / 20 iterations, or ``paper`` P 64 / 32 / 16 + 16 /
   40), fitness on the validation split;
2. **extensions**: perplexity at 2×–16× on the test split of rope, linear, ntk, dynamic_ntk (factor 1),
   yarn and the two searched sets, under the bench's protocol (non-overlapping windows spread over the
   split) and the search's (one truncated window per document);
3. **n̂ sweep** at 8×: PI (all factors 8, no attention factor) and the 8× searched factors with
   start_tokens n̂ ∈ {0, 1, 2, 4, 8, 16, 32, 64};
4. **progressive**: fine-tune each rope model at 8× with its 8× factors (``hopekit train --init-from``),
   search a 16× multiplier on top, and re-search the short set at 1×; perplexity at 1×, 8× and 16×;
5. **hf** (with ``--hf-search DIR``, a ``hopekit longrope --hf smollm2 --factor 2`` output): SmolLM2 at 16k
   with its own RoPE, yarn, dynamic NTK and the searched factors;
6. **report**: records -> ``longrope.md`` (mean ± sd over seeds) and ``longrope.png``.

Every measurement is a record (``records.jsonl``: resolved pe config, protocol, seed, git commit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from hopekit import pe as pe_lib
from hopekit.checkpoint import load_checkpoint
from hopekit.eval.extensions import extension_configs, with_pe
from hopekit.eval.lengths import test_documents
from hopekit.eval.perplexity import perplexity
from hopekit.eval.records import append_records, model_descriptor, model_digest, ppl_records, read_records
from hopekit.eval.stats import paired_ratio, summarize
from hopekit.longrope import SearchConfig
from hopekit.longrope.run import read_search_records, search_checkpoint

BUDGETS = {"reduced": SearchConfig(population=32, parents=16, mutations=8, crossovers=8, iterations=20),
           "paper": SearchConfig()}
MULTIPLES = (2, 4, 8, 16)
BASELINES = ("rope", "linear", "ntk", "dynamic_ntk", "yarn")
START_TOKENS = (0, 1, 2, 4, 8, 16, 32, 64)
PROTOCOLS = ("bench", "search")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Recorder:
    def __init__(self, path: Path):
        self.path = path
        self.done = set()
        if path.exists():
            for r in read_records(path):
                if r.get("metric") == "ppl":
                    self.done.add(self.key(r["method"], r["seed"], r["eval_len"], r["experiment_protocol"],
                                           r.get("model_digest"), r["params"]))

    @staticmethod
    def key(method, seed, eval_len, protocol, digest, params):
        # the same model (weights digest) with the same encoding: a re-run search or retrained bench re-measures
        return (method, seed, eval_len, protocol, digest, json.dumps(params, sort_keys=True))

    def measure(self, model, config, cfg: dict, method: str, seed: int, eval_len: int, protocol: str, stage: str):
        tokenizer, docs = test_documents(config)
        swapped = with_pe(model, cfg)
        digest, params = model_digest(model), pe_lib.to_config(swapped.config.pe)
        key = self.key(method, seed, eval_len, protocol, digest, json.loads(json.dumps(params)))
        if key in self.done:
            return
        if protocol == "bench":
            e = config.eval
            res = perplexity(swapped, docs, eval_len, e.protocol, max_tokens=e.max_tokens, batch_size=e.batch_size,
                             sampling=e.sampling, separator=tokenizer.eos_id)
        else:
            res = perplexity(swapped, docs, eval_len, "truncate", bos=tokenizer.bos_id, max_tokens=None,
                             sampling="prefix", batch_size=1)
        rows = ppl_records(res, method=method, params=params, train_len=config.train.train_len,
                           seed=seed, model=model_descriptor(model), model_digest=digest, corpus=config.data.corpus,
                           split=config.eval.split, experiment_protocol=protocol, stage=stage, seconds=res.seconds)
        append_records(self.path, rows)
        self.done.add(key)
        log(f"  {stage:<11} seed {seed} {method:<26} {eval_len:>5} {protocol:<6} ppl {res.ppl:9.3f}")


def load_factors(search_dir: Path) -> dict:
    return json.loads((search_dir / "longrope.json").read_text())


def search(ckpt: Path, out: Path, budget: SearchConfig, **kwargs):
    resume = (out / "search_state.json").exists()
    if (out / "longrope.json").exists() and resume:
        state = json.loads((out / "search_state.json").read_text())
        if state["iteration"] >= budget.iterations:
            return
    search_checkpoint(ckpt, out, config=budget, resume=resume, progress=False, log=log, **kwargs)


def stage_search(args, seeds, budget):
    for seed in seeds:
        ckpt = args.bench / "checkpoints" / "rope" / f"seed{seed}" / "checkpoint.pt"
        for s in (8, 16):
            t0 = time.perf_counter()
            search(ckpt, args.out / "searches" / f"seed{seed}-{s}x", budget, factor=float(s))
            log(f"search seed {seed} {s}x: {time.perf_counter() - t0:.0f}s")


def stage_extensions(args, seeds, rec: Recorder):
    for seed in seeds:
        model, config, _ = load_checkpoint(args.bench / "checkpoints" / "rope" / f"seed{seed}" / "checkpoint.pt")
        L = config.train.train_len
        searched = {s: load_factors(args.out / "searches" / f"seed{seed}-{s}x") for s in (8, 16)}
        for m in MULTIPLES:
            cfgs = extension_configs(pe_lib.to_config(config.pe), L, m * L, kinds=BASELINES)
            for kind, cfg in cfgs.items():
                name = "rope" if kind == "rope" else f"rope+{kind}"
                for protocol in PROTOCOLS:
                    rec.measure(model, config, cfg, name, seed, m * L, protocol, "extensions")
            for s, cfg in searched.items():
                for protocol in PROTOCOLS:
                    rec.measure(model, config, cfg, f"rope+longrope({s}x)", seed, m * L, protocol, "extensions")


def stage_start_tokens(args, seeds, rec: Recorder):
    for seed in seeds:
        model, config, _ = load_checkpoint(args.bench / "checkpoints" / "rope" / f"seed{seed}" / "checkpoint.pt")
        L = config.train.train_len
        searched = load_factors(args.out / "searches" / f"seed{seed}-8x")
        pairs = len(searched["long_rescale"])
        pi = {**searched, "long_rescale": [8.0] * pairs, "attention_factor": 1.0}
        for n in START_TOKENS:
            for name, cfg in (("pi", pi), ("longrope(8x)", searched)):
                for protocol in PROTOCOLS:
                    rec.measure(model, config, {**cfg, "start_tokens": n}, f"{name} n̂={n}", seed, 8 * L, protocol,
                                "start_tokens")


def stage_progressive(args, seeds, budget, rec: Recorder):
    for seed in seeds:
        base_ckpt = args.bench / "checkpoints" / "rope" / f"seed{seed}" / "checkpoint.pt"
        factors = args.out / "searches" / f"seed{seed}-8x" / "longrope.json"
        ft_dir = args.out / "finetuned" / f"seed{seed}"
        ft_ckpt = ft_dir / "checkpoint.pt"
        base, config_b, _ = load_checkpoint(base_ckpt)
        L = config_b.train.train_len
        if not (ft_dir / "done").exists():
            cmd = [sys.executable, "-m", "hopekit", "train", "--init-from", str(base_ckpt), "--pe-file", str(factors),
                   "--out", str(ft_dir), "--no-progress", f"train.train_len={8 * L}", f"train.steps={args.ft_steps}",
                   "train.lr=1e-3", "train.min_lr=1e-4", "train.warmup_steps=10", f"train.batch_size={args.ft_batch}",
                   f"train.checkpoint_every={args.ft_steps}", f"train.seed={seed}"]
            if ft_ckpt.exists():
                cmd.append("--resume")
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            (ft_dir / "done").write_text(f"{time.perf_counter() - t0:.1f}\n")
            log(f"fine-tune seed {seed}: {time.perf_counter() - t0:.0f}s")
        search(ft_ckpt, args.out / "searches" / f"seed{seed}-ft-16x", budget, factor=16.0)
        search(ft_ckpt, args.out / "searches" / f"seed{seed}-ft-short", budget, short=True)
        ft, config_f, _ = load_checkpoint(ft_ckpt)
        lr8 = load_factors(args.out / "searches" / f"seed{seed}-8x")
        prog = load_factors(args.out / "searches" / f"seed{seed}-ft-16x")
        short = load_factors(args.out / "searches" / f"seed{seed}-ft-short")
        direct16 = load_factors(args.out / "searches" / f"seed{seed}-16x")
        plain = {**lr8, "short_rescale": [1.0] * len(lr8["long_rescale"])}
        long_as_short = {**lr8, "short_rescale": lr8["long_rescale"]}
        for protocol in PROTOCOLS:
            # 1x: the short set after fine-tuning: none (the long factors everywhere), plain RoPE, searched
            rec.measure(base, config_b, {"kind": "rope", "base": lr8["base"]}, "base rope", seed, L, protocol, "progressive")
            rec.measure(ft, config_b, long_as_short, "ft8x short=long", seed, L, protocol, "progressive")
            rec.measure(ft, config_b, plain, "ft8x short=1", seed, L, protocol, "progressive")
            rec.measure(ft, config_b, short, "ft8x short=searched", seed, L, protocol, "progressive")
            for m in (8, 16):
                rec.measure(ft, config_b, lr8, "ft8x longrope(8x)", seed, m * L, protocol, "progressive")
                rec.measure(base, config_b, direct16 if m == 16 else lr8, f"base longrope({m}x)", seed, m * L, protocol,
                            "progressive")
            rec.measure(ft, config_b, prog, "ft8x + searched 16x", seed, 16 * L, protocol, "progressive")


# ---- report ---------------------------------------------------------------------------------------

def cells(rows, protocol, stage=None):
    out: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        if r.get("metric") != "ppl" or r.get("experiment_protocol") != protocol or r["value"] is None:
            continue
        if stage and r.get("stage") != stage:
            continue
        out.setdefault((r["method"], r["eval_len"]), {})[r["seed"]] = float(r["value"])
    return out


def fmt(values: dict[int, float]) -> str:
    if not values:
        return "—"
    s = summarize(list(values.values()))
    sd = "" if len(values) < 2 else f" ± {s.sd:.3g}"
    return f"{s.mean:.3g}{sd}" + ("" if len(values) == 3 else f" (n={len(values)})")


def table(c, methods, lengths, L, bold_best=True) -> list[str]:
    head = "| method | " + " | ".join(f"{n // L}× ({n})" for n in lengths) + " |"
    lines = [head, "|---" * (len(lengths) + 1) + "|"]
    best = {}
    for n in lengths:
        means = {m: sum(c[(m, n)].values()) / len(c[(m, n)]) for m in methods if c.get((m, n))}
        best[n] = min(means, key=means.get) if means else None
    for m in methods:
        row = []
        for n in lengths:
            v = c.get((m, n), {})
            text = fmt(v)
            row.append(f"**{text}**" if bold_best and best[n] == m else text)
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return lines


def paired(c, a, b, n) -> str:
    va, vb = c.get((a, n), {}), c.get((b, n), {})
    seeds = sorted(set(va) & set(vb))
    if len(seeds) < 2:
        return "—"
    s = paired_ratio([math.log(va[k]) for k in seeds], [math.log(vb[k]) for k in seeds])
    mark = "*" if s.low > 0 or s.high < 0 else ""
    return f"{s.mean:+.1f}% [{s.low:+.1f}, {s.high:+.1f}]{mark}"


def search_summary(args, seeds) -> list[str]:
    lines = ["| search | seed | best validation ppl | best seed (ppl) | evaluations | iterations | wall time |",
             "|---|---|---|---|---|---|---|"]
    for name in ("8x", "16x", "ft-16x", "ft-short"):
        for seed in seeds:
            d = args.out / "searches" / f"seed{seed}-{name}"
            if not (d / "records.jsonl").exists():
                continue
            final = [r for r in read_records(d / "records.jsonl") if r["metric"] == "search_result_ppl"]
            if not final:
                continue
            r = final[-1]
            seeds_fit = r["seed_fitness"]
            best_seed = min(seeds_fit, key=lambda k: seeds_fit[k] if seeds_fit[k] == seeds_fit[k] else math.inf)
            lines.append(f"| {name} | {seed} | {r['value']:.4g} | {best_seed} ({seeds_fit[best_seed]:.4g}) | "
                         f"{r['evaluations']} | {r['iteration']} | {r['seconds']:.0f} s |")
    return lines


def plot(rows, path: Path, L: int) -> None:
    from hopekit.eval.report import _figure, _log_axis_ticks, _plain_ticks

    fig, axes = _figure(1, 2, size=(12, 4.6))
    methods = ["rope", "rope+linear", "rope+ntk", "rope+yarn", "rope+longrope(8x)", "rope+longrope(16x)"]
    for ax, protocol in zip(axes[0], PROTOCOLS):
        c = cells(rows, protocol, "extensions")
        for m in methods:
            xs = [n for n in (k * L for k in MULTIPLES) if c.get((m, n))]
            if not xs:
                continue
            stats = [summarize(list(c[(m, n)].values())) for n in xs]
            means = [s.mean for s in stats]
            sds = [s.sd if s.sd == s.sd else 0.0 for s in stats]
            label = "rope+ntk (= rope+dynamic_ntk)" if m == "rope+ntk" else m
            ax.plot(xs, means, marker="o", ms=3, label=label, ls="-" if "longrope" in m else "--")
            ax.fill_between(xs, [a - b for a, b in zip(means, sds)], [a + b for a, b in zip(means, sds)], alpha=0.15)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        _plain_ticks(ax.xaxis)
        _log_axis_ticks(ax)
        ax.set_xlabel("evaluation length (tokens)")
        ax.set_ylabel("test perplexity (mean ± sd over seeds)")
        ax.set_title({"bench": "bench protocol: windows spread over the test split",
                      "search": "search protocol: one truncated window per document"}[protocol], fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _facts(args, seeds, rows) -> dict:
    """What the report states about its setup, read from the records (nothing assumed)."""
    ext = [r for r in rows if r.get("metric") == "ppl" and r.get("stage") == "extensions"]
    L = ext[0]["train_len"]
    model = ext[0]["model"]
    fitness = {}
    for name in ("8x", "16x", "ft-16x", "ft-short"):
        d = args.out / "searches" / f"seed{seeds[0]}-{name}"
        if (d / "records.jsonl").exists():
            r = read_records(d / "records.jsonl")[-1]
            fitness[name] = (r["config"]["fitness"], r["eval_len"], r["config"]["target"]["ratio"],
                             r["config"]["corpus"])
    docs = {}
    for r in ext:
        docs.setdefault((r["experiment_protocol"], r["eval_len"]), (r["tokens"], r["documents"], r["windows"]))
    return {"L": L, "model": model, "fitness": fitness, "docs": docs}


def stage_report(args, seeds) -> None:
    rows = read_records(args.out / "records.jsonl")
    facts = _facts(args, seeds, rows)
    L = facts["L"]
    lengths = [m * L for m in MULTIPLES]
    ext_methods = ["rope", "rope+linear", "rope+ntk", "rope+dynamic_ntk", "rope+yarn", "rope+longrope(8x)",
                   "rope+longrope(16x)"]
    md = ["# LongRoPE on the bench's RoPE decoders", ""]
    md += [f"Generated by `python scripts/longrope_experiment.py --bench {args.bench} --out {args.out} "
           f"--budget {args.budget}{' --report ' + str(args.report) if args.report else ''}"
           f"{' --hf-search ' + str(args.hf_search) if args.hf_search else ''}` from `records.jsonl` (every row: the resolved encoding, protocol, seed, model "
           f"digest and commit). Models: the rope decoders of the bench in `{args.bench}` ({facts['model']}, trained "
           f"at L = {L}), seeds {', '.join(map(str, seeds))}, with no fine-tuning except in the last section. "
           f"Cells: mean ± sd over the seeds; bold: best mean per column.", ""]
    fit_lines = []
    for name, (fit, n, ratio, corpus) in facts["fitness"].items():
        bos = "no BOS (the tokenizer has none)" if fit["bos"] is None else f"BOS id {fit['bos']} first"
        fit_lines.append(f"{name}: {fit['kind']} at {n} tokens on {fit['documents']} documents of {corpus}, {bos}")
    md += ["## Searches", "",
           f"Budget `{args.budget}`: {json.dumps(dataclasses.asdict(BUDGETS[args.budget]))}. λ_max = 1.25·s (the "
           "paper's) for long sets, s for the short set. Seeds: PI, NTK, YaRN and the code's linear-in-λ YaRN (and "
           "for the short set also plain RoPE and the long set clipped to λ_max). Fitness (one truncated window per "
           "document, the first documents long enough): " + "; ".join(fit_lines) + ".", ""]
    md += search_summary(args, seeds) + ["", "Wall times are on 2 CPU cores shared with other jobs (the searches ran "
                                         "next to tests and each other); the lowest of a row is the closest to an "
                                         "idle machine.", ""]
    for protocol in PROTOCOLS:
        c = cells(rows, protocol, "extensions")
        tok = "; ".join(f"{n // L}×: {facts['docs'][(protocol, n)][0]:,} tokens, {facts['docs'][(protocol, n)][2]} "
                        f"windows from {facts['docs'][(protocol, n)][1]} documents"
                        for n in lengths if (protocol, n) in facts["docs"])
        title = {"bench": "Test perplexity, bench protocol (non-overlapping windows spread over the test split)",
                 "search": "Test perplexity, search protocol (one window per test document: its first eval_len "
                           "tokens)"}[protocol]
        md += [f"## {title}", "", f"Scored: {tok}.", ""] + table(c, ext_methods, lengths, L) + [""]
        md += ["Paired change in perplexity, searched LongRoPE vs YaRN and NTK (mean over seeds of the log-ratio, "
               "as a % change, with its 95 % t interval; `*`: the interval excludes 0):", "",
               "| length | longrope(8x) vs yarn | longrope(16x) vs yarn | longrope(8x) vs ntk | longrope(16x) vs ntk |",
               "|---|---|---|---|---|"]
        for n in lengths:
            md.append(f"| {n // L}× | " + " | ".join(paired(c, a, b, n) for b in ("rope+yarn", "rope+ntk")
                                                     for a in ("rope+longrope(8x)", "rope+longrope(16x)")) + " |")
        md.append("")
    md += ["`rope+dynamic_ntk` (transformers' dynamic rule with factor 1: NTK factor ℓ/L at length ℓ) equals "
           "`rope+ntk` at factor eval_len/L in every cell, as it must with one forward per window.", ""]
    md += [f"## n̂: keeping the first positions un-interpolated ({8}×)", ""]
    for protocol in PROTOCOLS:
        c = cells(rows, protocol, "start_tokens")
        md += [f"{protocol} protocol:", "", "| n̂ | PI (λ = 8, no attention factor) | searched 8× factors |", "|---|---|---|"]
        for n in START_TOKENS:
            md.append(f"| {n} | {fmt(c.get((f'pi n̂={n}', 8 * L), {}))} | {fmt(c.get((f'longrope(8x) n̂={n}', 8 * L), {}))} |")
        md.append("")
    md += ["## Progressive extension and short-context readjustment", "",
           f"Each rope model fine-tuned {args.ft_steps} steps at 8·L = {8 * L} with its own 8× factors "
           "(`hopekit train --init-from`, weights only, a new optimiser); then a 16× search of a multiplier on "
           "those factors (`ft8x + searched 16x`), and a search of the short set at L (`ft8x short=searched`). "
           "`short=long`: the long factors also below L; `short=1`: plain RoPE below L. Transformers' rule: the "
           "attention factor of s = 8 applies at every length, also with the short set.", ""]
    for protocol in PROTOCOLS:
        c = cells(rows, protocol, "progressive")
        md += [f"{protocol} protocol:", "", "| model and factors | 1× | 8× | 16× |", "|---|---|---|---|"]
        for m in ("base rope", "base longrope(8x)", "base longrope(16x)", "ft8x short=long", "ft8x short=1",
                  "ft8x short=searched", "ft8x longrope(8x)", "ft8x + searched 16x"):
            md.append(f"| {m} | " + " | ".join(fmt(c.get((m, n), {})) for n in (L, 8 * L, 16 * L)) + " |")
        md.append("")
    md += hf_section(args, rows)
    report = args.report or args.out / "longrope.md"
    md.append(f"![perplexity vs length]({os.path.relpath(args.out / 'longrope.png', report.parent)})")
    report.write_text("\n".join(md) + "\n")
    plot(rows, args.out / "longrope.png", L)
    log(f"wrote {report}")


# ---- a pretrained model -----------------------------------------------------------------------------

def stage_hf(args) -> None:
    """SmolLM2 (8k context) at 2× its window: its own RoPE, yarn, dynamic NTK (factor 1) and the factors of the
    search in ``--hf-search`` (``hopekit longrope --hf smollm2 --factor 2 ...``), on the first ``--hf-docs``
    test documents under the search protocol (one truncated window each, BOS first)."""
    from hopekit.eval.pretrained import HFLogits, pretrained_text
    from hopekit.integrations.hf import load_pretrained, patch_model
    from hopekit.integrations.hf.patch import native_params

    rows = read_records(args.out / "records.jsonl") if (args.out / "records.jsonl").exists() else []
    searched = json.loads((args.hf_search / "longrope.json").read_text())
    lm = load_pretrained("smollm2")
    native = pe_lib.to_config(native_params(lm.model))
    L = int(lm.model.config.max_position_embeddings)
    n = int(round(L * searched["factor"]))
    text = pretrained_text(lm.tokenizer, split="test")
    docs = [d for d in text.documents if d.numel() >= n][:args.hf_docs]
    configs = {"smollm2": native,
               "smollm2+yarn": {**native, "kind": "yarn", "factor": searched["factor"], "train_len": L},
               "smollm2+dynamic_ntk": {**native, "kind": "dynamic_ntk", "factor": 1.0, "train_len": L},
               "smollm2+longrope(searched)": searched}
    done = {(r["method"], r["eval_len"]) for r in rows if r.get("stage") == "hf" and r.get("metric") == "ppl"}
    for name, cfg in configs.items():
        if (name, n) in done:
            continue
        patch_model(lm.model, cfg)
        t0 = time.perf_counter()
        res = perplexity(HFLogits(lm.model), docs, n, "truncate", bos=text.bos_id, max_tokens=None, sampling="prefix",
                         batch_size=1)
        params = pe_lib.to_config(pe_lib.parse(lm.model.config.hopekit_pe))
        append_records(args.out / "records.jsonl", ppl_records(
            res, method=name, params=params, train_len=L, seed=0, model="hf:smollm2", corpus="shakespeare", split="test",
            experiment_protocol="search", stage="hf", seconds=res.seconds, text_digest=text.digest))
        log(f"  hf {name:<28} {n} ppl {res.ppl:.3f} ({res.documents} documents, {time.perf_counter() - t0:.0f}s)")


def hf_section(args, rows) -> list[str]:
    hf = [r for r in rows if r.get("stage") == "hf" and r.get("metric") == "ppl"]
    if not hf or args.hf_search is None or not (args.hf_search / "records.jsonl").exists():
        return []
    final = [r for r in read_records(args.hf_search / "records.jsonl") if r["metric"] == "search_result_ppl"][-1]
    s = final["search"]
    fit = final["config"]["fitness"]
    lines = ["## A pretrained model: SmolLM2-135M (8k → 16k)", "",
             f"Search: `hopekit longrope --hf smollm2 --factor 2` with P {s['population']}, {s['parents']} parents, "
             f"{s['mutations']} + {s['crossovers']} children, {s['iterations']} iterations ({final['evaluations']} "
             f"evaluations, {final['seconds'] / 60:.0f} min on 2 CPU cores), fitness on {fit['documents']} validation "
             f"document(s) of {final['config']['corpus']} at {fit['eval_len']} tokens: best {final['value']:.4g}; "
             "seeds " + ", ".join(f"{k} {v:.4g}" for k, v in final["seed_fitness"].items()) + ". A reduced budget: "
             "one 16k forward takes about a minute on this machine.", "",
             f"Test perplexity at {hf[0]['eval_len']} tokens, search protocol ({hf[0]['documents']} test documents, "
             f"{hf[0]['tokens']:,} tokens; one model, no seeds):", "", "| encoding | ppl |", "|---|---|"]
    for r in hf:
        lines.append(f"| {r['method']} | {r['value']:.4g} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bench", type=Path, default=Path("results/default"))
    p.add_argument("--out", type=Path, default=Path("docs/results/longrope"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budget", choices=tuple(BUDGETS), default="reduced")
    p.add_argument("--stages", default="search,extensions,start_tokens,progressive,report")
    p.add_argument("--ft-steps", type=int, default=100)
    p.add_argument("--ft-batch", type=int, default=8)
    p.add_argument("--hf-search", type=Path, default=None, help="a hopekit longrope --hf smollm2 output directory")
    p.add_argument("--hf-docs", type=int, default=2)
    p.add_argument("--report", type=Path, default=None, help="where longrope.md goes (default: OUT/longrope.md)")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    rec = Recorder(args.out / "records.jsonl")
    budget = BUDGETS[args.budget]
    stages = args.stages.split(",")
    if "search" in stages:
        stage_search(args, seeds, budget)
    if "extensions" in stages:
        stage_extensions(args, seeds, rec)
    if "start_tokens" in stages:
        stage_start_tokens(args, seeds, rec)
    if "progressive" in stages:
        stage_progressive(args, seeds, budget, rec)
    if "hf" in stages:
        stage_hf(args)
    if "report" in stages:
        stage_report(args, seeds)


if __name__ == "__main__":
    main()
