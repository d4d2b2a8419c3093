"""hopekit.integrations.hf.patch: any rotary, bias or score encoding inside a Llama / Mistral / Qwen2 model.

Oracles:

* **rotary methods**: the unpatched model itself. ``patch_model(model)`` runs the model's own rope
  settings through hopekit, so its logits must equal the native ones for every rope type, at lengths
  below and above the original length. Tolerance: the rotary tables differ by at most δ =
  :func:`conftest.angle_error_bound` (HF's float32 angles, ≈ (ln b + 9)·|angle|·2^-24, against our
  float64 ones). A table error δ rotates q and k by at most δ relative; it reaches the attention
  logits as a relative error ≤ 2δ (q and k) and the output logits through two layers, each adding
  at most that relative error to the residual stream; we allow ``2δ·max|logits|`` and check (first
  test) that the comparison is sharp: a 1 % change of every frequency moves the logits by more than
  100 times that (the measured differences sit ~100 times below it).
* **bias / score methods** (alibi, hope_hyperbolic, through the registered ``"hopekit"`` attention
  function): a naive reference written here, :func:`naive_attention`: the full T×T logits from the
  encoding's ``bias`` or ``scores`` plus an explicit causal (and padding / sliding-window) mask,
  KV heads indexed per query head. Tolerance: float32 with a different summation order (blocks of
  query rows, the T×T matmul in one piece): ``F32_RTOL · max|reference|`` with F32_RTOL = 64·2^-24
  (a dot product of 16–64 terms rounds each term once). Causality and masked keys are checked
  bit-exactly instead: a token that may not be seen cannot change a single bit.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import AttentionInterface  # noqa: E402
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: E402

from hopekit import pe  # noqa: E402
from hopekit.integrations import hf  # noqa: E402
from hopekit.integrations.hf import patch as hf_patch  # noqa: E402

F32_RTOL = 64 * 2.0 ** -24
BIAS_KINDS = ({"kind": "alibi"}, {"kind": "hope_hyperbolic", "omega_scale": 0.05, "penalty": 0.06})
BIAS_IDS = [p["kind"] for p in BIAS_KINDS]


# --------------------------------------------------------------------------------------------------
# Rotary methods: patched == native
# --------------------------------------------------------------------------------------------------

def rotary_tol(reference: torch.Tensor, params: pe.Params, length: int, tiny) -> float:
    return 2.0 * tiny.angle_error_bound(params, length - 1, seq_len=length) * reference.abs().max().item()


def test_logit_comparison_sees_a_one_percent_frequency_change(tiny):
    model = tiny.model("llama")
    ids = tiny.ids(40)
    ref = tiny.logits(model, ids)
    tol = rotary_tol(ref, hf.native_params(model), 40, tiny)
    shifted = hf.patch_model(copy.deepcopy(model), {"kind": "linear", "factor": 1.01})
    assert (tiny.logits(shifted, ids) - ref).abs().max().item() > 100 * tol


def test_patching_native_params_keeps_the_logits(tiny, native_case, arch):
    """Every rope type transformers has that hopekit maps (conftest.NATIVE) × Llama, Mistral, Qwen2."""
    native = tiny.native_model(arch, native_case)
    params = hf.native_params(native)
    patched = hf.patch_model(copy.deepcopy(native))
    assert isinstance(patched.model.rotary_emb, hf.HopekitRotary)
    assert patched.config._attn_implementation == native.config._attn_implementation == "sdpa"
    for length in tiny.LENGTHS:  # ascending: HF's dynamic NTK keeps the largest spectrum it has seen
        ids = tiny.ids(length)
        ref, out = tiny.logits(native, ids), tiny.logits(patched, ids)
        err, tol = (out - ref).abs().max().item(), rotary_tol(ref, params, length, tiny)
        assert err <= tol, f"{native_case}/{arch} at length {length}: {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("config", [{"kind": "ntk", "factor": 4.0}, {"kind": "hope_highfreq", "train_len": 16},
                                    {"kind": "rope", "base": 500.0}], ids=["ntk", "hope_highfreq", "rope_base"])
def test_hopekit_only_rotary_methods_equal_hf_given_their_frequencies(tiny, arch, config):
    """A method transformers has no type for, against HF's own rotary module with our frequencies
    written into its ``inv_freq`` buffer (float32) and ``attention_scaling``: checks the layout
    HopekitRotary hands to HF's apply_rotary_pos_emb (halves duplicated, scale folded in)."""
    model = tiny.model(arch)
    params = pe.parse(config, train_len=model.config.max_position_embeddings)
    spectrum = pe.build(params, head_dim=tiny.HEAD_DIM).spectrum()
    rotary = model.model.rotary_emb
    rotary.inv_freq.copy_(spectrum.inv_freq.float())
    rotary.attention_scaling = spectrum.attn_scale
    patched = hf.patch_model(copy.deepcopy(model), params)
    ids = tiny.ids(40)
    ref = tiny.logits(model, ids)
    assert (tiny.logits(patched, ids) - ref).abs().max().item() <= rotary_tol(ref, params, 40, tiny)


