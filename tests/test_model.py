"""The reference decoder: shapes, training, KV cache == full forward for every method, GQA, chunking."""

from __future__ import annotations

import pytest
import torch

from hopekit import kernels, pe
from hopekit.model import Context, Decoder, KVCache, ModelConfig
from tests.conftest import EXAMPLES

ALL = sorted(pe.REGISTRY)
VOCAB = 32


def make(kind: str = "rope", *, pe_params: dict | None = None, **overrides) -> Decoder:
    """A tiny float32 decoder (head_dim 16, as tests/conftest.py's EXAMPLES expect), in eval mode."""
    params = EXAMPLES[kind] if pe_params is None else pe_params
    shape = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, attn_chunk=5)
    return Decoder(ModelConfig(**{**shape, **overrides}, pe={"kind": kind, **params})).eval()


def tokens(batch: int = 2, length: int = 20) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length))


def decode_in_pieces(model: Decoder, idx: torch.Tensor, cuts: list[int], positions=None, **kw) -> torch.Tensor:
    """Feed idx[:, cuts[i]:cuts[i+1]] one piece at a time through a KV cache; concatenated logits."""
    cache, out = model.new_cache(), []
    for a, b in zip(cuts[:-1], cuts[1:]):
        pos = None if positions is None else positions[..., a:b]
        logits, _ = model(idx[:, a:b], positions=pos, cache=cache, **kw)
        out.append(logits)
    assert len(cache) == idx.shape[1]
    return torch.cat(out, dim=1)


# ----- shapes, loss, training ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rope", "alibi", "hope_hyperbolic", "learned"])
def test_shapes_and_loss(kind):
    model = make(kind)
    idx = tokens(3, 11)
    logits, loss = model(idx)
    assert logits.shape == (3, 11, VOCAB) and loss is None
    logits, loss = model(idx, targets=tokens(3, 11))
    assert loss.shape == () and torch.isfinite(loss)
    # near-uniform predictions at init: loss ≈ ln(vocab)
    assert abs(loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.5


@pytest.mark.parametrize("kind", ["rope", "hope_hyperbolic"])
def test_loss_decreases_on_a_repetitive_sequence(kind):
    torch.manual_seed(0)
    model = make(kind, attn_chunk=64).train()
    seq = torch.arange(8).repeat(5)[None]                      # 0 1 … 7 0 1 … 7 …, (1, 40)
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = model(x, targets=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.25 * losses[0], losses


def test_ignore_index_minus_one():
    model = make()
    idx = tokens(1, 6)
    targets = idx.clone()
    targets[:, :3] = -1
    _, loss = model(idx, targets=targets)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[0, 3:], idx[0, 3:])
    torch.testing.assert_close(loss, expected)


# ----- KV cache == full forward, for every registered method --------------------------------------


@pytest.mark.parametrize("kind", ALL)
def test_kv_cache_matches_full_forward(kind):
    model = make(kind)
    idx = tokens(2, 20)
    # length-dependent spectra (dynamic_ntk, longrope) are held fixed by one seq_len everywhere;
    # 100 > their train_len (64), so the "long" regime is the one exercised
    full, _ = model(idx, seq_len=100)
    # prefill 7, then 1 token at a time, then chunks of 5 and 4 (more than attn_chunk=5 rows in total)
    inc = decode_in_pieces(model, idx, [0, 7, 8, 9, 10, 11, 16, 20], seq_len=100)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["rope", "yarn", "alibi", "hope_hyperbolic", "sinusoidal"])
def test_kv_cache_with_batched_positions(kind):
    """(B, T) positions, e.g. randomized positions: a sorted random subset per row."""
    model = make(kind)
    idx = tokens(2, 16)
    positions = pe.RandomizedPositions(max_position=200).sample(2, 16)
    full, _ = model(idx, positions=positions, seq_len=200)
    inc = decode_in_pieces(model, idx, [0, 6, 7, 12, 16], positions=positions, seq_len=200)
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-5)


