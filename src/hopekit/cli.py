"""``hopekit <command>`` — a thin command-line layer over the library."""

from __future__ import annotations

import argparse
import sys

import torch


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


def _bench(args: argparse.Namespace) -> int:
    from hopekit.bench import run_bench

    methods = args.methods.split(",") if args.methods else None
    run_dir = run_bench(args.preset, run_dir=args.run_dir, overrides=args.overrides, methods=methods,
                        progress=not args.no_progress)
    print((run_dir / "report.md").read_text())
    return 0


def _train(args: argparse.Namespace) -> int:
    from hopekit.config import load_config
    from hopekit.train import train

    config = load_config(args.config, args.overrides)
    out = args.out or f"checkpoints/{config.name}-{config.pe.kind}"
    result = train(config, out, resume=args.resume, progress=not args.no_progress)
    print(f"trained {result.step} steps; final loss {result.losses[-1]:.4f}; checkpoint {result.checkpoint}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from hopekit.config import ExperimentConfig, apply_overrides
    from hopekit.eval.lengths import evaluate_lengths
    from hopekit.eval.records import read_records
    from hopekit.eval.report import markdown_table
    from hopekit.train import load_checkpoint

    model, config, _ = load_checkpoint(args.checkpoint)
    if args.overrides:  # only the eval section may change at evaluation time
        bad = [o for o in args.overrides if not o.startswith("eval.")]
        if bad:
            raise SystemExit(f"hopekit eval: only eval.* overrides are allowed, got {bad}")
        config = ExperimentConfig.from_dict(apply_overrides(config.resolved(), args.overrides))
    longrope = None
    if args.longrope:
        longrope = json.loads(open(args.longrope).read())
    extensions = tuple(args.extensions.split(",")) if args.extensions is not None else None
    records = args.records or str(__import__("pathlib").Path(args.checkpoint).parent / "records.jsonl")
    method = args.method or config.pe.kind
    evaluate_lengths(model, dataclasses.replace(config), records, method=method, extensions=extensions,
                     longrope=longrope)
    print(markdown_table(read_records(records), baseline=method, protocol=config.eval.protocol))
    return 0


def _report(args: argparse.Namespace) -> int:
    from hopekit.eval.report import write_report

    report, plot = write_report(args.run_dir)
    print(report.read_text())
    print(f"wrote {report} and {plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hopekit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print every method's score-vs-distance numbers")
    demo.set_defaults(func=_demo)

    bench = sub.add_parser("bench", help="the main job: train each method, perplexity at 1x-16x, report",
                           description="Train small decoders with each method (same seed, data, budget), "
                           "evaluate perplexity at multiples of the training length, add eval-time "
                           "extensions of the rope model, write records.jsonl, report.md and "
                           "ppl_vs_length.png. Resumable: re-run the same command to continue.")
    bench.add_argument("--preset", default="default", help="smoke | default | gpu | path to a bench YAML")
    bench.add_argument("--run-dir", default=None, help="output directory (default: results/<preset name>)")
    bench.add_argument("--methods", default=None, help="comma-separated subset of the preset's methods")
    bench.add_argument("--no-progress", action="store_true", help="no progress bars")
    bench.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 eval.multiples=[1,2]")
    bench.set_defaults(func=_bench)

    tr = sub.add_parser("train", help="train one model (resumable; torchrun for DDP/FSDP)",
                        description="Train a decoder from a preset or YAML config with dotted overrides, e.g. "
                        "`hopekit train --config tiny pe.kind=alibi train.steps=200`. Under torchrun "
                        "(`torchrun --nproc_per_node 2 -m hopekit train ...`) it runs DDP, or FSDP with train.fsdp=true.")
    tr.add_argument("--config", default="tiny", help="preset name (tiny) or path to a YAML file")
    tr.add_argument("--out", default=None, help="checkpoint directory (default: checkpoints/<name>-<pe kind>)")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 pe.kind=yarn")
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="perplexity of a checkpoint at multiples of its training length",
                        description="Evaluate a checkpoint at eval.multiples × train_len under eval.protocol; "
                        "for rope models also the eval-time extensions (linear, ntk, dynamic_ntk, yarn, "
                        "longrope with --longrope factors) without fine-tuning. Appends records.")
    ev.add_argument("checkpoint")
    ev.add_argument("--records", default=None, help="records file (default: next to the checkpoint)")
    ev.add_argument("--method", default=None, help="method name in records (default: the pe kind)")
    ev.add_argument("--extensions", default=None, help="comma-separated eval-time extensions ('' for none)")
    ev.add_argument("--longrope", default=None, help="JSON file with short_rescale/long_rescale factors")
    ev.add_argument("overrides", nargs="*", help="eval.* overrides, e.g. eval.protocol=sliding eval.multiples=[1,4]")
    ev.set_defaults(func=_eval)

    report = sub.add_parser("report", help="regenerate report.md and ppl_vs_length.png from records")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
