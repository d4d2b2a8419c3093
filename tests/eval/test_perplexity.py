"""Perplexity protocols against naive per-window loops, per-position curves, progress bars, and the
16× length sweep for every method family (extensions: test_extensions.py; rows: test_records.py)."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from hopekit import pe
from hopekit.eval.perplexity import LengthLimitError, bin_curve, eval_kwargs, has_window, perplexity
from hopekit.eval.records import append_records, model_descriptor, read_records, skipped_records
from hopekit.config import EvalConfig

from tests.eval._toy import TRAIN_LEN, VOCAB, make, rope_model, stream  # noqa: F401 (rope_model: a fixture)


@torch.no_grad()
def window_nll(model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Plain forward of one window: per-target NLL (T,) in float64."""
    logits, _ = model(x[None])
    return F.cross_entropy(logits[0].double(), y, reduction="none")


# ----- naive references ---------------------------------------------------------------------------


def naive_nonoverlapping(model, s: torch.Tensor, L: int):
    per_pos, total, count = torch.zeros(L, dtype=torch.float64), 0.0, 0
    for b in range(0, s.numel() - L, L):
        nll = window_nll(model, s[b:b + L], s[b + 1:b + L + 1])
        per_pos += nll
        total, count = total + float(nll.sum()), count + L
    return total / count, count, per_pos


def naive_sliding(model, s: torch.Tensor, L: int, S: int):
    """Windows every S tokens (last one moved back to the end); each target scored by the first window
    that contains it, i.e. targets already scored are skipped."""
    n = s.numel()
    starts = list(range(0, n - L, S))
    if starts[-1] != n - 1 - L:
        starts.append(n - 1 - L)
    scored: dict[int, float] = {}
    per_pos_count = torch.zeros(L, dtype=torch.int64)
    for b in starts:
        nll = window_nll(model, s[b:b + L], s[b + 1:b + L + 1])
        for j in range(L):
            if b + 1 + j not in scored:                   # stream index of the target
                scored[b + 1 + j] = float(nll[j])
                per_pos_count[j] += 1
    return sum(scored.values()) / len(scored), len(scored), len(starts), sorted(scored), per_pos_count


def naive_truncate(model, docs, L: int):
    means = [float(window_nll(model, d[:L], d[1:L + 1]).mean()) for d in docs if d.numel() >= L + 1]
    return sum(means) / len(means), len(means)


# ----- protocols ----------------------------------------------------------------------------------


def test_nonoverlapping_matches_naive_loop(rope_model):
    L, s = 20, stream(213)                                   # 10 full windows + a dropped tail
    res = perplexity(rope_model, s, L, "nonoverlapping", max_tokens=None, batch_size=3)
    nll, count, per_pos = naive_nonoverlapping(rope_model, s, L)
    assert (res.tokens, res.windows, res.documents) == (count, 10, 1) == (200, 10, 1)
    assert res.nll == pytest.approx(nll, rel=1e-6) and res.ppl == pytest.approx(math.exp(nll), rel=1e-6)
    assert torch.equal(res.loss_count, torch.full((L,), 10))
    torch.testing.assert_close(res.loss_sum, per_pos, rtol=1e-5, atol=1e-6)
    assert not res.budget_reached and res.protocol == "nonoverlapping"


@pytest.mark.parametrize("S", [3, 7, 20])
def test_sliding_matches_naive_loop(rope_model, S):
    L, s = 20, stream(77)
    res = perplexity(rope_model, s, L, "sliding", stride=S, max_tokens=None, batch_size=4)
    nll, count, windows, targets, per_pos_count = naive_sliding(rope_model, s, L, S)
    assert targets == list(range(1, s.numel()))               # every target after the first, once
    assert (res.tokens, res.windows) == (count, windows) == (s.numel() - 1, windows)
    assert res.nll == pytest.approx(nll, rel=1e-6)
    assert torch.equal(res.loss_count, per_pos_count)
    assert int(res.loss_count[-1]) == windows                 # the last position is scored in every window
    if S < L:
        assert int(res.loss_count[0]) == 1                    # position 0: only in the first window


def test_truncate_matches_naive_loop_and_counts_short_documents(rope_model):
    L = 24
    docs = [stream(n, seed=i) for i, n in enumerate([60, 10, 25, 24, 100, 3])]  # 24 < L + 1: too short
    res = perplexity(rope_model, docs, L, "truncate", max_tokens=None, batch_size=2)
    nll, n_docs = naive_truncate(rope_model, docs, L)
    assert (res.documents, res.skipped_documents, res.windows, res.tokens) == (n_docs, 3, 3, 3 * L) == (3, 3, 3, 72)
    assert res.nll == pytest.approx(nll, rel=1e-6)
    # PPL is exp of the mean of per-document means (equal-length documents: also the token mean)
    assert res.nll == pytest.approx(float(res.loss_sum.sum()) / res.tokens, rel=1e-9)