def test_kv_cache_learnable_per_head_hyperbolic_and_positions_really_matter():
    params = {"omega_scale": 0.3, "penalty": 0.5, "learnable": True, "per_head": True}
    model = make("hope_hyperbolic", pe_params=params)
    with torch.no_grad():
        model.pe.penalty_raw.copy_(torch.tensor([-2.0, -1.0, 0.0, 1.0]))  # a different λ per head
    idx = tokens(2, 12)
    full, _ = model(idx)
    torch.testing.assert_close(decode_in_pieces(model, idx, [0, 4, 5, 12]), full, atol=1e-5, rtol=1e-5)
    # feeding the same tokens at the wrong positions must change the output (the cache test has teeth)
    cache = model.new_cache()
    model(idx[:, :4], cache=cache)
    wrong, _ = model(idx[:, 4:], positions=torch.arange(8) + 40, cache=cache)
    assert (wrong - full[:, 4:]).abs().max() > 1e-3


def test_generate_greedy_equals_repeated_full_forward():
    model = make("rope")
    prompt = tokens(2, 5)
    out = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    seq = prompt
    for _ in range(6):
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    g = torch.Generator().manual_seed(1)
    sampled = model.generate(prompt, max_new_tokens=4, temperature=0.8, top_k=5, generator=g)
    assert sampled.shape == (2, 9) and int(sampled.max()) < VOCAB


# ----- attention paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rope", "alibi", "hope_hyperbolic"])
def test_gqa_equals_mha_with_repeated_kv_weights(kind):
    torch.manual_seed(0)
    gqa = make(kind, n_kv_heads=2)
    mha = make(kind, n_kv_heads=4)
    state = gqa.state_dict()
    for name in list(state):
        if name.endswith(("attn.wk.weight", "attn.wv.weight")):
            w = state[name].view(2, 16, 64)                               # (H_kv, D, C)
            state[name] = w.repeat_interleave(2, dim=0).reshape(64, 64)  # (H·D, C): head h reads kv h // 2
    mha.load_state_dict(state)
    idx = tokens(2, 13)
    torch.testing.assert_close(mha(idx)[0], gqa(idx)[0], atol=1e-5, rtol=1e-5)
    assert gqa.num_parameters() < mha.num_parameters()


@pytest.mark.parametrize("kind", ["alibi", "hope_hyperbolic"])
def test_chunked_attention_equals_unchunked(kind):
    small, big = make(kind, attn_chunk=3), make(kind, attn_chunk=10_000)
    big.load_state_dict(small.state_dict())
    idx = tokens(2, 17)
    torch.testing.assert_close(small(idx)[0], big(idx)[0], atol=1e-5, rtol=1e-5)


def test_explicit_attention_paths_match_a_naive_reference():
    """ALiBi through the chunked path equals a dense softmax(qk/√d + bias + causal mask) reference."""
    model = make("alibi", n_layers=1, n_kv_heads=4)
    attn, enc = model.blocks[0].attn, model.pe
    x = torch.randn(2, 9, 64)
    h = model.blocks[0].attn_norm(x)
    q, k, v = (w(h).view(2, 9, 4, 16).transpose(1, 2) for w in (attn.wq, attn.wk, attn.wv))
    pos = torch.arange(9)
    logits = q @ k.transpose(-1, -2) / 4.0 + enc.bias(pos, pos)
    logits = logits.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    ref = attn.wo((logits.softmax(-1) @ v).transpose(1, 2).reshape(2, 9, 64))
    ctx = model_context(model, 9)
    torch.testing.assert_close(attn(h, ctx, None, 0), ref, atol=1e-5, rtol=1e-5)


def model_context(model: Decoder, T: int) -> Context:
    pos = torch.arange(T)
    rotary = model.pe.features(pos) if model.pe.uses_rotate else None
    return Context(model.pe, pos, pos, rotary, 0)


@pytest.mark.parametrize("kind", ["rope", "alibi", "hope_hyperbolic", "nope"])
def test_relative_methods_are_shift_invariant_per_row(kind):
    model = make(kind)
    idx = tokens(2, 10)
    ref, _ = model(idx)
    shifted = torch.stack([torch.arange(10) + 3, torch.arange(10) + 1000])  # (B, T), a different shift per row
    torch.testing.assert_close(model(idx, positions=shifted)[0], ref, atol=1e-4, rtol=1e-4)


