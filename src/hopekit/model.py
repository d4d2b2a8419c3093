"""The reference decoder: a Llama-style transformer, readable top to bottom.

RMSNorm → attention (optionally grouped KV heads) → RMSNorm → SwiGLU MLP, pre-norm residual blocks,
a final norm and a tied LM head. The positional encoding is whatever ``config.pe`` names; it is built
**once** (``model.pe``, shared by every block, holding any learnable positional parameters) and its
position features are prepared **once per forward** (:class:`Context`) and passed down to every block.

Attention is :func:`hopekit.attention` (:mod:`hopekit.functional`), which branches on the encoding's
capability flags, never on a method name, and never materialises a T×T tensor per head:

* ``uses_rotate`` (RoPE family; rotated here with the features made once per forward) and plain
  methods → ``scaled_dot_product_attention``;
* ``uses_bias`` (ALiBi), ``uses_scores`` (hope_hyperbolic) → their kernels (:mod:`hopekit.kernels`)
  where they apply, else the chunked reference over blocks of ``attn_chunk`` query rows (memory
  O(chunk · T));
* ``uses_embed`` (sinusoidal, learned) → added to the token embeddings at the input;
* ``uses_tokens`` (BiPE) → positions come from the token ids: intra-segment ones for ``embed``,
  segment indices for attention (the running segment state travels in the KV cache).

Attention is causal by token order. Positions default to ``past, …, past + T − 1`` and may be given
as ``(T,)`` or ``(B, T)`` (e.g. randomized positions); for encodings whose attention reads them
(rotary, bias, scores) they must not decrease along the sequence (a ValueError naming ``positions``);
positions that only index an absolute table (sinusoidal, learned) may come in any order.
There is no length ceiling: the model runs at any T (learned absolute positions excepted).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from . import pe as pe_lib
from .functional import attention, chunked_attention
from .pe.base import PositionalEncoding, check_bool, check_int, check_positions, check_real

__all__ = ["ModelConfig", "Context", "KVCache", "RMSNorm", "SwiGLU", "Attention", "Block", "Decoder",
           "chunked_attention"]  # chunked_attention: now in hopekit.functional, kept importable from here


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape of the decoder. ``pe``: the encoding's typed parameters (``hopekit.pe.parse``); a mapping
    that names its method (``{"kind": "rope", "base": 10000}``) is parsed here."""

    vocab_size: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None        # grouped-query attention; None = n_heads (plain MHA)
    ffn_hidden: int | None = None        # SwiGLU width; None = 8/3 · d_model, rounded up to a multiple of 8
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02
    attn_chunk: int = 256                # query rows per block on the bias / scores paths
    pe: pe_lib.Params = dataclasses.field(default_factory=lambda: pe_lib.RopeParams())

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.ffn_hidden is None and isinstance(self.d_model, int):  # Llama's 8/3 · d_model, to a multiple of 8
            object.__setattr__(self, "ffn_hidden", 8 * math.ceil(self.d_model / 3))
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden", "attn_chunk"):
            check_int(self, name, low=1)
        check_real(self, "norm_eps", low=0.0, low_open=True)
        check_real(self, "init_std", low=0.0, low_open=True)
        check_real(self, "dropout", low=0.0, high=1.0, high_open=True)
        check_bool(self, "tie_embeddings")
        if self.d_model % self.n_heads:
            raise ValueError(f"ModelConfig.d_model={self.d_model}: must be divisible by n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"ModelConfig.n_kv_heads={self.n_kv_heads}: must divide n_heads={self.n_heads}")
        if not isinstance(self.pe, pe_lib.Params) and not (isinstance(self.pe, Mapping) and "kind" in self.pe):
            raise ValueError(f"ModelConfig.pe={self.pe!r}: expected parameters or a mapping that names its "
                             f'method, e.g. {{"kind": "rope"}}')
        object.__setattr__(self, "pe", pe_lib.parse(self.pe))
        with torch.device("meta"):  # check the encoding against this shape before anything is allocated
            self.build_pe()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def build_pe(self) -> PositionalEncoding:
        return pe_lib.build(self.pe, head_dim=self.head_dim, num_heads=self.n_heads, d_model=self.d_model)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (``pe`` as ``hopekit.pe.to_config``), as checkpoints store them;
        ``ModelConfig(**d)`` reads them back."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "pe": pe_lib.to_config(self.pe)}


class Context(NamedTuple):
    """Everything positional that every block needs, prepared once per forward.

    ``q_pos``: positions of the new tokens ``(T,)`` or ``(B, T)``; ``k_pos``: positions of every key
    (cached + new); ``rotary``: cos/sin of the new tokens for ``uses_rotate`` encodings, else None;
    ``past``: number of cached tokens before this forward.
    """

    enc: PositionalEncoding
    q_pos: torch.Tensor
    k_pos: torch.Tensor
    rotary: pe_lib.RotaryFeatures | None
    past: int


class KVCache:
    """Keys and values of the tokens seen so far (one entry per layer) plus their positions.

    What a layer stores is what its attention consumes: **rotated** keys for ``uses_rotate`` methods,
    **raw** keys for everything else — hope_hyperbolic (``scores`` re-applies the decay relative to
    each new query from the cached positions, so nothing unbounded is stored), ALiBi (bias from the
    cached positions), absolute methods and NoPE. Keys keep the KV head count (GQA stores less).

    Length-dependent spectra (dynamic_ntk, longrope, or BiPE over one of them): cached keys keep the
    rotation of the forward that produced them; a forward with a cache never re-rotates them. Feeding
    more tokens therefore equals a cache-free forward only while the spectrum stays the one the cache
    was built with, i.e. ``encoding.spectrum(length)`` is unchanged, where ``length`` is the
    ``seq_len`` given or else max(position) + 1. Two ways to keep that true:

    * pass one fixed ``seq_len`` to every call (e.g. the final length): one spectrum throughout, and
      the result equals a full forward at that ``seq_len``;
    * or rebuild the cache from all tokens so far whenever the spectrum changes. This is what
      :meth:`Decoder.generate` does by default (as transformers does for Phi-3's LongRoPE switch):
      once when LongRoPE's length first exceeds ``train_len``, and at every step past ``train_len``
      for dynamic NTK, whose base grows with the length (correct, but a full recompute per step).

    Simple by design: ``update`` concatenates, O(T) copy per step.
    """

    def __init__(self, n_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * n_layers    # each (B, H_kv, T_cached, D)
        self.values: list[torch.Tensor | None] = [None] * n_layers  # each (B, H_kv, T_cached, D)
        self.positions: torch.Tensor | None = None                 # (T_cached,) or (B, T_cached)
        self.token_state: torch.Tensor | None = None               # uses_tokens only (BiPE: (B, 2))

    def __len__(self) -> int:
        return 0 if self.positions is None else self.positions.shape[-1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this forward's keys/values to ``layer``; returns all of them ``(B, H_kv, T_all, D)``."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def _cat_positions(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    """Join cached and new positions; a 1-D side is broadcast to the batch of a 2-D side."""
    if old is None:
        return new
    if old.dim() != new.dim():
        batch = max(old.shape[0] if old.dim() == 2 else 1, new.shape[0] if new.dim() == 2 else 1)
        old, new = (p if p.dim() == 2 else p.expand(batch, -1) for p in (old, new))  # (B, T_old), (B, T)
    return torch.cat([old, new], dim=-1)


def _same_spectrum(a: pe_lib.Spectrum, b: pe_lib.Spectrum) -> bool:
    """Whether keys rotated with spectrum ``a`` are the keys a forward with ``b`` would make."""
    return a is b or (a.attn_scale == b.attn_scale and torch.equal(a.inv_freq, b.inv_freq))


def _check_tokens_and_positions(idx: torch.Tensor, vocab_size: int, pos: torch.Tensor | None, past: int) -> None:
    """Refuse token ids outside ``[0, vocab_size)`` and positions that decrease. ``pos``: the last
    cached position (when ``past`` > 0) followed by the new ones; None: any order is fine (positions
    that only index an absolute table). One host sync for both checks."""
    lo, hi = torch.aminmax(idx) if idx.numel() else (idx.new_zeros(()), idx.new_zeros(()))
    steps = pos.diff(dim=-1) if pos is not None else idx.new_zeros(0)                 # (T') or (B, T')
    bad_low, bad_high, decreasing = torch.stack([lo < 0, hi >= vocab_size, (steps < 0).any()]).tolist()
    if bad_low or bad_high:
        value = int(hi) if bad_high else int(lo)
        raise ValueError(f"idx: token id {value} out of range for vocab_size={vocab_size}")
    if decreasing:
        where = (steps < 0).nonzero()[0].tolist()                                     # [t] or [b, t]
        t, row = where[-1], pos[where[0]] if pos.dim() == 2 else pos
        before, after = int(row[t]), int(row[t + 1])
        if past and t == 0:
            raise ValueError(f"positions: the new positions start at {after}, before the last cached position "
                             f"{before}; positions must not decrease")
        raise ValueError(f"positions: must not decrease along the sequence, got {before} then {after}")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()  # normalise in float32, as Llama does
        return (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.w_gate = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_up = nn.Linear(cfg.d_model, cfg.ffn_hidden, bias=False)
        self.w_down = nn.Linear(cfg.ffn_hidden, cfg.d_model, bias=False)  # a residual projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.chunk, self.dropout = cfg.attn_chunk, cfg.dropout
        self.wq = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)  # a residual projection

    def forward(self, x: torch.Tensor, ctx: Context, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        if ctx.enc.uses_rotate:
            q, k = ctx.enc.apply(q, ctx.rotary), ctx.enc.apply(k, ctx.rotary)
        if cache is not None:
            k, v = cache.update(layer, k, v)                                      # (B, H_kv, past + T, D)
        y = attention(ctx.enc, q, k, v, ctx.q_pos, ctx.k_pos, scale=self.scale, rotated=True, embedded=True,
                      dropout_p=self.dropout if self.training else 0.0, chunk=self.chunk)   # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)         # (B, T, H·D)
        return F.dropout(self.wo(y), self.dropout, self.training)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, cfg.norm_eps), Attention(cfg)
        self.mlp_norm, self.mlp = RMSNorm(cfg.d_model, cfg.norm_eps), SwiGLU(cfg)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, ctx: Context, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), ctx, cache, layer)
        return x + F.dropout(self.mlp(self.mlp_norm(x)), self.dropout, self.training)


def _stack(model: "Decoder", x: torch.Tensor, ctx: Context, targets: torch.Tensor | None,
           cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Everything after the embeddings: the blocks, the final norm, the LM head and the loss."""
    for layer, block in enumerate(model.blocks):
        x = block(x, ctx, cache, layer)
    logits = model.lm_head(model.norm(x))                                            # (B, T, vocab)
    loss = None
    if targets is not None:
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
    return logits, loss


#: compiled graphs :func:`_stack` may keep, one per encoding type and shape (torch's default is 8)
_RECOMPILE_LIMIT = 64
_COMPILED_STACK: list[Any] = []


def _compiled_stack():
    """``torch.compile`` of :func:`_stack` (fixed shapes), made once per process and shared by every
    model: a graph compiled for one model serves every model of the same shape and encoding type."""
    if not _COMPILED_STACK:
        import torch._dynamo

        compiled = torch.compile(_stack, dynamic=False)

        def run(*args):
            with torch._dynamo.config.patch(recompile_limit=_RECOMPILE_LIMIT):
                return compiled(*args)

        _COMPILED_STACK.append(run)
    return _COMPILED_STACK[0]


class Decoder(nn.Module):
    """``Decoder(config)(idx, positions=None, targets=None, cache=None, seq_len=None) -> (logits, loss)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.pe = config.build_pe()  # the one encoding instance, shared by all blocks
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        self.compiled_training = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, init_std²) everywhere; residual projections get init_std / √(2 · n_layers) (GPT-2)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if name.startswith("pe."):
                continue  # the encoding initialises its own parameters
            if name.endswith(("wo.weight", "w_down.weight")):
                nn.init.normal_(p, std=std / math.sqrt(2 * self.config.n_layers))
            elif name.endswith("norm.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=std)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Unique parameters (tied weights once); ``non_embedding`` drops the token and position tables."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + sum(p.numel() for p in self.pe.parameters() if p.dim() == 2)
        return n

    def compile_for_training(self, enabled: bool = True) -> "Decoder":
        """Run training forwards (train mode, gradients on, no cache) through ``torch.compile``: the blocks
        and the head (everything after the embeddings) become one graph per encoding type and shape,
        whose pointwise work (norms, rotation, SwiGLU, residuals, softmax, loss) fuses into a few
        kernels (1.1-1.5x per training step on CPU, one thread; what is left is the matmuls and SDPA).
        Evaluation and generation stay eager, at any length. The first training forward of each new shape
        or encoding type compiles: seconds with a warm inductor cache on disk, ~45 s cold on 2 CPU cores,
        which a short run's overall tokens/s includes (a 400-step run can come out slower than eager
        overall). The result equals eager to float32 rounding. Returns ``self``."""
        self.compiled_training = bool(enabled)
        return self

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    def forward(self, idx: torch.Tensor, positions: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                cache: KVCache | None = None, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(B, T, vocab)`` and the mean next-token loss when ``targets`` ``(B, T)`` are given
        (``-1`` is ignored). With a ``cache``, ``idx`` holds only the new tokens and the cache is
        extended in place. ``seq_len`` fixes the spectrum of length-dependent rotary methods (see
        :class:`KVCache`); by default the encoding uses max(new positions) + 1, the HF rule.

        Refused with a ``ValueError``: token ids outside ``[0, vocab_size)``, and, for encodings whose
        attention reads positions (rotary, bias, scores), positions that decrease along the sequence
        or new positions before the last cached one (attention is causal by token order). Positions
        that only index an absolute table (sinusoidal, learned, NoPE) may come in any order."""
        if idx.dim() != 2 or idx.dtype != torch.long:
            raise ValueError(f"idx: expected (B, T) int64 token ids, got {tuple(idx.shape)} {idx.dtype}")
        B, T = idx.shape
        enc, past = self.pe, len(cache) if cache is not None else 0
        embed_pos = token_state = None
        if enc.uses_tokens:  # BiPE: (intra, segment) positions from the ids, resuming the cached state
            if positions is not None:
                raise ValueError(f"positions: {enc.kind} derives its positions from the token ids; pass none")
            state = cache.token_state if cache is not None else None                 # (B, 2) or None
            embed_pos, positions, token_state = enc.token_positions(idx, state)      # (B, T), (B, T), (B, 2)
        elif positions is None:
            positions = torch.arange(past, past + T, device=idx.device)              # (T,)
        positions = check_positions(positions, "positions", T).to(idx.device)        # (T,) or (B, T)
        k_pos = _cat_positions(cache.positions if cache is not None else None, positions)  # (past + T,) or (B, …)
        ordered = enc.uses_rotate or enc.uses_bias or enc.uses_scores  # attention reads the positions
        tail = k_pos[..., max(past - 1, 0):] if ordered else None                  # last cached + new
        _check_tokens_and_positions(idx, self.config.vocab_size, tail, past)
        rotary = enc.features(positions, seq_len) if enc.uses_rotate else None       # cos/sin, once
        ctx = Context(enc, positions, k_pos, rotary, past)

        x = self.tok_emb(idx)                                                        # (B, T, C)
        if enc.uses_embed:
            x = enc.embed(x, positions if embed_pos is None else embed_pos)
        x = F.dropout(x, self.config.dropout, self.training)
        if self.compiled_training and self.training and cache is None and torch.is_grad_enabled():
            return _compiled_stack()(self, x, ctx, targets)
        logits, loss = _stack(self, x, ctx, targets, cache)
        if cache is not None:
            cache.positions, cache.token_state = k_pos, token_state
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, seq_len: int | None = None) -> torch.Tensor:
        """Sample ``max_new_tokens`` after ``idx`` ``(B, T)`` with a KV cache; ``temperature=0`` is greedy.

        Every step's logits are those of a cache-free forward of all tokens so far with the same
        ``seq_len`` argument: greedy decoding equals taking, at every step, the argmax of the last row
        of ``self(tokens_so_far, seq_len=seq_len)``. For length-dependent spectra (see :class:`KVCache`):

        * ``seq_len=None`` (default): each step uses the encoding's default length, max(position) + 1.
          When the spectrum at that length (``self.pe.spectrum``) differs from the one the cached keys
          were rotated with, the cache is rebuilt from all tokens so far: once for LongRoPE, at the
          step where the length first exceeds ``train_len`` (as transformers does for Phi-3), and at
          every step past ``train_len`` for dynamic NTK (correct, but a full recompute per step).
        * ``seq_len=L`` (e.g. prompt + ``max_new_tokens``): one fixed spectrum and never a rebuild;
          every step equals a full forward at ``seq_len=L``.
        """
        enc = self.pe
        track = enc.uses_rotate and seq_len is None  # only then can the spectrum change between steps

        def spectrum(tokens: torch.Tensor, past: int, state: torch.Tensor | None):
            """The spectrum a forward of ``tokens`` after ``past`` cached ones rotates with (default rule)."""
            if enc.uses_tokens:  # positions come from the ids (BiPE: segment indices)
                length = int(enc.token_positions(tokens, state)[1].max()) + 1
            else:
                length = past + tokens.shape[1]
            return enc.spectrum(length)

        cache = self.new_cache()
        built = spectrum(idx, 0, None) if track else None                            # what the cache holds
        logits, _ = self(idx, cache=cache, seq_len=seq_len)                          # prefill
        out = [idx]
        for step in range(max_new_tokens):
            last = logits[:, -1].float()                                             # (B, vocab)
            if temperature == 0:
                nxt = last.argmax(-1, keepdim=True)                                  # (B, 1)
            else:
                last = last / temperature
                if top_k is not None:
                    kth = last.topk(min(top_k, last.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
                    last = last.masked_fill(last < kth, float("-inf"))
                nxt = torch.multinomial(last.softmax(-1), 1, generator=generator)    # (B, 1)
            out.append(nxt)
            if step + 1 == max_new_tokens:
                break
            now = spectrum(nxt, len(cache), cache.token_state) if track else None
            if track and not _same_spectrum(now, built):  # cached keys have another rotation: rebuild
                cache, built = self.new_cache(), now
                logits, _ = self(torch.cat(out, dim=1), cache=cache, seq_len=seq_len)  # (B, T_so_far, vocab)
            else:
                logits, _ = self(nxt, cache=cache, seq_len=seq_len)
        return torch.cat(out, dim=1)                                                 # (B, T + new)
