"""``hopekit <command>`` — a thin command-line layer over the library.

Every command delegates to a library function; this module only parses arguments, prints, and turns
a user error (bad value, missing file, unusable checkpoint, malformed YAML) into one line
``hopekit: error: ...`` with exit status 2 (``--debug`` adds the traceback). Dotted overrides
(``train.steps=100``) and options mix in any order.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import linecache
import re
import sys
import textwrap
import traceback
from pathlib import Path
from typing import Any

import torch

import hopekit

PROG = "hopekit"
_PACKAGE_DIR = Path(hopekit.__file__).resolve().parent


def _demo(args: argparse.Namespace) -> int:
    from hopekit import pe
    from hopekit.analysis import score_vs_distance

    windows = [(1, 16), (16, 128), (128, 512), (512, 2048), (2048, 8192), (8192, 32768)]
    distances = torch.arange(0, windows[-1][1])
    header = f"{'method':<24}" + "".join(f"{f'Δ∈[{a},{b})':>16}" for a, b in windows)
    print("Mean pre-softmax score of the aligned probe (q̂ = k̂ = 1 per pair), head_dim 64, head 0, for")
    print("each method's registry example (`hopekit methods`). Windows are query–key distances.\n")
    print(header)
    print("-" * len(header))
    for name in pe.REGISTRY:
        config = pe.example_config(name, head_dim=64)
        enc = pe.from_config(config, head_dim=64, num_heads=8)
        if any(True for _ in enc.parameters()):  # learned weights: its scores mean nothing until trained
            print(f"{name:<24}" + f"{'(random until trained)':>{16 * len(windows)}}")
            continue
        s = score_vs_distance(enc, distances, seq_len=4 * 512)
        name = f"{name} (Δ in segments)" if enc.uses_tokens else name
        cells = "".join(f"{s[a:b].mean().item():>16.4g}" for a, b in windows)
        print(f"{name:<24}{cells}")
    return 0


# --- hopekit analyze ----------------------------------------------------------------------------

def _analyze_distance(args: argparse.Namespace) -> int:
    from hopekit import pe as pe_lib
    from hopekit.analysis.run import analyze_distance, distance_table
    from hopekit.bench import load_bench
    from hopekit.config import ExperimentConfig, apply_overrides
    from hopekit.eval import read_records

    if args.pe and args.preset:
        raise ValueError(f"--pe {args.pe} and --preset {args.preset}: give one")
    if args.preset:   # a bench preset's methods map, grids expanded, at its experiment's shape
        bench = load_bench(args.preset, args.overrides)
        exp, methods = bench.experiment, dict(bench.methods)
    else:             # one encoding at the default bench's shape; pe.FIELD=VALUE, model.*, train.train_len apply
        base = load_bench("default").experiment.resolved()
        exp = ExperimentConfig.from_dict(apply_overrides({**base, "pe": {"kind": args.pe or "rope"}}, args.overrides))
        methods = {pe_lib.name_of(exp.pe): exp.pe}
    model = exp.model_config(vocab_size=256)
    train_len = exp.train.train_len
    max_distance = args.max_distance if args.max_distance is not None else 16 * train_len
    sources = [s for s in args.sources.split(",") if s]
    if args.seeds < 1 and "gaussian" in sources:
        raise ValueError(f"--seeds {args.seeds}: Gaussian q, k need at least one seed (or --sources aligned)")
    path = analyze_distance(methods, head_dim=model.head_dim, num_heads=model.n_heads, train_len=train_len,
                            max_distance=max_distance, out=args.out, sources=sources, seeds=range(args.seeds),
                            samples=args.samples, head=args.head, log=_log(args))
    print(distance_table(read_records(path)))
    print(f"\nrecords: {path}; figure: {Path(args.out) / 'score_vs_distance.png'}")
    return 0


def _analyze_attention(args: argparse.Namespace) -> int:
    from hopekit.analysis.run import analyze_attention, attention_table
    from hopekit.eval import read_records

    # KEY=VALUE words are encoding overrides (positional words mix in any order)
    overrides = [a for a in args.checkpoints if "=" in a and not Path(a).exists()
                 and re.fullmatch(r"[A-Za-z_][\w.]*=.*", a, re.S) and not a.startswith(("/", "."))]
    args.checkpoints = [a for a in args.checkpoints if a not in overrides]
    if bool(args.hf) == bool(args.checkpoints):
        raise ValueError("give checkpoints or --hf NAME (one of them)")
    try:
        far = [int(x) for x in args.far_lengths.split(",") if x.strip()] if args.far_lengths else []
    except ValueError:
        raise ValueError(f"--far-lengths {args.far_lengths}: expected comma-separated integers") from None
    path = analyze_attention([args.hf] if args.hf else args.checkpoints, out=args.out, hf=bool(args.hf),
                             length=args.length, windows=args.windows, first=args.first, near=args.near,
                             far_lengths=far, beyond=args.beyond, pe_overrides=overrides, log=_log(args))
    print(attention_table(read_records(path)))
    print(f"\nrecords: {path}; figures in {args.out}")
    return 0


def _analyze_pairs(args: argparse.Namespace) -> int:
    from hopekit.analysis.run import analyze_pairs, pairs_table
    from hopekit.eval import read_records

    if bool(args.hf) == bool(args.checkpoints):
        raise ValueError("give checkpoints or --hf NAME (one of them)")
    path = analyze_pairs([args.hf] if args.hf else args.checkpoints, out=args.out, hf=bool(args.hf),
                         length=args.length, windows=args.windows, log=_log(args))
    print(pairs_table(read_records(path)))
    print(f"\nrecords: {path}; figure: {Path(args.out) / 'pairs_delta.png'}")
    return 0


def _analyze_sweep(args: argparse.Namespace) -> int:
    from hopekit.analysis.sweep import write_sweep_report

    report, figures = write_sweep_report(args.run_dir)
    print(report.read_text())
    print("figures: " + ", ".join(str(f) for f in figures))
    return 0


# --- helpers ------------------------------------------------------------------------------------

def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hopekit")
    except PackageNotFoundError:
        return getattr(hopekit, "__version__", "unknown")


def _log(args: argparse.Namespace):
    """Where log lines go: nowhere under ``--quiet``."""
    return (lambda _message: None) if args.quiet else print


def _print_yaml(data: Any) -> int:
    """Print a resolved configuration as YAML that loads back (``hopekit.config.dump_yaml``)."""
    from hopekit.config import dump_yaml

    print(dump_yaml(data), end="")
    return 0


# --- commands -----------------------------------------------------------------------------------

def _bench(args: argparse.Namespace) -> int:
    from hopekit.bench import load_bench, run_bench

    methods = args.methods.split(",") if args.methods else None
    if args.print_config:
        return _print_yaml(load_bench(args.preset, args.overrides, methods, args.seeds, args.suite).resolved())
    run_dir = run_bench(args.preset, run_dir=args.run_dir, overrides=args.overrides, methods=methods,
                        seeds=args.seeds, suite=args.suite, progress=not (args.no_progress or args.quiet),
                        log=_log(args))
    print((run_dir / "report.md").read_text())
    return 0


def _train(args: argparse.Namespace) -> int:
    from hopekit.config import load_config, load_pe_file, load_yaml, preset_path
    from hopekit.train import read_checkpoint, train

    if args.pe and args.pe_file:
        raise ValueError(f"--pe {args.pe} and --pe-file {args.pe_file}: give one (pe.FIELD=VALUE overrides apply "
                         "on top of either)")
    # the base: --config, else the source's own config with --init-from, else finetune (--hf) or tiny
    if args.config is None and args.init_from:
        base = read_checkpoint(args.init_from, verify=False)["config"]
    else:
        base = load_yaml(preset_path(args.config or ("finetune" if args.hf else "tiny")))
    if args.init_from:
        base["init_from"] = args.init_from
    if args.pe_file:
        base["pe"] = load_pe_file(args.pe_file)
    sugar = [f"hf={json.dumps(args.hf)}"] if args.hf else []  # --hf / --pe: overrides, applied first
    sugar += [f"pe.kind={json.dumps(args.pe)}"] if args.pe else []
    config = load_config(base, sugar + args.overrides)
    if args.print_config:
        return _print_yaml(config.resolved())
    kind = (config.resolved()["pe"] or {"kind": "native"})["kind"]  # None: a pretrained model's own
    out = args.out or f"checkpoints/{config.name}-{kind}"
    result = train(config, out, resume=args.resume, progress=not (args.no_progress or args.quiet), log=_log(args))
    print(f"trained {result.step} steps; final loss {result.losses[-1]:.4f}; checkpoint {result.checkpoint}")
    return 0


def _eval_config(config: Any, args: argparse.Namespace) -> Any:
    """The checkpoint's config with the eval overrides (``eval.*`` and ``--extensions``) applied."""
    from hopekit.config import ExperimentConfig, apply_overrides

    bad = [o for o in args.overrides if not o.startswith(("eval.", "data.task_style=", "data.task_filler="))]
    if bad:
        raise ValueError(f"only eval.* overrides (and data.task_style, data.task_filler) are allowed at evaluation "
                         f"time, got {bad}")
    overrides = list(args.overrides)
    if getattr(args, "task", None) is not None:
        overrides.append(f"eval.tasks={json.dumps(_task_names(args.task))}")
    if args.extensions is not None:  # '' means none
        overrides.append(f"eval.extensions={json.dumps([e for e in args.extensions.split(',') if e.strip()])}")
    return ExperimentConfig.from_dict(apply_overrides(config.resolved(), overrides)) if overrides else config


