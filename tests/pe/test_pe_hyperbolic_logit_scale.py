"""hope_hyperbolic's log-length logit scaling (logit_scale="log_length"): against a float64 closed form
Σ_c Q_c K_c e^{−r_cΔ} · s(m), s(m) = max(1, ln(m+1)/ln L); unchanged inside the training window; the
KV cache; the configuration (round trip, filled train_len, old configs, bad values); switching it on
for a trained model at evaluation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from hopekit import pe
from hopekit.checkpoint import CheckpointError, check_resumable, model_config_dict
from hopekit.config import ExperimentConfig, apply_overrides, config_differences
from hopekit.eval.extensions import with_pe
from hopekit.model import Decoder, ModelConfig
from hopekit.pe.hope_hyperbolic import HyperbolicParams, log_length_scale, to_eigenbasis

VOCAB = 32

# ---------------------------------------------------------------------------------------------------
# The oracle (float64, test-side only)
# ---------------------------------------------------------------------------------------------------


def s64(m: torch.Tensor, train_len: float) -> torch.Tensor:
    """s(m) = max(1, ln(m + 1) / ln L) in float64."""
    return (torch.log(m.double() + 1) / math.log(train_len)).clamp(min=1.0)


def oracle(q, k, q_pos, k_pos, omega_scale, penalty, train_len=None, base=10000.0):
    """Σ_c Q_c K_c e^{−r_c(m−n)} (× s(m) when train_len is given), float64, −inf where n > m; positions (T,)."""
    d = q.shape[-1]
    omega = omega_scale / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    rates = torch.cat([penalty - omega, penalty + omega])                        # (D,)
    Q, K = to_eigenbasis(q.double()), to_eigenbasis(k.double())                   # (B, H, T, D)
    delta = (q_pos[:, None] - k_pos[None, :]).double()                            # (Tq, Tk)
    decay = torch.exp(-rates * delta.clamp(min=0)[..., None])                     # (Tq, Tk, D)
    out = torch.einsum("bhqd,bhkd,qkd->bhqk", Q, K, decay)
    if train_len is not None:
        out = out * s64(q_pos, train_len)[:, None]
    return out.masked_fill(delta < 0, float("-inf"))


def hyper(head_dim=16, num_heads=2, **kw):
    return pe.build("hope_hyperbolic", head_dim=head_dim, num_heads=num_heads, **kw)


def rel_err(out, ref):
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite) and torch.isneginf(out[~finite]).all()
    return float((out.double() - ref)[finite].abs().max() / ref[finite].abs().max())


# ---------------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_len", [128, 100.5, 2])
def test_scale_is_one_inside_the_window_and_the_log_ratio_beyond(train_len):
    m = torch.arange(0, 3000)
    s = log_length_scale(m, train_len)
    inside = (m + 1).double() <= train_len
    assert s.dtype == torch.float32 and bool((s[inside] == 1.0).all())          # exactly 1, also at m = L − 1
    torch.testing.assert_close(s[~inside].double(), s64(m[~inside], train_len), rtol=2e-7, atol=0)
    assert bool((s[~inside] > 1.0).all())


def test_rows_inside_the_window_are_bit_identical_to_none_and_beyond_scaled_by_s():
    d, H, T, L = 32, 2, 300, 128
    q, k = torch.randn(2, H, T, d), torch.randn(2, H, T, d)
    pos = torch.arange(T)
    plain = hyper(d, H).scores(q, k, pos, pos)
    scaled = hyper(d, H, logit_scale="log_length", train_len=L).scores(q, k, pos, pos)
    assert torch.equal(scaled[..., :L, :], plain[..., :L, :])                     # every m < train_len
    assert not torch.equal(scaled[..., L:, :], plain[..., L:, :])
    p = HyperbolicParams()
    assert rel_err(scaled, oracle(q, k, pos, pos, p.omega_scale, p.resolved_penalty, L)) < 1e-5
    assert rel_err(plain, oracle(q, k, pos, pos, p.omega_scale, p.resolved_penalty)) < 1e-5


@pytest.mark.parametrize("max_block", [1, 16, 256])
@pytest.mark.parametrize("offset", [0, 5_000, 1_000_000])
def test_matches_the_scaled_closed_form_at_any_offset_and_block_size(offset, max_block):
    d, H, T, L = 16, 3, 200, 64
    q, k = torch.randn(1, H, T, d), torch.randn(1, H, T, d)
    pos = torch.arange(T) * 3 + offset                                           # gaps: not every position
    enc = hyper(d, H, omega_scale=0.05, penalty=0.06, logit_scale="log_length", train_len=L, max_block=max_block)
    assert rel_err(enc.scores(q, k, pos, pos), oracle(q, k, pos, pos, 0.05, 0.06, L)) < 1e-5


def test_batched_positions_and_a_single_new_query_against_cached_keys():
    """(B, T) positions and a KV-cache style call: s is taken from each row's own query position."""
    d, H, L = 16, 2, 128
    enc = hyper(d, H, omega_scale=0.05, penalty=0.06, logit_scale="log_length", train_len=L)
    k = torch.randn(2, H, 40, d)
    k_pos = torch.stack([torch.arange(40) + 60, torch.arange(40) + 77_777])      # row 0 crosses m = 128 … 99
    q = torch.randn(2, H, 1, d)
    q_pos = k_pos[:, -1:]
    out = enc.scores(q, k, q_pos, k_pos)
    full = enc.scores(k, k, k_pos, k_pos)                                        # every row of both sequences
    for b in range(2):
        assert rel_err(out[b:b + 1], oracle(q[b:b + 1], k[b:b + 1], q_pos[b], k_pos[b], 0.05, 0.06, L)) < 1e-5
        assert rel_err(full[b:b + 1], oracle(k[b:b + 1], k[b:b + 1], k_pos[b], k_pos[b], 0.05, 0.06, L)) < 1e-5
    assert s64(k_pos[0], L).min() == 1.0 and s64(k_pos[0], L).max() == 1.0      # row 0: 60…99, all inside
    assert s64(k_pos[1], L).min() > 2.0                                          # row 1: far beyond