# ----- the encoding is built once, features once per forward ---------------------------------------


@pytest.mark.parametrize("kind", ["rope", "hope_hyperbolic", "alibi", "learned", "bipe"])
def test_one_shared_encoding_and_features_prepared_once(kind, monkeypatch):
    model = make(kind, n_layers=3, attn_chunk=10_000)
    # the only encodings are model.pe and (for composites such as BiPE) its own parts; blocks hold none
    where = [n for n, m in model.named_modules() if isinstance(m, pe.PositionalEncoding)]
    assert where[0] == "pe" and all(n.startswith("pe.") for n in where[1:])
    calls: dict[str, list] = {}
    for hook in ("features", "apply", "bias", "scores", "embed"):
        if not hasattr(model.pe, hook):  # features / apply exist on rotary encodings only
            continue
        original = getattr(model.pe, hook)

        def spy(*args, _hook=hook, _original=original, **kw):
            calls.setdefault(_hook, []).append(1)
            return _original(*args, **kw)

        monkeypatch.setattr(model.pe, hook, spy)
    with kernels.use_kernels(False):  # the pe/ hooks themselves (the kernels compute without them)
        model(tokens(1, 8))
    enc = model.pe
    if enc.uses_rotate:
        assert len(calls["features"]) == 1 and len(calls["apply"]) == 2 * 3
    if enc.uses_bias:
        assert len(calls["bias"]) == 3
    if enc.uses_scores:
        assert len(calls["scores"]) == 3
    if enc.uses_embed:
        assert len(calls["embed"]) == 1


def test_learnable_penalty_lives_in_the_model_and_gets_gradients():
    model = make("hope_hyperbolic", pe_params={"omega_scale": 0.05, "learnable": True, "per_head": True}).train()
    names = [n for n, _ in model.named_parameters() if n.startswith("pe.")]
    assert names == ["pe.penalty_raw"] and model.pe.penalty_raw.shape == (4,)
    idx = tokens(2, 10)
    _, loss = model(idx, targets=idx)
    loss.backward()
    assert model.pe.penalty_raw.grad is not None and model.pe.penalty_raw.grad.abs().sum() > 0


# ----- lengths and dtypes -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rope", "yarn", "alibi", "hope_hyperbolic", "sinusoidal", "nope"])
def test_runs_far_beyond_any_training_length(kind):
    model = make(kind, n_layers=1, attn_chunk=256)
    logits, _ = model(tokens(1, 1500))
    assert logits.shape == (1, 1500, VOCAB) and torch.isfinite(logits).all()


def test_learned_refuses_positions_beyond_its_table():
    model = make("learned", pe_params={"max_len": 16})
    model(tokens(1, 16))
    with pytest.raises(ValueError, match="max_len=16"):
        model(tokens(1, 17))


@pytest.mark.parametrize("kind", ["rope", "yarn", "alibi", "hope_hyperbolic", "learned"])
def test_bfloat16_forward_is_finite(kind):
    model = make(kind).to(torch.bfloat16)
    idx = tokens(2, 40)
    logits, loss = model(idx, targets=idx)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all() and torch.isfinite(loss)
    # and it stays close to float32 (the encoding holds no buffers a cast could corrupt)
    ref = make(kind)
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    assert (logits.float() - ref(idx)[0]).abs().max() < 0.1


@pytest.mark.parametrize("kind", ["rope", "alibi", "hope_hyperbolic"])
def test_autocast_and_dropout_paths_run(kind):
    model = make(kind)
    idx = tokens(2, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets=idx)
    assert torch.isfinite(logits.float()).all() and torch.isfinite(loss)
    noisy = make(kind, dropout=0.2).train()
    _, a = noisy(idx, targets=idx)
    _, b = noisy(idx, targets=idx)
    assert torch.isfinite(a) and a != b                      # dropout is active in training
    noisy.eval()
    torch.testing.assert_close(noisy(idx)[0], noisy(idx)[0])  # and off in evaluation


