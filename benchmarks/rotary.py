"""Rotary apply (q and k): hopekit against the copy floor and the peers installed, in one run.

Every row rotates the same q and k ``(B, H, T, D)`` (``--layout bthd``: ``(B, T, H, D)``) with cos/sin
computed once beforehand, as a model does once per forward. The **copy** row reads and writes the same
bytes (``q.clone()``, ``k.clone()``): no rotary apply can beat it by much on a memory-bound CPU, so the
ratio against it is the figure of merit. Peers, when importable: transformers' eager
``apply_rotary_pos_emb`` (HF layout: cos/sin over the full head dim). ``compiled`` is a plain ``torch.compile`` of the same half-split arithmetic (what a
fused kernel can reach without hand-writing one). Each row's output is first checked against hopekit's
(``max |Δ|`` column; the copy row is the input itself). Runs are interleaved (one of each, then again) so that
machine noise hits every row alike; the table gives the median milliseconds and the ratio to the copy.

    python benchmarks/rotary.py                              # B1 H16 T4096 D64 float32, forward
    python benchmarks/rotary.py --backward                   # forward + backward (grad of q and k)
    python benchmarks/rotary.py --dtype bfloat16 --layout bthd --repeats 30
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch


def rows(q: torch.Tensor, k: torch.Tensor, layout: str) -> dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    from hopekit import pe
    from hopekit.pe.rotary import apply_rotary

    T, D = (q.shape[2], q.shape[3]) if layout == "bhtd" else (q.shape[1], q.shape[3])
    enc = pe.build("rope", head_dim=D, base=10000.0)
    feats = enc.features(torch.arange(T))                               # (T, D/2), float32
    cos, sin = feats.cos, feats.sin
    if layout == "bthd":                                                # broadcast over heads: (T, 1, D/2)
        cos, sin = cos[:, None, :], sin[:, None, :]
    out: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor]]] = {
        "copy (floor)": lambda: (q.clone(), k.clone()),
        "hopekit apply_rotary": lambda: (apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)),
    }

    def half_split(x, c, s):
        h = c.shape[-1]
        x1, x2 = x[..., :h], x[..., h:]
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)

    c_dt, s_dt = cos.to(q.dtype), sin.to(q.dtype)
    compiled = torch.compile(half_split, dynamic=False)
    out["torch.compile (same arithmetic)"] = lambda: (compiled(q, c_dt, s_dt), compiled(k, c_dt, s_dt))
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        full_cos = torch.cat([cos, cos], dim=-1).to(q.dtype)            # HF layout: (…, T, D)
        full_sin = torch.cat([sin, sin], dim=-1).to(q.dtype)
        dim = 1 if layout == "bhtd" else 2                              # HF's unsqueeze_dim: the head axis
        hc, hs = (full_cos[None], full_sin[None]) if layout == "bhtd" else (full_cos[None, :, 0], full_sin[None, :, 0])
        out["transformers apply_rotary_pos_emb"] = lambda: apply_rotary_pos_emb(q, k, hc, hs, unsqueeze_dim=dim)
    except ImportError:
        pass
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--layout", default="bhtd", choices=("bhtd", "bthd"))
    p.add_argument("--backward", action="store_true", help="time forward + backward (grads of q and k)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true", help="also print the medians as one JSON line")
    args = p.parse_args()
    for name in ("batch", "heads", "seq", "head_dim", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    if args.head_dim % 2:
        p.error(f"--head-dim {args.head_dim}: rotary pairs need an even head dim")

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    shape = ((args.batch, args.heads, args.seq, args.head_dim) if args.layout == "bhtd"
             else (args.batch, args.seq, args.heads, args.head_dim))
    q = torch.randn(shape, dtype=dtype, requires_grad=args.backward)
    k = torch.randn(shape, dtype=dtype, requires_grad=args.backward)
    fns = rows(q, k, args.layout)
    grads = [torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)]

    def run(fn) -> float:
        t0 = time.perf_counter()
        a, b = fn()
        if args.backward:
            torch.autograd.backward([a, b], grads)
            q.grad = k.grad = None
        return (time.perf_counter() - t0) * 1e3

    with torch.no_grad():                                                # every row computes the same rotation
        ref = fns["hopekit apply_rotary"]()
        err = {name: max(float((a.float() - r.float()).abs().max()) for a, r in zip(fn(), ref))
               for name, fn in fns.items() if not name.startswith("copy")}
    with torch.set_grad_enabled(args.backward):
        for fn in fns.values():
            for _ in range(args.warmup):
                run(fn)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.repeats):                                   # interleaved: noise hits every row
            for name, fn in fns.items():
                times[name].append(run(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    floor = med["copy (floor)"]
    what = "forward + backward" if args.backward else "forward"
    print(f"rotary apply of q and k, {what}: B{args.batch} H{args.heads} T{args.seq} D{args.head_dim} {args.dtype} "
          f"{args.layout}; median of {args.repeats} interleaved runs; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print("\n| implementation | median ms | × copy | max |Δ| vs hopekit |\n|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m:.3f} | {m / floor:.2f} | {err[name]:.1e} |" if name in err else
              f"| {name} | {m:.3f} | {m / floor:.2f} | — |")
    if args.json:
        print(json.dumps({"config": vars(args), "median_ms": med}))


if __name__ == "__main__":
    main()
