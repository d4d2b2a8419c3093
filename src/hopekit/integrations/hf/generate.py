"""Greedy decoding of a (patched) transformers model with a KV cache that stays exact.

Cached keys are already rotated. When the rotary spectrum depends on the length (dynamic NTK, LongRoPE's
short → long switch), a key rotated at an earlier length is not the key a full forward at the current
length would make, so plain ``model.generate`` drifts from a recompute (transformers #25104). Here
the cache is rebuilt from all tokens so far whenever the spectrum of the next length differs from the
one the cache was built with: once at LongRoPE's switch, at every step past the original length for
dynamic NTK. The result equals greedy decoding that recomputes the whole sequence at every step.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import pe
from .patch import encoding_of
from .rope import TRANSFORMERS_MAJOR

__all__ = ["generate", "CACHE_ARG"]

#: the forward's KV-cache argument: 5.x renamed ``past_key_values`` to ``cache`` (the old name warns)
CACHE_ARG = "cache" if TRANSFORMERS_MAJOR >= 5 else "past_key_values"


def _spectrum_at(enc: pe.PositionalEncoding | None, length: int):
    if enc is None or not enc.uses_rotate or not enc.params.length_dependent:
        return None
    return enc.spectrum(length)


def _same(a, b) -> bool:
    return a is b or (a is not None and b is not None and a.attn_scale == b.attn_scale
                      and torch.equal(a.inv_freq, b.inv_freq))


@torch.no_grad()
def generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *, use_cache: bool = True,
             eos_token_id: int | None = None, return_scores: bool = False):
    """Greedy continuation of ``input_ids`` ``(B, T)`` by ``max_new_tokens`` tokens; returns ``(B, T + n)``.

    ``use_cache=False`` recomputes the full sequence every step (the reference). Generation stops early
    once every row has produced ``eos_token_id`` (rows that finished keep emitting it).
    ``return_scores``: also return the next-token logits of every step, ``(B, n, vocab)`` float32.
    """
    from transformers import DynamicCache

    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids: expected (batch, length >= 1), got shape {tuple(input_ids.shape)}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: expected an int >= 0")
    was_training = model.training
    model.eval()
    enc = encoding_of(model)
    ids = input_ids
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    cache, cache_spectrum = None, None
    scores = []
    try:
        for _ in range(max_new_tokens):
            length = ids.shape[1]
            spectrum = _spectrum_at(enc, length)
            if not use_cache:
                logits = model(input_ids=ids, use_cache=False).logits
            elif cache is None or not _same(spectrum, cache_spectrum):
                cache = DynamicCache()
                logits = model(input_ids=ids, use_cache=True, **{CACHE_ARG: cache}).logits
                cache_spectrum = spectrum
            else:
                logits = model(input_ids=ids[:, -1:], use_cache=True, **{CACHE_ARG: cache}).logits
            scores.append(logits[:, -1].float())
            nxt = logits[:, -1].argmax(dim=-1)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
    finally:
        model.train(was_training)
    if return_scores:
        return ids, torch.stack(scores, dim=1) if scores else ids.new_zeros(ids.shape[0], 0, 0).float()
    return ids
