"""docs/methods.md: what every method's default means in tokens, and how the default was chosen.

    python scripts/method_pages.py            # rewrite docs/methods.md
    python scripts/method_pages.py --check    # exit 1 if docs/methods.md is not what this script writes

Every number comes from :func:`hopekit.analysis.describe`, which reads it off the encoding
``hopekit.pe`` builds (its inv_freq, slopes, decay rates, tables). The bench shape is read from the
default bench preset, the hope_hyperbolic sweep rows from its committed records. The prose on how each
default was chosen is hand-written, in :data:`PAGES` below; tests/test_method_pages.py checks that the
committed page is this script's output byte for byte and that every registered method has a section.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hopekit import pe
from hopekit.analysis import describe, in_tokens
from hopekit.analysis.defaults import format_number
from hopekit.bench import bench_shape

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "methods.md"
SWEEP_PRESET = ROOT / "benchmarks" / "hyperbolic_sweep.yaml"
SWEEP_RECORDS = ROOT / "docs" / "results" / "hyperbolic_sweep" / "records.jsonl"


@dataclass
class Page:
    """One method's section. ``bench``: the configuration described at the bench shape (its defaults,
    plus what has no default); ``refs``: (label, configuration, shape) at published shapes; ``chosen``:
    how the default was chosen (markdown)."""

    bench: dict[str, Any]
    chosen: str
    refs: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    note: str = ""
    compare: str = ""   # after the reference lines: how the published setting compares


BENCH = bench_shape()
BENCH_PAIRS = BENCH["head_dim"] // 2
LLAMA2 = {"head_dim": 128, "train_len": 4096}
LLAMA31 = {"kind": "llama3", "factor": 8.0, "train_len": 8192, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "base": 500000.0}
HYP_PAPER = {"head_dim": 64, "num_heads": 12, "train_len": 1024}   # Dai et al. Tables 4-6

PAGES: dict[str, Page] = {
    "rope": Page(
        bench={"kind": "rope"},
        refs=[(f"bench shape run to {BENCH['factor']}× ({BENCH['factor'] * BENCH['train_len']} tokens) without "
               f"an extension", {"kind": "rope"}, {"head_dim": BENCH["head_dim"], "train_len": BENCH["train_len"],
                                                    "eval_len": BENCH["factor"] * BENCH["train_len"]}),
              ("Llama 2 shape (head_dim 128, base 10 000, train_len 4096)", {"kind": "rope"}, LLAMA2),
              ("Llama 3 shape (head_dim 128, base 500 000, train_len 8192)", {"kind": "rope", "base": 500000.0},
               {"head_dim": 128, "train_len": 8192})],
        chosen="`base` 10 000 is the RoFormer paper's value (Su et al. 2021, taken over from the sinusoidal "
               "encoding of Vaswani et al.) and transformers' default `rope_theta`; `rotary_fraction` 1 (every "
               "channel rotated) is the paper's and transformers' default (`partial_rotary_factor` 1). Nothing "
               "was tuned on the bench. The pairs that never complete a turn within the training window are "
               "the ones hope_highfreq makes position-free."),
    "linear": Page(
        bench={"kind": "linear"},
        refs=[("Llama 2 shape, factor 16", {"kind": "linear", "factor": 16.0}, LLAMA2)],
        chosen="`factor` has no default (it is required, as in transformers' `rope_scaling`): Position "
               "Interpolation divides every position by the ratio of target to training length, so the factor "
               "belongs to the deployment, not the method. The bench applies it to the rope model at each "
               "evaluated length with factor = eval_len / train_len (src/hopekit/eval/extensions.py), without "
               "the short fine-tuning Chen et al. follow it with: every pair stays within the angles seen in "
               "training, but each offset now maps to an angle `factor` times smaller than in training."),
    "ntk": Page(
        bench={"kind": "ntk"},
        refs=[("Llama 2 shape, factor 16", {"kind": "ntk", "factor": 16.0}, LLAMA2)],
        chosen="`factor` is required. base′ = base·factor^(r/(r−2)) is bloc97's rule (transformers' too): pair 0 "
               "is untouched and the slowest pair is stretched by exactly `factor`, the pairs between by "
               "factor^(2i/(r−2)). Middle pairs that never turned fully in training are stretched by less than "
               "the length ratio, so their angles leave the trained range: NTK under-interpolates below the "
               "target length (papers/longrope.md)."),
    "dynamic_ntk": Page(
        bench={"kind": "dynamic_ntk"},
        refs=[("Llama 2 shape, factor 16", {"kind": "dynamic_ntk", "factor": 16.0}, LLAMA2)],
        chosen="`factor` is required and `train_len` comes from the experiment's `train.train_len`. hopekit "
               "keeps transformers' meaning of `factor`: at the current length ℓ the base uses the NTK factor "
               "s·ℓ/L − (s − 1), which at ℓ = s·L is s² − s + 1 (241 at s = 16), so with factor s it interpolates "
               "far more than static NTK at its target length. The bench's `rope+dynamic_ntk` row uses factor 1, "
               "the Dynamic-NTK that YaRN and LongRoPE compare against (NTK factor ℓ/L at length ℓ); with one "
               "forward per window of ℓ = eval_len its spectrum is static `ntk`'s at factor eval_len/train_len "
               "exactly, so the two rows agree and differ only where one forward spans several lengths "
               "(generation; src/hopekit/eval/extensions.py)."),
    "yarn": Page(
        bench={"kind": "yarn"},
        refs=[("Llama 2 shape, factor 16", {"kind": "yarn", "factor": 16.0}, LLAMA2)],
        chosen="`factor` and `train_len` are required (`train_len` from `train.train_len`). `beta_fast` 32 and "
               "`beta_slow` 1 are the YaRN paper's values for Llama and transformers' defaults; the attention "
               "factor 0.1·ln s + 1 is the paper's fitted temperature (used when `attention_factor` is unset); "
               "`truncate` true is the reference code's floor/ceil of the ramp ends. Nothing was tuned here. "
               "At the bench's train_len of 128 the defaults behave differently from Llama's: a pair is kept "
               "only if it turns 32 times within 128 tokens (period ≤ 4 tokens), and no pair is that fast (the "
               "fastest period is 2π), so the ramp starts at pair 0 and YaRN is close to Position "
               "Interpolation plus the temperature."),
    "llama3": Page(
        bench={"kind": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0},
        refs=[("Llama 3.1 (head_dim 128, base 500 000, train_len 8192, factor 8)", LLAMA31,
               {"head_dim": 128, "train_len": 8192})],
        note="No defaults: the bench-shape line uses Llama 3.1's `low_freq_factor` 1 and `high_freq_factor` 4.",
        chosen="None of `factor`, `train_len`, `low_freq_factor`, `high_freq_factor` has a default: they are "
               "required, as in transformers, because they describe a checkpoint. Llama 3.1 uses factor 8, "
               "train_len 8192, low 1, high 4, base 500 000: wavelengths shorter than train_len/high are "
               "untouched, longer than train_len/low are interpolated by `factor`, and the band between is "
               "blended. `base` has RoPE's default like every rope-family method."),
    "longrope": Page(
        bench={"kind": "longrope", "short_rescale": [1.0] * BENCH_PAIRS, "long_rescale": [1.0] * BENCH_PAIRS},
        refs=[("Phi-3-mini-128k shape (head_dim 96, train_len 4096, factor 32; rescale 1)",
               {"kind": "longrope", "short_rescale": [1.0] * 48, "long_rescale": [1.0] * 48, "factor": 32.0},
               {"head_dim": 96, "train_len": 4096})],
        note="No default rescale factors: the lines use `short_rescale` = `long_rescale` = 1 (no "
             "interpolation), so they show the attention factor alone.",
        chosen="The per-pair `short_rescale` and `long_rescale` have no default: LongRoPE finds them by an "
               "evolutionary search per model and target length (Ding et al. 2024, papers/longrope.md), and "
               "hopekit runs no search (`hopekit eval --longrope factors.json` takes searched ones). The "
               "defaults that act are `attention_factor` \"su\" = sqrt(1 + ln s / ln L) on cos and sin "
               "(transformers' default; the maintainers call it empirical) and `start_tokens` 0 (transformers "
               "has no n̂ prefix)."),
    "hope_highfreq": Page(
        bench={"kind": "hope_highfreq"},
        refs=[("Llama 2 shape (head_dim 128, base 10 000, train_len 4096)", {"kind": "hope_highfreq"}, LLAMA2),
              ("Dai et al.'s shape (head_dim 64, train_len 1024)", {"kind": "hope_highfreq"},
               {"head_dim": 64, "train_len": 1024})],
        chosen="There is no free parameter: the paper's rule keeps the pairs with inv_freq ≥ 2π/L, L the "
               "pre-training length, so `train_len` is the experiment's `train.train_len` (filled in by "
               "`hopekit.pe.parse`). `base` 10 000 is RoPE's; the paper does not state its base "
               "(papers/hope_highfreq.md: 10 000 is the likely default). `keep_fraction` (p-RoPE, Barbero et "
               "al. 2025) is an alternative rule, off by default."),
    "hope_hyperbolic": Page(
        bench={"kind": "hope_hyperbolic"},
        refs=[("Dai et al.'s shape (head_dim 64, 12 heads, train_len 1024), our default",
               {"kind": "hope_hyperbolic"}, HYP_PAPER),
              ("the same shape with RoPE's frequencies (`omega_scale` 1, λ = 1.05; the setting "
               "papers/hope_hyperbolic.md analyses)", {"kind": "hope_hyperbolic", "omega_scale": 1.0}, HYP_PAPER)],
        compare="**How the paper's setting compares.** The paper gives no ω_i or λ, so its setting cannot be "
                "computed. At its shape our default has the same channel half-lives (ω_0 = `omega_scale` at "
                "every head_dim; the extra pairs are all fast), and RoPE's own frequencies are five times more "
                "local still. Neither is non-local over the paper's 1k–6k tokens; a setting that is needs "
                "most rates near 1e-3 or below (half-lives of hundreds of tokens and more), like the sweep's "
                "`omega_scale` 0.002 row below, which had the highest validation perplexity at this budget "
                "(0.01 lies between). How the authors avoided the "
                "overflow of their literal Algorithm 1 is unknown (papers/hope_hyperbolic.md: tiny ω and λ are "
                "one candidate).",
        chosen="The paper gives no ω_i and no λ (papers/hope_hyperbolic.md, \"Parameters and defaults\"). "
               "hopekit uses ω_i = `omega_scale`·`base`^(−2i/d) with RoPE's base 10 000, and λ = `penalty`, "
               "by default 1.05·`omega_scale` (ours: the paper only requires λ > max ω_i; the factor 1.05 "
               "follows the spec's analysis at λ = 1.05 with RoPE's frequencies). That puts the slowest "
               "channel's rate at λ − ω_0 = 0.05·`omega_scale`. `omega_scale` 0.2 was chosen by a sweep on "
               "the *validation* plays, never the test plays (`hopekit bench --preset "
               "benchmarks/hyperbolic_sweep.yaml`, docs/results/hyperbolic_sweep/report.md): it had the "
               "lowest in-distribution (1×) perplexity of the settings tried. That criterion, on a "
               "128-token training window and a 400-step budget, favoured local settings here; the table below puts "
               "each swept setting's half-lives next to its validation perplexity. Retune it for other "
               "tokenizers and lengths."),
    "alibi": Page(
        bench={"kind": "alibi"},
        refs=[("Dai et al.'s baseline shape (12 heads)", {"kind": "alibi"}, {"head_dim": 64, "num_heads": 12,
                                                                               "train_len": 1024})],
        chosen="`max_bias` 8 is the paper's value (slopes 2^(−8h/n); MPT's `alibi_bias_max`), not tuned here. "
               "Whatever the head count, the slowest head's slope is 2^−8 (half-life 256·ln 2 ≈ 177 tokens); "
               "more heads add faster ones. ALiBi's bias is additive: far logits go to −∞, so far tokens get "
               "next to no weight — unlike hope_hyperbolic, whose far logits go to 0."),
    "sinusoidal": Page(
        bench={"kind": "sinusoidal"},
        refs=[("Dai et al.'s shape (d_model 768, train_len 1024)", {"kind": "sinusoidal"},
               {"head_dim": 64, "num_heads": 12, "train_len": 1024})],
        chosen="`base` 10 000 is Vaswani et al.'s. `scale` 0.03 is ours: the table is added to token "
               "embeddings initialised N(0, 0.02²) and not multiplied by √d_model, so a unit-amplitude table "
               "would swamp them; 0.03 gives it the embeddings' per-dimension RMS (0.02·√2 ≈ 0.028). It was "
               "not swept. The table is defined at every position (no length limit)."),
    "learned": Page(
        bench={"kind": "learned", "max_len": 1024},
        refs=[("GPT-2 (max_len 1024, train_len 1024)", {"kind": "learned", "max_len": 1024},
               {"head_dim": 64, "num_heads": 12, "train_len": 1024})],
        note="No default `max_len`: the bench-shape line uses 1024.",
        chosen="`max_len` has no default: the table has one trainable row per position and refuses positions "
               "beyond it. `init_std` 0.02 is GPT-2's initialisation. Rows at positions ≥ train_len get no "
               "gradient in training (unless positions are randomized, `pe.RandomizedPositions`), so they stay "
               "at their random initialisation: a table longer than train_len does not extrapolate. GPT-2 "
               "trains all of its 1024 rows."),
    "nope": Page(
        bench={"kind": "nope"},
        chosen="Nothing to choose: no parameters. Causal masking alone orders tokens (Kazemnejad et al. 2023)."),
    "bipe": Page(
        bench={"kind": "bipe"},
        note="Inter-segment distances count segments, not tokens: the inter encoding's periods and "
             "half-lives are in segments, and a training window holds only as many segments as it has "
             "boundary tokens.",
        chosen="`inter` rope is ours (any relative method works; the paper pairs BiPE with RoPE and ALiBi); "
               "`intra` learned is the paper's choice (a learnable absolute intra-segment encoding); the "
               "boundaries \".\" and newline are the paper's (the byte tokenizer's ids; other tokenizers must "
               "pass theirs); `intra_max_len` 1024 is ours, and a longer segment is refused."),
}


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------


g = format_number   # one formatter for the page and describe()


def values(xs: list[float], digits: int = 3) -> str:
    return ", ".join(g(x, digits) for x in xs)


def shape_text(d: dict[str, Any]) -> str:
    text = f"head_dim {d['head_dim']}, {d['num_heads']} heads, train_len {d['train_len']}"
    return text + (f", eval_len {d['eval_len']}" if d["eval_len"] != d["train_len"] else "")


def rotary_details(d: dict[str, Any]) -> list[str]:
    lines = [f"- periods (tokens), pair 0 first: {values(d['period'])}"]
    if d["eval_len"] != d["train_len"] or d["unchanged_pairs"] != d["pairs"] - d["position_free_pairs"]:
        s = d["config"].get("factor")
        full = sum(1 for x in d["stretch"] if s is not None and abs(x - s) <= 1e-9 * s)
        between = sum(1 for x in d["stretch"] if abs(x - 1) > 1e-9 and not (s is not None and abs(x - s) <= 1e-9 * s)
                      and math.isfinite(x))
        lines.append(f"- stretch against RoPE (RoPE's inv_freq / this method's), pair 0 first: {values(d['stretch'])}")
        if s is not None:
            lines.append(f"- untouched: {d['unchanged_pairs']}; stretched by between 1 and {g(s)}: {between}; "
                         f"stretched by exactly the factor {g(s)}: {full}; at {d['eval_len']} tokens "
                         f"{d['in_distribution_pairs']} of {d['pairs']} pairs stay within the angles RoPE saw in "
                         f"{d['train_len']} tokens (RoPE alone: {d['rope_rotating_pairs']})")
    if d["attn_scale"] != 1.0:
        lines.append(f"- cos and sin × {g(d['attn_scale'], 4)}, so logits × {g(d['attn_scale'] ** 2, 4)}")
    return lines


def hyperbolic_table(d: dict[str, Any]) -> list[str]:
    half, pairs = d["half_life"][0], d["pairs"]
    rows = ["| pair i | ω_i | rate λ − ω_i | half-life u_i | rate λ + ω_i | half-life v_i | pair (aligned probe) |",
            "|---|---|---|---|---|---|---|"]
    for i in range(pairs):
        rows.append(f"| {i} | {g(d['omega'][i])} | {g(d['rates'][0][i])} | {g(half[i])} | "
                    f"{g(d['rates'][0][pairs + i])} | {g(half[pairs + i])} | {g(d['pair_half_life'][0][i])} |")
    return rows


def alibi_table(d: dict[str, Any], lengths: list[int]) -> list[str]:
    rows = ["| head | slope | half-life (tokens) | " + " | ".join(f"bias at Δ = {n}" for n in lengths) + " |",
            "|---|---|---|" + "---|" * len(lengths)]
    for h, (m, t) in enumerate(zip(d["slopes"], d["half_life"])):
        rows.append(f"| {h} | {g(m)} | {g(t)} | " + " | ".join(g(-m * n) for n in lengths) + " |")
    return rows


def sweep_rows(shape: dict[str, int]) -> list[str]:
    """The hope_hyperbolic rows of the validation sweep: half-lives of what was trained, next to its
    validation perplexity at 1× and 16× (from the committed records)."""
    bench = yaml.safe_load(SWEEP_PRESET.read_text())
    exp = bench["experiment"]
    heads = exp["model"]["n_heads"]
    head_dim, train_len = exp["model"]["d_model"] // heads, exp["train"]["train_len"]
    top = max(exp["eval"]["multiples"])
    ppl: dict[tuple[str, int], float] = {}
    for line in SWEEP_RECORDS.read_text().splitlines():
        r = json.loads(line)
        if r["metric"] == "ppl":
            ppl[(r["method"], r["eval_len"])] = r["value"]
    rows = [f"| sweep row | omega_scale | λ | slowest half-life | 2nd slowest | median | all < 1e-3 beyond | "
            f"val. ppl {train_len} | val. ppl {top * train_len} |", "|---|---|---|---|---|---|---|---|---|"]
    for name, cfg in bench["methods"].items():
        if cfg["kind"] != "hope_hyperbolic":
            continue
        d = describe(cfg, head_dim=head_dim, num_heads=heads, train_len=train_len)
        lives = sorted(h for head in d["half_life"] for h in head)
        rows.append(f"| `{name}` | {g(d['config']['omega_scale'])} | {g(d['penalty'][0], 4)}"
                    f"{' (learned; its initial value)' if d['config']['learnable'] else ''} | {g(lives[-1])} | {g(lives[-2])} | "
                    f"{g(lives[len(lives) // 2])} | {g(d['negligible_beyond'])} | "
                    f"{ppl[(name, train_len)]:.2f} | {ppl[(name, top * train_len)]:.2f} |")
    rope = f"| `rope` | — | — | — | — | — | — | {ppl[('rope', train_len)]:.2f} | {ppl[('rope', top * train_len)]:.2f} |"
    return rows + [rope]


def hyperbolic_local(d: dict[str, Any], top: int) -> list[str]:
    lives = sorted(h for head in d["half_life"] for h in head)
    n = len(lives)
    under5 = sum(1 for h in lives if h < 5)
    slow = lives[-1]
    return [
        f"**The default is local.** The logit is a sum of per-channel exponential decays Q_c·K_c·e^{{−r_cΔ}} "
        f"with rates r_c = λ ∓ ω_i (src/hopekit/pe/hope_hyperbolic.py), so each channel's half-life is "
        f"ln 2 / r_c. At the bench shape {under5} of {n} channels have half-lives under 5 tokens, the "
        f"second slowest {g(lives[-2])} tokens and the slowest (u_0, rate λ − ω_0 = {g(d['rates'][0][0])}) "
        f"{g(slow)} tokens. At Δ = {d['train_len']} the slowest channel keeps {g(d['factor_at_train_len'], 2)} of "
        f"its logit, at Δ = {top} {g(math.exp(-math.log(2) * top / slow), 2)}, and beyond "
        f"{g(d['negligible_beyond'])} tokens every channel keeps less than 1e-3. There the logits are ≈ 0 — "
        f"not −∞ as under ALiBi — so every far token gets the softmax weight of a zero-score token: attention "
        f"over the far past is a uniform, content-blind average, whose share of the weight grows with the "
        f"number of far tokens. An optional remedy, off by default, is log-length logit scaling "
        f"(`logit_scale=\"log_length\"`: a query's logits × max(1, ln(m+1)/ln `train_len`), 1 inside the "
        f"training window, so it can be switched on at evaluation); its measured effect is in "
        f"docs/results/dilution.md.",
        "",
        "This is the ALiBi-like local regime, consistent with the bench's hope_hyperbolic row being nearly flat "
        "from 1× to 16×, like alibi's (docs/results/default/report.md). It is not the paper's result: in Dai et al. HoPE's "
        "perplexity rises with length (PG19: 13.35 at 1024 tokens, 110.02 at 6144; papers/hope_hyperbolic.md, "
        "Table 1), and a flat curve here says nothing for or against that claim.",
    ]


def section(name: str, page: Page, shape: dict[str, int]) -> list[str]:
    method = pe.REGISTRY[name]
    kw = {"head_dim": shape["head_dim"], "num_heads": shape["num_heads"], "train_len": shape["train_len"]}
    d = describe(page.bench, factor=float(shape["factor"]), **kw)
    defaults = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in d["config"].items() if k != "kind"
                         and not (isinstance(v, list) and len(v) > 4))
    out = [f"## `{name}`", "", f"{method.summary} — capability {', '.join(method.capabilities) or 'none'}.", ""]
    out += [f"Configuration described: {defaults or 'none'}." + (f" {page.note}" if page.note else ""), ""]
    out += [f"**In tokens, bench shape** ({shape_text(d)}): {in_tokens(d)}.", ""]
    if "stretch" in d:
        out += rotary_details(d) + [""]
    if "rates" in d:
        out += hyperbolic_local(d, shape["factor"] * shape["train_len"]) + [""] + hyperbolic_table(d) + [""]
        out += ["u_i and v_i are pair i's eigen-channels; the last column is the half-life of "
                "e^{−λΔ}cosh(ω_iΔ), the score of pair i when q and k both hold (1, 0) in it (the aligned probe "
                "of `hopekit.analysis.score_vs_distance`).", ""]
    if "slopes" in d:
        out += alibi_table(d, [shape["train_len"], shape["factor"] * shape["train_len"]]) + [""]
    if "wavelength" in d:
        out += [f"- wavelengths (tokens), first frequency first: {values(d['wavelength'])}",
                f"- amplitude {g(d['amplitude'])}", ""]
    for label, cfg, ref_shape in page.refs:
        r = describe(cfg, **{"num_heads": 1, **ref_shape})
        out += [f"- {label}: {in_tokens(r)}."]
    if page.refs:
        out += [""]
    if page.compare:
        out += [page.compare, ""]
    out += [f"**How the default was chosen.** {page.chosen}", ""]
    if name == "hope_hyperbolic":
        out += ["The validation sweep, bench shape (half-lives in tokens; perplexity on the validation plays, "
                "from docs/results/hyperbolic_sweep/records.jsonl):", ""] + sweep_rows(shape) + [""]
    return out


def render() -> str:
    missing = [n for n in pe.REGISTRY if n not in PAGES]
    if missing:
        raise SystemExit(f"scripts/method_pages.py: no page entry for {missing}; add one to PAGES")
    shape = bench_shape()
    L, top = shape["train_len"], shape["factor"] * shape["train_len"]
    kw = {"head_dim": shape["head_dim"], "num_heads": shape["num_heads"], "train_len": L,
          "factor": float(shape["factor"])}
    lines = [
        "# Methods: what each default means in tokens",
        "",
        "<!-- generated by scripts/method_pages.py from hopekit.analysis.describe; edit the script, not this "
        "file; tests/test_method_pages.py checks it -->",
        "",
        "Every number on this page is read off the encoding `hopekit.pe` builds (`hopekit.analysis.describe`: "
        "its inv_freq, ALiBi slopes, hope_hyperbolic decay rates, sinusoidal table), so it is what the method "
        "computes with. Regenerate the page with `python scripts/method_pages.py`.",
        "",
        f"The **bench shape** is the default bench's model (src/hopekit/presets/bench_default.yaml): d_model "
        f"{shape['d_model']}, {shape['num_heads']} heads of head_dim {shape['head_dim']}, train_len {L} byte "
        f"tokens, evaluated up to {shape['factor']}× = {top} tokens. Extension methods are shown at factor "
        f"{shape['factor']}, as the bench applies them in its {shape['factor']}× column (factor = eval_len / "
        f"train_len).",
        "",
        "- A rotary pair's **period** is 2π / inv_freq tokens; it **turns fully** within train_len if its period "
        "is at most train_len. A pair with inv_freq 0 is **position-free**.",
        "- **Stretch**: RoPE's inv_freq over the method's (same base and rotary dim): 1 = untouched, s = "
        "positions divided by s.",
        "- A pair **stays within trained angles** at eval_len if RoPE already turned it fully within train_len, "
        "or if its largest angle at eval_len is at most RoPE's at train_len.",
        "- **Half-life**: the distance Δ at which a decaying logit factor halves (hope_hyperbolic: e^{−r_cΔ} per "
        "channel), or at which a bias has removed ln 2 from the logit, halving the unnormalised weight (ALiBi).",
        "",
        "## Summary, bench shape",
        "",
        "| method | default in tokens |",
        "|---|---|",
    ]
    for name, page in PAGES.items():
        if name in pe.REGISTRY:
            lines.append(f"| `{name}` | {in_tokens(describe(page.bench, **kw))} |")
    lines.append("")
    for name in pe.REGISTRY:
        lines += section(name, PAGES[name], shape)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/methods.md is stale")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE.relative_to(ROOT)} is stale: run python scripts/method_pages.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