# ----- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, field, error", [
    ({"d_model": 30}, "d_model=30", ValueError),
    ({"n_kv_heads": 3}, "n_kv_heads=3", ValueError),
    ({"vocab_size": 0}, "vocab_size=0", ValueError),
    ({"n_layers": 2.0}, "n_layers=2.0", TypeError),
    ({"dropout": 1.0}, "dropout=1.0", ValueError),
    ({"norm_eps": 0.0}, "norm_eps=0.0", ValueError),
    ({"attn_chunk": 0}, "attn_chunk=0", ValueError),
    ({"pe": {"base": 10000}}, "pe=", ValueError),
    ({"pe": {"kind": "xpos"}}, "kind='xpos'", ValueError),
    ({"pe": {"kind": "rope", "theta": 1e4}}, "theta", TypeError),
    ({"pe": {"kind": "rope", "base": -1.0}}, "base=-1.0", ValueError),
    ({"pe": {"kind": "longrope", "short_rescale": [1.0], "long_rescale": [1.0], "train_len": 8, "factor": 2.0}},
     "short_rescale", ValueError),
])
def test_config_validation_names_the_field(overrides, field, error):
    base = dict(vocab_size=VOCAB, d_model=64, n_heads=4)
    with pytest.raises(error, match=field.replace("(", r"\(").replace(".", r"\.")):
        ModelConfig(**{**base, **overrides})


def test_config_defaults():
    cfg = ModelConfig(vocab_size=VOCAB, d_model=64, n_heads=4)
    assert cfg.n_kv_heads == 4 and cfg.head_dim == 16 and cfg.ffn_hidden % 8 == 0 and cfg.ffn_hidden >= 170
    assert cfg.pe == pe.RopeParams() and pe.to_config(cfg.pe) == {"kind": "rope", "base": 10000.0, "rotary_fraction": 1.0}


def test_num_parameters_counts_tied_weights_once():
    tied, untied = make("learned", pe_params={"max_len": 16}), make("learned", pe_params={"max_len": 16},
                                                                   tie_embeddings=False)
    assert untied.num_parameters() - tied.num_parameters() == VOCAB * 64
    assert tied.num_parameters(non_embedding=True) == tied.num_parameters() - VOCAB * 64 - 16 * 64
    assert tied.lm_head.weight is tied.tok_emb.weight


def test_residual_projections_are_scaled_down():
    model = make("rope", n_layers=8, d_model=256, n_heads=4, n_kv_heads=4)
    wo, wq = model.blocks[0].attn.wo.weight, model.blocks[0].attn.wq.weight
    assert abs(wq.std().item() - 0.02) < 2e-3
    assert abs(wo.std().item() - 0.02 / 4.0) < 5e-4


def test_cache_object_is_simple():
    cache = KVCache(2)
    assert len(cache) == 0 and cache.keys == [None, None]
    model = make("rope")
    model(tokens(2, 5), cache=cache)
    assert len(cache) == 5 and cache.keys[0].shape == (2, 2, 5, 16)  # (B, H_kv, T, D): GQA caches less


# ----- token-derived positions (BiPE) --------------------------------------------------------------

BOUNDARIES = (1, 2, 3, 4)  # frequent boundaries in a 32-token vocabulary: several segments per row


@pytest.mark.parametrize("inter", [{"kind": "rope"}, {"kind": "alibi"}, {"kind": "hope_hyperbolic"}])
def test_bipe_kv_cache_carries_the_segment_state(inter):
    model = make("bipe", pe_params={"inter": inter, "boundary_ids": BOUNDARIES, "intra_max_len": 64})
    idx = tokens(2, 24)
    assert int(pe.bipe_positions(idx, BOUNDARIES)[1].max()) >= 2  # the test input really has segments
    full, _ = model(idx)
    torch.testing.assert_close(decode_in_pieces(model, idx, [0, 5, 6, 7, 13, 24]), full, atol=1e-5, rtol=1e-5)