def _task_names(text: str) -> list[str]:
    """``--task passkey,copy`` (or ``all``) as a list of task names, an unknown one refused."""
    from hopekit.eval.tasks import TASKS

    names = list(TASKS) if text.strip() == "all" else [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise ValueError(f"--task {text}: expected comma-separated names from {', '.join(TASKS)} (or all)")
    return names


def _eval(args: argparse.Namespace) -> int:
    from hopekit.eval.lengths import evaluate_lengths
    from hopekit.eval.report import markdown_table
    from hopekit.train import load_checkpoint

    if args.hf is not None:
        return _eval_hf(args)
    hf_only = [f"--{k.replace('_', '-')}" for k in ("pe", "pe_file", "text", "bos", "dtype", "lengths") if getattr(args, k)]
    if args.checkpoint is None or hf_only:
        raise ValueError(f"{', '.join(hf_only)}: only with --hf NAME" if hf_only
                         else "give a checkpoint or --hf NAME (a pretrained model)")
    model, config, ckpt = load_checkpoint(args.checkpoint)
    config = _eval_config(config, args)
    if args.print_config:
        return _print_yaml(config.resolved())
    if ckpt.get("pretrained") is not None:
        if args.task is not None:
            raise ValueError(f"--task {args.task}: long-context tasks are measured on checkpoints of the reference "
                             f"decoder, not a fine-tuned pretrained model")
        return _eval_finetuned(args, model, config, ckpt)
    longrope = None
    if args.longrope:
        from hopekit.eval.extensions import check_longrope

        try:
            longrope = check_longrope(json.loads(Path(args.longrope).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"--longrope {args.longrope}: not valid JSON ({e})") from None
        except ValueError as e:
            raise ValueError(f"--longrope {args.longrope}: {e}") from None
    records = args.records or str(Path(args.checkpoint).parent / "records.jsonl")
    method = args.method or config.pe.kind
    log = _log(args)
    if args.task is not None:
        from hopekit.eval.task_report import task_table
        from hopekit.eval.tasks import evaluate_tasks

        rows = evaluate_tasks(model, config, records, method=method, extensions=config.eval.extensions,
                              longrope=longrope, progress=not args.quiet, log=log)
        for task in config.eval.tasks:
            print(f"\n{task}: accuracy (%), mean over depths {', '.join(f'{d:g}' for d in config.eval.task_depths)}\n")
            print(task_table(rows, task))
        log(f"heat maps and tables of every measurement in the file: hopekit report {Path(records).parent}")
        return 0
    rows = evaluate_lengths(model, config, records, method=method, extensions=config.eval.extensions,
                            longrope=longrope, progress=not args.quiet, log=log)
    print(markdown_table(rows, baseline=method, protocol=config.eval.protocol))  # this checkpoint's rows only
    return 0


def _eval_hf(args: argparse.Namespace) -> int:
    """``hopekit eval --hf NAME``: a pretrained model, its own or a patched encoding, at ``--lengths``."""
    from hopekit import pe as pe_lib
    from hopekit.config import ExperimentConfig, apply_overrides
    from hopekit.eval.pretrained import default_lengths, evaluate_pretrained, pretrained_text
    from hopekit.eval.report import markdown_table
    from hopekit.integrations.hf import load_pretrained, resolve_pe

    if args.extensions is not None or args.longrope:
        raise ValueError("--extensions / --longrope: for checkpoints; with --hf, one encoding per run: --pe KIND")
    if args.task is not None and (args.text or args.bos):
        raise ValueError(f"--task {args.task}: the tasks take their filler from the embedded corpus, without BOS "
                         f"(--text / --bos are for perplexity)")
    overrides = list(args.overrides)
    if args.checkpoint is not None:   # the first KEY=VALUE lands in the optional checkpoint slot
        if "=" not in args.checkpoint:
            raise ValueError(f"{args.checkpoint}: give a checkpoint or --hf {args.hf}, not both")
        overrides.insert(0, args.checkpoint)
    allowed = ("pe.", "eval.", "data.task_style=", "data.task_filler=") if args.task is not None else ("pe.", "eval.")
    bad = [o for o in overrides if not o.startswith(allowed)]
    bad += [o for o in overrides if o.startswith(("eval.multiples=", "eval.extensions=", "pe.kind="))]
    if bad:
        raise ValueError(f"{bad[0]}: with --hf only pe.* (with --pe KIND) and eval.* overrides are allowed "
                         f"(data.task_style, data.task_filler with --task; lengths: --lengths; method: --pe)")
    pe_overrides = [o for o in overrides if o.startswith("pe.")]
    if args.pe and args.pe_file:
        raise ValueError(f"--pe {args.pe} and --pe-file {args.pe_file}: give one")
    if pe_overrides and args.pe is None and not args.pe_file:
        raise ValueError(f"{pe_overrides[0]}: pe.* overrides need --pe KIND (or --pe-file)")
    if args.pe_file:
        from hopekit.config import load_pe_file

        pe = apply_overrides({"pe": load_pe_file(args.pe_file)}, pe_overrides)["pe"]
    else:
        pe = apply_overrides({"pe": {"kind": args.pe}}, pe_overrides)["pe"] if args.pe else None
    tasks = [f"eval.tasks={json.dumps(_task_names(args.task))}"] if args.task is not None else []
    config = ExperimentConfig.from_dict(apply_overrides({}, [o for o in overrides if not o.startswith("pe.")] + tasks))
    eval_config = config.eval
    lengths = _lengths(args.lengths)
    dtype = getattr(torch, args.dtype or "float32")
    log = _log(args)
    try:
        lm = load_pretrained(args.hf, dtype=dtype)
    except OSError as e:  # a hub id that cannot be fetched (offline, no such repository)
        raise ValueError(f"--hf {args.hf}: not a short name, model directory, .gguf file or reachable hub id "
                         f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if args.print_config:
        return _print_yaml(json.loads(json.dumps({
            "hf": args.hf, "pe": None if pe is None else pe_lib.to_config(resolve_pe(pe, lm.model)),
            "lengths": lengths or default_lengths(lm.model), "dtype": args.dtype or "float32", "bos": args.bos,
            "text": args.text, "eval": dataclasses.asdict(eval_config),
            **({"task_style": config.data.task_style} if args.task is not None else {})}, default=list)))
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.hf).name or args.hf)
    records = Path(args.records or f"results/hf-{slug}/records.jsonl")
    if args.task is not None:
        from hopekit.eval.pretrained import evaluate_pretrained_tasks
        from hopekit.eval.task_report import task_table

        rows = evaluate_pretrained_tasks(lm, records, lengths=lengths or default_lengths(lm.model), pe=pe,
                                         method=args.method, eval_config=eval_config, style=config.data.task_style,
                                         filler=config.data.task_filler,
                                         progress=not args.quiet, log=log)
        for task in eval_config.tasks:
            print(f"\n{task}: accuracy (%), mean over depths {', '.join(f'{d:g}' for d in eval_config.task_depths)}\n")
            print(task_table(rows, task))
        log(f"heat maps and tables of every measurement in the file: hopekit report {records.parent}")
        return 0
    text = pretrained_text(lm.tokenizer, text=args.text, split=eval_config.split)
    log(f"{args.hf}: {text.corpus}{f' ({text.split})' if text.split else ''}, {text.tokens} tokens; records {records}")
    rows = evaluate_pretrained(lm, text, records, lengths=lengths or default_lengths(lm.model), pe=pe,
                               method=args.method, eval_config=eval_config, bos=args.bos,
                               progress=not args.quiet, log=log)
    method = rows[0]["method"]
    print(markdown_table(rows, baseline=method, protocol=eval_config.protocol))
    log(f"report and plot of every measurement in the file: hopekit report {records.parent}")
    return 0


def _eval_finetuned(args: argparse.Namespace, model: Any, config: Any, ckpt: dict) -> int:
    """``hopekit eval CKPT`` of a fine-tuned pretrained model (``hopekit train --hf``): its own tokenizer
    and corpus text, at ``eval.multiples`` × ``train.train_len``, through the pretrained-model evaluation."""
    from hopekit.eval.pretrained import evaluate_pretrained, pretrained_text
    from hopekit.eval.report import markdown_table
    from hopekit.integrations.hf import PretrainedLM, load_tokenizer

    if args.extensions or args.longrope:  # (eval.extensions, a reference-decoder setting, is not applied)
        raise ValueError("--extensions / --longrope: not for a fine-tuned pretrained model; it is evaluated with "
                         "the encoding it was trained with (the base model: hopekit eval --hf NAME --pe KIND)")
    base = ckpt["pretrained"]
    lm = PretrainedLM(model, load_tokenizer(base["name"], base["source"]), base["name"], base["source"])
    text = pretrained_text(lm.tokenizer, data=config.data, split=config.eval.split)  # with its hf: settings
    records = Path(args.records or Path(args.checkpoint).parent / "records.jsonl")
    lengths = sorted({int(round(m * config.train.train_len)) for m in config.eval.multiples})
    method = args.method or f"finetuned:{config.pe.kind}"  # not an eval-time swap: the weights were trained with it
    rows = evaluate_pretrained(lm, text, records, lengths=lengths, method=method, eval_config=config.eval,
                               progress=not args.quiet, train_len=config.train.train_len, log=_log(args))
    print(markdown_table(rows, baseline=rows[0]["method"], protocol=config.eval.protocol))
    return 0


def _lengths(text: str | None) -> list[int] | None:
    """``--lengths 2048,4096`` as ints (None: the default)."""
    return None if text is None else _int_list(text, "--lengths", low=1, example="2048,4096,8192")


def _report(args: argparse.Namespace) -> int:
    from hopekit.eval.report import write_report

    report, plot = write_report(args.run_dir)
    print(report.read_text())
    print(f"wrote {report} and {plot}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from hopekit.integrations.hf.export import export_checkpoint, export_hf
    from hopekit.integrations.hf.rope import RopeNotExpressible

    tokenizer = not args.no_tokenizer
    try:
        if args.hf is None:
            if args.pe is not None:
                raise ValueError(f"--pe {args.pe}: only with --hf (a checkpoint exports the encoding it was trained with)")
            if len(args.args) != 2:
                raise ValueError(f"export: expected CKPT OUT, got {len(args.args)} argument(s) {args.args} "
                                 f"(pe.KEY=VALUE overrides go with --hf MODEL --pe KIND)")
            result = export_checkpoint(args.args[0], args.args[1], tokenizer=tokenizer, strict=not args.hopekit_pe)
        else:
            *overrides, out = args.args
            bad = [o for o in overrides if not o.startswith("pe.")]
            if bad:
                raise ValueError(f"export --hf: only pe.KEY=VALUE overrides and OUT, got {bad}")
            if overrides and args.pe is None:
                raise ValueError(f"{overrides[0]}: pe overrides need --pe KIND (the method they belong to)")
            pe_config = None
            if args.pe is not None:
                from hopekit.config import apply_overrides

                pe_config = apply_overrides({"pe": {"kind": args.pe}}, overrides)["pe"]
            result = export_hf(args.hf, out, pe_config, tokenizer=tokenizer, strict=not args.hopekit_pe)
    except RopeNotExpressible as e:
        raise ValueError(f"{e}; pass --hopekit-pe to export it with a hopekit_pe block that only hopekit's "
                         f"load_pretrained applies (vanilla transformers would silently run plain RoPE)") from None
    if result.vanilla_exact:
        print(f"exported {result.params.kind} to {result.path}: a plain Hugging Face model (vanilla transformers "
              f"runs the encoding exactly)")
    else:
        print(f"exported {result.params.kind} to {result.path} with a hopekit_pe block: vanilla transformers loads it "
              f"but silently runs plain RoPE; load it with hopekit.integrations.hf.load_pretrained "
              f"(see {result.path / 'HOPEKIT.md'})")
    print(f"tokenizer: {result.tokenizer or 'not saved'}")
    return 0


def _int_list(text: str, option: str, *, low: int, example: str) -> list[int]:
    """A comma-separated option (``--lengths 2048,4096``) as ints >= ``low``; one line naming it otherwise."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or any(v < low for v in values):
        raise ValueError(f"{option} {text}: expected comma-separated ints >= {low}, e.g. {example}")
    return values


def _longrope(args: argparse.Namespace) -> int:
    import os

    from hopekit.longrope import SearchConfig
    from hopekit.longrope.run import PAPER_START_TOKENS, search_checkpoint, search_pretrained

    if (args.checkpoint is None) == (args.hf is None):
        raise ValueError("hopekit longrope: give a checkpoint or --hf NAME (one of the two)")
    if args.factor is None and not args.short:
        raise ValueError("--factor: missing; give the target extension L'/L (e.g. --factor 8), or --short")
    if args.hf is None and (args.text or args.dtype):
        raise ValueError("--text / --dtype: for a transformers model (--hf NAME)")
    lambda_max: Any = args.lambda_max
    if lambda_max not in ("paper", "code", None):
        try:
            lambda_max = float(lambda_max)
        except ValueError:
            raise ValueError(f"--lambda-max {args.lambda_max!r}: expected paper, code or a number") from None
    start = list(PAPER_START_TOKENS) if args.start_tokens == "paper" else \
        _int_list(args.start_tokens, "--start-tokens", low=0, example="0,1,2,4")
    seeds = None if args.seeds is None else [s.strip() for s in args.seeds.split(",") if s.strip()]
    base = None
    if args.base:
        from hopekit.config import load_yaml

        if not Path(args.base).is_file():
            raise FileNotFoundError(f"--base {args.base}: no such file")
        base = load_yaml(args.base)
    bos: Any = args.bos
    if bos not in ("auto", "none"):
        try:
            bos = int(bos)
        except ValueError:
            raise ValueError(f"--bos {args.bos!r}: expected auto, none or a token id") from None
    parents = args.population // 2 if args.parents is None else args.parents
    mutations = (args.population - parents) // 2 if args.mutations is None else args.mutations
    crossovers = args.population - parents - mutations if args.crossovers is None else args.crossovers
    config = SearchConfig(population=args.population, parents=parents, mutations=mutations,
                          crossovers=crossovers, iterations=args.iterations, seed=args.seed,
                          patience=args.patience)
    name = args.hf or Path(args.checkpoint).parent.name
    out = args.out or f"results/longrope/{Path(name).name}-{'short' if args.short else f'{args.factor:g}x'}"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
    common = dict(factor=args.factor, short=args.short, base=base, eval_len=args.eval_len, lambda_max=lambda_max,
                  start_tokens=start, seeds=seeds, config=config, fitness=args.fitness, fitness_docs=args.documents,
                  split=args.split, bos=bos, resume=args.resume, progress=not (args.no_progress or args.quiet),
                  log=_log(args))
    if args.hf:
        dtype = getattr(torch, args.dtype or "float32")
        result = search_pretrained(args.hf, out, text=args.text, dtype=dtype, device=args.device, **common)
    else:
        result = search_checkpoint(args.checkpoint, out, device=args.device, **common)
    r = result.result
    if r is None or not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_rank() == 0:
        seeds_line = ", ".join(f"{k} {v:.4g}" for k, v in result.seed_fitness.items())
        print(f"best perplexity {r.best_fitness:.4g} after {r.curve[-1]['iteration']} iterations "
              f"({r.evaluations} evaluations); seeds: {seeds_line}")
        print(f"{result.slot} factors: {', '.join(f'{v:g}' for v in (result.params.long_rescale if result.slot == 'long' else result.params.short_rescale))}"
              + (f"; start_tokens {result.params.start_tokens}" if result.params.start_tokens else ""))
        use = f"hopekit eval {args.checkpoint} --longrope {out}/longrope.json" if args.checkpoint else \
            f"hopekit eval --hf {args.hf} --pe-file {out}/longrope.json"
        print(f"wrote {out}/longrope.json (use: {use}), factors.csv, records.jsonl, best_per_iteration.csv, "
              f"search_curve.png")
    return 0


def _scrolls(args: argparse.Namespace) -> int:
    from hopekit.eval.scrolls import load_scrolls_config, run_scrolls

    config, task = load_scrolls_config(args.config, args.overrides)
    if args.print_config:
        return _print_yaml({**config.resolved(), "scrolls": task.resolved()})
    result = run_scrolls(config, task, args.out, resume=args.resume, progress=not (args.no_progress or args.quiet),
                         log=_log(args))
    score = result.metrics["scrolls_score"]
    print(f"{task.task} {task.eval_split} ({len(result.data.examples)} inputs, {result.data.source}): "
          f"{task.metric if task.metric != 'rouge' else 'rouge/geometric_mean'} {score:.2f} after {result.train.step} "
          f"steps; records {result.records_path}")
    return 0


def _method_table() -> dict[str, dict[str, Any]]:
    from hopekit import pe
    from hopekit.bench import bench_shape

    shape = bench_shape()
    table = {}
    for name, method in pe.REGISTRY.items():
        params = {}
        for f in dataclasses.fields(method.params):
            if f.default is not dataclasses.MISSING:
                params[f.name] = {"required": False, "default": f.default}
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
                params[f.name] = {"required": False,
                                  "default": pe.to_config(default) if isinstance(default, pe.Params) else default}
            else:
                params[f.name] = {"required": True}
        table[name] = {"capability": list(method.capabilities), "parameters": params, "source": method.summary,
                       "in_tokens": _in_tokens(name, shape)}
    return json.loads(json.dumps(table))  # tuples -> lists: one form for text and JSON


def _in_tokens(name: str, shape: dict[str, int]) -> str:
    """What the method's defaults mean in tokens at the default bench's shape (docs/methods.md has more)."""
    from hopekit.analysis import describe, in_tokens

    try:
        return in_tokens(describe(name, head_dim=shape["head_dim"], num_heads=shape["num_heads"],
                                  train_len=shape["train_len"], factor=float(shape["factor"])))
    except TypeError as e:   # a required parameter (llama3's factor, longrope's rescale, learned's max_len)
        return f"no default to describe ({e})"


def _value(v: Any) -> str:
    """A default as one would type it in an override (YAML): bare when that reads back the same."""
    import yaml

    if isinstance(v, str) and yaml.safe_load(v) == v:
        return v
    return json.dumps(v, separators=(",", ":"))


def _methods(args: argparse.Namespace) -> int:
    from hopekit.bench import bench_shape

    table = _method_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    shape = bench_shape()
    shape_text = (f"head_dim {shape['head_dim']}, train_len {shape['train_len']}, extensions at "
                  f"{shape['factor']}×")
    width = max(len(n) for n in table) + 2
    cap_width = max(len(", ".join(m["capability"]) or "none") for m in table.values()) + 2
    print(f"{'method':<{width}}{'capability':<{cap_width}}source")
    for name, m in table.items():
        print(f"{name:<{width}}{', '.join(m['capability']) or 'none':<{cap_width}}{m['source']}")
        params = [f"pe.{p}=<required>" if spec["required"] else f"pe.{p}={_value(spec['default'])}"
                  for p, spec in m["parameters"].items()]
        indent = " " * width
        print(textwrap.fill("  ".join(params) or "(no parameters)", 100, initial_indent=indent,
                            subsequent_indent=indent, break_long_words=False, break_on_hyphens=False))
        print(textwrap.fill(f"in tokens ({shape_text}): " + m["in_tokens"], 100,
                            initial_indent=indent, subsequent_indent=indent))
    return 0


def _preset_table() -> dict[str, dict[str, str]]:
    """``{"experiment": {name: description}, "bench": {...}, "scrolls": {...}}`` from the packaged YAML
    files: the first sentence of the leading comment, else the file's ``name``."""
    import yaml

    from hopekit.config import CONFIG_DIR

    out: dict[str, dict[str, str]] = {"experiment": {}, "bench": {}, "scrolls": {}}
    for path in sorted(CONFIG_DIR.glob("*.yaml")) + sorted((CONFIG_DIR / "scrolls").glob("*.yaml")):
        text = path.read_text()
        lines = itertools.takewhile(lambda line: line.startswith("#"), text.splitlines())
        comment = " ".join(line.lstrip("#").strip() for line in lines)
        description = re.split(r"(?<=\.)\s+(?=[A-Z])", comment, maxsplit=1)[0]
        description = description or str((yaml.safe_load(text) or {}).get("name", ""))
        if path.parent.name == "scrolls":
            out["scrolls"][path.stem] = description
        elif path.stem.startswith("bench_"):
            out["bench"][path.stem[len("bench_"):]] = description
        else:
            out["experiment"][path.stem] = description
    return out


def _presets(args: argparse.Namespace) -> int:
    table = _preset_table()
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    width = max(len(n) for group in table.values() for n in group) + 2
    for kind, usage in (("experiment", "hopekit train --config NAME"), ("bench", "hopekit bench --preset NAME"),
                        ("scrolls", "hopekit scrolls --config NAME")):
        print(f"{kind} presets ({usage}):")
        for name, description in table[kind].items():
            print(f"  {name:<{width}}{description}")
    return 0


# --- errors -------------------------------------------------------------------------------------

_FILE_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)


def _is_user_error(exc: BaseException) -> bool:
    """Bad input rather than a bug: a file error, malformed YAML, or a ValueError / TypeError /
    KeyError raised by a ``raise`` statement in hopekit's own code (its validation). The same types
    raised elsewhere (inside torch, or by an operation such as ``None + 1``) are bugs."""
    import yaml

    from hopekit.checkpoint import RunLockedError
    from hopekit.train import TrainingDivergedError

    if isinstance(exc, (yaml.YAMLError, RunLockedError, TrainingDivergedError, *_FILE_ERRORS)):
        return True
    if not isinstance(exc, (ValueError, TypeError, KeyError)) or exc.__traceback__ is None:
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    inside = Path(filename).resolve().is_relative_to(_PACKAGE_DIR)
    return inside and linecache.getline(filename, tb.tb_lineno).strip().startswith("raise")


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]  # str(KeyError) would quote it
    return str(exc).strip() or type(exc).__name__


