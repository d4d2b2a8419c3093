"""Rotary apply (q and k): hopekit's fast path and reference against the copy floor and the peers installed.

Every row rotates the same q and k ``(B, H, T, D)`` with cos/sin computed once beforehand, as a model
does once per forward. ``--layout bhtd``: q and k are contiguous ``(B, H, T, D)`` tensors;
``--layout bthd``: they are the decoder's ``wq(x).view(B, T, H, D).transpose(1, 2)``, a strided view of a
contiguous ``(B, T, H, D)`` buffer. The **copy** row reads and writes the same bytes (``q.clone()``, in q's
own layout; with ``--backward`` also a copy of the gradient, as a plain ``clone`` passes its gradient on without
touching it): no rotary apply can beat it by much, so the ratio against it is the figure of merit.

Rows: ``hopekit fast path`` (:func:`hopekit.kernels.rotary.apply_rotary`: the C kernel on CPU, Triton on
CUDA; its first call, which may build the C kernel or compile the Triton one, is timed separately and
printed above the table), ``hopekit
reference`` (:func:`hopekit.pe.rotary.apply_rotary`, eager), ``torch.compile`` of the same half-split
arithmetic (static shapes: what a plain compile reaches), and the peers that are importable:

* transformers' eager ``apply_rotary_pos_emb`` (HF layout: cos/sin over the full head dim);
* rotary-embedding-torch's ``apply_rotary_emb``: it rotates *interleaved* pairs (x_2i, x_2i+1) and takes
  the angles, computing cos/sin inside every call; it is given the interleaved permutation of q/k and the
  interleaved angles, so it computes the same rotation in its own layout (its output is permuted back for
  the check only, outside the timing);
* CUDA only: Liger-Kernel's Triton ``liger_rotary_pos_emb`` and flash-attn's ``apply_rotary_emb`` (both
  given cos/sin in the activation dtype, as they take them).

Each row's output is first checked against hopekit's reference (``max |Δ|`` column; bfloat16/float16 rows
differ by their rounding: the fast path and several peers multiply in float32, the reference in the
activation dtype). Runs are interleaved (one of each, then again) so that machine noise hits every row
alike; the table gives the median milliseconds and the ratio to the copy.

    python benchmarks/rotary.py                              # B1 H16 T4096 D64 float32 bhtd, forward
    python benchmarks/rotary.py --backward                   # forward + backward (grads of q and k)
    python benchmarks/rotary.py --dtype bfloat16 --layout bthd --repeats 30
    python benchmarks/rotary.py --method all                 # fast path vs reference, every rotary method
    python benchmarks/rotary.py --positions randomized --rotary-fraction 0.5   # batched cos/sin, partial
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from typing import Callable

import torch

Row = tuple[Callable[[], tuple[torch.Tensor, torch.Tensor]], Callable[[torch.Tensor], torch.Tensor]]
_same = lambda t: t  # noqa: E731


class _Copy(torch.autograd.Function):
    """The floor: a copy of x forward (in x's layout) and, with --backward, a copy of the gradient backward,
    the bytes a rotary apply reads and writes each way (a plain ``clone`` passes its gradient on for free)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.clone()


def rotary_methods() -> list[str]:
    from hopekit import pe

    return [name for name, m in pe.REGISTRY.items() if m.schedule is not None]  # the RoPE family


def features(method: str, head_dim: int, batch: int, seq: int, positions: str, rotary_fraction: float):
    """cos/sin of ``method``'s example configuration: ``(T, r/2)``, or ``(B, 1, T, r/2)`` for randomized."""
    from hopekit import pe
    from hopekit.pe.randomized import RandomizedPositions

    config = {k: v for k, v in pe.example_config(method, head_dim).items() if k != "kind"}
    if rotary_fraction != 1.0:
        config["rotary_fraction"] = rotary_fraction
    enc = pe.build(method, head_dim=head_dim, **config)
    if positions == "randomized":
        pos = RandomizedPositions(max_position=4 * seq).sample(batch, seq, generator=torch.Generator().manual_seed(0))
    else:
        pos = torch.arange(seq)
    return enc.features(pos, seq_len=4 * seq if positions == "randomized" else None)


def peer_rows(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              leaves: list[torch.Tensor]) -> dict[str, Row]:
    """The peers that are importable and take these inputs (q, k: ``(B, H, T, D)``, any strides); a peer
    that needs its own input layout gets its own leaf tensors (appended to ``leaves``)."""
    from hopekit.pe.rotary import half_to_interleaved, interleaved_to_half

    out: dict[str, Row] = {}
    D, half = q.shape[-1], cos.shape[-1]
    full_cos = torch.cat([cos, cos], dim=-1).to(q.dtype)           # HF layout: (…, T, r)
    full_sin = torch.cat([sin, sin], dim=-1).to(q.dtype)
    hf_cos = full_cos[None] if full_cos.dim() == 2 else full_cos[:, 0]   # (1 | B, T, r)
    hf_sin = full_sin[None] if full_sin.dim() == 2 else full_sin[:, 0]
    if 2 * half == D:
        try:
            from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

            out["transformers apply_rotary_pos_emb"] = (
                lambda: apply_rotary_pos_emb(q, k, hf_cos, hf_sin, unsqueeze_dim=1), _same)
        except ImportError:
            pass
    try:
        from rotary_embedding_torch import apply_rotary_emb

        angle = torch.atan2(sin, cos)                                   # exact for |scale| = 1 methods
        scale = float((cos.square() + sin.square()).sqrt().mean())      # yarn / longrope attn_scale
        freqs = angle.repeat_interleave(2, dim=-1)                      # interleaved (…, T, r)
        r = 2 * half
        qi, ki = (half_to_interleaved(t, r).detach().requires_grad_(t.requires_grad) for t in (q, k))
        leaves += [qi, ki]
        out["rotary-embedding-torch (interleaved)"] = (
            lambda: (apply_rotary_emb(freqs, qi, scale=scale), apply_rotary_emb(freqs, ki, scale=scale)),
            lambda t: interleaved_to_half(t, r))
    except ImportError:
        pass
    if q.device.type == "cuda":
        try:
            from liger_kernel.transformers.rope import liger_rotary_pos_emb

            if 2 * half == D:
                out["Liger-Kernel liger_rotary_pos_emb"] = (lambda: liger_rotary_pos_emb(q, k, hf_cos, hf_sin), _same)
        except ImportError:
            pass
        try:
            from flash_attn.layers.rotary import apply_rotary_emb as flash_rotary

            if cos.dim() == 2:  # (B, T, H, D) views; cos/sin (T, r/2) in x's dtype, as flash-attn requires
                fc, fs = cos.to(q.dtype), sin.to(q.dtype)
                out["flash-attn apply_rotary_emb"] = (
                    lambda: (flash_rotary(q.transpose(1, 2), fc, fs).transpose(1, 2),
                             flash_rotary(k.transpose(1, 2), fc, fs).transpose(1, 2)), _same)
        except ImportError:
            pass
    return out


def rows(q: torch.Tensor, k: torch.Tensor, methods: list[str], args,
         leaves: list[torch.Tensor]) -> tuple[dict[str, Row], dict[str, float]]:
    """Every row of the table, and the first-call seconds of each fast-path row (its compilation)."""
    from hopekit.kernels.rotary import apply_rotary as fast
    from hopekit.pe.rotary import apply_rotary as reference

    out: dict[str, Row] = {"copy (floor)": (lambda: (_Copy.apply(q), _Copy.apply(k)), _same)}
    first_call: dict[str, float] = {}
    for method in methods:
        feats = features(method, q.shape[-1], q.shape[0], q.shape[2], args.positions, args.rotary_fraction)
        cos, sin = feats.cos.to(q.device), feats.sin.to(q.device)
        tag = f" ({method})" if len(methods) > 1 else ""
        t0 = time.perf_counter()
        with torch.no_grad():
            fast(q, cos, sin)
        _sync(q)
        first_call[f"hopekit fast path{tag}"] = time.perf_counter() - t0
        out[f"hopekit fast path{tag}"] = (lambda c=cos, s=sin: (fast(q, c, s), fast(k, c, s)), _same)
        out[f"hopekit reference{tag}"] = (lambda c=cos, s=sin: (reference(q, c, s), reference(k, c, s)), _same)
    if len(methods) == 1:
        def half_split(x, c, s):
            h = c.shape[-1]
            x1, x2 = x[..., :h], x[..., h:2 * h]
            return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s, x[..., 2 * h:]], dim=-1)

        c_dt, s_dt = cos.to(q.dtype), sin.to(q.dtype)
        compiled = torch.compile(half_split, dynamic=False)
        out["torch.compile (same arithmetic)"] = (lambda: (compiled(q, c_dt, s_dt), compiled(k, c_dt, s_dt)), _same)
        out.update(peer_rows(q, k, cos, sin, leaves))
    return out, first_call