def test_bipe_feeds_segment_positions_to_attention_and_intra_positions_to_embed():
    idx = tokens(2, 24)
    intra, segment, _ = pe.bipe_positions(idx, BOUNDARIES)
    # inter: with the intra table zeroed, BiPE(rope) is a rope model run at the segment positions
    bipe = make("bipe", pe_params={"inter": {"kind": "rope"}, "boundary_ids": BOUNDARIES, "intra_max_len": 64})
    torch.nn.init.zeros_(bipe.pe.intra.weight)
    rope = make("rope", pe_params={})
    rope.load_state_dict({k: v for k, v in bipe.state_dict().items() if not k.startswith("pe.")})
    torch.testing.assert_close(bipe(idx)[0], rope(idx, positions=segment)[0], atol=1e-5, rtol=1e-5)
    # intra: BiPE(nope) is a learned-absolute model run at the intra-segment positions
    bipe = make("bipe", pe_params={"inter": {"kind": "nope"}, "boundary_ids": BOUNDARIES, "intra_max_len": 64})
    learned = make("learned", pe_params={"max_len": 64})
    learned.load_state_dict({k.replace("pe.intra.", "pe."): v for k, v in bipe.state_dict().items()})
    torch.testing.assert_close(bipe(idx)[0], learned(idx, positions=intra)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="positions"):
        bipe(idx, positions=torch.arange(24))


# ----- generation with a KV cache == recomputing the full forward every step (every method) ---------

GEN_PAIRS = 8           # rotary pairs of the tiny generation model: head_dim 16 = d_model 32 / 2 heads
GEN_TRAIN_LEN = 8       # a 6-token prompt + 8 new tokens crosses it
GEN_LONGROPE = {"short_rescale": [1.0] * GEN_PAIRS,
                "long_rescale": [1.0 + 3.0 * i / (GEN_PAIRS - 1) for i in range(GEN_PAIRS)],  # 1 … 4
                "train_len": GEN_TRAIN_LEN, "factor": 4.0}


def _gen_config(name: str) -> dict:
    """The registry's example at head_dim 16, with the short GEN_TRAIN_LEN where the method has one, and
    bipe's boundaries inside this tiny vocabulary."""
    config = {k: v for k, v in pe.example_config(name, head_dim=16).items() if k != "kind"}
    if "train_len" in config:
        config["train_len"] = GEN_TRAIN_LEN
    if pe.REGISTRY[name].encoding.uses_tokens:
        config["boundary_ids"] = (1, 2, 3, 4)
    return config


#: one small valid configuration per registry method (plus BiPE over a length-dependent inter method)
GEN_CONFIGS: dict[str, dict] = {name: _gen_config(name) for name in pe.REGISTRY}
GEN_CASES = {**{k: (k, v) for k, v in GEN_CONFIGS.items()},
             # segment positions (boundaries: half the vocabulary) go from 0…2 in the prompt to 6 at the
             # end, crossing the inter method's train_len=3 while decoding
             "bipe/longrope": ("bipe", {"inter": {"kind": "longrope", **GEN_LONGROPE, "train_len": 3},
                                        "boundary_ids": tuple(range(16)), "intra_max_len": 64})}
PROMPT, NEW = 6, 8


def tiny(kind: str, params: dict) -> Decoder:
    """Vocab 32, d_model 32, 2 layers, 2 heads; init_std 0.5 so that attention is sharp and positions
    matter (at 0.02 LongRoPE's wrong rotation moves logits by only ~1e-4 and no token changes)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, init_std=0.5, pe={"kind": kind, **params})
    return Decoder(cfg).eval()


def generate_with_logits(model: Decoder, prompt: torch.Tensor, **kw) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model.generate`` plus the last-row logits of each of its forwards (one per new token)."""
    seen: list[torch.Tensor] = []
    hook = model.register_forward_hook(lambda _m, _args, output: seen.append(output[0][:, -1]))
    try:
        out = model.generate(prompt, max_new_tokens=NEW, temperature=0, **kw)
    finally:
        hook.remove()
    return out, seen


