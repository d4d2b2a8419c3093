"""Segment positions for BiPE (He et al., ICML 2024, "Two Stones Hit One Bird: Bilevel
Positional Encoding for Better Length Extrapolation").

BiPE splits a sequence into segments (sentences) at boundary tokens and gives every token two
positions: its **intra-segment** position (0 at each segment start, fed to an absolute encoding)
and its **segment index** (fed to a relative encoding between segments). A boundary token
(``.`` or a newline for the byte tokenizer) ends its segment; the token after it starts the next.

The vectorised computation lives in :mod:`hopekit.pe.bipe` (the encoding needs it while decoding);
this module adds the tokenizer side: which ids are boundaries.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import torch

from .tokenizer import ByteTokenizer, Tokenizer

#: the characters that end a segment by default (the paper's full stop and newline)
BIPE_BOUNDARY_CHARS: tuple[str, ...] = (".", "\n")


def bipe_positions(
    ids: torch.Tensor, boundary_ids: Collection[int] | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(intra, segment)`` for token ids of shape ``(T,)`` or ``(B, T)`` (any leading dims).

    * ``segment[..., t]`` = number of boundary tokens strictly before ``t``;
    * ``intra[..., t]`` = ``t`` minus the index of the first token of ``t``'s segment.

    Both int64, same shape and device as ``ids``. Vectorised: a cumulative sum for the segment
    index, a cumulative max of boundary positions for the segment start.
    """
    from ..pe.bipe import bipe_positions as _positions  # the one implementation (it also streams state)

    ids = torch.as_tensor(ids)
    if ids.dim() == 0:
        raise ValueError("ids must have at least one dimension (..., T)")
    if isinstance(boundary_ids, torch.Tensor):
        boundary_ids = boundary_ids.flatten().tolist()
    boundary = tuple(sorted(int(i) for i in boundary_ids))
    if not boundary or ids.numel() == 0:
        pos = torch.arange(ids.shape[-1], device=ids.device).expand(ids.shape)
        return pos.clone(), torch.zeros(ids.shape, dtype=torch.long, device=ids.device)
    flat = ids.reshape(-1, ids.shape[-1])                                   # (B, T)
    intra, segment, _ = _positions(flat, boundary)
    return intra.reshape(ids.shape), segment.reshape(ids.shape)


def boundary_ids_for(
    tokenizer: Tokenizer, chars: Sequence[str] = BIPE_BOUNDARY_CHARS, *, include_eos: bool = True,
) -> frozenset[int]:
    """Token ids that end a segment: tokens whose text contains any of ``chars``.

    Byte tokenizer: the bytes of the (ASCII) ``chars`` — ``{46, 10}`` by default. Other
    tokenizers: every id whose single-token decode contains a boundary character (BPE merges
    such as ``".\\n"`` included). ``include_eos`` adds ``eos_id``: a new document is a new segment.
    """
    ids: set[int] = set()
    if isinstance(tokenizer, ByteTokenizer):
        for c in chars:
            data = c.encode("utf-8")
            if len(data) != 1:
                raise ValueError(f"boundary {c!r} is not one byte; the byte tokenizer cannot "
                                 f"mark it with a single token")
            ids.add(data[0])
    else:
        for i in range(tokenizer.vocab_size):
            text = tokenizer.decode([i])
            if any(c in text for c in chars):
                ids.add(i)
    if include_eos and tokenizer.eos_id is not None:
        ids.add(tokenizer.eos_id)
    return frozenset(ids)
