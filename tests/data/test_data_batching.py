"""Token streams, reproducible training batches, and the three evaluation protocols.

The protocol tests use a toy stream whose tokens are their own positions (``arange(n)``), so a
target's value says which stream position it is and "scored exactly once" is a count.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hopekit.data import (
    NONOVERLAP,
    PROTOCOLS,
    SLIDING,
    TRUNCATE,
    ByteTokenizer,
    Document,
    TrainBatches,
    encode_documents,
    eval_windows,
    load_corpus,
    nonoverlap_windows,
    sliding_windows,
    token_stream,
    truncate_windows,
)


def _scored(windows) -> Counter:
    """stream position -> how many times it was scored (positions are the token values)."""
    c: Counter = Counter()
    for w in windows:
        assert w.input_ids.shape == w.target_ids.shape == w.loss_mask.shape
        assert w.loss_mask.dtype == torch.bool
        c.update(w.target_ids[w.loss_mask].tolist())
    return c


# --- streams -------------------------------------------------------------------------------------

def test_token_stream_layout():
    tok = ByteTokenizer()
    docs = [Document("a", "A", "ab"), Document("b", "B", ""), Document("c", "C", "é")]
    s = token_stream(docs, tok)
    assert s.dtype == torch.long
    assert s.tolist() == [97, 98, 256, 256, 0xC3, 0xA9, 256]
    assert token_stream(["ab", "c"], tok, separator=None).tolist() == [97, 98, 99]
    assert token_stream(["ab"], tok, separator=7).tolist() == [97, 98, 7]
    with pytest.raises(ValueError, match="eos_id"):
        token_stream(["ab"], ByteTokenizer(specials=()))


class _OffByOne:
    """A tokenizer whose encode gives an id == vocab_size (one past its table)."""

    name, vocab_size, bos_id, eos_id = "offbyone", 10, None, 9

    def encode(self, text):
        return [len(text) % 10 for _ in text] + [10]

    def decode(self, ids):
        return ""


def test_token_ids_outside_the_vocabulary_are_refused():
    with pytest.raises(ValueError, match=r"offbyone.encode\(...\) holds token id 10 at position 3, "
                                         r"outside the vocabulary \[0, 10\)"):
        token_stream(["abc"], _OffByOne())
    with pytest.raises(ValueError, match=r"offbyone.encode"):
        encode_documents(["abc"], _OffByOne())
    tok = ByteTokenizer()
    for bad in (257, -1, "256"):
        with pytest.raises(ValueError, match=rf"separator={bad!r}: .* \[0, 257\)"):
            token_stream(["ab"], tok, separator=bad)
    assert token_stream(["ab"], tok, separator=256).tolist() == [97, 98, 256]
    stream = token_stream(["hello", "world"], tok)
    TrainBatches(stream, batch_size=2, train_len=4, vocab_size=tok.vocab_size)   # in range: fine
    for bad in (257, -3):
        bad_stream = stream.clone()
        bad_stream[7] = bad
        with pytest.raises(ValueError, match=rf"TrainBatches.stream holds token id {bad} at position 7, "
                                             r"outside the vocabulary \[0, 257\)"):
            TrainBatches(bad_stream, batch_size=2, train_len=4, vocab_size=tok.vocab_size)
    with pytest.raises(ValueError, match="vocab_size"):
        TrainBatches(stream, batch_size=2, train_len=4, vocab_size=0)


def test_encode_documents_matches_generic_encode():
    tok = ByteTokenizer()
    text = "Ay, there's the rub;\nFor in that sleep of death — what dreams may come\n"
    (fast,) = encode_documents([text], tok)
    assert fast.tolist() == tok.encode(text)


# --- training batches ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stream():
    return torch.arange(10_000)


def test_same_seed_and_step_give_the_same_batch(stream):
    a = TrainBatches(stream, batch_size=8, train_len=32, seed=3)
    b = TrainBatches(stream.clone(), batch_size=8, train_len=32, seed=3)
    for step in (0, 1, 17, 10_000):
        xa, ya = a.batch(step)
        xb, yb = b.batch(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.batch(0)[0], a.batch(1)[0])
    assert not torch.equal(a.batch(0)[0], TrainBatches(stream, 8, 32, seed=4).batch(0)[0])
    assert not torch.equal(a.batch(5, rank=0)[0], a.batch(5, rank=1)[0])


def test_batches_do_not_depend_on_the_global_rng(stream):
    tb = TrainBatches(stream, batch_size=4, train_len=16, seed=0)
    torch.manual_seed(1)
    x1 = tb.batch(3)[0]
    torch.manual_seed(2)
    torch.rand(100)
    assert torch.equal(x1, tb.batch(3)[0])


def test_resume_replays_the_uninterrupted_run(stream):
    tb = TrainBatches(stream, batch_size=4, train_len=16, seed=11)
    full = [tb.batch(step) for step in range(10)]
    resumed = TrainBatches(stream.clone(), batch_size=4, train_len=16, seed=11)   # a new process at step 6
    for step in range(6, 10):
        x, y = resumed.batch(step)
        assert torch.equal(x, full[step][0]) and torch.equal(y, full[step][1])


def test_windows_are_contiguous_and_targets_shifted(stream):
    tb = TrainBatches(stream, batch_size=64, train_len=50, seed=0)
    x, y = tb.batch(0)
    assert x.shape == y.shape == (64, 50) and x.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x, x[:, :1] + torch.arange(50))          # contiguous slices of arange
    assert int(y.max()) < stream.numel()


def test_every_start_is_reachable():
    tb = TrainBatches(torch.arange(12), batch_size=256, train_len=4, seed=0)
    starts = torch.cat([tb.starts(s) for s in range(4)])
    assert set(starts.tolist()) == set(range(12 - 4))          # 8 possible windows of 5 tokens


def test_train_batches_validate():
    with pytest.raises(ValueError, match="train_len"):
        TrainBatches(torch.arange(10), batch_size=2, train_len=10)
    with pytest.raises(ValueError, match="1-D"):
        TrainBatches(torch.zeros(2, 10, dtype=torch.long), batch_size=2, train_len=4)


def test_training_batches_from_the_shipped_corpus():
    tok = ByteTokenizer()
    stream = token_stream(load_corpus("shakespeare", "validation"), tok)
    x, y = TrainBatches(stream, batch_size=4, train_len=128, seed=0).batch(0)
    assert tok.decode(x[0].tolist()).isprintable() or "\n" in tok.decode(x[0].tolist())


# --- evaluation protocols ------------------------------------------------------------------------

@settings(max_examples=80, deadline=None)
@given(n=st.integers(2, 300), eval_len=st.integers(1, 64))
def test_nonoverlap_scores_every_full_window_target_once(n, eval_len):
    windows = list(nonoverlap_windows(torch.arange(n), eval_len))
    k = (n - 1) // eval_len                                    # full windows that fit
    assert len(windows) == k
    assert all(w.input_ids.numel() == eval_len and bool(w.loss_mask.all()) for w in windows)
    assert _scored(windows) == Counter(range(1, k * eval_len + 1))
    # windows do not overlap: each input position appears once
    inputs = Counter(t for w in windows for t in w.input_ids.tolist())
    assert all(v == 1 for v in inputs.values())


@settings(max_examples=120, deadline=None)
@given(n=st.integers(2, 300), eval_len=st.integers(1, 64), data=st.data())
def test_sliding_scores_every_target_exactly_once(n, eval_len, data):
    stride = data.draw(st.integers(1, eval_len))
    windows = list(sliding_windows(torch.arange(n), eval_len, stride))
    if n - 1 < eval_len:
        assert windows == []
        return
    assert all(w.input_ids.numel() == eval_len for w in windows)
    assert _scored(windows) == Counter(range(1, n))            # every target 1..n-1, once
    assert bool(windows[0].loss_mask.all())
    for w in windows[1:-1]:                                    # the middle ones score `stride` new tokens
        assert int(w.loss_mask.sum()) == stride
        assert bool(w.loss_mask[-stride:].all())               # ...the last ones, with most context
    assert int(windows[-1].target_ids[-1]) == n - 1


def test_sliding_with_stride_eval_len_is_nonoverlap_plus_tail():
    s = torch.arange(101)
    slid, non = list(sliding_windows(s, 10, 10)), list(nonoverlap_windows(s, 10))
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(slid, non, strict=False))
    assert len(slid) == len(non) == 10                          # 100 targets: no tail
    s = torch.arange(105)
    slid, non = list(sliding_windows(s, 10, 10)), list(nonoverlap_windows(s, 10))
    assert len(slid) == len(non) + 1 and int(slid[-1].loss_mask.sum()) == 4


def test_sliding_rejects_bad_stride():
    with pytest.raises(ValueError, match="stride"):
        list(sliding_windows(torch.arange(50), 8, 9))
    with pytest.raises(ValueError, match="stride"):
        list(sliding_windows(torch.arange(50), 8, 0))


def _toy_docs(lengths):
    out, start = [], 0
    for n in lengths:
        out.append(torch.arange(start, start + n))
        start += n
    return out


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(0, 60), min_size=1, max_size=8), eval_len=st.integers(1, 40))
def test_truncate_scores_the_first_eval_len_targets_of_each_long_enough_document(lengths, eval_len):
    docs = _toy_docs(lengths)
    windows = list(truncate_windows(docs, eval_len))
    expected = Counter(t for d in docs if d.numel() >= eval_len + 1 for t in d[1: eval_len + 1].tolist())
    assert _scored(windows) == expected
    assert len(windows) == sum(1 for d in docs if d.numel() >= eval_len + 1)
    for w in windows:
        assert bool(w.loss_mask.all()) and w.input_ids.numel() == eval_len
        assert torch.equal(w.target_ids[:-1], w.input_ids[1:])


def test_truncate_pads_short_documents_when_asked():
    docs = _toy_docs([3, 20, 1])
    windows = list(truncate_windows(docs, 8, drop_short=False, pad_id=-1))
    assert len(windows) == 2                                   # a 1-token document has no target
    short = windows[0]
    assert short.loss_mask.tolist() == [True, True] + [False] * 6
    assert short.target_ids[:2].tolist() == [1, 2] and short.input_ids[2:].eq(-1).all()


def test_eval_windows_dispatch_and_per_document():
    docs = _toy_docs([30, 25, 12])
    sep = -5                                       # a separator after each document
    stream_windows = list(eval_windows(SLIDING, docs, 10, stride=4, separator=sep))
    scored = _scored(stream_windows)
    assert sum(scored.values()) == (30 + 25 + 12 + 3) - 1
    assert scored.pop(sep) == 3 and scored == Counter(range(1, 67))
    per_doc = list(eval_windows(SLIDING, docs, 10, stride=4, per_document=True))
    assert _scored(per_doc) == Counter(t for d in docs for t in d[1:].tolist())
    non = list(eval_windows(NONOVERLAP, docs, 10, per_document=True))
    assert len(non) == 2 + 2 + 1
    tr = list(eval_windows(TRUNCATE, docs, 20))
    assert len(tr) == 2
    with pytest.raises(ValueError, match="stride"):
        eval_windows(NONOVERLAP, docs, 10, stride=5)
    with pytest.raises(ValueError, match="stride"):
        eval_windows(SLIDING, docs, 10)
    with pytest.raises(ValueError, match="protocol"):
        eval_windows("strided", docs, 10)
    assert set(PROTOCOLS) == {NONOVERLAP, SLIDING, TRUNCATE}


def test_protocols_on_the_shipped_test_split():
    tok = ByteTokenizer()
    docs = encode_documents(load_corpus("shakespeare", "test"), tok)
    n = sum(d.numel() for d in docs) + len(docs)
    scored = sum(_scored(eval_windows(SLIDING, docs, 1024, stride=512, separator=tok.eos_id)).values())
    assert scored == n - 1
    scored = sum(_scored(eval_windows(NONOVERLAP, docs, 1024, separator=tok.eos_id)).values())
    assert scored == (n - 1) // 1024 * 1024
    assert len(list(eval_windows(TRUNCATE, docs, 4096))) == len(docs)
