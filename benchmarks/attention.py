"""Attention with a positional encoding, including the q, k, v and output projections, in one run.

Every row does what one attention layer of the reference decoder does: x ``(B, T, H·D)`` → q, k, v
(three H·D × H·D projections, viewed as ``(B, H, T, D)`` transposes exactly as ``Attention`` makes them)
→ causal attention with the row's encoding → the output projection. Rows:

* **rope + SDPA** (the baseline): ``hopekit.pe.rotary.apply_rotary`` on q and k, then
  ``F.scaled_dot_product_attention(is_causal=True)`` (CPU flash attention);
* **projections only**: the four matmuls, attention replaced by v (the floor every row pays);
* **hope_hyperbolic reference**: ``hopekit.functional.chunked_attention`` over ``HyperbolicEncoding.scores``;
* **hope_hyperbolic fast**: ``hopekit.kernels.hyperbolic.attend``;
* **alibi reference**: ``chunked_attention`` over ``ALiBi.bias``;
* **alibi fast**: ``hopekit.kernels.alibi.attend``, when that module is importable (else a note).

Before timing, every fast row's attention output is checked against its reference's (``max |Δ|``,
relative to max |v|; the run stops above 1e-4 in float32, 5e-2 in bfloat16), and every row's against
a float64 oracle of its own encoding (closed forms: rotation by float64 angles; Σ_c Q_c K_c e^{−r_c Δ}
with the exact rates; −slope·Δ) on 64 query rows spread over the sequence. Runs are interleaved (one
of each, then again) so that machine noise hits every row alike; the table gives medians and the ratio
to rope + SDPA. ``peak MB`` is the growth of the process's peak resident memory while the row runs
once in a fresh process (Linux; ``--no-memory`` skips it): one T×T float32 tensor per head is T²·4
bytes (64 MB per head at T = 4096).

    python benchmarks/attention.py                          # B1 H16 T4096 D64 float32, forward
    python benchmarks/attention.py --backward               # forward + backward (grads of x and weights)
    python benchmarks/attention.py --dtype bfloat16 --seq 2048 --repeats 5
    python benchmarks/attention.py --positions randomized --batch 2
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F

BASELINE = "rope + SDPA"


class Setup:
    """Inputs, weights and encodings of one configuration (seeded, so every process builds the same)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from hopekit import pe

        torch.manual_seed(0)
        B, T, H, D = args.batch, args.seq, args.heads, args.head_dim
        self.shape = (B, T, H, D)
        self.dtype = getattr(torch, args.dtype)
        width = H * D
        grad = args.backward
        self.x = torch.randn(B, T, width, dtype=self.dtype, requires_grad=grad)
        self.weights = [(torch.randn(width, width) / math.sqrt(width)).to(self.dtype).requires_grad_(grad)
                        for _ in range(4)]                                    # (out, in), as nn.Linear
        self.grad_out = torch.randn(B, T, width, dtype=self.dtype)
        if args.positions == "randomized":   # as train.positions="randomized": sorted subsets of [0, 16 T)
            gen = torch.Generator().manual_seed(1)
            self.pos = torch.stack([torch.randperm(16 * T, generator=gen)[:T].sort().values for _ in range(B)])
        else:
            self.pos = torch.arange(T)
        self.scale = 1.0 / math.sqrt(D)
        self.rope = pe.build("rope", head_dim=D, base=10000.0)
        feats = self.rope.features(self.pos)
        self.cos, self.sin = feats.cos, feats.sin
        self.hyper = pe.build("hope_hyperbolic", head_dim=D, num_heads=H)
        self.alibi = pe.build("alibi", head_dim=D, num_heads=H)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, H, D = self.shape
        wq, wk, wv, _ = self.weights
        return tuple(F.linear(x, w).view(B, T, H, D).transpose(1, 2) for w in (wq, wk, wv))  # (B, H, T, D)

    def layer(self, attn: Callable) -> Callable[[], torch.Tensor]:
        B, T, H, D = self.shape

        def run() -> torch.Tensor:
            y = attn(*self.project(self.x))                                      # (B, H, T, D)
            return F.linear(y.transpose(1, 2).reshape(B, T, H * D), self.weights[3])
        return run


