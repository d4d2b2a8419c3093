"""BiPE's tokenizer side: which token ids end a segment (He et al., ICML 2024, "Two Stones Hit
One Bird: Bilevel Positional Encoding for Better Length Extrapolation").

BiPE splits a sequence into segments (sentences) at boundary tokens and gives every token two
positions: its **intra-segment** position (0 at each segment start, fed to an absolute encoding)
and its **segment index** (fed to a relative encoding between segments). A boundary token
(``.`` or a newline for the byte tokenizer) ends its segment; the token after it starts the next.

The positions themselves are computed by the encoding, :func:`hopekit.pe.bipe.bipe_positions`
(it also carries the running state while decoding); this module only says which ids of a given
tokenizer are boundaries, for the encoding's ``boundary_ids``.
"""

from __future__ import annotations

from collections.abc import Sequence

from .tokenizer import ByteTokenizer, Tokenizer

#: the characters that end a segment by default (the paper's full stop and newline)
BIPE_BOUNDARY_CHARS: tuple[str, ...] = (".", "\n")


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
