"""``hopekit <command>`` — a thin command-line layer over the library."""

from __future__ import annotations

import argparse
import sys

import torch


def _demo(args: argparse.Namespace) -> int:
    from hopekit import pe
    from hopekit.analysis import DEMO_CONFIGS, score_vs_distance

    windows = [(1, 16), (16, 128), (128, 512), (512, 2048), (2048, 8192), (8192, 32768)]
    distances = torch.arange(0, windows[-1][1])
    header = f"{'method':<24}" + "".join(f"{f'Δ∈[{a},{b})':>16}" for a, b in windows)
    print("Mean pre-softmax score of the aligned probe (q̂ = k̂ = 1 per pair), head_dim 64, head 0,")
    print("training length 512 where a method needs one. Windows are query–key distances.\n")
    print(header)
    print("-" * len(header))
    for name in pe.REGISTRY:
        enc = pe.build(name, head_dim=64, num_heads=8, **DEMO_CONFIGS[name])
        if name == "learned":
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

    report = sub.add_parser("report", help="regenerate report.md and ppl_vs_length.png from records")
    report.add_argument("run_dir")
    report.set_defaults(func=_report)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