def test_patch_records_the_encoding(tiny):
    model = tiny.model("llama")
    params = pe.parse({"kind": "yarn", "factor": 2.0}, train_len=32)
    assert hf.encoding_of(model) is None
    assert hf.patch_model(model, {"kind": "yarn", "factor": 2.0}) is model
    assert hf.encoding_of(model) is model.model.hopekit_pe
    assert hf.encoding_of(model).params == params  # train_len from max_position_embeddings
    assert model.config.hopekit_pe == pe.to_config(params)


def test_an_unset_base_and_train_len_come_from_the_model(tiny):
    """SmolLM2's base is 1e5: ``--pe yarn`` must extend that spectrum, not the registry's 1e4."""
    model = tiny.model("llama", {"rope_type": "default", "rope_theta": 500.0}, max_pos=24)
    assert hf.encoding_of(hf.patch_model(model, {"kind": "yarn", "factor": 2.0})).params == \
        pe.parse({"kind": "yarn", "factor": 2.0, "base": 500.0, "train_len": 24})
    assert hf.patch_model(model, {"kind": "hope_highfreq"}).model.hopekit_pe.params == \
        pe.parse({"kind": "hope_highfreq", "base": 500.0, "train_len": 24})
    given = {"kind": "linear", "factor": 2.0, "base": 7.0}
    assert hf.encoding_of(hf.patch_model(model, given)).params == pe.parse(given)
    assert hf.resolve_pe(None, model) == pe.parse(given)  # the encoding it runs now
    with pytest.raises(ValueError, match="names its method"):
        hf.resolve_pe({"factor": 2.0}, model)
    # an already-scaled model: an unset train_len is its original length, not the extended window
    scaled = tiny.model("llama", {"rope_type": "llama3", "rope_theta": 500.0, "factor": 4.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 16}, max_pos=64)
    assert hf.resolve_pe(None, scaled) == hf.native_params(scaled)
    assert hf.resolve_pe({"kind": "yarn", "factor": 8.0}, scaled) == \
        pe.parse({"kind": "yarn", "factor": 8.0, "base": 500.0, "train_len": 16})


# --------------------------------------------------------------------------------------------------
# Bias and score methods: the registered attention function against a naive reference
# --------------------------------------------------------------------------------------------------

def naive_attention(enc: pe.PositionalEncoding, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    allowed: torch.Tensor, scale: float, past: int = 0) -> torch.Tensor:
    """q ``(B, H, Tq, D)``; k, v ``(B, H_kv, Tk, D)``; ``allowed`` ``(B, Tq, Tk)`` boolean (padding,
    window), the causal mask is added here. Query row i sits at position past + i, key j at j.
    Returns ``(B, H, Tq, D)``. A row that may see no key sees itself (its value is never compared)."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    head_of = torch.arange(H) // (H // k.shape[1])  # query head h reads KV head h // (H / H_kv)
    k, v = k[:, head_of], v[:, head_of]
    q_pos, k_pos = past + torch.arange(Tq), torch.arange(Tk)
    if enc.uses_scores:
        logits = enc.scores(q, k, q_pos, k_pos).float() * scale
    else:
        logits = (q @ k.transpose(-1, -2)).float() * scale + enc.bias(q_pos, k_pos)
    keep = (k_pos[None, :] <= q_pos[:, None]) & allowed[:, None]          # (B, 1, Tq, Tk)
    keep = keep | ((k_pos[None, :] == q_pos[:, None]) & ~keep.any(-1, keepdim=True))
    probs = logits.masked_fill(~keep, float("-inf")).softmax(-1)
    return (probs @ v.float()).to(v.dtype)


NAIVE_NAME = "hopekit_test_naive"
NAIVE_ALLOWED: dict[str, torch.Tensor | None] = {"allowed": None}


def _naive_interface(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The naive reference as an attention function: ignores transformers' mask, uses NAIVE_ALLOWED."""
    B, _, T, D = query.shape
    allowed = NAIVE_ALLOWED["allowed"]
    if allowed is None:
        allowed = torch.ones(B, T, T, dtype=torch.bool)
    out = naive_attention(module.hopekit_encoding, query, key, value, allowed, scaling or D ** -0.5)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAIVE_NAME, _naive_interface)