def test_truncate_bos_prepends_and_scores_the_first_document_token(rope_model):
    L, bos = 12, VOCAB - 1
    docs = [stream(30, seed=3), stream(12, seed=4)]             # with BOS the 12-token one just fits
    res = perplexity(rope_model, docs, L, "truncate", bos=bos, max_tokens=None)
    ref, n = naive_truncate(rope_model, [torch.cat([torch.tensor([bos]), d]) for d in docs], L)
    assert (res.documents, res.skipped_documents) == (n, 0) == (2, 0)
    assert res.nll == pytest.approx(ref, rel=1e-6)


def test_truncate_with_no_long_document_is_nan_not_an_error(rope_model):
    res = perplexity(rope_model, [stream(10), stream(5)], 32, "truncate")
    assert res.tokens == res.documents == 0 and res.skipped_documents == 2 and math.isnan(res.ppl)


def test_sliding_with_stride_eval_len_equals_nonoverlapping(rope_model):
    """Window for window the same forwards and the same scored targets; the only difference is that
    sliding adds one final window (moved back to the stream's end) scoring the tail nonoverlapping drops."""
    L = 16
    exact = stream(5 * L + 1)                                   # no tail
    a = perplexity(rope_model, exact, L, "nonoverlapping", max_tokens=None)
    b = perplexity(rope_model, exact, L, "sliding", stride=L, max_tokens=None)
    assert (a.tokens, a.windows) == (b.tokens, b.windows) == (5 * L, 5)
    assert a.nll == pytest.approx(b.nll, rel=1e-12)
    torch.testing.assert_close(a.loss_sum, b.loss_sum)
    tail = stream(5 * L + 1 + 7)                                # 7 more targets
    a = perplexity(rope_model, tail, L, "nonoverlapping", max_tokens=None)
    b = perplexity(rope_model, tail, L, "sliding", stride=L, max_tokens=None)
    assert (b.windows, b.tokens) == (a.windows + 1, a.tokens + 7)
    assert torch.equal(b.loss_count - a.loss_count, torch.tensor([0] * (L - 7) + [1] * 7))


def test_per_position_curve_averages_to_the_mean_nll_when_windows_are_full(rope_model):
    res = perplexity(rope_model, stream(300), 24, "nonoverlapping", max_tokens=None)
    assert res.loss_by_position().shape == (24,)
    assert float(res.loss_by_position().mean()) == pytest.approx(res.nll, rel=1e-9)
    binned = res.binned(8)
    assert binned["start"] == [0, 3, 6, 9, 12, 15, 18, 21] and binned["end"][-1] == 24
    assert sum(binned["loss"]) / 8 == pytest.approx(res.nll, rel=1e-9)    # equal-width bins, equal counts


def test_bin_curve_weights_by_count_and_handles_empty_bins():
    out = bin_curve(torch.tensor([2.0, 4.0, 0.0, 9.0, 0.0]), torch.tensor([1, 1, 0, 3, 0]), bins=32)
    assert out["start"] == [0, 1, 2, 3, 4] and out["loss"] == [2.0, 4.0, None, 3.0, None]
    out = bin_curve(torch.tensor([2.0, 4.0, 0.0, 9.0]), torch.tensor([1, 1, 0, 3]), bins=2)
    assert out["loss"] == [3.0, 3.0] and out["count"] == [2, 3]


def test_budget_batching_and_documents(rope_model):
    s = stream(400)
    res = perplexity(rope_model, s, 32, "nonoverlapping", max_tokens=100)
    assert (res.windows, res.tokens, res.budget_reached) == (4, 128, True)   # the crossing window kept whole
    one = perplexity(rope_model, s, 32, "nonoverlapping", max_tokens=None, batch_size=1)
    many = perplexity(rope_model, s, 32, "nonoverlapping", max_tokens=None, batch_size=5)
    capped = perplexity(rope_model, s, 32, "nonoverlapping", max_tokens=None, batch_size=5, max_batch_tokens=64)
    assert (one.batch_size, many.batch_size, capped.batch_size) == (1, 5, 2)
    assert many.nll == pytest.approx(one.nll, rel=1e-6) and capped.nll == pytest.approx(one.nll, rel=1e-6)
    docs = [stream(50, seed=i) for i in range(6)]               # joined: 6 × 51 tokens with separators
    res = perplexity(rope_model, docs, 32, "nonoverlapping", separator=0, max_tokens=64)
    assert (res.tokens, res.documents) == (64, 2)               # targets 1…64 reach documents 0 and 1
    res = perplexity(rope_model, docs, 32, "nonoverlapping", per_document=True, max_tokens=None)
    assert (res.windows, res.documents) == (6, 6)               # one window per 50-token document


