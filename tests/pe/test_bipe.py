"""BiPE segment positions vs a naive loop, streaming with state, and the composite encoding."""

from __future__ import annotations

import pytest
import torch

from hopekit import pe
from hopekit.pe.bipe import BiPEParams, bipe_positions


def naive(ids, boundaries):
    intra_rows, seg_rows = [], []
    for row in ids.tolist():
        seg, intra, ri, rs = 0, 0, [], []
        for t in row:
            ri.append(intra)
            rs.append(seg)
            seg, intra = (seg + 1, 0) if t in boundaries else (seg, intra + 1)
        intra_rows.append(ri)
        seg_rows.append(rs)
    return torch.tensor(intra_rows), torch.tensor(seg_rows)


def test_matches_naive_loop_and_streams_with_state():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ids = torch.randint(0, 5, (3, 17), generator=g)
        ref_intra, ref_seg = naive(ids, {0, 1})
        intra, seg, state = bipe_positions(ids, (0, 1))
        assert torch.equal(intra, ref_intra) and torch.equal(seg, ref_seg)
        cut = int(torch.randint(1, 16, (1,), generator=g))
        i1, s1, st1 = bipe_positions(ids[:, :cut], (0, 1))
        i2, s2, st2 = bipe_positions(ids[:, cut:], (0, 1), st1)
        assert torch.equal(torch.cat([i1, i2], 1), ref_intra) and torch.equal(torch.cat([s1, s2], 1), ref_seg)
        assert torch.equal(st2, state)


def test_byte_text_example():
    text = "To be. Or not\nto be."
    ids = torch.tensor([list(text.encode())])
    intra, seg, _ = bipe_positions(ids, pe.BiPEParams().boundary_ids)
    assert seg[0].tolist() == [0] * 6 + [1] * 8 + [2] * 6
    assert intra[0, :8].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]


@pytest.mark.parametrize("inter", [{"kind": "rope"}, {"kind": "alibi"}, {"kind": "hope_highfreq", "train_len": 64},
                                   {"kind": "hope_hyperbolic"}])
def test_composite_capabilities_follow_inter(inter):
    enc = pe.build("bipe", head_dim=16, num_heads=2, inter=inter)
    assert enc.uses_embed and enc.uses_tokens
    assert (enc.uses_rotate, enc.uses_bias, enc.uses_scores) == (
        enc.inter.uses_rotate, enc.inter.uses_bias, enc.inter.uses_scores)


@pytest.mark.parametrize("bad,field", [({"inter": {"kind": "learned", "max_len": 3}}, "inter"),
                                       ({"inter": {"kind": "nonsense"}}, "inter"),
                                       ({"inter": "rope"}, "inter"),
                                       ({"intra": "alibi"}, "intra"),
                                       ({"boundary_ids": ()}, "boundary_ids"),
                                       ({"boundary_ids": (-1,)}, "boundary_ids")])
def test_validation(bad, field):
    with pytest.raises((ValueError, TypeError), match=field):
        BiPEParams(**bad)


def test_bipe_with_a_non_byte_tokenizer_needs_its_boundary_ids():
    from hopekit import pe

    class Bpe:  # any tokenizer that is not the byte tokenizer
        name, vocab_size, eos_id = "bpe-test", 3, None

        def decode(self, ids):
            return {0: "a", 1: ".", 2: "b\n"}[ids[0]]

    with pytest.raises(ValueError, match=r"pe.boundary_ids.*bpe-test.*\[1, 2\]"):
        pe.parse({"kind": "bipe"}).check_tokenizer(Bpe())
    pe.parse({"kind": "bipe", "boundary_ids": [1, 2]}).check_tokenizer(Bpe())   # explicit ids are fine


def test_bipe_positions_edge_inputs():
    from hopekit.pe.bipe import bipe_positions

    intra, segment, state = bipe_positions(torch.zeros(2, 0, dtype=torch.long), (1,))
    assert intra.shape == segment.shape == (2, 0) and state.tolist() == [[0, 0], [0, 0]]
    ids = torch.tensor([[5, 1, 5, 5]])
    assert bipe_positions(ids, frozenset({1}))[0].tolist() == [[0, 1, 0, 1]]  # boundary_ids_for's set type
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        bipe_positions(torch.tensor([5, 1]), (1,))