def test_bf16_inputs_and_autocast_stay_close_to_float32():
    enc = hyper(32, 2, omega_scale=0.2, logit_scale="log_length", train_len=16)
    q, k = torch.randn(1, 2, 200, 32), torch.randn(1, 2, 200, 32)
    pos = torch.arange(200) + 10_000
    ref = enc.scores(q, k, pos, pos)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = enc.scores(q, k, pos, pos)
    for out in (auto, enc.scores(q.bfloat16(), k.bfloat16(), pos, pos)):
        finite = torch.isfinite(ref)
        assert torch.equal(torch.isfinite(out), finite)
        assert (out.float()[finite] - ref[finite]).abs().max() < 0.1 * ref[finite].abs().max()


def test_learnable_penalty_with_the_scale_matches_the_oracle_and_has_finite_gradients():
    d, H, T, L = 16, 2, 120, 32
    enc = hyper(d, H, omega_scale=0.05, penalty=0.06, learnable=True, logit_scale="log_length", train_len=L)
    q = torch.randn(1, H, T, d, requires_grad=True)
    k = torch.randn(1, H, T, d, requires_grad=True)
    pos = torch.arange(T)
    out = enc.scores(q, k, pos, pos)
    assert rel_err(out.detach(), oracle(q.detach(), k.detach(), pos, pos, 0.05, 0.06, L)) < 1e-5
    out.masked_fill(torch.isinf(out), 0).sum().backward()
    assert torch.isfinite(enc.penalty_raw.grad).all() and torch.isfinite(q.grad).all()
    # d(logit)/dq of a scaled row is s(m) times the unscaled one: the scale reaches the gradient
    plain_q = q.detach().clone().requires_grad_(True)
    plain = hyper(d, H, omega_scale=0.05, penalty=0.06, learnable=True).scores(plain_q, k.detach(), pos, pos)
    plain.masked_fill(torch.isinf(plain), 0).sum().backward()
    ratio = q.grad[0, 0, :, 0] / plain_q.grad[0, 0, :, 0]
    torch.testing.assert_close(ratio.double(), s64(pos, L), rtol=1e-4, atol=0)


