"""``hopekit.attention``: scaled dot-product attention with any hopekit positional encoding.

One call instead of four capability branches. Given raw projections and integer positions, it applies
the encoding where attention is the place to apply it and picks the fastest exact path:

=================================  ===================================================================
encoding                           path
=================================  ===================================================================
``uses_rotate`` (RoPE family,      rotate q and k (:mod:`hopekit.kernels.rotary` where it applies),
hope_highfreq), NoPE               then ``torch.nn.functional.scaled_dot_product_attention``
``uses_bias`` (ALiBi)              :mod:`hopekit.kernels.alibi` where it applies, else
                                   :func:`chunked_attention` (logits + bias, query rows in chunks)
``uses_scores`` (hope_hyperbolic)  :mod:`hopekit.kernels.hyperbolic` where it applies, else
                                   :func:`chunked_attention` (the encoding's own logits, in chunks)
``uses_embed`` only (sinusoidal,   refused: these act at the input (``enc.embed``), not in attention;
learned)                           pass ``embedded=True`` once the input carries them
=================================  ===================================================================

No path materialises a (Tq, Tk) logit tensor per head for the whole sequence: SDPA is fused, the kernels
work in blocks, and the chunked reference holds ``chunk`` query rows at a time. A kernel "applies"
when it computes exactly this call (no extra mask, no dropout, ...); otherwise the chunked reference
runs. ``HOPEKIT_KERNELS=reference`` (or ``with hopekit.kernels.use_kernels(False):``) runs the
reference everywhere (:mod:`hopekit.kernels`).

Causality is by token order, aligned at the end (as with a KV cache): with ``Tk`` keys and ``Tq``
queries, query row ``i`` sees keys ``0 … Tk − Tq + i``. Positions say *where* tokens are (they may
start anywhere, repeat under BiPE, jump under randomized positions), not which keys are visible.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F

from . import kernels
from .pe.base import PositionalEncoding, check_positions

__all__ = ["attention", "chunked_attention"]

#: query rows per block of the chunked reference path
DEFAULT_CHUNK = 256


def _check_inputs(enc, q, k, v, causal: bool, embedded: bool, mask, dropout_p, chunk) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk={chunk!r}: expected a positive int (query rows per block)")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p={dropout_p!r}: expected a number in [0, 1)")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool):
        what = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask: expected a boolean tensor (True = may attend), got {what}")
    if not isinstance(enc, PositionalEncoding):
        raise TypeError(f"enc: expected a hopekit positional encoding (hopekit.pe.build), got {type(enc).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected a (B, H, T, head_dim) tensor, got {shape}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")
    (B, H, Tq, D), (Bk, Hk, Tk, Dk) = q.shape, k.shape
    if D != enc.head_dim or Dk != enc.head_dim:
        raise ValueError(f"q, k: head dims {D} and {Dk} differ from the encoding's head_dim={enc.head_dim}")
    if Bk != B or v.shape[0] != B or v.shape[1] != Hk or v.shape[2] != Tk:
        raise ValueError(f"k, v: expected (B={B}, H_kv, Tk, ·) with the same H_kv and Tk, got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    if H % Hk:
        raise ValueError(f"k: {Hk} key/value heads do not divide the {H} query heads")
    if Tq > Tk:
        raise ValueError(f"q: {Tq} queries but only {Tk} keys (the queries are the last Tq of the keys)")
    if enc.causal_only and not causal:
        raise ValueError(f"causal=False: pe.kind={enc.kind!r} is defined for causal attention only")
    if enc.uses_embed and not (enc.uses_rotate or enc.uses_bias or enc.uses_scores) and not embedded:
        raise ValueError(f"pe.kind={enc.kind!r} acts only through embed(): add enc.embed(x, positions) to the "
                         f"token embeddings at the input; attention adds no position for it (pass embedded=True "
                         f"once the input carries it)")


def attention(enc: PositionalEncoding, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              q_pos: torch.Tensor, k_pos: torch.Tensor, *, causal: bool = True, scale: float | None = None,
              mask: torch.Tensor | None = None, dropout_p: float = 0.0, rotated: bool = False,
              embedded: bool = False, seq_len: int | None = None, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Attention of ``q`` ``(B, H, Tq, D)`` over ``k``, ``v`` ``(B, H_kv, Tk, D)`` with the encoding ``enc``.

    * ``q_pos`` ``(Tq,)`` / ``(B, Tq)`` and ``k_pos`` ``(Tk,)`` / ``(B, Tk)``: integer positions of the
      queries and keys (the queries are the last ``Tq`` tokens; ``Tk − Tq`` keys come from a cache).
    * ``H_kv`` may divide ``H`` (grouped-query attention: query head h reads KV head h // (H / H_kv)).
    * ``causal``: query row i sees keys ``0 … Tk − Tq + i``; ``causal=False`` is refused for causal-only
      encodings (hope_hyperbolic).
    * ``scale``: logit scale, default 1/√D. ``mask``: optional boolean, True = may attend, broadcastable
      to ``(B, H, Tq, Tk)`` (e.g. padding), applied on top of causality. ``dropout_p``: on the weights.
    * ``rotated``: for ``uses_rotate`` encodings, q and k already carry the rotation (a KV cache that
      stores rotated keys); otherwise they are rotated here at ``q_pos`` / ``k_pos`` (``seq_len``: the
      length of length-dependent spectra, default max(position) + 1).
    * ``embedded``: accept an encoding that acts only at the input (sinusoidal, learned) because the
      caller added ``enc.embed`` there; without it such encodings are refused.

    Returns ``(B, H, Tq, D)`` in v's dtype.
    """
    _check_inputs(enc, q, k, v, causal, embedded, mask, dropout_p, chunk)
    B, Tq, Tk = q.shape[0], q.shape[2], k.shape[2]
    q_pos = check_positions(q_pos, "q_pos", Tq, batch=B)
    k_pos = check_positions(k_pos, "k_pos", Tk, batch=B)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if enc.uses_rotate and not rotated:  # one spectrum for both (length-dependent ones: max(k_pos) + 1)
        seq_len = int(k_pos.max()) + 1 if seq_len is None and Tk else seq_len
        q, k = enc.apply(q, enc.features(q_pos, seq_len)), enc.apply(k, enc.features(k_pos, seq_len))
    if not (enc.uses_bias or enc.uses_scores):
        return _sdpa(q, k, v, causal=causal, scale=scale, mask=mask, dropout_p=dropout_p)
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # query head h reads KV head h // groups
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)     # (B, H, Tk, D)
    q_pos, k_pos = q_pos.to(q.device), k_pos.to(q.device)
    if causal and kernels.enabled():
        fast = _attention_kernel(enc, q, k, mask=mask, dropout_p=dropout_p)
        if fast is not None:
            return fast.attend(enc, q, k, v, q_pos, k_pos, scale=scale, past=Tk - Tq)
    return chunked_attention(enc, q, k, v, q_pos, k_pos, past=Tk - Tq, scale=scale, chunk=chunk,
                             dropout_p=dropout_p, mask=mask, causal=causal)