def attentions(s: Setup) -> tuple[dict[str, Callable], dict[str, str], list[str]]:
    """The rows' attention functions (q, k, v) → (B, H, T, D), which fast row checks against which
    reference, and notes for rows left out."""
    from hopekit.kernels import hyperbolic
    from hopekit.functional import chunked_attention
    from hopekit.pe.rotary import apply_rotary

    pos, scale = s.pos, s.scale
    rows: dict[str, Callable] = {
        BASELINE: lambda q, k, v: F.scaled_dot_product_attention(
            apply_rotary(q, s.cos, s.sin), apply_rotary(k, s.cos, s.sin), v, is_causal=True),
        "projections only": lambda q, k, v: v,
        "hope_hyperbolic reference": lambda q, k, v: chunked_attention(
            s.hyper, q, k, v, pos, pos, past=0, scale=scale, chunk=256),
        "hope_hyperbolic fast": lambda q, k, v: hyperbolic.attend(s.hyper, q, k, v, pos, pos, scale=scale, past=0),
        "alibi reference": lambda q, k, v: chunked_attention(s.alibi, q, k, v, pos, pos, past=0, scale=scale,
                                                             chunk=256),
    }
    checks = {"hope_hyperbolic fast": "hope_hyperbolic reference"}
    notes = []
    try:
        from hopekit.kernels import alibi
    except ImportError as e:
        notes.append(f"alibi fast: left out, hopekit.kernels.alibi is not importable ({e})")
    else:
        rows["alibi fast"] = lambda q, k, v: alibi.attend(s.alibi, q, k, v, pos, pos, scale=scale, past=0)
        checks["alibi fast"] = "alibi reference"
    return rows, checks, notes


# --------------------------------------------------------------------------------------------------
# float64 oracles on a few query rows
# --------------------------------------------------------------------------------------------------


def oracle(s: Setup, name: str, q, k, v, rows: torch.Tensor) -> torch.Tensor | None:
    """The row's attention output at query rows ``rows`` in float64 (None: no oracle for the row)."""
    from hopekit.pe.alibi import alibi_slopes

    q, k, v = q.double(), k.double(), v.double()
    B, H, T, D = q.shape
    qr, h = q[:, :, rows], D // 2
    pos = s.pos.reshape(-1, T)                                               # (B|1, T)
    delta = (pos[:, rows, None] - pos[:, None, :]).double()[:, None]         # (B|1, 1, R, T)
    if name.startswith("rope"):
        inv_freq = 1.0 / 10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)

        def rot(x, p):
            ang = (p.double()[..., None] * inv_freq)[:, None]                 # (B|1, 1, T, D/2)
            c, si = ang.cos(), ang.sin()
            return torch.cat([x[..., :h] * c - x[..., h:] * si, x[..., h:] * c + x[..., :h] * si], -1)
        logits = rot(qr, pos[:, rows]) @ rot(k, pos).transpose(-1, -2) * s.scale
    elif name.startswith("hope_hyperbolic"):
        omega = s.hyper.params.omega_scale / s.hyper.params.base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
        lam = s.hyper.params.resolved_penalty
        rates = torch.cat([lam - omega, lam + omega])

        def eig(x):
            return torch.cat([x[..., :h] + x[..., h:], x[..., :h] - x[..., h:]], -1) / math.sqrt(2)
        qe, ke = eig(qr), eig(k)
        logits = torch.zeros(B, H, len(rows), T, dtype=torch.float64)
        for c in range(D):
            logits += qe[..., c, None] * ke[..., None, :, c] * torch.exp(-rates[c] * delta.clamp(min=0))
        logits *= s.scale
    elif name.startswith("alibi"):
        slopes = alibi_slopes(H, s.alibi.params.max_bias).double()
        logits = qr @ k.transpose(-1, -2) * s.scale - slopes[:, None, None] * delta.abs()
    else:
        return None
    logits = logits.masked_fill(delta < 0, float("-inf"))
    return torch.softmax(logits, -1) @ v


# --------------------------------------------------------------------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0                         # kB
    raise OSError(f"/proc/self/status has no {field}")


def measure_memory(args: argparse.Namespace, name: str) -> float:
    """Peak resident memory growth (MB) of one run of row ``name`` in this (fresh) process: the peak
    (VmHWM) is reset just before the run (Linux: /proc/self/clear_refs)."""
    s = Setup(args)
    rows, _, _ = attentions(s)
    fn = s.layer(rows[name])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_mb("VmRSS")
    out = fn()
    if args.backward:
        out.backward(s.grad_out)
    return _status_mb("VmHWM") - before


