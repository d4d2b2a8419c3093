"""A LongRoPE search on a trained model, end to end: what ``hopekit longrope`` runs.

::

    from hopekit.longrope.run import search_checkpoint
    out = search_checkpoint("results/default/checkpoints/rope/seed0/ckpt.pt", "search/8x", factor=8)
    out.params          # LongRoPEParams with the searched long_rescale
    # search/8x/: longrope.json, factors.csv, rope_parameters.json, records.jsonl,
    #             best_per_iteration.csv, search_curve.png, search_state.json, evaluations.jsonl

**Which search** follows from the model's encoding and the arguments:

* a ``rope`` model and ``factor`` s: the long set for L′ = s·L (L: the model's training length). Seeds
  PI, NTK, YaRN and the code's linear-in-λ YaRN at s; genes in [1, λ_max] with λ_max = 1.25·s (the
  paper's, ``lambda_max="paper"``), 1 + s (the code's, ``"code"``) or a number. The short set is all
  ones (the model's own RoPE below L, as in LongRoPE2) unless ``base`` gives one.
* a ``longrope`` model (fine-tuned with searched factors, or ``base=`` a LongRoPE configuration) and a
  larger ``factor`` s: **progressive extension** — the genes multiply the existing long factors (found for
  s₀), for the further ratio s/s₀ (λ_max from s/s₀ by the same rule; seeds PI/NTK/YaRN at s/s₀).
* ``short=True`` with a LongRoPE model or ``base``: the **short-context readjustment** — the short set,
  scored at ``eval_len`` ≤ L (default L) with the configuration's own attention factor; genes in
  [1, λ_max], λ_max = s by default (lower than the long search's 1.25·s); seeds: all ones (plain RoPE),
  the long set, and PI/NTK/YaRN at s.

The fitness is :class:`~hopekit.longrope.fitness.PerplexityFitness` (or ``fitness="needle"``) on the
first ``documents`` validation documents long enough for L′. Results are records (``records.jsonl``, one
row per iteration and one for the result, each with the resolved search configuration and the git
commit); ``best_per_iteration.csv`` and ``search_curve.png`` are drawn from them.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import pe as pe_lib
from ..pe.schedules import LongRoPEParams, RopeParams
from .fitness import NeedleFitness, PerplexityFitness, Target, fitness_documents
from .genome import SEED_METHODS, Candidate, SearchSpace, seed_factors
from .search import SearchConfig, SearchResult, _dist, run_search

__all__ = ["SearchOutput", "plan_target", "lambda_max_for", "search_model", "search_checkpoint", "search_pretrained",
           "write_outputs", "read_search_records", "LAMBDA_MAX_RULES", "FITNESSES"]

LAMBDA_MAX_RULES = ("paper", "code")
FITNESSES = ("ppl", "needle")
#: the n̂ choices of the paper's Table 4
PAPER_START_TOKENS = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)


@dataclasses.dataclass
class SearchOutput:
    params: LongRoPEParams
    slot: str                      # which set the search filled: "long" or "short"
    result: SearchResult
    seed_fitness: dict[str, float]
    out_dir: Path | None


def lambda_max_for(rule: str | float, ratio: float) -> float:
    """λ_max for an extension ``ratio``: ``"paper"`` 1.25·ratio, ``"code"`` 1 + ratio, or a number ≥ 1."""
    if isinstance(rule, str):
        if rule == "paper":
            return 1.25 * ratio
        if rule == "code":
            return 1.0 + ratio
        raise ValueError(f"lambda_max={rule!r}: expected 'paper' (1.25·s), 'code' (1 + s) or a number >= 1")
    if isinstance(rule, bool) or not isinstance(rule, (int, float)) or not math.isfinite(rule) or rule < 1:
        raise ValueError(f"lambda_max={rule!r}: expected 'paper' (1.25·s), 'code' (1 + s) or a number >= 1")
    return float(rule)


def plan_target(model_pe: pe_lib.Params, *, head_dim: int, train_len: int, factor: float | None,
                short: bool = False, base: Mapping[str, Any] | LongRoPEParams | None = None,
                eval_len: int | None = None) -> tuple[Target, int, float]:
    """``(target, eval_len, ratio)`` of a search on a model encoded with ``model_pe`` (module docstring).
    ``ratio`` is the extension the genes cover (s, s/s₀, or s for the short set)."""
    if base is not None:
        template = pe_lib.parse(base) if not isinstance(base, LongRoPEParams) else base
        if not isinstance(template, LongRoPEParams):
            raise ValueError(f"base: expected a longrope configuration, got kind {pe_lib.name_of(template)!r}")
    elif isinstance(model_pe, LongRoPEParams):
        template = model_pe
    else:
        template = None
    if template is None and pe_lib.name_of(model_pe) != "rope":
        raise ValueError(f"pe.kind={pe_lib.name_of(model_pe)!r}: a LongRoPE search rescales a rope (or longrope) "
                         f"model's frequencies")
    pairs = (template or model_pe).rotary_dim(head_dim) // 2
    if template is not None:
        template.validate_dims(head_dim, 1)
    if short:
        if template is None:
            raise ValueError("short=True: the short-context readjustment completes a LongRoPE configuration; give "
                             "base= (e.g. a searched longrope.json) or a longrope model")
        if factor is not None:
            raise ValueError(f"factor={factor!r}: a short-set search keeps the configuration's factor "
                             f"({template.factor:g}); leave factor unset")
        L = template.train_len
        eval_len = L if eval_len is None else eval_len
        if isinstance(eval_len, bool) or not isinstance(eval_len, int) or not 1 <= eval_len <= L:
            raise ValueError(f"eval_len={eval_len!r}: the short set is used at lengths <= train_len={L}")
        return Target(template, "short"), eval_len, float(template.factor)
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
        raise ValueError(f"factor={factor!r}: expected the target extension L'/L, a number > 1")
    if template is None:
        assert isinstance(model_pe, RopeParams)
        L = train_len
        template = LongRoPEParams(base=model_pe.base, rotary_fraction=model_pe.rotary_fraction, train_len=L,
                                  factor=float(factor), short_rescale=(1.0,) * pairs, long_rescale=(1.0,) * pairs)
        target, ratio = Target(template, "long"), float(factor)
    else:
        L = template.train_len
        if factor <= template.factor:
            raise ValueError(f"factor={factor!r}: progressive extension goes beyond the model's factor "
                             f"{template.factor}; give a larger one")
        target = Target(dataclasses.replace(template, factor=float(factor)), "long", multiply=template.long_rescale)
        ratio = float(factor) / template.factor
    length = L * factor
    if eval_len is not None and (isinstance(eval_len, bool) or not isinstance(eval_len, int) or eval_len <= L):
        raise ValueError(f"eval_len={eval_len!r}: the long set is used only beyond train_len={L}; give a longer "
                         f"eval_len (or search the short set)")
    if eval_len is None:
        if abs(length - round(length)) > 1e-9:
            raise ValueError(f"factor={factor!r}: train_len·factor = {length} is not a whole number of tokens")
        eval_len = int(round(length))
    return target, eval_len, ratio


def _seeds(target: Target, space: SearchSpace, ratio: float, names: Sequence[str]) -> dict[str, Candidate]:
    t = target.template
    start = 0 if 0 in space.start_tokens else space.start_tokens[0]   # seeds interpolate every position if allowed
    out = {}
    for name in names:
        if name == "rope":
            factors = [1.0] * space.pairs
        elif name == "long":
            factors = list(t.long_rescale)
        elif name in SEED_METHODS:
            factors = seed_factors(name, factor=ratio, pairs=space.pairs, base=t.base, train_len=t.train_len)
        else:
            raise ValueError(f"seeds: unknown seed {name!r}; expected some of {(*SEED_METHODS, 'rope', 'long')}")
        out[name] = space.snap(factors, start)
    return out


def search_model(apply: Callable[[LongRoPEParams], nn.Module], model_pe: pe_lib.Params, documents: Sequence[torch.Tensor],
                 *, head_dim: int, train_len: int, factor: float | None = None, out_dir: str | Path | None = None,
                 short: bool = False, base: Mapping[str, Any] | LongRoPEParams | None = None,
                 eval_len: int | None = None, lambda_max: str | float | None = None, start_tokens: Sequence[int] = (0,),
                 seeds: Sequence[str] | None = None, config: SearchConfig = SearchConfig(),
                 fitness: str = "ppl", fitness_docs: int = 5, bos: int | None = None,
                 encode: Callable[[str], list[int]] | None = None, resume: bool = False,
                 meta: Mapping[str, Any] | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, device: torch.device | str | None = None) -> SearchOutput:
    """Search LongRoPE factors for a model given as ``apply`` (typed LongRoPE parameters -> a model to
    score) and its own encoding ``model_pe``; ``documents``: token tensors of the split to score on
    (validation). See the module docstring for the kinds of search; writes to ``out_dir`` when given."""
    target, eval_len, ratio = plan_target(model_pe, head_dim=head_dim, train_len=train_len, factor=factor,
                                          short=short, base=base, eval_len=eval_len)
    template_n = target.template.start_tokens
    if template_n and tuple(start_tokens) == (0,):   # a model with n̂ keeps it unless other choices are given
        start_tokens = (template_n,)
    if short and tuple(start_tokens) != (template_n,):
        raise ValueError(f"start_tokens={list(start_tokens)}: the short set shares n̂ with the long set "
                         f"(start_tokens={template_n} in the configuration); it is not searched with --short")
    if lambda_max is None:                 # the short set's default bound is lower: s instead of 1.25·s
        lambda_max = float(ratio) if short else "paper"
    upper = lambda_max_for(lambda_max, ratio)
    space = SearchSpace(pairs=len(target.template.long_rescale), lambda_max=upper, start_tokens=tuple(start_tokens))
    if seeds is None:
        seeds = ("rope", "long", *SEED_METHODS) if short else SEED_METHODS
    seed_candidates = _seeds(target, space, ratio, seeds)
    if fitness not in FITNESSES:
        raise ValueError(f"fitness={fitness!r}: expected one of {FITNESSES}")
    if fitness == "needle" and encode is None:
        raise ValueError("fitness='needle': needs encode (the tokenizer's text -> ids)")
    docs = fitness_documents(documents, eval_len, fitness_docs, bos=bos)
    if fitness == "ppl":
        score = PerplexityFitness(apply, target, docs, eval_len, bos=bos, device=device)
    else:
        score = NeedleFitness(apply, target, docs, eval_len, encode=encode, bos=bos, seed=config.seed)
    describe = {"target": {"slot": target.slot, "eval_len": eval_len, "ratio": ratio, "lambda_max_rule": lambda_max,
                           "template": pe_lib.to_config(target.template),
                           "multiply": None if target.multiply is None else list(target.multiply)},
                "fitness": score.describe(), **(meta or {})}
    out = Path(out_dir) if out_dir is not None else None

    def on_iteration(row: dict[str, Any]) -> None:
        if out is None:
            return
        from ..eval.records import append_records

        append_records(out / "records.jsonl",
                       [_record(row, target, eval_len, describe, config, value=row["best"], metric="search_best_ppl")])

    log(f"longrope search: {target.slot} set at eval_len {eval_len} (L={target.template.train_len}, ratio "
        f"{ratio:g}), {space.pairs} pairs in [1, {upper:g}], n̂ in {list(space.start_tokens)}, "
        f"{len(docs)} fitness documents; P={config.population}, {config.iterations} iterations")
    result = run_search(config, space, seed_candidates, score, out, resume=resume, meta=describe,
                        progress=progress, log=log, on_iteration=on_iteration)
    seed_fitness = {name: result.history.get(c.key, math.nan) for name, c in seed_candidates.items()}
    params = target.params(result.best)
    output = SearchOutput(params=params, slot=target.slot, result=result, seed_fitness=seed_fitness, out_dir=out)
    if out is not None and _dist()[0] == 0:   # rank 0 writes, as in the search
        write_outputs(output, head_dim=head_dim, final_record=_record(
            {"iteration": result.curve[-1]["iteration"], "best_key": result.best.key,
             "evaluations": result.evaluations, "seconds": result.curve[-1]["seconds"]},
            target, eval_len, describe, config, value=result.best_fitness, metric="search_result_ppl",
            extra={"seed_fitness": seed_fitness, "stopped_early": result.stopped_early,
                   "params": pe_lib.to_config(params)}), log=log)
    return output


def _record(row: Mapping[str, Any], target: Target, eval_len: int, describe: Mapping[str, Any], config: SearchConfig,
            *, value: float, metric: str, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from ..eval.records import make_record

    best = Candidate.from_key(row["best_key"])
    fields = {"method": "longrope_search", "params": pe_lib.to_config(target.params(best)),
              "train_len": target.template.train_len, "eval_len": eval_len, "task": "longrope_search",
              "metric": metric, "value": value, "seed": config.seed, "model": describe.get("model", "?"),
              "corpus": describe.get("corpus", "?"), "iteration": row["iteration"],
              "evaluations": row["evaluations"], "seconds": row["seconds"], "config": dict(describe),
              "search": dataclasses.asdict(config)}
    fields.update(extra or {})
    return make_record(**fields)


def read_search_records(path: str | Path) -> list[dict[str, Any]]:
    """The per-iteration rows of a search's records, one per iteration (the last written wins, so a
    resumed search that re-wrote an iteration counts it once), in iteration order."""
    from ..eval.records import read_records

    rows = {r["iteration"]: r for r in read_records(path) if r.get("metric") == "search_best_ppl"}
    return [rows[k] for k in sorted(rows)]


def write_outputs(output: SearchOutput, *, head_dim: int, final_record: dict[str, Any] | None = None,
                  log: Callable[[str], None] = print) -> None:
    """The result files of a finished search (module docstring), drawn from its records."""
    from ..eval.records import append_records

    out = output.out_dir
    params = output.params
    factors = params.long_rescale if output.slot == "long" else params.short_rescale
    (out / "longrope.json").write_text(json.dumps(pe_lib.to_config(params), indent=1) + "\n")
    (out / "factors.csv").write_text("".join(f"{v!r}\n" for v in factors))
    if final_record is not None:
        append_records(out / "records.jsonl", [final_record])
    rows = read_search_records(out / "records.jsonl")
    with open(out / "best_per_iteration.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["iteration", "best_ppl", "evaluations", "seconds", "best_start_tokens"])
        for r in rows:
            w.writerow([r["iteration"], r["value"], r["evaluations"], r["seconds"], r["params"]["start_tokens"]])
    plot_search_curve(rows, out / "search_curve.png")
    try:
        from ..integrations.hf.rope import RopeNotExpressible, portable_rope_fields
    except ImportError:
        log("rope_parameters.json not written: transformers is not installed (pip install 'hopekit[hf]')")
        return
    try:
        fields = portable_rope_fields(params, head_dim=head_dim)   # 5.x's rope_parameters and 4.x's rope_scaling
    except RopeNotExpressible as e:
        log(f"rope_parameters.json not written: {e}")
        return
    (out / "rope_parameters.json").write_text(json.dumps(fields, indent=1) + "\n")


def plot_search_curve(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path | None:
    """Best fitness per iteration (from the search's records)."""
    if not rows:
        return None
    from ..eval.report import _figure, _log_axis_ticks

    fig, ax = _figure(size=(6.5, 4.0))
    ax.plot([r["iteration"] for r in rows], [r["value"] for r in rows], marker="o", ms=3)
    ax.set_yscale("log")
    _log_axis_ticks(ax)
    first = rows[-1]
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"best perplexity at {first['eval_len']} ({first['corpus']})")
    ax.set_title(f"LongRoPE search: {first['config']['target']['slot']} set, L={first['train_len']}, "
                 f"eval_len={first['eval_len']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


# ---- models -------------------------------------------------------------------------------------

def search_checkpoint(checkpoint: str | Path, out_dir: str | Path | None, *, factor: float | None = None,
                      split: str = "validation", bos: str | int | None = "auto", device: str = "cpu",
                      **kwargs: Any) -> SearchOutput:
    """A search on a reference-decoder checkpoint of ``hopekit train`` / ``hopekit bench``: documents from
    the ``split`` of its own corpus and tokenizer; ``bos``: ``"auto"`` (the tokenizer's BOS if it has
    one), None, or a token id. Other arguments: :func:`search_model`."""
    from ..checkpoint import load_checkpoint, content_hash
    from ..data import encode_documents
    from ..data.prepare import load_corpus_from_config, tokenizer_from_config
    from ..eval.extensions import with_pe

    _check_split(split)
    model, config, ckpt = load_checkpoint(checkpoint, device)
    if ckpt.get("pretrained") is not None:
        raise ValueError(f"checkpoint {checkpoint}: a fine-tuned pretrained model; use hopekit longrope --hf")
    tokenizer = tokenizer_from_config(config.data)
    documents = encode_documents(load_corpus_from_config(config.data, split), tokenizer)
    bos_id = _bos(bos, tokenizer)
    meta = {"model": f"checkpoint:{Path(checkpoint).resolve()}", "model_hash": content_hash(ckpt["model"]),
            "corpus": f"{config.data.corpus}/{split}", "tokenizer": getattr(tokenizer, "name", "?")}
    return search_model(lambda p: with_pe(model, pe_lib.to_config(p)), config.pe, documents,
                        head_dim=model.config.head_dim, train_len=config.train.train_len, factor=factor,
                        out_dir=out_dir, bos=bos_id, encode=tokenizer.encode, meta=meta, device=device, **kwargs)


def search_pretrained(name: str, out_dir: str | Path | None, *, factor: float | None = None, split: str = "validation",
                      text: str | Path | None = None, corpus: str = "shakespeare", bos: str | int | None = "auto",
                      dtype: torch.dtype = torch.float32, device: str = "cpu", **kwargs: Any) -> SearchOutput:
    """A search on a transformers model (``smollm2``, a directory, a .gguf file or a hub id), patched with
    each candidate through :func:`hopekit.integrations.hf.patch_model`; documents from ``text`` or the
    ``split`` of ``corpus``. Other arguments: :func:`search_model`."""
    from ..eval.pretrained import HFLogits, pretrained_text
    from ..integrations.hf import load_pretrained, patch_model
    from ..integrations.hf.patch import native_params
    from ..integrations.hf.rope import head_dim_of

    _check_split(split)
    lm = load_pretrained(name, dtype=dtype, device=device)
    model = lm.model
    native = native_params(model)
    text_data = pretrained_text(lm.tokenizer, text=text, corpus=corpus, split=split)
    bos_id = _bos(bos, lm.tokenizer)
    wrapped = HFLogits(model)
    L = int(getattr(native, "train_len", None) or model.config.max_position_embeddings)
    meta = {"model": f"hf:{name}", "corpus": text_data.corpus + (f"/{split}" if text_data.split else ""),
            "tokenizer": lm.tokenizer.name, "text_digest": text_data.digest}

    def apply(p: LongRoPEParams) -> nn.Module:
        patch_model(model, p)
        return wrapped

    return search_model(apply, native, text_data.documents, head_dim=head_dim_of(model.config), train_len=L,
                        factor=factor, out_dir=out_dir, bos=bos_id, encode=lm.tokenizer.encode, meta=meta, **kwargs)


def _check_split(split: str) -> None:
    if split in ("test", "all"):
        raise ValueError(f"split={split!r}: the fitness is measured on held-out documents that are not the "
                         f"test split (LongRoPE uses validation documents); use split='validation' or 'train'")


def _bos(bos: str | int | None, tokenizer: Any) -> int | None:
    if bos == "auto":
        return getattr(tokenizer, "bos_id", None)
    if bos is None or bos == "none":
        return None
    if isinstance(bos, bool) or not isinstance(bos, int) or bos < 0:
        raise ValueError(f"bos={bos!r}: expected 'auto', 'none' or a token id")
    return bos