@torch.no_grad()
def recompute(model: Decoder, prompt: torch.Tensor, seq_len: int | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding without a cache: a full forward of every token so far, at every step."""
    seq, steps = prompt, []
    for _ in range(NEW):
        last = model(seq, seq_len=seq_len)[0][:, -1]                      # (B, vocab)
        steps.append(last)
        seq = torch.cat([seq, last.argmax(-1, keepdim=True)], dim=1)
    return seq, steps


@pytest.mark.parametrize("rule", ["default", "fixed"])
@pytest.mark.parametrize("case", list(GEN_CASES))
def test_greedy_generation_equals_recomputing_the_full_forward(case, rule):
    """Documented rule (Decoder.generate): with ``seq_len=None`` every step equals a cache-free forward
    at the default length; with a fixed ``seq_len`` every step equals a forward at that ``seq_len``.
    Before the re-prefill, longrope and dynamic_ntk differed by 7.9 and 7.0 here (default rule)."""
    model = tiny(*GEN_CASES[case])
    prompt = torch.randint(0, VOCAB, (2, PROMPT))
    seq_len = None if rule == "default" else PROMPT + NEW
    out, steps = generate_with_logits(model, prompt, seq_len=seq_len)
    ref, ref_steps = recompute(model, prompt, seq_len)
    assert len(steps) == NEW
    scale = max(float(s.abs().max()) for s in ref_steps)  # float32: ~1e-7 relative per op; allow 1e-4
    for step, (got, want) in enumerate(zip(steps, ref_steps)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale, msg=lambda m, s=step: f"step {s}: {m}")
    assert torch.equal(out, ref)


@pytest.mark.parametrize("kind, rebuilds", [("rope", 0), ("longrope", 1), ("dynamic_ntk", 5)])
def test_generate_rebuilds_the_cache_only_when_the_spectrum_changes(kind, rebuilds):
    """LongRoPE: once, when the length first exceeds train_len (9 > 8); dynamic NTK: at every fed
    position 8 … 12 (lengths 9 … 13); with a fixed seq_len never. Counted as multi-token forwards."""
    model = tiny(kind, GEN_CONFIGS[kind])
    prompt = torch.randint(0, VOCAB, (2, PROMPT))
    for seq_len, expected in ((None, rebuilds), (PROMPT + NEW, 0)):
        widths: list[int] = []
        hook = model.register_forward_hook(lambda _m, args, _out: widths.append(args[0].shape[1]))
        try:
            model.generate(prompt, max_new_tokens=NEW, temperature=0, seq_len=seq_len)
        finally:
            hook.remove()
        assert widths[0] == PROMPT and len(widths) == NEW
        assert sum(w > 1 for w in widths[1:]) == expected, (seq_len, widths)


# ----- bad input to the decoder ----------------------------------------------------------------------


@pytest.mark.parametrize("positions", [torch.tensor([0, 1, 3, 2]), torch.tensor([[0, 1, 2, 3], [0, 2, 1, 3]])])
def test_decreasing_positions_are_refused(positions):
    model = make("rope")
    with pytest.raises(ValueError, match=r"positions: must not decrease along the sequence, got (3 then 2|2 then 1)"):
        model(tokens(2, 4), positions=positions)
    model(tokens(2, 4), positions=torch.tensor([0, 1, 1, 2]))  # equal positions are allowed (BiPE's segments)


@pytest.mark.parametrize("cached", [torch.arange(5), torch.arange(5).expand(2, 5)])
def test_new_positions_before_the_cached_ones_are_refused(cached):
    model = make("alibi")
    cache = model.new_cache()
    model(tokens(2, 5), positions=cached, cache=cache)
    with pytest.raises(ValueError, match="positions: the new positions start at 2, before the last cached position 4"):
        model(tokens(2, 1), positions=torch.tensor([2]), cache=cache)
    assert len(cache) == 5                                          # the refused call changed nothing
    model(tokens(2, 1), positions=torch.tensor([4]), cache=cache)   # not decreasing: accepted


@pytest.mark.parametrize("bad", [VOCAB, 300, -1])
def test_token_ids_outside_the_vocabulary_are_refused(bad):
    model = make("rope")
    idx = tokens(2, 6)
    idx[1, 3] = bad
    with pytest.raises(ValueError, match=rf"^idx: token id {bad} out of range for vocab_size={VOCAB}$"):
        model(idx)
    with pytest.raises(ValueError, match=rf"token id {bad} out of range"):
        model.generate(idx, max_new_tokens=2)
