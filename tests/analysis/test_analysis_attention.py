"""analysis.attention: profiles and far-token mass of models whose attention is known in closed form
(q/k projections zeroed: nope → uniform causal attention, alibi → softmax of −slope·Δ), for a hopekit
Decoder and a transformers Llama; records and plots from records."""

from __future__ import annotations

import math

import pytest
import torch

from hopekit.analysis.attention import (DENSITY_METRICS, attention_profile, attention_profiles, far_mass_records, far_mass_vs_length,
                                        plot_attention_by_key, plot_far_mass, plot_u_heatmap, profile_records,
                                        text_windows, uniform_far_mass)
from hopekit.eval.records import REQUIRED_FIELDS
from hopekit.model import Decoder, ModelConfig

VOCAB = 32


def forced(kind: str, layers: int = 2, heads: int = 4) -> Decoder:
    """A decoder whose queries and keys are zero: its logits are the encoding's bias alone."""
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=layers, n_heads=heads, attn_chunk=7, pe={"kind": kind})
    model = Decoder(cfg).eval()
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.wq.weight.zero_()
            blk.attn.wk.weight.zero_()
    return model


def oracle_weights(T: int, slopes: list[float]) -> torch.Tensor:
    """(H, T, T) float64 softmax over causal keys of −slope·(m − n)."""
    m = torch.arange(T, dtype=torch.float64)[:, None]
    n = torch.arange(T, dtype=torch.float64)[None, :]
    out = []
    for s in slopes:
        logits = (-s * (m - n)).masked_fill(n > m, -math.inf)
        out.append(logits.softmax(-1))
    return torch.stack(out)


def naive_profile(w: torch.Tensor, q0: int, first: int, near: int) -> dict[str, torch.Tensor]:
    """Loops over (H, T, T) weights: densities, curves by key and by distance over rows q0 … T−1."""
    H, T, _ = w.shape
    out = {k: torch.zeros(H, dtype=torch.float64) for k in ("first", "middle", "near")}
    by_key, by_dist = torch.zeros(H, T, dtype=torch.float64), torch.zeros(H, T, dtype=torch.float64)
    n_key, n_dist = torch.zeros(T), torch.zeros(T)
    for m in range(q0, T):
        groups = {"first": list(range(first)), "near": list(range(m - near + 1, m + 1)),
                  "middle": list(range(first, m - near + 1))}
        for g, keys in groups.items():
            out[g] += w[:, m, keys].sum(-1) / len(keys) / (T - q0)
        for n in range(m + 1):
            by_key[:, n] += w[:, m, n]
            n_key[n] += 1
            by_dist[:, m - n] += w[:, m, n]
            n_dist[m - n] += 1
    out["index"] = torch.log(torch.minimum(out["first"], out["near"]) / out["middle"])
    out["by_key"], out["by_distance"] = by_key / n_key, by_dist / n_dist
    return out


def test_text_windows_are_evenly_spaced_inside_documents():
    docs = [torch.arange(0, 50), torch.arange(100, 125), torch.arange(200, 209)]   # 5, 2 and 0 windows of 10
    all_ = text_windows(docs, 10, 100)
    assert all_.shape == (7, 10) and all_.dtype == torch.long
    assert all_[:, 0].tolist() == [0, 10, 20, 30, 40, 100, 110]                   # none crosses a document
    assert (all_.diff(dim=1) == 1).all()
    two = text_windows(docs, 10, 2)                                                # floor((j + ½)·7/2) = 1, 5
    assert two[:, 0].tolist() == [10, 100]
    with pytest.raises(ValueError, match="length=60: no document"):
        text_windows(docs, 60, 1)
    with pytest.raises(ValueError, match="count: expected an int >= 1"):
        text_windows(docs, 10, 0)