AttentionMaskInterface.register(NAIVE_NAME, sdpa_mask)  # transformers wants one; the reference ignores it


def naive_logits(model, ids: torch.Tensor, allowed: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """Logits of a patched model with its attention function swapped for the naive reference."""
    reference = copy.deepcopy(model)
    reference.set_attn_implementation(NAIVE_NAME)
    NAIVE_ALLOWED["allowed"] = allowed
    try:
        with torch.no_grad():
            return reference(ids, **kwargs).logits
    finally:
        NAIVE_ALLOWED["allowed"] = None


class _Attn(nn.Module):
    """Stands in for a decoder layer's attention module: what hopekit_attention reads from it."""

    def __init__(self, enc: pe.PositionalEncoding) -> None:
        super().__init__()
        object.__setattr__(self, "hopekit_encoding", enc)


def _close(out: torch.Tensor, ref: torch.Tensor) -> bool:
    return (out - ref).abs().max().item() <= F32_RTOL * ref.abs().max().item()


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
@pytest.mark.parametrize("chunk", [256, 5])
def test_attention_function_equals_naive_reference_with_gqa(tiny, config, chunk, monkeypatch):
    """4 query heads over 2 KV heads, distinct KV heads; ``chunk`` 5 splits 23 query rows in 5 blocks."""
    monkeypatch.setattr(hf_patch, "ATTN_CHUNK", chunk)
    enc = pe.build(pe.parse(config), head_dim=16, num_heads=4)
    B, T, D = 2, 23, 16
    q, k, v = torch.randn(B, 4, T, D), torch.randn(B, 2, T, D), torch.randn(B, 2, T, D)
    out, weights = hf.hopekit_attention(_Attn(enc), q, k, v, None, scaling=D ** -0.5)
    assert weights is None and out.shape == (B, T, 4, D)
    ref = naive_attention(enc, q, k, v, torch.ones(B, T, T, dtype=torch.bool), D ** -0.5)
    assert _close(out.transpose(1, 2), ref)
    # the pairing of query and KV heads matters: the reference with KV heads swapped is far off
    swapped = naive_attention(enc, q, k.flip(1), v.flip(1), torch.ones(B, T, T, dtype=torch.bool), D ** -0.5)
    assert not _close(out.transpose(1, 2), swapped)


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
def test_attention_function_with_a_cache_and_a_padding_mask(tiny, config):
    """Tq = 3 new queries over Tk = 10 keys (7 cached), position_ids given as transformers passes them,
    and a boolean mask hiding key 2 of the first sequence."""
    enc = pe.build(pe.parse(config), head_dim=16, num_heads=4)
    B, Tq, Tk, D = 2, 3, 10, 16
    q, k, v = torch.randn(B, 4, Tq, D), torch.randn(B, 2, Tk, D), torch.randn(B, 2, Tk, D)
    allowed = torch.ones(B, Tq, Tk, dtype=torch.bool)
    allowed[0, :, 2] = False
    position_ids = torch.arange(Tk - Tq, Tk)[None]
    out, _ = hf.hopekit_attention(_Attn(enc), q, k, v, allowed[:, None], scaling=D ** -0.5, position_ids=position_ids)
    ref = naive_attention(enc, q, k, v, allowed, D ** -0.5, past=Tk - Tq)
    assert _close(out.transpose(1, 2), ref)


def test_attention_function_needs_a_patched_module():
    with pytest.raises(RuntimeError, match="patch_model"):
        hf.hopekit_attention(nn.Module(), *(torch.randn(1, 2, 3, 4),) * 3, None)


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
@pytest.mark.parametrize("chunk", [256, 5])
def test_patched_model_equals_naive_reference(tiny, arch, config, chunk, monkeypatch):
    monkeypatch.setattr(hf_patch, "ATTN_CHUNK", chunk)
    model = hf.patch_model(tiny.model(arch), config)
    assert model.config._attn_implementation == hf.ATTENTION_NAME
    ids = tiny.ids(23)
    ref = naive_logits(model, ids)
    assert _close(tiny.logits(model, ids), ref)


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
@pytest.mark.parametrize("chunk", [256, 5])
def test_registered_attention_is_causal(tiny, arch, config, chunk, monkeypatch):
    """Tokens at t ≥ s changed: logits before s bit-identical, from s on changed."""
    monkeypatch.setattr(hf_patch, "ATTN_CHUNK", chunk)
    model = hf.patch_model(tiny.model(arch), config)
    ids, s = tiny.ids(23), 13
    later = ids.clone()
    later[:, s:] = (ids[:, s:] + 1) % tiny.VOCAB
    a, b = tiny.logits(model, ids), tiny.logits(model, later)
    assert torch.equal(a[:, :s], b[:, :s])
    assert (a[:, s:] - b[:, s:]).abs().amax(-1).min().item() > 0


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
def test_left_padding_is_masked(tiny, arch, config):
    """Sequence 0 left-padded by 4 (attention_mask 0): its real tokens' logits equal those of the
    sequence run alone (relative encodings: the shifted positions do not matter), and nothing is NaN
    (a padding query row sees no key at all)."""
    model = hf.patch_model(tiny.model(arch), config)
    ids = tiny.ids(16)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    out = tiny.logits(model, ids, attention_mask=mask)
    assert torch.isfinite(out).all()
    assert _close(out[0, 4:], tiny.logits(model, ids[:1, 4:])[0])
    assert _close(out[1], tiny.logits(model, ids[1:])[0])
    # position_ids as generate() builds them for a left-padded batch (real tokens from 0, padding 1)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    counted = tiny.logits(model, ids, attention_mask=mask, position_ids=position_ids)
    assert _close(counted[0, 4:], out[0, 4:]) and _close(counted[1], out[1])
    # the padding was really hidden: without the mask, the first real token sees it
    unmasked = tiny.logits(model, ids)
    assert not _close(unmasked[0, 4:], out[0, 4:])


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
def test_right_padding_is_masked(tiny, arch, config):
    model = hf.patch_model(tiny.model(arch), config)
    ids = tiny.ids(16)
    mask = torch.ones_like(ids)
    mask[0, 11:] = 0
    out = tiny.logits(model, ids, attention_mask=mask)
    assert torch.isfinite(out).all()
    assert _close(out[0, :11], tiny.logits(model, ids[:1, :11])[0])


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
def test_a_masked_key_is_never_seen(tiny, arch, config):
    """attention_mask 0 at position 5 of sequence 0: changing that token leaves every other row's
    logits bit-identical, and the logits equal the naive reference that hides key 5."""
    model = hf.patch_model(tiny.model(arch), config)
    ids = tiny.ids(16)
    mask = torch.ones_like(ids)
    mask[0, 5] = 0
    other = ids.clone()
    other[0, 5] = (ids[0, 5] + 1) % tiny.VOCAB
    a, b = tiny.logits(model, ids, attention_mask=mask), tiny.logits(model, other, attention_mask=mask)
    rows = [t for t in range(16) if t != 5]
    assert torch.equal(a[:, rows], b[:, rows])
    allowed = mask.bool()[:, None, :].expand(2, 16, 16)
    assert _close(a[:, rows], naive_logits(model, ids, allowed, attention_mask=mask)[:, rows])
    assert not _close(a[0, 6:], tiny.logits(model, ids)[0, 6:])  # the mask did something


@pytest.mark.parametrize("config", BIAS_KINDS, ids=BIAS_IDS)
def test_mistral_sliding_window_is_kept(tiny, config):
    """Mistral with a 6-token window: transformers' sliding-window mask reaches the attention function
    through the registered mask function; equal to the naive reference with that window."""
    model = hf.patch_model(tiny.model("mistral", sliding_window=6), config)
    ids = tiny.ids(20)
    t = torch.arange(20)
    window = (t[:, None] - t[None, :] < 6)[None].expand(2, 20, 20)
    ref = naive_logits(model, ids, window)
    assert _close(tiny.logits(model, ids), ref)
    assert not _close(naive_logits(model, ids), ref)  # the window matters at this length


def test_a_learnable_encoding_trains_with_the_model(tiny):
    """hope_hyperbolic's learnable penalty is a parameter of the patched model and gets a gradient
    through the registered attention function."""
    model = hf.patch_model(tiny.model("llama"), {**BIAS_KINDS[1], "learnable": True}).train()
    own = dict(hf.encoding_of(model).named_parameters())
    assert own and all(any(p is q for q in model.parameters()) for p in own.values())
    ids = tiny.ids(16)
    model(ids, labels=ids).loss.backward()
    for name, p in own.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------------------
# Refusals and re-patching
# --------------------------------------------------------------------------------------------------

UNSUPPORTED = {
    "gpt2": dict(n_embd=64, n_layer=1, n_head=4, vocab_size=97, n_positions=64),
    "phi3": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "gemma": dict(hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=97, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2),
}


@pytest.mark.parametrize("model_type", sorted(UNSUPPORTED))
def test_unsupported_architectures_are_refused(model_type):
    config = transformers.AutoConfig.for_model(model_type, **UNSUPPORTED[model_type])
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(ValueError, match=f"model_type='{model_type}': not supported; hopekit patches llama") as err:
        hf.patch_model(model, {"kind": "alibi"})
    assert "one rotary module per forward" in str(err.value)  # why


@pytest.mark.parametrize("kind", ["sinusoidal", "learned", "bipe"])
def test_absolute_and_token_derived_encodings_are_refused(tiny, kind):
    model = tiny.model("llama")
    rotary = model.model.rotary_emb
    with pytest.raises(ValueError, match=f"pe.kind='{kind}': adds absolute position vectors"):
        hf.patch_model(model, pe.example_config(kind, tiny.HEAD_DIM))
    assert model.model.rotary_emb is rotary and hf.encoding_of(model) is None  # untouched


def test_partial_rotary_is_refused(tiny):
    model = tiny.model("llama")
    with pytest.raises(ValueError, match=r"pe.rotary_fraction=0.5: llama's attention rotates the whole head"):
        hf.patch_model(model, {"kind": "rope", "rotary_fraction": 0.5})
    partial = tiny.model("llama", partial_rotary_factor=0.5)
    with pytest.raises(ValueError, match=r"partial_rotary_factor=0.5: llama rotates the whole head"):
        hf.patch_model(partial, {"kind": "alibi"})


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_patching_again_equals_a_fresh_patch(tiny, implementation):
    """alibi, then yarn: the attention implementation the model had comes back, and the model equals
    one patched with yarn alone, bit for bit."""
    yarn = {"kind": "yarn", "factor": 2.0}
    twice = tiny.model("llama", attn_implementation=implementation)
    hf.patch_model(twice, {"kind": "alibi"})
    hf.patch_model(twice, BIAS_KINDS[1])
    hf.patch_model(twice, yarn)
    fresh = hf.patch_model(tiny.model("llama", attn_implementation=implementation), yarn)
    assert twice.config._attn_implementation == implementation
    assert hf.encoding_of(twice).params == hf.encoding_of(fresh).params
    ids = tiny.ids(40)
    assert torch.equal(tiny.logits(twice, ids), tiny.logits(fresh, ids))


@pytest.mark.parametrize("config", [{"kind": "alibi"}, {"kind": "hope_hyperbolic", "omega_scale": 0.05, "penalty": 0.06}],
                         ids=["alibi", "hope_hyperbolic"])
def test_without_a_cache_keys_take_the_queries_positions(tiny, config):
    """Packed documents restart their positions; without a cache the keys are the same tokens, so the
    first document of a packed row equals that document alone (keys were once placed relative to the
    last query: 0.37 off for hope_hyperbolic)."""
    model = hf.patch_model(tiny.model("llama"), config)
    ids = tiny.ids(16)
    packed_positions = torch.cat([torch.arange(8), torch.arange(8)])[None].expand(ids.shape[0], -1)
    with torch.no_grad():
        alone = model(ids[:, :8]).logits
        packed = model(ids, position_ids=packed_positions).logits[:, :8]
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