def _sync(x: torch.Tensor) -> None:
    if x.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--layout", default="bhtd", choices=("bhtd", "bthd"),
                   help="bthd: q/k are transpose(1, 2) views of (B, T, H, D) buffers, as in the decoder")
    p.add_argument("--method", default="rope", help="a rotary method of the registry, or 'all'")
    p.add_argument("--positions", default="arange", choices=("arange", "randomized"),
                   help="randomized: a sorted random subset per sequence, batched (B, 1, T, r/2) cos/sin")
    p.add_argument("--rotary-fraction", type=float, default=1.0, help="< 1: partial rotary")
    p.add_argument("--device", default="cpu")
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
    methods = rotary_methods()
    if args.method != "all" and args.method not in methods:
        p.error(f"--method {args.method}: expected 'all' or one of {', '.join(methods)}")
    methods = methods if args.method == "all" else [args.method]

    torch.manual_seed(0)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    B, H, T, D = args.batch, args.heads, args.seq, args.head_dim
    shape = (B, H, T, D) if args.layout == "bhtd" else (B, T, H, D)
    q_leaf = torch.randn(shape, dtype=dtype, device=device, requires_grad=args.backward)
    k_leaf = torch.randn(shape, dtype=dtype, device=device, requires_grad=args.backward)
    q, k = (q_leaf, k_leaf) if args.layout == "bhtd" else (q_leaf.transpose(1, 2), k_leaf.transpose(1, 2))
    leaves = [q_leaf, k_leaf]
    fns, first_call = rows(q, k, methods, args, leaves)
    # output gradients in the layout SDPA's backward gives them (that of a (B, T, H, D) buffer) for bthd
    grads = [torch.randn(shape, dtype=dtype, device=device) for _ in range(2)]
    grads = grads if args.layout == "bhtd" else [g.transpose(1, 2) for g in grads]

    def run(fn) -> float:
        _sync(q)
        t0 = time.perf_counter()
        a, b = fn()
        if args.backward:
            torch.autograd.backward([a, b], grads)
            for leaf in leaves:
                leaf.grad = None
        _sync(q)
        return (time.perf_counter() - t0) * 1e3

    from hopekit.pe.rotary import apply_rotary as reference

    err: dict[str, float] = {}
    with torch.no_grad():                                                # every row computes the same rotation
        for name, (fn, back) in fns.items():
            if name.startswith("copy"):
                continue
            method = name[name.rfind("(") + 1:-1] if len(methods) > 1 else methods[0]
            feats = features(method, D, B, T, args.positions, args.rotary_fraction)
            c, s = feats.cos.to(device), feats.sin.to(device)
            refs = (reference(q, c, s), reference(k, c, s))
            err[name] = max(float((back(a).float() - r.float()).abs().max()) for a, r in zip(fn(), refs))
    with torch.set_grad_enabled(args.backward):
        for _, (fn, _) in fns.items():
            for _ in range(args.warmup):
                run(fn)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.repeats):                                   # interleaved: noise hits every row
            for name, (fn, _) in fns.items():
                times[name].append(run(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    floor = med["copy (floor)"]
    what = "forward + backward" if args.backward else "forward"
    extra = "" if args.positions == "arange" else f", {args.positions} positions"
    extra += "" if args.rotary_fraction == 1.0 else f", rotary_fraction {args.rotary_fraction}"
    print(f"rotary apply of q and k, {what}: B{B} H{H} T{T} D{D} {args.dtype} {args.layout}{extra}; median of "
          f"{args.repeats} interleaved runs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.cuda.get_device_name() if device.type == 'cuda' else platform.processor() or platform.machine()}")
    print("first call of the fast path (builds or loads the kernel): "
          + ", ".join(f"{name.removeprefix('hopekit fast path').strip() or args.method} {s:.1f} s"
                      for name, s in first_call.items()))
    print("\n| implementation | median ms | × copy | max |Δ| vs hopekit reference |\n|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m:.3f} | {m / floor:.2f} | {err[name]:.1e} |" if name in err else
              f"| {name} | {m:.3f} | {m / floor:.2f} | — |")
    if args.json:
        print(json.dumps({"config": vars(args), "median_ms": med, "first_call_s": first_call}))


if __name__ == "__main__":
    main()