def test_uniform_attention_has_index_zero_and_the_closed_form_far_mass():
    model = forced("nope")
    T = 64
    windows = torch.randint(0, VOCAB, (3, T))
    prof = attention_profile(model, windows, first=4, near=8, batch=2)
    assert prof.u_index.shape == prof.density_middle.shape == (3, 2, 4)
    torch.testing.assert_close(prof.u_index, torch.zeros(3, 2, 4, dtype=torch.float64), atol=1e-6, rtol=0)
    ref = naive_profile(oracle_weights(T, [0.0]), T - T // 4, 4, 8)                # uniform = slope 0
    torch.testing.assert_close(prof.by_key, ref["by_key"].expand(2, 4, T), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(prof.by_distance, ref["by_distance"].expand(2, 4, T), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(prof.last_query, torch.full((2, 4, T), 1.0 / T, dtype=torch.float64))
    # far mass against brute-force counting of the keys more than `beyond` back, per query
    docs = [torch.randint(0, VOCAB, (300,))]
    far = far_mass_vs_length(model, docs, [40, 96], beyond=16, windows=2)
    for L, last in ((40, 10), (96, 24)):
        brute = sum(sum(1 for n in range(m + 1) if m - n > 16) / (m + 1) for m in range(L - last, L)) / last
        assert far[L].last == last and far[L].windows == 2
        assert uniform_far_mass(L, 16) == pytest.approx(brute, rel=1e-12)
        torch.testing.assert_close(far[L].mass, torch.full((2, 2, 4), brute, dtype=torch.float64), rtol=1e-5, atol=0)


def test_alibi_profile_matches_the_closed_form_per_head():
    model = forced("alibi")
    T = 48
    prof = attention_profile(model, torch.randint(0, VOCAB, (2, T)), first=2, near=6, last=12, batch=1)
    slopes = [2.0 ** (-8.0 * (h + 1) / 4) for h in range(4)]                      # max_bias 8, 4 heads
    ref = naive_profile(oracle_weights(T, slopes), T - 12, 2, 6)
    for l in range(2):
        for name, got in (("index", prof.u_index), ("first", prof.density_first), ("middle", prof.density_middle),
                          ("near", prof.density_near)):
            torch.testing.assert_close(got[:, l], ref[name].expand(2, 4), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(prof.by_key[l], ref["by_key"], rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(prof.by_distance[l], ref["by_distance"], rtol=1e-4, atol=1e-8)
    assert (prof.u_index[:, :, 0] < 0).all()          # the steepest head is local: the first keys get least


def test_several_group_sizes_from_one_pass_match_the_closed_form():
    model = forced("alibi", layers=1)
    T = 40
    profs = attention_profiles(model, torch.randint(0, VOCAB, (2, T)), [(2, 6), (5, 12)], batch=2)
    slopes = [2.0 ** (-8.0 * (h + 1) / 4) for h in range(4)]
    for prof, (first, near) in zip(profs, [(2, 6), (5, 12)]):
        ref = naive_profile(oracle_weights(T, slopes), T - T // 4, first, near)
        assert (prof.first, prof.near, prof.last) == (first, near, T // 4)
        torch.testing.assert_close(prof.u_index[:, 0], ref["index"].expand(2, 4), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(prof.by_distance[0], ref["by_distance"], rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="groups: expected a non-empty list"):
        attention_profiles(model, torch.zeros(1, T, dtype=torch.long), [])


def test_records_carry_the_profile_and_the_required_fields(tmp_path):
    model = forced("alibi")
    prof = attention_profile(model, torch.randint(0, VOCAB, (3, 32)), first=2, near=4)
    fields = dict(method="alibi", params={"kind": "alibi"}, train_len=32, seed=1, model="tiny", corpus="random")
    rows = profile_records(prof, **fields)
    assert all(set(REQUIRED_FIELDS) <= set(r) for r in rows)
    u = [r for r in rows if r["metric"] == "u_shape_index"]
    assert len(u) == 2 * 4 and all(r["windows"] == 3 and r["eval_len"] == 32 and r["first"] == 2 for r in u)
    r = next(r for r in u if r["layer"] == 1 and r["head"] == 3)
    assert r["value"] == pytest.approx(float(prof.u_index[:, 1, 3].mean()))
    assert r["sd_windows"] == pytest.approx(float(prof.u_index[:, 1, 3].std()), abs=1e-12)
    assert {r["metric"] for r in rows} >= set(DENSITY_METRICS)
    bare = profile_records(prof, curves=False, **fields)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]   # noqa: E731
    assert strip(r for r in rows if not r["metric"].startswith("attention_by")) == strip(bare)
    curve = next(r for r in rows if r["metric"] == "attention_by_key_last" and r["layer"] == 0)
    assert len(curve["value"]) == 32 and curve["value"] == pytest.approx(prof.last_query[0].mean(0).tolist(), rel=1e-4)
    far = far_mass_vs_length(model, [torch.randint(0, VOCAB, (200,))], [32, 64], beyond=8, windows=2)
    frows = far_mass_records(far, **{k: v for k, v in fields.items()})
    assert len(frows) == 2 * 2 * 4 and all(set(REQUIRED_FIELDS) <= set(r) for r in frows)
    assert {r["eval_len"] for r in frows} == {32, 64} and all(r["beyond"] == 8 for r in frows)
    # plots from records: written and non-empty
    rows2 = profile_records(prof, **{**fields, "seed": 2, "method": "other"})
    for fn, name in ((plot_u_heatmap, "u.png"), (plot_attention_by_key, "k.png")):
        p = fn(rows + rows2, tmp_path / name)
        assert p.stat().st_size > 1000
    p = plot_far_mass(frows, tmp_path / "f.png")
    assert p.stat().st_size > 1000
    assert plot_far_mass(rows, tmp_path / "none.png") is None


def test_hf_llama_with_zero_queries_and_keys_attends_uniformly():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   attn_implementation="eager")
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.zero_()
            layer.self_attn.k_proj.weight.zero_()
    T = 40
    prof = attention_profile(model, torch.randint(0, VOCAB, (2, T)), first=2, near=4)
    assert prof.u_index.shape == (2, 2, 4)
    torch.testing.assert_close(prof.u_index, torch.zeros(2, 2, 4, dtype=torch.float64), atol=1e-6, rtol=0)
    far = far_mass_vs_length(model, torch.randint(0, VOCAB, (100,)), [T], beyond=8, windows=1)
    torch.testing.assert_close(far[T].mass, torch.full((1, 2, 4), uniform_far_mass(T, 8), dtype=torch.float64),
                               rtol=1e-5, atol=0)


def test_bad_input_is_one_line():
    model = forced("nope", layers=1)
    with pytest.raises(ValueError, match="windows: expected int64"):
        attention_profile(model, torch.zeros(2, 32))
    with pytest.raises(ValueError, match="last=30: the first query row 2"):
        attention_profile(model, torch.zeros(1, 32, dtype=torch.long), first=4, near=8, last=30)
    with pytest.raises(ValueError, match="lengths: 1 is not an int >= 2"):
        far_mass_vs_length(model, [torch.zeros(50, dtype=torch.long)], [1])
    with pytest.raises(TypeError, match="model: expected a hopekit Decoder or a transformers"):
        attention_profile(object(), torch.zeros(1, 32, dtype=torch.long))
