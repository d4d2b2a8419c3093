"""Worst relative error of hope_hyperbolic's stable float32 scores against the float64 closed form
e^{−λΔ}(cosh(ωΔ)·a + sinh(ωΔ)·b), for Δ up to 2^20 at absolute offsets 0 and 10^6.

The error scale is the sum of the two eigen-channel magnitudes ½(e^{−(λ−ω)Δ}|a+b| + e^{−(λ+ω)Δ}|a−b|)
(for a = 1, b = 0 this is the plain relative error); values below 1e-30 are compared absolutely.
Run: python benchmarks/hyperbolic_precision.py
"""

import torch

from hopekit import pe


def main() -> None:
    d = 16
    deltas = torch.cat([torch.arange(0, 64), torch.logspace(6, 20, 200, base=2).long()]).unique()
    print(f"{'omega_scale':>12} {'penalty':>12} {'offset':>9} {'worst rel. error':>17}")
    overall = 0.0
    for omega_scale, penalty in ((1.0, 1.05), (0.2, 0.21), (0.01, 0.0105), (1e-5, 1.000001e-5)):
        enc = pe.build("hope_hyperbolic", head_dim=d, omega_scale=omega_scale, penalty=penalty)
        omega = omega_scale / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
        for offset in (0, 1_000_000):
            m = offset + int(deltas.max())
            worst = 0.0
            for i in range(d // 2):
                for a, b in ((1.0, 0.0), (0.0, 1.0), (0.7, 0.3), (0.5, -0.9)):
                    q, k = torch.zeros(1, 1, 1, d), torch.zeros(1, 1, len(deltas), d)
                    q[..., i] = 1.0
                    k[..., i], k[..., i + d // 2] = a, b
                    ours = enc.scores(q, k, torch.tensor([m]), m - deltas)[0, 0, 0].double()
                    dl = deltas.double()
                    up, down = torch.exp(dl * (omega[i] - penalty)), torch.exp(-dl * (omega[i] + penalty))
                    ref = 0.5 * (up + down) * a + 0.5 * (up - down) * b
                    scale = 0.5 * (up * abs(a + b) + down * abs(a - b))
                    big = scale > 1e-30
                    worst = max(worst, ((ours - ref).abs()[big] / scale[big]).max().item())
            overall = max(overall, worst)
            print(f"{omega_scale:>12g} {penalty:>12g} {offset:>9d} {worst:>17.2e}")
    print(f"worst over all: {overall:.2e} (Δ up to {int(deltas.max()):,})")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