def test_argument_errors_and_training_flag_restored(rope_model):
    s = stream(100)
    with pytest.raises(ValueError, match="stride"):
        perplexity(rope_model, s, 16, "sliding")
    with pytest.raises(ValueError, match="stride"):
        perplexity(rope_model, s, 16, "nonoverlapping", stride=4)
    with pytest.raises(ValueError, match="list of documents"):
        perplexity(rope_model, s, 16, "truncate")
    with pytest.raises(ValueError, match="protocol"):
        perplexity(rope_model, s, 16, "chunked")
    rope_model.train()
    try:
        perplexity(rope_model, s, 16)
        assert rope_model.training
    finally:
        rope_model.eval()
    assert eval_kwargs(EvalConfig(protocol="sliding"), 16, 64) == \
        {"protocol": "sliding", "sampling": "spread", "max_tokens": 65536, "batch_size": 4, "stride": 16}
    with pytest.raises(ValueError, match="sampling='even'"):
        perplexity(rope_model, s, 16, sampling="even")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_over_windows_only_with_a_label_and_a_terminal(rope_model, monkeypatch):
    s = stream(213)                                            # 10 windows of 20
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    quiet = perplexity(rope_model, s, 20, max_tokens=None)
    assert err.getvalue() == ""
    shown = perplexity(rope_model, s, 20, max_tokens=None, progress="rope @ 20")
    assert "rope @ 20" in err.getvalue() and "/10 [" in err.getvalue() and shown.nll == quiet.nll
    budget = perplexity(rope_model, s, 20, max_tokens=50, progress="budget")
    assert budget.windows == 3 and "/3 [" in err.getvalue()    # the total counts only what the budget admits
    monkeypatch.setattr("sys.stderr", io.StringIO())           # not a terminal: no bar even when asked
    perplexity(rope_model, s, 20, max_tokens=None, progress="rope @ 20")
    assert sys.stderr.getvalue() == ""


def test_has_window_matches_what_perplexity_scores(rope_model):
    docs = [stream(12, seed=1), stream(7, seed=2)]            # a separator after each: a 21-token stream
    for protocol, L, kw in (("nonoverlapping", 20, {}), ("nonoverlapping", 21, {}), ("sliding", 20, {"stride": 5}),
                            ("truncate", 11, {}), ("truncate", 12, {})):
        fits = has_window(docs, L, protocol, separator=0, **kw)
        assert fits == (perplexity(rope_model, docs, L, protocol, separator=0, **kw).tokens > 0)
    for sampling in ("prefix", "spread"):   # the joined stream, or each document on its own
        for protocol, L, kw in (("nonoverlapping", 20, {}), ("nonoverlapping", 11, {}), ("sliding", 11, {"stride": 5})):
            fits = has_window(docs, L, protocol, separator=0, sampling=sampling, **kw)
            scored = perplexity(rope_model, docs, L, protocol, separator=0, sampling=sampling, **kw).tokens
            assert fits == (scored > 0)
    assert has_window(docs, 20, separator=0, sampling="prefix") and not has_window(docs, 21, separator=0,
                                                                                    sampling="prefix")
    assert has_window(docs, 11) and not has_window(docs, 12)   # spread: the longest document has 12 tokens
    assert not has_window([], 4) and not has_window(docs, 12, "truncate")


# ----- 16× train_len for every method family ------------------------------------------------------


@pytest.mark.parametrize("kind,params", [
    ("rope", {}), ("alibi", {}), ("hope_hyperbolic", {"omega_scale": 0.05, "penalty": 0.06}),
    ("sinusoidal", {}), ("nope", {}),
])
def test_eval_at_16x_train_len_runs_for_every_family(kind, params):
    model = make(kind, **params)
    L = 16 * TRAIN_LEN
    for protocol, kw in (("nonoverlapping", {}), ("sliding", {"stride": 4 * TRAIN_LEN})):
        res = perplexity(model, stream(2 * L + 1), L, protocol, max_tokens=None, **kw)
        assert res.tokens == 2 * L and math.isfinite(res.nll) and torch.isfinite(res.loss_by_position()).all()


