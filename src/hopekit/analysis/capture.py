"""What a trained model's attention does, layer by layer: its queries, keys and attention weights.

The reference decoder's attention runs a fast path (SDPA, or the chunked bias / scores path) that never
holds the ``(T, T)`` weights. For analysis we capture what each layer's attention *consumes* — the
queries and keys after the encoding's rotation (``uses_rotate``) or raw (``uses_bias`` / ``uses_scores``,
whose logits the encoding forms itself) — with a forward pre-hook, and recompute the weights with the
same semantics: logits = q·k / √d (+ bias), or the encoding's own ``scores`` / √d, future keys masked,
softmax. :func:`attention_weights` checks itself against the model: its weights times the values give
the layer's attention output to float32 rounding (tested).

Weights are ``(B, H, T, T)`` per layer, so they are produced one layer at a time
(:func:`iter_attention`); a 4-layer, 4-head model at 2,048 tokens needs 64 MiB per layer and sequence.

Transformers models (Llama family) are read through ``output_attentions=True`` with eager attention:
:func:`hf_attention` (its weights are the model's own; nothing is recomputed).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch

__all__ = ["LayerQK", "capture_qk", "attention_logits", "iter_attention", "attention_weights", "hf_attention"]


@dataclasses.dataclass
class LayerQK:
    """One attention layer's inputs, as its attention consumes them.

    ``q`` ``(B, H, T, D)`` and ``k`` ``(B, H, T, D)`` (KV heads repeated for GQA), rotated for
    ``uses_rotate`` encodings and raw otherwise; ``raw_q``/``raw_k`` are the projections before any
    position (what a per-pair decomposition rotates itself); ``v`` the values; ``q_pos``/``k_pos`` the
    positions; ``scale`` = 1/√D.
    """

    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    raw_q: torch.Tensor
    raw_k: torch.Tensor
    q_pos: torch.Tensor
    k_pos: torch.Tensor
    scale: float


def _decoder(model: Any) -> Any:
    from hopekit.model import Decoder

    if not isinstance(model, Decoder):
        raise TypeError(f"model: expected a hopekit Decoder, got {type(model).__name__}; "
                        f"for a transformers model use hf_attention")
    return model


@torch.no_grad()
def capture_qk(model: Any, idx: torch.Tensor) -> list[LayerQK]:
    """Run ``model`` on token ids ``idx`` ``(B, T)`` once and return every layer's :class:`LayerQK`."""
    from hopekit.model import Attention

    model = _decoder(model)
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise ValueError(f"idx: expected (B, T) int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
    captured: list[LayerQK] = []

    def hook(module: Attention, args: tuple) -> None:
        x, ctx, _cache, layer = args
        B, T, _ = x.shape
        q = module.wq(x).view(B, T, module.n_heads, module.head_dim).transpose(1, 2)
        k = module.wk(x).view(B, T, module.n_kv_heads, module.head_dim).transpose(1, 2)
        v = module.wv(x).view(B, T, module.n_kv_heads, module.head_dim).transpose(1, 2)
        if module.n_kv_heads != module.n_heads:
            rep = module.n_heads // module.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        raw_q, raw_k = q, k
        if ctx.enc.uses_rotate:
            q, k = ctx.enc.apply(q, ctx.rotary), ctx.enc.apply(k, ctx.rotary)
        captured.append(LayerQK(layer, q.float(), k.float(), v.float(), raw_q.float(), raw_k.float(),
                                ctx.q_pos, ctx.k_pos, module.scale))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, Attention)]
    try:
        was_training = model.training
        model.eval()
        model(idx)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    return sorted(captured, key=lambda c: c.layer)


def attention_logits(enc: Any, qk: LayerQK) -> torch.Tensor:
    """The softmax input of one layer, ``(B, H, T, T)`` float32, ``-inf`` on future keys."""
    q, k = qk.q, qk.k
    if enc.uses_scores:
        logits = enc.scores(q, k, qk.q_pos, qk.k_pos).float() * qk.scale
    else:
        logits = (q @ k.transpose(-1, -2)) * qk.scale
        if enc.uses_bias:
            logits = logits + enc.bias(qk.q_pos, qk.k_pos).float()
    T, Tk = q.shape[-2], k.shape[-2]
    future = torch.ones(T, Tk, dtype=torch.bool, device=q.device).triu(diagonal=1 + Tk - T)
    return logits.masked_fill(future, float("-inf"))


@torch.no_grad()
def iter_attention(model: Any, idx: torch.Tensor) -> Iterator[tuple[LayerQK, torch.Tensor]]:
    """``(LayerQK, weights (B, H, T, T))`` for each layer in order; weights are post-softmax, float32."""
    enc = _decoder(model).pe
    for qk in capture_qk(model, idx):
        yield qk, attention_logits(enc, qk).softmax(dim=-1)


def attention_weights(model: Any, idx: torch.Tensor) -> torch.Tensor:
    """Every layer's post-softmax weights, ``(L, B, H, T, T)`` (small models and lengths only)."""
    return torch.stack([w for _, w in iter_attention(model, idx)])


@torch.no_grad()
def hf_attention(model: Any, idx: torch.Tensor) -> torch.Tensor:
    """A transformers causal LM's own attention weights, ``(L, B, H, T, T)`` float32, from one forward with
    ``output_attentions=True``. The model must run eager attention (SDPA returns no weights):
    load it with ``attn_implementation="eager"`` or set ``model.config._attn_implementation``."""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl not in (None, "eager"):
        raise ValueError(f"model.config._attn_implementation={impl!r}: attention weights need 'eager' "
                         f"(load with attn_implementation='eager')")
    out = model(input_ids=idx, output_attentions=True, use_cache=False)
    if not out.attentions or out.attentions[0] is None:
        raise ValueError("model: returned no attention weights; load it with attn_implementation='eager'")
    return torch.stack([a.float() for a in out.attentions])