# ---------------------------------------------------------------------------------------------------
# The decoder: KV cache, switching it on at evaluation
# ---------------------------------------------------------------------------------------------------


def decoder(**pe_fields) -> Decoder:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, attn_chunk=5,
                      pe={"kind": "hope_hyperbolic", "omega_scale": 0.05, "penalty": 0.06, **pe_fields})
    return Decoder(cfg).eval()


def decode_in_pieces(model, idx, cuts, positions=None):
    cache, out = model.new_cache(), []
    for a, b in zip(cuts[:-1], cuts[1:]):
        logits, _ = model(idx[:, a:b], positions=None if positions is None else positions[..., a:b], cache=cache)
        out.append(logits)
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("learnable", [False, True])
def test_kv_cache_decoding_equals_the_full_forward_with_the_scale_on(learnable):
    model = decoder(logit_scale="log_length", train_len=8, learnable=learnable, per_head=learnable)
    if learnable:
        with torch.no_grad():
            model.pe.penalty_raw.copy_(torch.tensor([-2.0, -1.0, 0.0, 1.0]))
    idx = torch.randint(0, VOCAB, (2, 24))                                       # 16 of 24 positions beyond 8
    full, _ = model(idx)
    torch.testing.assert_close(decode_in_pieces(model, idx, [0, 7, 8, 9, 10, 11, 16, 24]), full,
                               atol=1e-5, rtol=1e-5)
    positions = pe.RandomizedPositions(max_position=200).sample(2, 24)           # (B, T) positions
    full_b, _ = model(idx, positions=positions)
    torch.testing.assert_close(decode_in_pieces(model, idx, [0, 6, 7, 12, 24], positions), full_b,
                               atol=1e-5, rtol=1e-5)


def test_switched_on_at_evaluation_it_changes_nothing_inside_the_window():
    """A model trained without the scale (same weights): with_pe swaps in the scaled encoding; logits
    at positions < train_len are unchanged, beyond they change."""
    trained = decoder()
    L = 8
    cfg = {**pe.to_config(trained.config.pe), "logit_scale": "log_length", "train_len": L}
    scaled = with_pe(trained, cfg)
    assert scaled.config.pe.logit_scale == "log_length" and trained.config.pe.logit_scale == "none"
    idx = torch.randint(0, VOCAB, (2, 24))
    a, _ = trained(idx)
    b, _ = scaled(idx)
    assert torch.equal(a[:, :L], b[:, :L])
    assert (a[:, L:] - b[:, L:]).abs().amax(dim=-1).min() > 1e-6                 # every later position moves


# ---------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------


def test_config_round_trip_and_train_len_from_the_experiment():
    p = pe.parse({"kind": "hope_hyperbolic", "logit_scale": "log_length"}, train_len=256)
    assert p.train_len == 256
    c = pe.to_config(p)
    assert c["logit_scale"] == "log_length" and c["train_len"] == 256
    assert pe.parse(c) == p and pe.from_config(c, head_dim=16).params == p
    exp = ExperimentConfig.from_dict({"pe": {"kind": "hope_hyperbolic"}, "train": {"train_len": 96}})
    assert exp.pe.logit_scale == "none" and exp.pe.train_len == 96
    assert ExperimentConfig.from_dict(exp.resolved()).resolved() == exp.resolved()
    # switched on by an override of the resolved config: train_len is already the experiment's
    on = ExperimentConfig.from_dict(apply_overrides(exp.resolved(), ["pe.logit_scale=log_length"]))
    assert on.pe.logit_scale == "log_length" and on.pe.train_len == 96
    with pytest.raises(ValueError, match=r"pe\.train_len=64: differs from train\.train_len=96"):
        ExperimentConfig.from_dict({"pe": {"kind": "hope_hyperbolic", "logit_scale": "log_length", "train_len": 64},
                                    "train": {"train_len": 96}})


def old_config(resolved: dict) -> dict:
    """``resolved`` as hopekit wrote it before logit_scale and train_len existed."""
    return {**resolved, "pe": {k: v for k, v in resolved["pe"].items() if k not in ("logit_scale", "train_len")}}


