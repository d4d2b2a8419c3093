"""BiPE segment positions: the vectorised version against a plain Python loop."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hopekit.data import (
    BIPE_BOUNDARY_CHARS,
    ByteTokenizer,
    bipe_positions,
    boundary_ids_for,
    load_corpus,
    train_bpe,
)


def naive(ids: list[int], boundaries: set[int]) -> tuple[list[int], list[int]]:
    intra, segment = [], []
    seg = pos = 0
    for t in ids:
        intra.append(pos)
        segment.append(seg)
        if t in boundaries:     # a boundary ends its segment: the next token starts a new one
            seg += 1
            pos = 0
        else:
            pos += 1
    return intra, segment


def test_worked_example():
    tok = ByteTokenizer()
    ids = torch.tensor(tok.encode("Ay.\nNo. So"))
    intra, segment = bipe_positions(ids, boundary_ids_for(tok))
    #                   A  y  .  \n N  o  .  ' ' S  o
    assert intra.tolist() == [0, 1, 2, 0, 0, 1, 2, 0, 1, 2]
    assert segment.tolist() == [0, 0, 0, 1, 2, 2, 2, 3, 3, 3]


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 4), T=st.integers(0, 50), vocab=st.integers(1, 8),
       boundaries=st.sets(st.integers(0, 9), max_size=4), seed=st.integers(0, 2**16))
def test_matches_the_naive_loop(rows, T, vocab, boundaries, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, T), generator=g)
    intra, segment = bipe_positions(ids, boundaries)
    assert intra.shape == segment.shape == ids.shape
    assert intra.dtype == segment.dtype == torch.long
    for r in range(rows):
        ni, ns = naive(ids[r].tolist(), boundaries)
        assert intra[r].tolist() == ni and segment[r].tolist() == ns
    # a 1-D input gives the same as its row
    if rows and T:
        i1, s1 = bipe_positions(ids[0], boundaries)
        assert torch.equal(i1, intra[0]) and torch.equal(s1, segment[0])


def test_tensor_boundaries_and_no_boundaries():
    ids = torch.tensor([[5, 1, 5, 5, 1]])
    i, s = bipe_positions(ids, torch.tensor([1]))
    assert i.tolist() == [[0, 1, 0, 1, 2]] and s.tolist() == [[0, 0, 1, 1, 1]]
    i, s = bipe_positions(ids, [])
    assert i.tolist() == [[0, 1, 2, 3, 4]] and s.tolist() == [[0] * 5]
    with pytest.raises(ValueError):
        bipe_positions(torch.tensor(3), [1])


def test_boundary_ids_for_bytes():
    assert BIPE_BOUNDARY_CHARS == (".", "\n")
    assert boundary_ids_for(ByteTokenizer()) == {46, 10, 256}
    assert boundary_ids_for(ByteTokenizer(), include_eos=False) == {46, 10}
    assert boundary_ids_for(ByteTokenizer(specials=())) == {46, 10}
    assert boundary_ids_for(ByteTokenizer(), ("?", "!"), include_eos=False) == {63, 33}
    with pytest.raises(ValueError, match="one byte"):
        boundary_ids_for(ByteTokenizer(), ("。",))


def test_boundary_ids_for_bpe(tmp_path):
    pytest.importorskip("tokenizers")
    texts = [d.text[:15_000] for d in load_corpus("shakespeare", "train")[:6]]
    tok = train_bpe(texts, 360, corpus="t", directory=tmp_path)
    b = boundary_ids_for(tok)
    assert tok.eos_id in b
    for i in range(tok.vocab_size):
        s = tok.decode([i])
        assert (i in b) == (("." in s) or ("\n" in s) or i == tok.eos_id), (i, s)
    # segments computed on BPE ids end exactly where the text has a boundary character
    text = "Good night.\nSweet prince. And flights of angels"
    ids = torch.tensor(tok.encode(text))
    _, segment = bipe_positions(ids, b)
    pieces = [tok.decode([i]) for i in ids.tolist()]
    n_boundary_tokens = sum(1 for p in pieces if "." in p or "\n" in p)
    assert int(segment[-1]) == n_boundary_tokens


def test_agrees_with_the_pe_bipe_helper():
    pe_bipe = pytest.importorskip("hopekit.pe.bipe")
    if not hasattr(pe_bipe, "bipe_positions"):
        pytest.skip("hopekit.pe.bipe has no bipe_positions")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 60, (3, 200), generator=g)
    boundaries = (46, 10, 3, 7)
    ours = bipe_positions(ids, boundaries)
    theirs = pe_bipe.bipe_positions(ids, boundaries)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