def _attention_kernel(enc, q, k, *, mask, dropout_p):
    """The first kernel module of :data:`hopekit.kernels.ATTENTION_KERNELS` whose ``applies`` accepts
    this call, or None."""
    for name in kernels.ATTENTION_KERNELS:
        module = importlib.import_module(f"{kernels.__name__}.{name}")
        if module.applies(enc, q, k, mask=mask, dropout_p=dropout_p):
            return module
    return None


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float,
          mask: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """SDPA with end-aligned causality (SDPA's own ``is_causal`` is start-aligned) and grouped KV heads."""
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = {"enable_gqa": True} if q.shape[1] != k.shape[1] else {}  # KV head h // (H / H_kv), no copy
    is_causal = causal and Tq == Tk and Tq > 1 and mask is None
    if causal and not is_causal and Tq > 1:  # query row i sees keys 0 … Tk − Tq + i
        visible = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)   # (Tq, Tk)
        mask = visible if mask is None else mask & visible
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                                          scale=scale, **gqa)


def chunked_attention(enc: PositionalEncoding, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      q_pos: torch.Tensor, k_pos: torch.Tensor, *, past: int, scale: float, chunk: int,
                      dropout_p: float = 0.0, mask: torch.Tensor | None = None, causal: bool = True) -> torch.Tensor:
    """The reference attention for ``uses_bias`` / ``uses_scores`` encodings, ``chunk`` query rows at a time.

    ``q`` ``(B, H, Tq, D)``; ``k``, ``v`` ``(B, H, Tk, D)`` with ``Tk = past + Tq`` (heads already
    repeated for GQA); with ``causal``, query row i sees keys ``0 … past + i``. Logits are the
    encoding's own (``scores``) or ``q·k · scale + bias``. ``mask`` (optional, boolean, True = may
    attend, broadcastable to ``(B, H, Tq, Tk)``) removes further keys, e.g. padding. Memory is
    O(chunk · Tk): never (H, Tq, Tk). Returns ``(B, H, Tq, D)``.
    """
    Tq = q.shape[2]
    if Tq > chunk:  # several chunks slice k and v again and again: make the slices plain memory once
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    logit_dtype = torch.promote_types(q.dtype, torch.float32)  # bf16/fp16 logits softmax in float32
    out = []
    for s in range(0, Tq, chunk):
        e = min(s + chunk, Tq)
        n = past + e if causal else k.shape[2]  # causal: keys after this chunk's last query are never seen
        qc, kc, vc = q[:, :, s:e], k[:, :, :n], v[:, :, :n]                       # (B, H, e−s | n, D)
        qp, kp = q_pos[..., s:e], k_pos[..., :n]
        # in place on logits made here (none of these ops keeps its output for backward): less memory traffic
        if enc.uses_scores:  # the encoding's own logits from raw q, k (−inf on future keys)
            logits = enc.scores(qc, kc, qp, kp).to(logit_dtype) * scale                  # (B, H, e−s, n)
        else:
            bias = enc.bias(qp, kp)                                               # (H | B, H, e−s, n)
            logits = (qc @ kc.transpose(-1, -2)).to(logit_dtype).mul_(scale).add_(bias)  # (B, H, e−s, n)
        blocked = None
        if causal:
            rows = past + torch.arange(s, e, device=q.device)
            blocked = torch.arange(n, device=q.device)[None, :] > rows[:, None]   # (e−s, n): future keys
        if mask is not None:
            blocked = ~mask[..., s:e, :n] if blocked is None else blocked | ~mask[..., s:e, :n]
        if blocked is not None:
            logits = logits.masked_fill_(blocked, float("-inf"))
        probs = logits.softmax(dim=-1).to(v.dtype)
        probs = F.dropout(probs, dropout_p, dropout_p > 0)
        out.append(probs @ vc)                                                    # (B, H, e−s, D)
    return torch.cat(out, dim=2)                                                  # (B, H, Tq, D)
