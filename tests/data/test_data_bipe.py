"""BiPE's tokenizer side (which ids end a segment) and, against a plain Python loop, the one
``bipe_positions`` (:func:`hopekit.pe.bipe.bipe_positions`, the encoding's, which streams state)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import hopekit.data
from hopekit.data import BIPE_BOUNDARY_CHARS, ByteTokenizer, boundary_ids_for, load_corpus, train_bpe
from hopekit.pe.bipe import bipe_positions


def naive(ids: list[int], boundaries: set[int], seg: int = 0, pos: int = 0):
    """``(intra, segment, (next_segment, next_intra))`` token by token, from a running state."""
    intra, segment = [], []
    for t in ids:
        intra.append(pos)
        segment.append(seg)
        if t in boundaries:     # a boundary ends its segment: the next token starts a new one
            seg += 1
            pos = 0
        else:
            pos += 1
    return intra, segment, (seg, pos)


def test_data_has_no_second_bipe_positions():
    """One public ``bipe_positions`` (the encoding's); data keeps only the tokenizer side."""
    assert not hasattr(hopekit.data, "bipe_positions")
    assert not hasattr(hopekit.data.bipe, "bipe_positions")
    assert "bipe_positions" not in hopekit.data.__all__


def test_worked_example():
    tok = ByteTokenizer()
    ids = torch.tensor([tok.encode("Ay.\nNo. So")])
    intra, segment, state = bipe_positions(ids, tuple(sorted(boundary_ids_for(tok))))
    #                   A  y  .  \n N  o  .  ' ' S  o
    assert intra.tolist() == [[0, 1, 2, 0, 0, 1, 2, 0, 1, 2]]
    assert segment.tolist() == [[0, 0, 0, 1, 2, 2, 2, 3, 3, 3]]
    assert state.tolist() == [[3, 3]]


@settings(max_examples=150, deadline=None)
@given(rows=st.integers(1, 4), T=st.integers(2, 50), vocab=st.integers(1, 8),
       boundaries=st.sets(st.integers(0, 9), min_size=1, max_size=4), seed=st.integers(0, 2**16),
       data=st.data())
def test_matches_the_naive_loop_whole_and_streamed(rows, T, vocab, boundaries, seed, data):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, T), generator=g)
    b = tuple(sorted(boundaries))
    intra, segment, state = bipe_positions(ids, b)
    assert intra.shape == segment.shape == ids.shape and state.shape == (rows, 2)
    assert intra.dtype == segment.dtype == state.dtype == torch.long
    for r in range(rows):
        ni, ns, nstate = naive(ids[r].tolist(), boundaries)
        assert intra[r].tolist() == ni and segment[r].tolist() == ns and tuple(state[r].tolist()) == nstate
    # streaming: the state after a prefix continues exactly where the whole sequence would be
    cut = data.draw(st.integers(1, T - 1))
    i1, s1, st1 = bipe_positions(ids[:, :cut], b)
    i2, s2, st2 = bipe_positions(ids[:, cut:], b, st1)
    assert torch.equal(torch.cat([i1, i2], 1), intra) and torch.equal(torch.cat([s1, s2], 1), segment)
    assert torch.equal(st2, state)


def test_tensor_boundaries_and_no_boundaries():
    ids = torch.tensor([[5, 1, 5, 5, 1]])
    i, s, _ = bipe_positions(ids, torch.tensor([1]))
    assert i.tolist() == [[0, 1, 0, 1, 2]] and s.tolist() == [[0, 0, 1, 1, 1]]
    i, s, _ = bipe_positions(ids, ())
    assert i.tolist() == [[0, 1, 2, 3, 4]] and s.tolist() == [[0] * 5]


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
    ids = torch.tensor([tok.encode(text)])
    _, segment, _ = bipe_positions(ids, tuple(sorted(b)))
    pieces = [tok.decode([i]) for i in ids[0].tolist()]
    n_boundary_tokens = sum(1 for p in pieces if "." in p or "\n" in p)
    assert int(segment[0, -1]) == n_boundary_tokens