# --- parser -------------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """A subcommand parser that takes options and positional overrides in any order
    (``parse_intermixed_args``): ``hopekit train train.steps=3 --out x model.n_layers=2``."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        nested = any(isinstance(a, argparse._SubParsersAction) for a in self._actions)  # hopekit analyze
        if self._intermixing or nested:  # parse_known_intermixed_args calls back in here (Python < 3.12)
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Positional encodings for long-context language "
                                     "models: list them, train and evaluate decoders with them, compare them.",
                                     epilog="Run `hopekit COMMAND --help` for a command's options.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # accepted after the command too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--print-config", action="store_true",
                         help="print the resolved configuration as YAML and exit (nothing is run)")
    running.add_argument("-q", "--quiet", action="store_true", help="no log lines and no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser("demo", parents=[common], help="print every method's score-vs-distance numbers")
    demo.set_defaults(func=_demo)

    analyze = sub.add_parser("analyze", parents=[common], help="attention against distance: curves, metrics, sweeps",
                             description="Measure what the encodings do with distance, as records and plots: "
                             "`distance` (score-vs-distance curves with their oscillation and monotonicity), `attention` "
                             "(a trained model's attention on real text), `pairs` (RoPE logits pair by pair), `sweep` "
                             "(the report of a bench grid).")
    asub = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS", parser_class=_Parser)
    dist = asub.add_parser("distance", parents=[common],
                           help="score and post-softmax weight vs distance, oscillation and monotonicity figures",
                           description="Score of a query against keys at every distance 0 … --max-distance for each "
                           "encoding: the aligned probe (q = k, every pair (1, 0)) and i.i.d. Gaussian q, k (--samples "
                           "draws per seed). Per distance window (inside train_len, 1-4x, 4-16x, ...): sign changes and "
                           "the monotone fraction of the curve; the post-softmax weight on keys more than train_len "
                           "back. Records in --out/records.jsonl (resumable), the figure score_vs_distance.png.")
    dist.add_argument("--preset", default=None, help="a bench preset or YAML whose methods (grids expanded) are "
                      "analysed at its shape, e.g. default, hyperbolic_scale")
    dist.add_argument("--pe", default=None, metavar="KIND", help="one encoding (pe.FIELD=VALUE overrides) at the "
                      "default bench's shape (model.* and train.train_len overrides apply)")
    dist.add_argument("--max-distance", type=int, default=None, metavar="N", help="default 16 × train_len")
    dist.add_argument("--sources", default="aligned,gaussian", help="aligned, gaussian or both (comma-separated)")
    dist.add_argument("--seeds", type=int, default=3, metavar="N", help="Gaussian draws with seeds 0 … N−1 (default 3)")
    dist.add_argument("--samples", type=int, default=32, metavar="N", help="q, k pairs per seed (default 32)")
    dist.add_argument("--head", type=int, default=0, help="the head analysed (ALiBi slopes differ by head)")
    dist.add_argument("--out", default="results/analysis/distance", help="output directory")
    dist.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    dist.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="pe.FIELD=VALUE, model.*, train.train_len; "
                      "with --preset: the bench's overrides (methods.NAME.FIELD=...)")
    dist.set_defaults(func=_analyze_distance)
    att = asub.add_parser("attention", parents=[common],
                          help="a trained model's attention on real text: U-shape index per layer and head, "
                          "far-token mass against length",
                          description="Attention weights of every layer and head on test-split windows: the U-shape "
                          "index (per-key density of the first --first keys and the nearest --near against the "
                          "middle: log(min(first, near) / middle), > 0 for a U), the last query's weight against key "
                          "position, and with --far-lengths the far-token mass of the last queries (weight on keys "
                          "more than --beyond back) at each length. pe.FIELD=VALUE switches a checkpoint's encoding "
                          "at evaluation time on the same weights (e.g. pe.logit_scale=log_length). Records in "
                          "--out/records.jsonl (resumable); u_index.png, attention_by_key.png, far_mass.png.")
    att.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT|pe.FIELD=VALUE",
                     help="checkpoints of hopekit train or bench, and encoding overrides")
    att.add_argument("--hf", default=None, metavar="NAME", help="a pretrained transformers model instead (smollm2, "
                     "a directory, a .gguf or a hub id), loaded with eager attention")
    att.add_argument("--length", type=int, default=None, help="window length (default the training length)")
    att.add_argument("--windows", type=int, default=64, help="test windows (default 64)")
    att.add_argument("--first", type=int, default=4, help="the first keys' group (default 4)")
    att.add_argument("--near", type=int, default=None, help="the nearest keys' group (default length/8)")
    att.add_argument("--far-lengths", default=None, metavar="L1,L2", help="lengths for the far-token mass")
    att.add_argument("--beyond", type=int, default=None, help="far means more than this many tokens back "
                     "(default the training length)")
    att.add_argument("--out", default="results/analysis/attention", help="output directory")
    att.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    att.set_defaults(func=_analyze_attention)
    pairs = asub.add_parser("pairs", parents=[common], help="a rotary model's logits split pair by pair",
                            description="Each layer's attention logits split into one term per rotary pair on "
                            "test windows: per layer, head and pair the mean |term|, its share of the logit and the "
                            "U-score of its mean term against distance, pairs grouped by period (<= L, in (L, 2L]: "
                            "hope_highfreq's activated components, > 2L). Records in --out/records.jsonl and "
                            "curves.jsonl (resumable); pairs_delta.png.")
    pairs.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="checkpoints of rotary models")
    pairs.add_argument("--hf", default=None, metavar="NAME", help="a pretrained transformers Llama-family model instead")
    pairs.add_argument("--length", type=int, default=None, help="window length (default the training length)")
    pairs.add_argument("--windows", type=int, default=64, help="test windows (default 64)")
    pairs.add_argument("--out", default="results/analysis/pairs", help="output directory")
    pairs.add_argument("-q", "--quiet", action="store_true", help="no log lines")
    pairs.set_defaults(func=_analyze_pairs)
    sw = asub.add_parser("sweep", parents=[common], help="the report of a bench run with a grid (parameter sweep)",
                         description="sweep.md and one figure per grid axis (perplexity against the parameter, mean ± "
                         "sd over seeds at each multiple) from a bench run directory's records.jsonl and bench.json. "
                         "Run the sweep itself with `hopekit bench --preset hyperbolic_scale` or any preset whose "
                         "methods carry a grid.")
    sw.add_argument("run_dir", help="a bench run directory")
    sw.set_defaults(func=_analyze_sweep)

    methods = sub.add_parser("methods", parents=[common],
                             help="list every positional encoding: capability, parameters, source",
                             description="Every registered method with what it hooks into (embed, rotate, bias, "
                             "scores, tokens), its parameters with their defaults (set them as pe.<name>=value), "
                             "and its source.")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.set_defaults(func=_methods)

    presets = sub.add_parser("presets", parents=[common], help="list the packaged presets",
                             description="Experiment presets (hopekit train --config NAME) and bench presets "
                             "(hopekit bench --preset NAME) shipped with hopekit.")
    presets.add_argument("--json", action="store_true", help="machine-readable output")
    presets.set_defaults(func=_presets)

    bench = sub.add_parser("bench", parents=[common, running],
                           help="the main job: train each method, perplexity at 1x-16x, report",
                           description="Train small decoders with each method and several seeds (same data "
                           "and budget), evaluate perplexity at multiples of the training length, add eval-time "
                           "extensions of the rope model, write records.jsonl, report.md (mean ± sd and 95% "
                           "intervals over seeds) and plots. Resumable: re-run the same command to continue.")
    bench.add_argument("--preset", default="default", help="smoke | default | code | gpu | tasks | hyperbolic_scale | path to a bench YAML "
                       "(see `hopekit presets`)")
    bench.add_argument("--run-dir", default=None, help="output directory (default: results/<preset name>)")
    bench.add_argument("--methods", default=None, help="comma-separated subset of the preset's methods")
    bench.add_argument("--seeds", type=int, default=None, metavar="N",
                       help="train every method with N seeds: train.seed, train.seed + 1, ... (default: the preset's)")
    bench.add_argument("--suite", default=None, choices=("ppl", "tasks", "all"),
                       help="what to measure: perplexity (ppl), the long-context tasks of eval.tasks (tasks), or both "
                       "(default: the preset's suite, else ppl)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                       help="dotted overrides, e.g. train.steps=100 eval.multiples=[1,2]")
    bench.set_defaults(func=_bench)

    tr = sub.add_parser("train", parents=[common, running], help="train one model (resumable; torchrun for DDP/FSDP)",
                        description="Train a decoder from a preset or YAML config with dotted overrides, e.g. "
                        "`hopekit train --config tiny pe.kind=alibi train.steps=200`, or fine-tune a pretrained "
                        "model with another encoding: `hopekit train --hf smollm2 --pe hope_highfreq`, or continue a "
                        "checkpoint at a longer window with another encoding: `hopekit train --init-from CKPT --pe-file "
                        "longrope.json train.train_len=1024 --out DIR` (weights only; a new optimiser from step 0; the "
                        "encoding's train_len stays the source's original window). Under torchrun "
                        "(`torchrun --nproc_per_node 2 -m hopekit train ...`) it runs DDP, or FSDP with train.fsdp=true.")
    tr.add_argument("--config", default=None, help="preset name (default: tiny, finetune with --hf, the source's "
                    "own config with --init-from; see `hopekit presets`) or path to a YAML file")
    tr.add_argument("--hf", default=None, metavar="NAME", help="fine-tune a pretrained model: smollm2, a model "
                    "directory or a hub id (the override hf=NAME)")
    tr.add_argument("--pe", default=None, metavar="KIND", help="the positional encoding (sets pe.kind; its fields "
                    "as pe.FIELD=VALUE; with --hf or --init-from, unset keeps the model's own)")
    tr.add_argument("--pe-file", default=None, metavar="FILE", help="the pe block from a JSON or YAML file, "
                    '{"kind": ..., ...} (the override pe=... for long factor lists); pe.FIELD=VALUE applies on top')
    tr.add_argument("--init-from", default=None, metavar="CKPT", help="start from the weights of this checkpoint of "
                    "hopekit train or hopekit bench (its shape and tokenizer; a new optimiser from step 0; a method's "
                    "unset train_len is its original training length; its config is the base unless --config)")
    tr.add_argument("--out", default=None, help="checkpoint directory (default: checkpoints/<name>-<pe kind>)")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    tr.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="dotted overrides, e.g. train.steps=100 pe.kind=alibi (methods: `hopekit methods`)")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", parents=[common, running],
                        help="perplexity of a checkpoint (or a pretrained model, --hf) at multiples of its training length",
                        description="Evaluate a checkpoint at eval.multiples × train_len under eval.protocol; "
                        "for rope models also the eval-time extensions (linear, ntk, dynamic_ntk, yarn, "
                        "longrope with --longrope factors) without fine-tuning. Appends records. With --hf NAME: a "
                        "pretrained transformers model (its own encoding, or --pe KIND pe.field=value patched in) "
                        "at --lengths, e.g. `hopekit eval --hf smollm2 --pe yarn pe.factor=2 --lengths 8192,16384`.")
    ev.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint (or --hf NAME)")
    ev.add_argument("--hf", default=None, metavar="NAME", help="a pretrained transformers model instead: smollm2, "
                    "a model directory, a .gguf file or a hub id; at --lengths, records in results/hf-NAME/")
    ev.add_argument("--pe", default=None, metavar="KIND", help="with --hf: patch this encoding in (pe.field=value "
                    "overrides; base and train_len default to the model's); default: the model's own")
    ev.add_argument("--pe-file", default=None, metavar="FILE", help="with --hf: the encoding from a JSON or YAML "
                    "pe block (e.g. a LongRoPE search's longrope.json)")
    ev.add_argument("--text", default=None, metavar="FILE", help="with --hf: score this .txt/.jsonl file (or "
                    "directory) instead of the embedded corpus' test split")
    ev.add_argument("--bos", action="store_true", help="with --hf: start every document with the BOS token")
    ev.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                    help="with --hf: the model's dtype (default float32)")
    ev.add_argument("--lengths", default=None, help="with --hf: comma-separated evaluation lengths "
                    "(default: 1/4, 1/2, 1 and 2 × the model's window)")
    ev.add_argument("--records", default=None, help="records file (default: next to the checkpoint; "
                    "results/hf-NAME/records.jsonl with --hf)")
    ev.add_argument("--method", default=None, help="method name in records (default: the pe kind)")
    ev.add_argument("--extensions", default=None,
                    help="comma-separated eval-time extensions, '' for none (default: eval.extensions)")
    ev.add_argument("--longrope", default=None, help="JSON file with searched short_rescale/long_rescale factors and "
                    "their factor (the target ratio L'/L they were searched for; sets the attention factor)")
    ev.add_argument("--task", default=None, metavar="NAMES",
                    help="long-context tasks instead of perplexity: comma-separated from passkey, copy, needle, kv "
                    "(or all), at every eval.multiples x train_len (with --hf: --lengths) and eval.task_depths "
                    "(eval.task_instances each, "
                    "scored by eval.task_scoring: likelihood or generation; format data.task_style)")
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="eval.* overrides, e.g. eval.protocol=sliding eval.multiples=[1,4] (and data.task_style)")
    ev.set_defaults(func=_eval)

    ex = sub.add_parser("export", parents=[common], help="write a Hugging Face model directory (checkpoint or --hf model)",
                        description="Write a model directory (safetensors, config.json, tokenizer, HOPEKIT.md): "
                        "`hopekit export CKPT OUT` turns a checkpoint of `hopekit train` into a LlamaForCausalLM; "
                        "`hopekit export --hf MODEL --pe KIND [pe.KEY=VALUE ...] OUT` a transformers model with an "
                        "encoding. Rope-family encodings become standard rope fields that vanilla transformers runs "
                        "exactly; others need --hopekit-pe.")
    ex.add_argument("args", nargs="+", metavar="ARG", help="CKPT OUT; with --hf: [pe.KEY=VALUE ...] OUT")
    ex.add_argument("--hf", default=None, metavar="MODEL",
                    help="a transformers model: smollm2, a model directory, a .gguf file or a hub id")
    ex.add_argument("--pe", default=None, metavar="KIND", help="with --hf: the encoding to export (default: the model's own)")
    ex.add_argument("--hopekit-pe", action="store_true",
                    help="allow encodings vanilla transformers cannot run (hope_*, alibi, nope): written as a hopekit_pe "
                    "block that only hopekit's load_pretrained applies")
    ex.add_argument("--no-tokenizer", action="store_true", help="do not save a tokenizer")
    ex.set_defaults(func=_export)

    lr = sub.add_parser("longrope", parents=[common], help="search LongRoPE rescale factors for a checkpoint or --hf model",
                        description="LongRoPE's evolutionary search (Ding et al. 2024) of per-pair rescale factors for a "
                        "target length L' = factor x L, scored by perplexity at exactly L' on validation documents "
                        "(one truncated window each, BOS first). A rope model gets a long set; a longrope model (or "
                        "--base FILE) a further multiplier (progressive extension), or with --short its short set. "
                        "Resumable (--resume); under torchrun the candidates are spread over the ranks. Writes "
                        "longrope.json, factors.csv, rope_parameters.json, records.jsonl, best_per_iteration.csv and "
                        "search_curve.png to --out.")
    lr.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint of hopekit train / bench (or --hf NAME)")
    lr.add_argument("--hf", default=None, metavar="NAME", help="a transformers model instead: smollm2, a directory, "
                    "a .gguf file or a hub id")
    lr.add_argument("--factor", type=float, default=None, help="the target extension L'/L (e.g. 8)")
    lr.add_argument("--out", default=None, help="output directory (default: results/longrope/<name>-<factor>x)")
    lr.add_argument("--resume", action="store_true", help="continue the search in --out")
    lr.add_argument("--short", action="store_true", help="search the short set (at --eval-len, default L) of "
                    "the model's or --base's LongRoPE configuration")
    lr.add_argument("--base", default=None, metavar="FILE", help="a longrope configuration (JSON/YAML, e.g. a "
                    "search's longrope.json) to extend further or to give a short set")
    lr.add_argument("--eval-len", type=int, default=None, help="fitness length (default: L x factor; L for --short)")
    lr.add_argument("--lambda-max", default=None, help="upper bound of the factors: paper (1.25 s), code (1 + s) "
                    "or a number (default: paper; s for --short)")
    lr.add_argument("--start-tokens", default="0", help="n̂ choices, comma-separated, or 'paper' for the paper's "
                    "0,1,2,4,...,256 (default: 0, not searched)")
    lr.add_argument("--seeds", default=None, help="initial candidates, comma-separated: pi, ntk, yarn, yarn_linear "
                    "(and rope, long for --short) (default: all)")
    lr.add_argument("--population", type=int, default=64, help="population size P (default 64)")
    lr.add_argument("--parents", type=int, default=None, help="top-k parents kept each iteration (default P/2: 32)")
    lr.add_argument("--mutations", type=int, default=None, help="mutants per iteration (default half the rest: 16)")
    lr.add_argument("--crossovers", type=int, default=None, help="crossovers per iteration (default the rest: 16)")
    lr.add_argument("--iterations", type=int, default=40, help="iterations (default 40)")
    lr.add_argument("--patience", type=int, default=None, help="stop when the best gains < 0.001 over this many iterations")
    lr.add_argument("--seed", type=int, default=0, help="random seed of the search (default 0)")
    lr.add_argument("--fitness", default="ppl", choices=("ppl", "needle"), help="perplexity of the whole window, or "
                    "LongRoPE2's needle perplexity on answer tokens only (default: ppl)")
    lr.add_argument("--documents", type=int, default=5, help="fitness documents: the first N long enough (default 5)")
    lr.add_argument("--split", default="validation", help="split the documents come from (default: validation)")
    lr.add_argument("--bos", default="auto", help="auto (the tokenizer's BOS if any), none, or a token id")
    lr.add_argument("--text", default=None, metavar="FILE", help="with --hf: documents from this .txt/.jsonl file or directory")
    lr.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"), help="with --hf: the model's dtype")
    lr.add_argument("--device", default="cpu", help="where candidates are scored (default cpu; e.g. cuda)")
    lr.add_argument("-q", "--quiet", action="store_true", help="no log lines and no progress bars")
    lr.add_argument("--no-progress", action="store_true", help="no progress bars")
    lr.set_defaults(func=_longrope)

    sc = sub.add_parser("scrolls", parents=[common, running], help="fine-tune on a SCROLLS task, then generate and score",
                        description="Fine-tune the reference decoder (from scratch, or init_from=CKPT) or a pretrained "
                        "model (hf=NAME data.tokenizer=model) on a SCROLLS-format task (input + separator + output, loss "
                        "on the output), then generate greedily on the eval split and score with the task's SCROLLS "
                        "metric (ROUGE, F1 or exact match); records and predictions in --out. Data: the hub's tau/scrolls "
                        "(scrolls.source=hub), the local sample (local), or auto. Resumable with --resume, e.g. "
                        "`hopekit scrolls scrolls.task=qasper train.steps=100 --out runs/qasper`.")
    sc.add_argument("--config", default=None, help="scrolls preset (default: scrolls) or a YAML file with a scrolls: "
                    "section (e.g. a run's scrolls.yaml)")
    sc.add_argument("--out", required=True, help="run directory: checkpoint, records.jsonl, predictions")
    sc.add_argument("--resume", action="store_true", help="continue the training run in --out")
    sc.add_argument("--no-progress", action="store_true", help="no progress bars")
    sc.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                    help="dotted overrides, e.g. scrolls.task=qasper scrolls.max_output=32 train.steps=100 pe.kind=alibi")
    sc.set_defaults(func=_scrolls)

    report = sub.add_parser("report", parents=[common], help="regenerate report.md and ppl_vs_length.png from records")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``hopekit`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse has printed what to say
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if not _is_user_error(e):
            raise  # a bug: keep the traceback
        if args.debug:
            traceback.print_exc()
        first, *rest = _message(e).splitlines()
        print(f"{PROG}: error: {first}", *rest, sep="\n", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
