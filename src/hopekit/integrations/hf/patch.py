"""Put any hopekit encoding into a pretrained Llama-family model through transformers' public seams.

:func:`patch_model` picks the seam from the encoding's capability flags, never from its name:

* ``uses_rotate`` (rope family, longrope, hope_highfreq): the decoder's rotary module
  (``model.model.rotary_emb``, called once per forward) is replaced by :class:`HopekitRotary`, which
  returns hopekit's cos/sin in HF's layout (full rotary width, the two halves duplicated);
* ``uses_bias`` / ``uses_scores`` (alibi, hope_hyperbolic): the rotary module becomes the identity
  (cos = 1, sin = 0) and the attention function ``"hopekit"`` is registered with
  ``AttentionInterface`` together with a mask function of the same name (without one, transformers
  would pass no mask and causal masking would be silently lost). The function computes the
  encoding's logits over blocks of query rows (memory linear in length) and masks future keys itself;
  the mask transformers passes (boolean, or None when it is purely causal) adds padding;
* NoPE: the identity rotary module alone.

Absolute encodings added at the input (sinusoidal, learned) and BiPE (positions from token ids) are
refused: they add position vectors the pretrained weights never saw, or need the tokenizer's segment
boundaries. The patched model keeps its class and weights; the encoding is registered as
``model.model.hopekit_pe`` (learnable positional parameters train with the model) and its
configuration is written into ``model.config.hopekit_pe``, so ``save_pretrained`` carries it and
:func:`hopekit.integrations.hf.load_pretrained` re-applies it.

Positions: the queries' positions are the ``position_ids`` transformers passes (default ``past, …,
past + T − 1``). Without a cache the keys are the same tokens (so packed documents, whose positions
restart, work too); with a KV cache, keys are taken as contiguous and ending at the last query —
transformers' dynamic cache, as in generation. A static cache (``cache_implementation="static"``,
longer than the tokens seen) breaks that assumption and is not supported for bias / score methods. Length-dependent spectra (dynamic NTK, LongRoPE) use HF's rule, length =
max(position) + 1 per forward; :func:`hopekit.integrations.hf.generate` rebuilds the KV cache when
that changes the spectrum.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import torch
from torch import nn
from transformers import AttentionInterface

try:  # transformers >= 4.53 (AttentionMaskInterface); the package needs 4.56 (from_pretrained's dtype=)
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError as err:  # pragma: no cover - version guard
    raise ImportError("hopekit.integrations.hf needs transformers >= 4.56 (pip install 'hopekit[hf]')") from err

from ... import pe
from ...functional import attention
from .rope import head_dim_of, params_from_config

__all__ = ["SUPPORTED_MODEL_TYPES", "ATTENTION_NAME", "HopekitRotary", "patch_model", "resolve_pe", "encoding_of",
           "full_attention_mask",
           "hopekit_attention", "native_params"]

#: model types whose decoder has the seams patch_model relies on (one rotary module called once per
#: forward, ``position_embeddings`` passed to every layer, ``AttentionInterface`` dispatch, half-split
#: rotary over the whole head)
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")

#: the name under which the attention and mask functions are registered
ATTENTION_NAME = "hopekit"

#: attention query rows per block on the bias / scores path
ATTN_CHUNK = 256


class HopekitRotary(nn.Module):
    """Drop-in for a model's ``rotary_emb``: ``forward(x, position_ids) -> (cos, sin)`` of shape
    ``(B, T, head_dim)`` in ``x.dtype``, HF's half-split layout (each half duplicated), the attention
    factor folded in. Angles come from integer positions in float64 (hopekit's rule), not float32.
    ``encoding=None`` is the identity rotation (cos = 1, sin = 0)."""

    def __init__(self, encoding: pe.PositionalEncoding | None, head_dim: int) -> None:
        super().__init__()
        object.__setattr__(self, "encoding", encoding)  # a reference: the module is registered on the model
        self.head_dim = head_dim

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args: Any, **kwargs: Any):
        if self.encoding is None:
            ones = torch.ones(*position_ids.shape, self.head_dim, dtype=x.dtype, device=x.device)
            return ones, torch.zeros_like(ones)
        feats = self.encoding.features(position_ids)                   # (B, 1, T, r/2) float32
        cos, sin = feats.cos.squeeze(1), feats.sin.squeeze(1)          # (B, T, r/2)
        cos, sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)  # (B, T, r)
        return cos.to(device=x.device, dtype=x.dtype), sin.to(device=x.device, dtype=x.dtype)


def full_attention_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """An all-ones ``attention_mask`` for ``input_ids``: with it, transformers knows the batch is unpadded
    and passes no mask for a causal forward (None). Without one, 4.x looks for packed documents in the
    positions and builds a ``(B, 1, T, T)`` boolean mask: quadratic memory (256 MiB a row at 16k)."""
    return torch.ones_like(input_ids)


def hopekit_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The ``"hopekit"`` attention function (``AttentionInterface``): the encoding's bias or scores.

    ``query`` ``(B, H, Tq, D)``, ``key``/``value`` ``(B, H_kv, Tk, D)`` (all cached keys, raw: the
    rotary module is the identity); returns ``((B, Tq, H, D), None)`` as transformers expects.
    """
    enc = getattr(module, "hopekit_encoding", None)
    if enc is None:
        raise RuntimeError(f"{type(module).__name__}: attn_implementation={ATTENTION_NAME!r} needs a model "
                           f"patched by hopekit.integrations.hf.patch_model")
    B, H, Tq, D = query.shape
    Tk = key.shape[2]
    position_ids = kwargs.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(Tk - Tq, Tk, device=query.device)[None]
    q_pos = position_ids.to(query.device).expand(B, Tq)                          # (B, Tq)
    if Tk == Tq:   # no cache: the keys are these tokens (also packed documents: positions restart, masks split)
        k_pos = q_pos
    else:          # a dynamic KV cache: keys contiguous, ending at the last query
        k_pos = q_pos[:, -1:] - (Tk - 1) + torch.arange(Tk, device=query.device)  # (B, Tk)
    mask = None
    if attention_mask is not None:
        mask = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        # a query row that may attend to no key at all (a left-padding token: every key up to it is
        # padding) would softmax over −inf only and turn NaN, and NaN values poison every later row
        # through probs @ v (0 · NaN); such rows attend causally to their padded past instead, as in
        # HF's eager attention (their outputs are padding and never seen by a real token)
        causal = (torch.arange(Tk, device=query.device)[None, :]
                  <= Tk - Tq + torch.arange(Tq, device=query.device)[:, None])        # (Tq, Tk)
        mask = mask | ~(mask & causal).any(dim=-1, keepdim=True)
    scale = scaling if scaling is not None else D ** -0.5
    out = attention(enc, query, key, value, q_pos, k_pos, scale=scale, mask=mask, chunk=ATTN_CHUNK,
                    dropout_p=dropout if module.training else 0.0)
    return out.transpose(1, 2).contiguous(), None


def _register() -> None:
    AttentionInterface.register(ATTENTION_NAME, hopekit_attention)
    # sdpa_mask: a boolean mask (True = attend), or None when the batch is purely causal (no padding);
    # the attention function always masks future keys itself
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


_register()


def _decoder(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", model)
    if not hasattr(inner, "rotary_emb") or not hasattr(inner, "layers"):
        raise ValueError(f"{type(model).__name__}: no decoder with a rotary_emb module and layers; hopekit "
                         f"patches {', '.join(SUPPORTED_MODEL_TYPES)} models")
    return inner


def _check_supported(model: nn.Module) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type={model_type!r}: not supported; hopekit patches {', '.join(SUPPORTED_MODEL_TYPES)} "
            f"(one rotary module per forward, half-split rotary over the whole head, AttentionInterface "
            f"dispatch). Other architectures place positions differently (e.g. GPT-2's absolute table, "
            f"Bloom's built-in ALiBi, per-layer rope settings) and would be patched wrongly")


def native_params(model: nn.Module) -> pe.Params:
    """The hopekit parameters of the model's own (config) rotary embedding."""
    return params_from_config(model.config)


def encoding_of(model: nn.Module) -> pe.PositionalEncoding | None:
    """The hopekit encoding a patched model runs with, or None if it is not patched."""
    return getattr(_decoder(model), "hopekit_pe", None)


def resolve_pe(pe_config: pe.Params | Mapping[str, Any] | None, model: nn.Module | Any) -> pe.Params:
    """``pe_config`` as typed parameters for ``model`` (a transformers model or its config), which owns
    two facts: a method's ``train_len`` left unset becomes the model's pre-training length (its own
    encoding's ``train_len`` when that has one — e.g. the original 8192 of a llama3-scaled model —
    else ``max_position_embeddings``), and a rotary method's ``base`` left unset becomes the model's
    own (SmolLM2: 1e5, not the registry's 1e4, so ``--pe yarn`` extends the spectrum the model was
    trained with); both are read from the config's rope fields. ``None`` → the encoding the model runs:
    one patched in earlier (e.g. by ``load_pretrained`` from a ``hopekit_pe`` block), else its config's
    rope. Parameters pass through (they are already resolved, e.g. read back from a checkpoint)."""
    if isinstance(pe_config, pe.Params):
        return pe_config
    config = getattr(model, "config", model)
    native = params_from_config(config)                                   # what the weights were trained with
    if pe_config is None:
        running = getattr(getattr(model, "model", None), "hopekit_pe", None)  # a model patched before
        return running.params if running is not None else native
    if not isinstance(pe_config, Mapping) or "kind" not in pe_config:
        raise ValueError(f"pe={pe_config!r}: expected parameters or a mapping that names its method, "
                         f'e.g. {{"kind": "yarn", "factor": 2}}')
    method = pe.method_of(pe_config["kind"])
    if method.encoding.uses_rotate is True and "base" in {f.name for f in dataclasses.fields(method.params)}:
        pe_config = {"base": native.base, **pe_config}
    train_len = getattr(native, "train_len", None)  # an already-scaled model: its original length
    if not isinstance(train_len, int) or isinstance(train_len, bool):
        train_len = int(config.max_position_embeddings)
    return pe.parse(pe_config, train_len=train_len)


def patch_model(model: nn.Module, params: pe.Params | dict | None = None) -> nn.Module:
    """Make ``model`` (Llama, Mistral or Qwen2 from transformers) run with ``params`` (typed parameters
    or a ``{"kind": ...}`` mapping; None: the model's own rope settings, through hopekit). In place;
    returns the model. Patching again replaces the previous encoding; a rotary method after a bias or
    score one restores the attention implementation the model had before (e.g. ``eager``).

    A mapping is read against the model (:func:`resolve_pe`): an unset ``train_len`` is the model's
    ``max_position_embeddings`` (its pre-training window), an unset rotary ``base`` the model's own.
    Refused, with the reason: other architectures, partial rotary, absolute and token-derived
    encodings.
    """
    _check_supported(model)
    config = model.config
    inner = _decoder(model)
    head_dim = head_dim_of(config)
    native = params_from_config(config)
    if native.rotary_dim(head_dim) != head_dim:
        raise ValueError(f"partial_rotary_factor={native.rotary_fraction}: {config.model_type} rotates the "
                         f"whole head; a partial-rotary config is not a {config.model_type} hopekit can patch")
    params = resolve_pe(params, model)
    enc = pe.build(params, head_dim=head_dim, num_heads=config.num_attention_heads, d_model=config.hidden_size)
    if enc.uses_embed or enc.uses_tokens:
        raise ValueError(f"pe.kind={params.kind!r}: adds absolute position vectors at the input (or derives "
                         f"positions from token ids); hopekit puts only rotary, bias and score methods into "
                         f"pretrained models")
    if enc.uses_rotate and enc.rotary_dim != head_dim:
        raise ValueError(f"pe.rotary_fraction={params.rotary_fraction}: {config.model_type}'s attention rotates "
                         f"the whole head (rotary dim {head_dim}); partial rotary cannot be patched in")
    device = next(model.parameters()).device
    enc.to(device)
    inner.hopekit_pe = enc
    inner.rotary_emb = HopekitRotary(enc if enc.uses_rotate else None, head_dim)
    for layer in inner.layers:
        object.__setattr__(layer.self_attn, "hopekit_encoding", enc)
    if enc.uses_bias or enc.uses_scores:
        if config._attn_implementation != ATTENTION_NAME:  # restored when a rotary method replaces this one
            model.hopekit_attn_before = config._attn_implementation
        _set_attention(model, ATTENTION_NAME)
    elif config._attn_implementation == ATTENTION_NAME:
        _set_attention(model, getattr(model, "hopekit_attn_before", None) or "sdpa")
    config.hopekit_pe = pe.to_config(params)
    return model


def _set_attention(model: nn.Module, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # pragma: no cover - older transformers
        model.config._attn_implementation = name