def test_a_config_saved_before_the_fields_existed_loads_and_resumes():
    now = ExperimentConfig.from_dict({"pe": {"kind": "hope_hyperbolic"}, "train": {"steps": 5, "warmup_steps": 0}})
    saved = old_config(now.resolved())
    loaded = ExperimentConfig.from_dict(saved)
    assert loaded.pe == now.pe                                                   # the defaults: unscaled
    assert config_differences(saved, now.resolved()) == []
    assert config_differences({"experiment": saved}, {"experiment": now.resolved()}) == []   # a bench's form
    model_cfg = model_config_dict(now.model_config(vocab_size=VOCAB))
    old_model_cfg = {**model_cfg, "pe": {k: v for k, v in model_cfg["pe"].items()
                                         if k not in ("logit_scale", "train_len")}}
    ckpt = {"config": saved, "model_config": old_model_cfg, "step": 3}
    check_resumable(ckpt, now, model_cfg, Path("old/checkpoint.pt"))            # no CheckpointError
    # resuming it with the scale switched on is a change, reported field by field
    on = ExperimentConfig.from_dict({"pe": {"kind": "hope_hyperbolic", "logit_scale": "log_length"},
                                     "train": {"steps": 5, "warmup_steps": 0}})
    assert config_differences(saved, on.resolved()) == [
        "pe.logit_scale: saved (absent), now 'log_length'", "pe.train_len: saved (absent), now 128"]
    with pytest.raises(CheckpointError, match="pe.logit_scale: checkpoint \\(absent\\), now 'log_length'"):
        check_resumable(ckpt, on, model_config_dict(on.model_config(vocab_size=VOCAB)), Path("old/checkpoint.pt"))
    # another method's absent field is still a difference (only fields a method declares are forgiven)
    rope = ExperimentConfig().resolved()
    assert config_differences({**rope, "pe": {k: v for k, v in rope["pe"].items() if k != "base"}}, rope) == [
        f"pe.base: saved (absent), now {rope['pe']['base']!r}"]


@pytest.mark.parametrize(("fields", "field", "shown"), [
    ({"logit_scale": "logn"}, "logit_scale", "'logn'"),
    ({"logit_scale": "None"}, "logit_scale", "'None'"),
    ({"logit_scale": None}, "logit_scale", "None"),
    ({"logit_scale": True}, "logit_scale", "True"),
    ({"logit_scale": "log_length"}, "train_len", "None"),                       # asked for, no L
    ({"logit_scale": "log_length", "train_len": 1}, "train_len", "1.0"),        # ln 1 = 0
    ({"train_len": 0.5}, "train_len", "0.5"),
    ({"train_len": float("nan")}, "train_len", "nan"),
    ({"train_len": float("inf")}, "train_len", "inf"),
    ({"train_len": "128"}, "train_len", "'128'"),
    ({"train_len": True}, "train_len", "True"),
])
def test_bad_values_are_one_line_errors_naming_the_field(fields, field, shown):
    with pytest.raises((ValueError, TypeError)) as excinfo:
        HyperbolicParams(**fields)
    msg = str(excinfo.value)
    assert "\n" not in msg and msg.startswith(f"HyperbolicParams.{field}={shown}")


def test_an_experiment_refuses_the_scale_with_a_train_len_of_one():
    with pytest.raises(ValueError, match=r"^HyperbolicParams\.train_len=1\.0: must be > 1\.0$"):
        ExperimentConfig.from_dict({"pe": {"kind": "hope_hyperbolic", "logit_scale": "log_length"},
                                    "train": {"train_len": 1}})


def test_fields_and_defaults():
    names = [f.name for f in dataclasses.fields(HyperbolicParams)]
    assert names[-2:] == ["logit_scale", "train_len"]
    p = HyperbolicParams()
    assert p.logit_scale == "none" and p.train_len is None


def test_the_log_length_scale_is_refused_inside_bipe():
    """BiPE hands its inter-segment encoding segment indices, not token positions: s(m) would count
    segments."""
    import pytest

    from hopekit import pe

    with pytest.raises(ValueError, match=r"BiPEParams.inter.logit_scale='log_length'.*segment indices"):
        pe.parse({"kind": "bipe", "inter": {"kind": "hope_hyperbolic", "logit_scale": "log_length"}}, train_len=128)