def profile(name: str, fn: Callable, run: Callable) -> None:
    """One run of ``fn`` under torch.profiler: self CPU time by op, the flash-attention kernels apart."""
    from torch.profiler import profile as torch_profile

    with torch_profile() as prof:
        run(fn)
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()), key=lambda t: -t[1])
    total = sum(t for _, t, _ in ops)
    flash = sum(t for key, t, _ in ops if "flash_attention" in key)
    print(f"\nwhere the time goes, {name}: {total:.0f} ms of ops, {flash:.0f} ms ({flash / total:.0%}) in "
          f"flash-attention kernels; top ops (self ms, calls):")
    print("  " + "; ".join(f"{key} {t:.0f} ({c})" for key, t, c in ops[:8]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--positions", default="contiguous", choices=("contiguous", "randomized"),
                   help="randomized: per batch row a sorted random subset of [0, 16·T), as in training")
    p.add_argument("--backward", action="store_true", help="time forward + backward (grads of x and the weights)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rows", default="", help="comma-separated subset of rows (the baseline is always run)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory column (one process per row)")
    p.add_argument("--profile", action="store_true", help="also print where each fast row's time goes (torch.profiler)")
    p.add_argument("--json", action="store_true", help="also print the medians as one JSON line")
    p.add_argument("--measure-memory", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    for name in ("batch", "heads", "seq", "head_dim", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} {getattr(args, name)}: expected >= 1")
    if args.head_dim % 2:
        p.error(f"--head-dim {args.head_dim}: rotary and hyperbolic pairs need an even head dim")
    if args.measure_memory is not None:
        print(measure_memory(args, args.measure_memory))
        return

    s = Setup(args)
    rows, checks, notes = attentions(s)
    if args.rows:
        wanted = {r.strip() for r in args.rows.split(",")} | {BASELINE}
        unknown = wanted - set(rows)
        if unknown:
            p.error(f"--rows: unknown {sorted(unknown)}; rows are {list(rows)}")
        rows = {n: f for n, f in rows.items() if n in wanted}

    # correctness first: fast rows against their references, every row against its float64 oracle
    with torch.no_grad():
        q, k, v = (t.detach() for t in s.project(s.x.detach()))
        outputs = {name: fn(q, k, v) for name, fn in rows.items()}
        top = v.double().abs().max()
        sample = torch.unique(torch.cat([torch.linspace(0, args.seq - 1, 63).long(), torch.tensor([args.seq - 1])]))
        vs_ref = {name: float((outputs[name].double() - outputs[ref].double()).abs().max() / top)
                  for name, ref in checks.items() if name in rows and ref in rows}
        vs_f64 = {}
        for name in rows:
            exact = oracle(s, name, q, k, v, sample)
            if exact is not None:
                vs_f64[name] = float((outputs[name][:, :, sample].double() - exact).abs().max() / top)
        del outputs
    limit = 1e-4 if args.dtype == "float32" else 5e-2     # far above either dtype's rounding (see NOTES)
    wrong = {name: err for name, err in vs_ref.items() if not err <= limit}
    if wrong:
        raise SystemExit(f"fast rows differ from their references by more than {limit} of max |v|: {wrong}")

    fns = {name: s.layer(fn) for name, fn in rows.items()}

    def run(fn) -> float:
        t0 = time.perf_counter()
        out = fn()
        if args.backward:
            out.backward(s.grad_out)
            s.x.grad = None
            for w in s.weights:
                w.grad = None
        return (time.perf_counter() - t0) * 1e3

    for fn in fns.values():
        for _ in range(args.warmup):
            run(fn)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(args.repeats):                                            # interleaved
        for name, fn in fns.items():
            times[name].append(run(fn))
    med = {name: statistics.median(t) for name, t in times.items()}
    spread = {name: (min(t), max(t)) for name, t in times.items()}

    memory: dict[str, float] = {}
    if not args.no_memory:
        argv = [f"--batch={args.batch}", f"--heads={args.heads}", f"--seq={args.seq}", f"--head-dim={args.head_dim}",
                f"--dtype={args.dtype}", f"--positions={args.positions}"] + (["--backward"] if args.backward else [])
        for name in rows:
            done = subprocess.run([sys.executable, __file__, *argv, "--measure-memory", name],
                                  capture_output=True, text=True, check=True)
            memory[name] = float(done.stdout.strip().splitlines()[-1])

    B, T, H, D = s.shape
    what = "forward + backward" if args.backward else "forward"
    print(f"attention incl. projections, {what}: B{B} H{H} T{T} D{D} {args.dtype}, {args.positions} positions, "
          f"causal; median of "
          f"{args.repeats} interleaved runs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    base = med[BASELINE]
    print(f"\n| row | median ms | × {BASELINE} | min–max ms | max |Δ| vs reference | error vs float64 | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for name, m in med.items():
        lo, hi = spread[name]
        ref = f"{vs_ref[name]:.1e}" if name in vs_ref else "—"
        f64 = f"{vs_f64[name]:.1e}" if name in vs_f64 else "—"
        mem = f"{memory[name]:.0f}" if name in memory else "—"
        print(f"| {name} | {m:.1f} | {m / base:.2f} | {lo:.0f}–{hi:.0f} | {ref} | {f64} | {mem} |")
    print("\nerrors are max |Δ| / max |v| of the attention output (before the output projection); "
          f"one T×T float32 tensor per head is {T * T * 4 / 2**20:.0f} MB, "
          f"for all heads {T * T * 4 * H * B / 2**20:.0f} MB")
    for note in notes:
        print(f"note: {note}")
    if args.profile:
        for name in fns:
            if name.endswith("fast") or name == BASELINE:
                profile(name, fns[name], run)
    if args.json:
        print(json.dumps({"config": vars(args), "median_ms": med, "vs_reference": vs_ref, "vs_float64": vs_f64,
                          "peak_mb": memory}))


if __name__ == "__main__":
    main()
