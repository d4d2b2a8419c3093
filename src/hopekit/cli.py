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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hopekit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="print every method's score-vs-distance numbers")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
