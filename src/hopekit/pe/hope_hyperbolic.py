"""hope_hyperbolic — Hyperbolic Rotary Positional Encoding (Dai et al. 2025, arXiv 2509.05218).

The paper replaces RoPE's rotations by Lorentz boosts H(φ) = [[cosh φ, sinh φ], [sinh φ, cosh φ]] plus
exponential damping. Per pair i, for a query at m and a key at n:

    q̃ = e^{−λm} H(+mω_i) q        k̃ = e^{+λn} H(−nω_i) k
    q̃ᵀk̃ = e^{−λΔ} qᵀ H(Δω_i) k,    Δ = m − n ≥ 0                                    (paper Eq. 9)

**Stable form (ours; the paper's Algorithm 1 overflows).** H has eigenvectors (1, 1)/√2 and (1, −1)/√2,
so in the 45°-rotated basis u = (a + b)/√2, v = (a − b)/√2 of each pair the logit is a sum of
per-channel real exponential decays

    logit(m, n) = Σ_c  Q_c K_c e^{−r_c (m − n)},   r_c ∈ {λ − ω_i (u channels), λ + ω_i (v channels)}.

We never evaluate cosh(nω), sinh(nω) or e^{±λn} at absolute positions (they leave the float32 range
near n ≈ 43 with RoPE frequencies, and cancellation makes the literal algorithm wrong by m ≈ 12).
Instead, queries are processed in blocks whose positions span at most 40 / max r_c; with a per-block
anchor a (the block's midpoint), Q′_c = Q_c e^{−r_c(m−a)} and K′_c = K_c e^{+r_c(n−a)}, so every
exponent stays within ±20 and one matmul Q′K′ᵀ gives the block's exact logits. Future keys are clamped
and masked to −inf **before** anything can overflow; far-past keys underflow to 0, the correct limit.
The method is causal-only by definition (for m < n the factor grows without bound).

Pairs use the house half-split layout (a, b) = (x_i, x_{i+d/2}); the paper writes (x_{2i}, x_{2i+1}),
which is the same method up to a fixed permutation of the projection weights.

**Parameters and defaults (ours — the paper specifies none):**

* ω_i = ``omega_scale`` · ``base``^(−2i/d). Default base 10 000 and ``omega_scale`` 0.2, so the slowest
  channel decays at λ − ω_0 = 0.01/token (half-life ≈ 69 tokens) and position-poor pairs at ≈ λ = 0.21
  (half-life ≈ 3 tokens): a local encoding. How 0.2 was chosen: a sweep of ``omega_scale`` (and of λ,
  fixed or learned) on the default bench budget, scored on the *validation* plays so that choosing the
  default never looked at the test split (``hopekit bench --preset benchmarks/hyperbolic_sweep.yaml``,
  byte level, train_len 128); 0.2 had the lowest in-distribution perplexity, the curve is U-shaped in
  ``omega_scale`` as in the paper's Fig. 3, and its neighbours 0.1 and 0.5 were close behind. The
  numbers are in docs/results/hyperbolic_sweep/report.md. Retune it for other tokenizers and lengths. With
  ``omega_scale=1`` (RoPE's own frequencies) the encoding is extremely local (papers/hope_hyperbolic.md,
  "Properties"). ``omega_scale`` is one of the two knobs of the paper's "scaling factor" axis.
* λ = ``penalty``; default 1.05 · max ω_i. It must exceed max ω_i = ``omega_scale`` (paper §3.2.3).
  Re-checked along the paper's own scaling axis (Fig. 3: the angle fixed, the scale varied), λ from 0.202
  to 1.0 at ``omega_scale`` 0.2, three seeds, validation plays (``hopekit bench --preset
  hyperbolic_scale``): perplexity grows with λ (λ = 1.0 is +7.8 % at 1× and +13 % at 16×, paired), and
  1.05 · ω sits on the flat bottom, not separated from the smaller rates (docs/results/hyperbolic_scale.md).
* ``learnable=True`` learns λ as max ω·(1 + 1e-6) + softplus(p), initialised at ``penalty``, so it
  stays above max ω by construction; ``per_head=True`` gives every head its own λ. Its rates are formed
  without a float32 difference λ − ω_i (see :meth:`HyperbolicEncoding.rates`), so a learned λ is as
  exact as a fixed one, even with λ very close to max ω.
* ``max_block``: cap on the query-block length of the stable evaluation (memory/speed trade-off only;
  results do not depend on it beyond float32 rounding).
* ``logit_scale`` (``"none"``, the default, or ``"log_length"``) and ``train_len`` (its L): below.

**Dilution and the log-length remedy (ours; off by default).** The logits decay toward 0, not −∞
(papers/hope_hyperbolic.md, "Logits → 0, not −∞"): every far key keeps the softmax weight of a
zero-logit token, so as the context grows the far keys together take a growing share of a query's
attention, a content-blind average. ``logit_scale="log_length"`` multiplies the logits of a query at
position m by

    s(m) = max(1, ln(m + 1) / ln L),   L = ``train_len``,

which is exactly 1 inside the training window (m + 1 ≤ L): a model trained without it computes the same
there, so it can be switched on at evaluation time. Beyond the window it sharpens the softmax by the log
of the number of keys a causal query sees (m + 1 when positions start at 0). This is Qwen's
``use_logn_attn`` (the query at 0-based position p is multiplied by log_L(p + 1) when p + 1 > L, at
inference only), Scalable-Softmax with a fixed coefficient s = 1/ln L floored at 1 (Nakanishi 2025,
arXiv 2501.19399: logits × s·ln n, n the input length, s learned), and the log-length scaling of Chiang & Cholak 2022 (ACL,
"Overcoming a Theoretical Limitation of Self-Attention"). An experiment fills ``train_len`` from
``train.train_len``, as for every method with a ``train_len``; the scale without one is refused. It is
applied exactly (the query's eigen-channels times s(m) in float32, masking untouched), from the query's
position, so under ``train.positions="randomized"`` it also acts in training. Its measured
effect is in docs/results/dilution.md.

The 1/√d attention scale is applied by attention, as for every method (the paper does not state it).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .base import (Params, PositionalEncoding, check_bool, check_choice, check_int, check_positions, check_qk,
                   check_real)

__all__ = ["HyperbolicParams", "HyperbolicEncoding", "to_eigenbasis", "decay_rates", "log_length_scale", "LOGIT_SCALES"]

_LEARNED_MARGIN = 1e-6  # λ − max ω ≥ this · max ω when λ is learned (relative, so any ω scale works)
_MAX_RATE = 1e4         # ω and λ bounds: larger rates underflow every off-diagonal logit anyway
_MAX_EXPONENT = 20.0    # |r_c · (position − anchor)| bound inside a query block

#: ``logit_scale`` values: "none" (the method as published) or "log_length" (s(m) = max(1, ln(m+1) / ln L))
LOGIT_SCALES = ("none", "log_length")


@dataclasses.dataclass(frozen=True, kw_only=True)
class HyperbolicParams(Params):
    """Parameters of hope_hyperbolic; see the module docstring for the equation and the defaults."""

    base: float = 10000.0
    omega_scale: float = 0.2
    penalty: float | None = None
    learnable: bool = False
    per_head: bool = False
    max_block: int = 256
    logit_scale: str = "none"
    train_len: float | None = None


    def __post_init__(self) -> None:
        check_real(self, "base", low=1.0, low_open=True)
        scale = check_real(self, "omega_scale", low=0.0, low_open=True, high=_MAX_RATE)
        check_bool(self, "learnable")
        if self.penalty is not None:
            lam = check_real(self, "penalty", low=0.0, low_open=True, high=2 * _MAX_RATE)
            if lam <= scale:
                raise ValueError(
                    f"HyperbolicParams.penalty={self.penalty!r}: λ must be > max ω_i = omega_scale={scale!r} "
                    f"(otherwise the slowest channel does not decay)")
            if self.learnable and lam - scale <= _LEARNED_MARGIN * scale:
                raise ValueError(
                    f"HyperbolicParams.penalty={self.penalty!r}: a learnable λ starts above max ω by more than "
                    f"{_LEARNED_MARGIN}·omega_scale (its floor); got λ − ω = {lam - scale!r}")
        check_bool(self, "per_head")
        check_int(self, "max_block", low=1)
        check_choice(self, "logit_scale", LOGIT_SCALES)
        if self.train_len is not None:  # L of s(m): ln L must be > 0
            check_real(self, "train_len", low=1.0, low_open=True)
        if self.logit_scale == "log_length" and self.train_len is None:
            raise ValueError("HyperbolicParams.train_len=None: logit_scale='log_length' needs the training length L "
                             "of s(m) = max(1, ln(m+1) / ln L); set train_len (an experiment fills it from "
                             "train.train_len)")

    @classmethod
    def absent_means_same(cls, name: str, config: Mapping[str, Any]) -> bool:
        """Whether a saved configuration without the field ``name`` (written before the field existed: a
        checkpoint, a bench directory) computes what ``config`` (today's resolved fields) computes, so
        that resuming it is no change (:func:`hopekit.config.config_differences`). ``logit_scale`` and
        ``train_len`` were added later; before, the logits were unscaled, i.e. ``logit_scale="none"``,
        under which ``train_len`` is unused."""
        return name in ("logit_scale", "train_len") and config.get("logit_scale") == "none"

    @property
    def resolved_penalty(self) -> float:
        return float(self.penalty) if self.penalty is not None else 1.05 * float(self.omega_scale)

    def validate_dims(self, head_dim: int, num_heads: int) -> None:
        if head_dim % 2:
            raise ValueError(f"head_dim={head_dim}: hope_hyperbolic needs an even head dim (pairs)")


def to_eigenbasis(x: torch.Tensor) -> torch.Tensor:
    """Half-split pairs (a, b) -> (u, v) = ((a + b)/√2, (a − b)/√2), channels ordered [u_0…, v_0…]."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a + b, a - b], dim=-1) * (1.0 / math.sqrt(2.0))


def log_length_scale(positions: torch.Tensor, train_len: float) -> torch.Tensor:
    """s(m) = max(1, ln(m + 1) / ln L) per query position, float32, same shape as ``positions``.

    Exactly 1.0 wherever m + 1 ≤ L (decided on the integer positions, never on a rounded ratio), so a
    row inside the training window is multiplied by 1 and left bit-for-bit unchanged."""
    inside = positions < math.floor(train_len)               # m + 1 ≤ L for an integer m
    ratio = torch.log1p(positions.float()) / math.log(train_len)
    return torch.where(inside, torch.ones_like(ratio), ratio.clamp_min(1.0))


def decay_rates(omega: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """Per-channel decay rates, ``(..., d)``: [λ − ω_i] for u channels then [λ + ω_i] for v channels."""
    lam = penalty[..., None]
    return torch.cat([lam - omega, lam + omega], dim=-1)


class HyperbolicEncoding(PositionalEncoding):
    """hope_hyperbolic through the ``scores`` hook (stable relative form; causal only)."""

    uses_scores = True
    causal_only = True

    params: HyperbolicParams

    def __init__(self, params: HyperbolicParams, *, head_dim: int, num_heads: int = 1, d_model: int | None = None):
        super().__init__(params, head_dim=head_dim, num_heads=num_heads, d_model=d_model)
        heads = num_heads if params.per_head else 1
        if params.learnable:
            self.penalty_raw = nn.Parameter(torch.empty(heads, dtype=torch.float32))
        else:
            self.register_parameter("penalty_raw", None)
        self._heads = heads
        self.reset_parameters()

    # ----- parameters ----------------------------------------------------------------------------
    def _omega64(self) -> torch.Tensor:
        i = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
        return self.params.omega_scale / (self.params.base ** i)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.penalty_raw is not None:
            excess = self.params.resolved_penalty - self.params.omega_scale * (1 + _LEARNED_MARGIN)
            raw = excess + math.log(-math.expm1(-excess))  # inverse softplus, stable for small/large
            with torch.no_grad():
                self.penalty_raw.fill_(raw)

    def penalty(self) -> torch.Tensor:
        """λ per head (shape ``(H,)`` or ``(1,)``), float32; always > max ω."""
        if self.penalty_raw is None:
            return torch.full((self._heads,), self.params.resolved_penalty, dtype=torch.float64).float()
        return self.params.omega_scale * (1 + _LEARNED_MARGIN) + F.softplus(self.penalty_raw.float())

    def rates(self, device: torch.device | None = None) -> torch.Tensor:
        """Decay rates ``(H or 1, head_dim)`` in float32, each exact to float32 rounding.

        Fixed λ: computed in float64, then cast. Learnable λ = ω_max(1 + margin) + softplus(p): no rate
        is formed as a float32 difference λ − ω_i (which loses ~ulp(ω)/(λ − ω) of the slowest rate, 1e-2
        and more relative when λ is close to ω_max). Instead each rate is a sum of non-negative terms,
        r_c = C_c + softplus(p) with C_c = (ω_max ∓ ω_i) + ω_max·margin computed in float64 and cast
        once, so its relative error stays a few float32 roundings and the gradient still reaches p.
        """
        if self.penalty_raw is None:
            key = ("rates", device)
            if key not in self._cache:
                lam = torch.full((self._heads,), self.params.resolved_penalty, dtype=torch.float64)
                self._cache[key] = decay_rates(self._omega64(), lam).float().to(device)
            return self._cache[key]
        device = self.penalty_raw.device
        key = ("rate_offsets", device)
        if key not in self._cache:
            omega = self._omega64()
            omega_max = float(omega.max())  # = omega_scale (pair 0)
            floor = omega_max * _LEARNED_MARGIN
            self._cache[key] = torch.cat([(omega_max - omega) + floor, (omega_max + omega) + floor]).float().to(device)
        return self._cache[key] + F.softplus(self.penalty_raw.float())[:, None]

    # ----- the scores hook -----------------------------------------------------------------------
    def scores(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Unscaled causal logits Σ_c Q_c K_c e^{−r_c(m−n)}, shape ``(B, H, Tq, Tk)``; −inf where n > m.
        With ``logit_scale="log_length"`` the row of a query at m is multiplied by s(m) (module
        docstring): the query's eigen-channels are scaled in float32 before the matmul.

        q ``(B, H, Tq, D)`` and k ``(B, H, Tk, D)`` are raw (un-encoded) projections: this is also what
        a KV cache stores. Positions are integers ``(T,)`` or ``(B, T)``. The matmul runs in q's dtype
        (bf16 stays bf16, with every factor bounded by e^20); exponents are always float32.
        """
        check_qk(self, q, k)
        if q.dim() != 4 or k.dim() != 4:
            raise ValueError(f"q, k: expected (B, H, T, head_dim), got {tuple(q.shape)} and {tuple(k.shape)}")
        if self._heads > 1 and q.shape[1] != self._heads:
            raise ValueError(f"q: has {q.shape[1]} heads but the per-head penalty has num_heads={self._heads}")
        q_pos = check_positions(q_pos, "q_pos", q.shape[-2], batch=q.shape[0]).to(q.device)
        k_pos = check_positions(k_pos, "k_pos", k.shape[-2], batch=k.shape[0]).to(q.device)
        q_pos2, k_pos2 = q_pos.reshape(-1, q_pos.shape[-1]), k_pos.reshape(-1, k_pos.shape[-1])  # (B|1, T)

        with torch.autocast(device_type=q.device.type, enabled=False):
            rates = self.rates(q.device)                        # (H|1, D)
            r = rates[None, :, None, :]                         # (1, H|1, 1, D)
            qe, ke = to_eigenbasis(q.float()), to_eigenbasis(k.float())
            span_limit = 2 * _MAX_EXPONENT / max(float(rates.detach().abs().max()), 1e-30)
            row_scale = (log_length_scale(q_pos2, float(self.params.train_len))         # (B|1, Tq)
                         if self.params.logit_scale == "log_length" else None)
            out = []
            for start, stop in self._query_blocks(q_pos2, span_limit):
                qp = q_pos2[:, start:stop]                                      # (B|1, Tb)
                lo, hi = qp.min(-1, keepdim=True).values, qp.max(-1, keepdim=True).values
                anchor = (lo + hi) // 2                                         # (B|1, 1)
                dq = (qp - anchor).float()                                      # |dq| ≤ span/2
                dk = (k_pos2 - anchor).clamp(max=hi - anchor).float()           # future keys clamped (masked below)
                q_scaled = qe[..., start:stop, :] * torch.exp(-r * dq[:, None, :, None])
                if row_scale is not None:                                       # s(m) per query row
                    q_scaled = q_scaled * row_scale[:, None, start:stop, None]
                k_scaled = ke * torch.exp(r * dk[:, None, :, None])
                logits = torch.matmul(q_scaled.to(q.dtype), k_scaled.to(q.dtype).transpose(-1, -2))
                future = k_pos2[:, None, :] > qp[:, :, None]                    # (B|1, Tb, Tk)
                out.append(logits.masked_fill(future[:, None], float("-inf")))
            return torch.cat(out, dim=-2)

    def _query_blocks(self, q_pos: torch.Tensor, span_limit: float) -> list[tuple[int, int]]:
        """Split query indices into blocks of ≤ max_block rows whose position span ≤ span_limit."""
        pos = q_pos.detach().cpu()
        todo = [(s, min(s + self.params.max_block, pos.shape[-1])) for s in range(0, pos.shape[-1], self.params.max_block)]
        blocks = []
        while todo:
            s, e = todo.pop()
            block = pos[:, s:e]
            span = int((block.max(-1).values - block.min(-1).values).max()) if e > s else 0
            if span <= span_limit or e - s == 1:  # a single query row always has span 0
                blocks.append((s, e))
            else:
                mid = (s + e) // 2
                todo += [(mid, e), (s, mid)]
        return sorted(blocks)