def test_learned_absolute_refuses_beyond_its_table_and_is_recorded_as_a_skip(tmp_path):
    model = make("learned", max_len=TRAIN_LEN)
    assert math.isfinite(perplexity(model, stream(100), TRAIN_LEN).nll)
    with pytest.raises(LengthLimitError, match="max_len=16"):
        perplexity(model, stream(1000), 16 * TRAIN_LEN)
    rows = skipped_records(method="learned", params=pe.to_config(model.config.pe), train_len=TRAIN_LEN, eval_len=16 * TRAIN_LEN,
                           protocol="nonoverlapping", seed=0, model=model_descriptor(model), corpus="toy",
                           reason="beyond the learned table")
    assert [r["metric"] for r in rows] == ["ppl", "nll"] and all(r["value"] is None for r in rows)
    append_records(tmp_path / "r.jsonl", rows)
    assert read_records(tmp_path / "r.jsonl")[0]["skipped"] == "beyond the learned table"


# --- window sampling ---------------------------------------------------------------------------------

def _naive_window_nll(model, window):
    """Summed NLL of one window, scored alone (the reference for the batched, sampled path)."""
    with torch.no_grad():
        logits, _ = model(window.input_ids[None])
    nll = torch.nn.functional.cross_entropy(logits[0].double(), window.target_ids, reduction="none")
    return float(nll[window.loss_mask].sum()), int(window.loss_mask.sum())


@pytest.mark.parametrize("protocol,kw,budget", [("nonoverlapping", {}, 200), ("sliding", {"stride": 6}, 200),
                                                ("truncate", {}, 40)])
def test_spread_scores_evenly_spaced_windows_of_every_document(rope_model, protocol, kw, budget):
    from hopekit.data import eval_windows

    docs = [stream(n, seed=i) for i, n in enumerate((150, 17, 90, 300, 44))]
    L = 16
    res = perplexity(rope_model, docs, L, protocol, max_tokens=budget, batch_size=3, separator=0, **kw)
    # reference: every document windowed on its own, in order; k windows at floor((j + 1/2) n / k)
    every = [(i, w) for i, d in enumerate(docs) for w in eval_windows(protocol, [d], L, per_document=True, **kw)]
    n, total = len(every), sum(int(w.loss_mask.sum()) for _, w in every)
    k = -(-budget * n // total)
    assert k < n                                             # the budget binds
    chosen = [every[(2 * j + 1) * n // (2 * k)] for j in range(k)]
    sums = [_naive_window_nll(rope_model, w) for _, w in chosen]
    assert res.windows == k and res.budget_reached and res.sampling == "spread"
    assert res.tokens == sum(c for _, c in sums)
    assert res.nll == pytest.approx(sum(s for s, _ in sums) / res.tokens, abs=1e-5)
    assert res.documents == len({i for i, _ in chosen})
    assert [round(x, 4) for x in res.window_nll] == [round(s, 4) for s, _ in sums]
    # later documents are reached, not only the first: the chosen windows span the whole list
    assert chosen[0][0] == 0 and chosen[-1][0] == len(docs) - 1


def test_spread_without_a_budget_is_every_document_on_its_own(rope_model):
    docs = [stream(70, seed=3), stream(5, seed=4), stream(41, seed=5)]
    spread = perplexity(rope_model, docs, 8, max_tokens=None, separator=0)
    alone = perplexity(rope_model, docs, 8, max_tokens=None, separator=0, per_document=True, sampling="prefix")
    joined = perplexity(rope_model, docs, 8, max_tokens=None, separator=0, sampling="prefix")
    assert spread.tokens == alone.tokens and spread.nll == pytest.approx(alone.nll, abs=1e-6)
    assert not spread.budget_reached and spread.documents == 2   # the 5-token one holds no window
    assert joined.tokens != spread.tokens            # the joined stream windows across the separators


def test_prefix_sampling_takes_windows_in_order_from_the_start(rope_model):
    docs = [stream(200, seed=6), stream(200, seed=7)]
    res = perplexity(rope_model, docs, 10, max_tokens=30, separator=0, sampling="prefix")
    assert res.tokens == 30 and res.documents == 1 and res.budget_reached


def test_bootstrap_interval_brackets_the_estimate_and_matches_the_normal_approximation(rope_model):
    res = perplexity(rope_model, stream(4000, seed=8), 8, max_tokens=None)
    low, high = res.bootstrap_ppl(resamples=2000)
    assert low < res.ppl < high and res.bootstrap_ppl(resamples=2000) == (low, high)   # seeded
    # delta method: se(mean nll) over equal-size windows; the interval is about exp(nll ± 1.96 se)
    per = torch.tensor(res.window_nll, dtype=torch.float64) / torch.tensor(res.window_tokens, dtype=torch.float64)
    se = float(per.std() / per.numel() ** 0.5)
    assert math.log(high / low) == pytest.approx(2 * 1.96 * se, rel=0.15)
