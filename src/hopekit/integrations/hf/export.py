"""Export to a Hugging Face model directory: a (patched) transformers model, or a hopekit checkpoint.

Two functions, one rule for the positional encoding:

* :func:`export_pretrained` — a Llama / Mistral / Qwen2 model from transformers (patched by
  :func:`~hopekit.integrations.hf.patch_model` or not) with the encoding it runs (or ``params``);
* :func:`export_checkpoint` — a reference-decoder checkpoint (``hopekit train``) as a
  ``LlamaForCausalLM`` directory. The decoder *is* a Llama (RMSNorm computed in float32 and cast
  back, SwiGLU, pre-norm, GQA where query head h reads KV head h // (H/H_kv), half-split rotary), so
  the weights map one to one (:data:`DECODER_TO_LLAMA`), with no permutation.

Both write ``model.safetensors``, ``config.json``, ``generation_config.json``, the tokenizer when
there is one, and ``HOPEKIT.md`` (what the directory holds and what a reader without hopekit gets).

**Encodings vanilla transformers can express** (``rope``, ``linear``, ``dynamic_ntk``, ``yarn``,
``llama3``, ``longrope`` without ``start_tokens``; and static ``ntk``, which is RoPE with the base
b·s^(r/(r−2)), written as plain RoPE with that base): ``config.json`` carries the standard rope fields
(:func:`~hopekit.integrations.hf.rope.portable_rope_fields`: both the 4.x ``rope_theta`` +
``rope_scaling`` and the 5.x ``rope_parameters`` layout, so the directory reads the same under either)
and no hopekit block. It is a plain HF model: vanilla transformers, with hopekit never imported, computes the same
logits as hopekit (to float32 rounding, tested). The rope dict also carries what vLLM's
``get_rope`` needs for the same numbers: for ``longrope`` with an explicit attention factor,
``short_mscale`` / ``long_mscale`` (vLLM ignores ``attention_factor`` there; transformers logs
"Unrecognized keys" for these two and ignores them).

**Encodings it cannot express** (``hope_highfreq``, ``hope_hyperbolic``, ``alibi``, and for a
checkpoint ``nope``): the weights are exported with the model's own rope fields (for a checkpoint:
plain RoPE with the encoding's ``base``, else 10000) plus ``config.json["hopekit_pe"]``, the
encoding's full configuration. :func:`hopekit.integrations.hf.load_pretrained` re-applies it, giving
hopekit's logits. **A reader without hopekit silently gets plain RoPE**: vanilla
``AutoModelForCausalLM.from_pretrained`` loads the directory without an error or a warning (it keeps
unknown config keys) and runs RoPE, a different model whose outputs are wrong. ``HOPEKIT.md`` in the
directory says so. ``strict=True`` refuses such an export (:class:`RopeNotExpressible`) instead.

Why a loader function and not "registered on ``import hopekit``": transformers has no public hook
that runs after ``from_pretrained`` for a built-in model type, so ``import hopekit`` alone does not
(and, short of monkey-patching ``from_pretrained``, cannot) change what a vanilla
``from_pretrained`` builds. The one public seam, ``auto_map`` + a ``modeling_*.py`` shipped in the
directory, needs ``trust_remote_code=True``, executes code from the model directory and copies it into
the HF modules cache, and gives a reader without hopekit nothing more (the import fails); we do not
use it. The attention function ``"hopekit"`` *is* registered with ``AttentionInterface`` on import
(:mod:`.patch`), but it needs a patched model to read the encoding from.

Refused, with the reason: BiPE, sinusoidal and learned (absolute or token-derived positions; a
Llama has no place for them), partial rotary (Llama rotates the whole head), encodings with learnable
parameters (``hope_hyperbolic`` with ``learnable=True``: ``load_pretrained`` would re-initialise them).

Tokenizers: a transformers tokenizer is saved with its own ``save_pretrained``; hopekit's
:class:`~hopekit.data.tokenizer.HFTokenizer` (BPE, a ``tokenizer.json``) as a
``PreTrainedTokenizerFast`` with its BOS/EOS; the :class:`~hopekit.data.tokenizer.ByteTokenizer` as an
equivalent ``tokenizer.json`` (byte b ↔ id b through the GPT-2 byte-to-character table, no merges,
its specials after id 255), which encodes every text to the same ids, except that a literal
``<|endoftext|>`` in the text becomes the special id (transformers matches special tokens in text;
hopekit's byte tokenizer never does).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import pe
from .patch import SUPPORTED_MODEL_TYPES, native_params, resolve_pe
from .rope import RopeNotExpressible, head_dim_of, portable_rope_fields

__all__ = ["Exported", "export_pretrained", "export_checkpoint", "export_hf", "DECODER_TO_LLAMA", "NOTE_NAME",
           "vanilla_expressible"]

#: the file that says, inside the exported directory, what it holds and what a reader without hopekit gets
NOTE_NAME = "HOPEKIT.md"

#: reference-decoder parameter name → LlamaForCausalLM parameter name (``{i}``: the layer index)
DECODER_TO_LLAMA = {
    "tok_emb.weight": "model.embed_tokens.weight",
    "blocks.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blocks.{i}.attn.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blocks.{i}.attn.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blocks.{i}.attn.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blocks.{i}.attn.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blocks.{i}.mlp_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blocks.{i}.mlp.w_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blocks.{i}.mlp.w_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blocks.{i}.mlp.w_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}

#: config keys that describe the rotary embedding (removed before the exported ones are written)
_ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_parameters", "original_max_position_embeddings",
              "partial_rotary_factor")


@dataclasses.dataclass(frozen=True)
class Exported:
    """What an export wrote: the directory, the encoding, and whether vanilla transformers runs it."""

    path: Path
    params: pe.Params
    vanilla_exact: bool   # True: a plain HF model; False: needs hopekit's load_pretrained (hopekit_pe block)
    tokenizer: str | None  # what was saved as the tokenizer, or None


# --- the encoding ---------------------------------------------------------------------------------

def _as_rope_family(params: pe.Params, head_dim: int) -> pe.Params:
    """Static NTK is RoPE with base b·s^(r/(r−2)): the one rewrite needed for vanilla transformers."""
    if type(params) is pe.NTKParams:  # (not its subclass DynamicNTKParams, which HF calls "dynamic")
        r = params.rotary_dim(head_dim)
        return pe.RopeParams(base=params.base * params.factor ** (r / (r - 2)), rotary_fraction=params.rotary_fraction)
    return params


def vanilla_expressible(params: pe.Params, head_dim: int) -> dict[str, Any]:
    """The config fields with which vanilla transformers builds ``params``'s rotary embedding, in both
    layouts (:func:`~hopekit.integrations.hf.rope.portable_rope_fields`: a directory exported under
    transformers 4.x loads alike under 5.x and vice versa), plus vLLM's spelling where it differs;
    :class:`RopeNotExpressible` if there are none."""
    params = _as_rope_family(params, head_dim)
    fields = portable_rope_fields(params, head_dim=head_dim)
    for rope in (fields.get("rope_parameters"), fields.get("rope_scaling")):
        if rope and rope.get("rope_type") == "longrope" and "attention_factor" in rope:
            # vLLM's get_rope reads short_mscale / long_mscale for longrope, never attention_factor
            rope["short_mscale"] = rope["long_mscale"] = rope["attention_factor"]
    return fields


def _check_exportable(params: pe.Params, enc: pe.PositionalEncoding) -> None:
    kind = pe.name_of(params)
    if enc.uses_embed or enc.uses_tokens:
        raise ValueError(f"pe.kind={kind!r}: adds position vectors at the input or derives positions from token "
                         f"ids; a Llama-family model has no place for either, so it cannot be exported")
    if enc.uses_rotate and enc.rotary_dim != enc.head_dim:
        raise ValueError(f"pe.rotary_fraction={params.rotary_fraction}: partial rotary; Llama-family attention "
                         f"rotates the whole head (head_dim {enc.head_dim}), so it cannot be exported")
    learned = [name for name, _ in enc.named_parameters()]
    if learned:
        raise ValueError(f"pe.kind={kind!r}: has learnable parameters ({', '.join(learned)}); load_pretrained "
                         f"re-initialises the encoding from hopekit_pe, so the trained values would be lost")


# --- files ----------------------------------------------------------------------------------------

def _prepare_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"out_dir {out}: exists and is not an empty directory; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _describe(params: pe.Params) -> str:
    return json.dumps(pe.to_config(params), sort_keys=True)


def _write_note(out: Path, params: pe.Params, vanilla_exact: bool, *, source: str, rope: str,
                tokenizer: str | None) -> None:
    kind = pe.name_of(params)
    lines = ["# Exported by hopekit", "", f"Source: {source}.", f"Positional encoding: `{kind}` — `{_describe(params)}`.", ""]
    if vanilla_exact:
        lines += [
            "This is a plain Hugging Face model. Its `config.json` holds the standard rope fields, and",
            "vanilla transformers (`AutoModelForCausalLM.from_pretrained`), without hopekit, computes the",
            f"same logits as hopekit (to float32 rounding). Rope fields: `{rope}`.",
            "For `dynamic` and `longrope` that holds per forward of a freshly loaded model: transformers'",
            "dynamic NTK keeps the longest spectrum it has seen, and its `generate` keeps cached keys rotated",
            "before a spectrum change (hopekit's `hf.generate` rebuilds the cache when the spectrum changes).",
        ]
    else:
        lines += [
            "**Vanilla transformers does not run this model correctly.** No rope type of transformers",
            f"expresses `{kind}`. `config.json` keeps plain rope fields (`{rope}`) so that transformers still",
            "loads the directory, and adds a `hopekit_pe` block that transformers ignores:",
            "`AutoModelForCausalLM.from_pretrained` gives, **silently** (no error, no warning), a model that",
            "runs plain RoPE instead: a different model with wrong outputs. vLLM and other readers of",
            "`config.json` do the same.",
            "",
            "Load it with hopekit, which re-applies the encoding:",
            "",
            "```python",
            "from hopekit.integrations.hf import load_pretrained",
            f"lm = load_pretrained({str(out)!r})   # lm.model runs `{kind}`",
            "```",
            "",
            "`import hopekit` alone does not change what a vanilla `from_pretrained` call builds.",
        ]
    lines += ["", f"Tokenizer: {tokenizer or 'none saved'}."]
    (out / NOTE_NAME).write_text("\n".join(lines) + "\n")


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte → printable character table (what byte-level ``tokenizers`` models work on)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_tokenizer_object(tok: Any) -> Any:
    """A ``tokenizers.Tokenizer`` that encodes like hopekit's ByteTokenizer: byte b → id b, specials
    from 256 on."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in tok.specials])
    for s, i in tok.special_ids.items():
        if tk.token_to_id(s) != i:  # pragma: no cover - tokenizers assigns added ids in order
            raise RuntimeError(f"byte tokenizer export: special {s!r} got id {tk.token_to_id(s)}, expected {i}")
    return tk


def _check_tokenizer_fits(tokenizer: Any, vocab_size: int) -> None:
    if tokenizer is None:
        return
    n = len(tokenizer) if hasattr(tokenizer, "save_pretrained") else getattr(tokenizer, "vocab_size", None)
    if isinstance(n, int) and n > vocab_size:
        raise ValueError(f"tokenizer: has {n} ids but the model's vocab_size is {vocab_size}; not this model's tokenizer")


def _save_tokenizer(tokenizer: Any, out: Path) -> str | None:
    """Save ``tokenizer`` into ``out``; returns a one-line description (None: nothing saved)."""
    if tokenizer is None:
        return None
    from ...data.tokenizer import ByteTokenizer, HFTokenizer

    if hasattr(tokenizer, "save_pretrained"):  # a transformers tokenizer
        tokenizer.save_pretrained(out)
        return f"{type(tokenizer).__name__} (its own save_pretrained)"
    from transformers import PreTrainedTokenizerFast

    if isinstance(tokenizer, ByteTokenizer):
        obj, what = _byte_tokenizer_object(tokenizer), (f"hopekit's byte tokenizer ({tokenizer.vocab_size} ids: "
                                                         f"byte b is id b, specials {list(tokenizer.specials)} after 255)")
        names = {i: s for s, i in tokenizer.special_ids.items()}
    elif isinstance(tokenizer, HFTokenizer):
        obj, what = tokenizer.tokenizer, f"{tokenizer.name} (tokenizer.json)"
        names = {i: obj.id_to_token(i) for i in (tokenizer.bos_id, tokenizer.eos_id) if i is not None}
    else:
        raise TypeError(f"tokenizer: expected a transformers tokenizer or a hopekit ByteTokenizer / HFTokenizer, "
                        f"got {type(tokenizer).__name__}")
    bos = names.get(tokenizer.bos_id) if tokenizer.bos_id is not None else None
    eos = names.get(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    fast = PreTrainedTokenizerFast(tokenizer_object=obj, bos_token=bos, eos_token=eos)
    fast.save_pretrained(out)
    return what


# --- a transformers model -------------------------------------------------------------------------

def export_pretrained(model: nn.Module, out_dir: str | Path, params: pe.Params | dict | None = None, *,
                      tokenizer: Any = None, strict: bool = False) -> Exported:
    """Save ``model`` (Llama, Mistral or Qwen2 from transformers) as a model directory that runs
    ``params`` (default: the encoding :func:`patch_model` put in, else the model's own rope settings).

    A rope-family encoding becomes the standard rope fields of ``config.json`` (a plain HF model);
    any other supported encoding becomes a ``hopekit_pe`` block that only
    :func:`~hopekit.integrations.hf.load_pretrained` applies (refused with ``strict=True``); see the
    module docstring. ``tokenizer``: saved too (a transformers or hopekit tokenizer). ``out_dir`` must
    not exist or be empty. The model is not modified.
    """
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type={getattr(config, 'model_type', None)!r}: hopekit exports "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)} models")
    if params is None:
        params = resolve_pe(None, model)  # the encoding it runs: patched in, else its own
    params, fields = _resolve(config, params, strict)
    exact = fields is not None
    _check_tokenizer_fits(tokenizer, config.vocab_size)
    d = config.to_dict()
    quant = d.pop("quantization_config", None)
    if quant and str(quant.get("quant_method")) not in ("gguf", "QuantizationMethod.GGUF"):
        raise ValueError(f"quantization_config.quant_method={quant.get('quant_method')!r}: a quantized model; hopekit "
                         f"exports float weights (GGUF files are de-quantized on load and export as floats)")
    out = _prepare_dir(out_dir)
    d.pop("hopekit_pe", None)
    if d.get("head_dim") is None:  # e.g. Mistral's null head_dim, which transformers 4.x's yarn/longrope cannot read
        d["head_dim"] = head_dim_of(config)
    if exact:
        for key in _ROPE_KEYS:
            d.pop(key, None)
        d.update(fields)
    else:
        d["hopekit_pe"] = pe.to_config(params)
    new_config = _config_from_dict(type(config), d)
    _save_weights(model, out)
    new_config.save_pretrained(out)
    if not exact:  # the model's own rope fields, in both layouts too
        try:
            fields = vanilla_expressible(native_params(model), head_dim_of(config))
        except RopeNotExpressible:
            fields = None
    if fields is not None:
        _write_portable_rope(out, fields)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    saved = _save_tokenizer(tokenizer, out)
    source = f"transformers {config.model_type} model {getattr(config, '_name_or_path', '') or '(in memory)'}"
    _write_note(out, params, exact, source=source, rope=_rope_summary(new_config), tokenizer=saved)
    return Exported(out, params, exact, saved)


def _save_weights(model: nn.Module, out: Path) -> None:
    """``out/model.safetensors``: the model's tensors (not the encoding's), each shared tensor once under
    the name transformers loads it from (the embedding, not a tied ``lm_head``). Written directly, not
    with ``save_pretrained``, which transformers 5 refuses for a model loaded from GGUF (its weights are
    de-quantized floats, but the model stays flagged as quantized)."""
    from safetensors.torch import save_file

    tied = set(getattr(model, "_tied_weights_keys", None) or ())  # a list (4.x) or {tied: source} (5.x)
    state = {k: v for k, v in model.state_dict().items() if ".hopekit_pe." not in f".{k}"}
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple] = set()
    for name in sorted(state, key=lambda k: k in tied):  # sources before the names tied to them
        tensor = state[name]
        where = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if where in seen:
            continue
        seen.add(where)
        kept[name] = tensor.detach().to("cpu").contiguous()
    save_file(kept, str(out / "model.safetensors"), metadata={"format": "pt"})


def _resolve(config: Any, params: pe.Params | dict, strict: bool) -> tuple[pe.Params, dict[str, Any] | None]:
    """``params`` read against a transformers ``config`` (:func:`resolve_pe`: its window and base fill
    what is unset) and checked, and its rope fields (None: not expressible)."""
    params = resolve_pe(params, config)
    head_dim = head_dim_of(config)
    enc = pe.build(params, head_dim=head_dim, num_heads=config.num_attention_heads, d_model=config.hidden_size)
    _check_exportable(params, enc)
    try:
        return params, vanilla_expressible(params, head_dim)
    except RopeNotExpressible:
        if strict:
            raise
        return params, None


def _write_portable_rope(out: Path, fields: dict[str, Any]) -> None:
    """Rewrite ``config.json``'s rope fields as ``fields`` (both layouts). Needed after saving: 5.x
    serialises only ``rope_parameters`` (its ``rope_scaling`` is an alias), which 4.x ignores — it would
    silently run RoPE with base 10000."""
    path = out / "config.json"
    d = json.loads(path.read_text())
    for key in _ROPE_KEYS:
        d.pop(key, None)
    d.update(fields)
    path.write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def _config_from_dict(cls: type, d: dict[str, Any]) -> Any:
    return cls.from_dict({k: v for k, v in d.items() if not k.startswith("_")})


def _rope_summary(config: Any) -> str:
    keys = [k for k in _ROPE_KEYS + ("max_position_embeddings",) if getattr(config, k, None) is not None]
    return json.dumps({k: getattr(config, k) for k in keys}, sort_keys=True)


# --- a reference-decoder checkpoint ---------------------------------------------------------------

def _llama_state_dict(state: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """The decoder's state dict under LlamaForCausalLM names (:data:`DECODER_TO_LLAMA`); every tensor is
    used exactly once (a key the table does not know is an error, not dropped)."""
    table = {}
    for src, dst in DECODER_TO_LLAMA.items():
        for i in range(n_layers) if "{i}" in src else (None,):
            table[src.format(i=i)] = dst.format(i=i)
    unknown = sorted(set(state) - set(table))
    if unknown:
        raise ValueError(f"checkpoint: parameter {unknown[0]} has no LlamaForCausalLM counterpart")
    missing = sorted(set(table) - set(state))
    if missing:
        raise ValueError(f"checkpoint: parameter {missing[0]} is missing from the model state")
    return {table[k]: v for k, v in state.items()}


def _checkpoint_tokenizer(config: Any) -> Any:
    """The tokenizer the checkpoint was trained with (as ``hopekit train`` builds it)."""
    from ...data import load_tokenizer

    data = config.data
    spec = f"bpe:{data.vocab_size}" if data.tokenizer == "bpe" else data.tokenizer
    return load_tokenizer(spec, corpus=data.corpus)


def export_checkpoint(ckpt_path: str | Path, out_dir: str | Path, *, tokenizer: bool = True,
                      strict: bool = False) -> Exported:
    """Save a reference-decoder checkpoint (``hopekit train``) as a ``LlamaForCausalLM`` directory.

    The encoding maps as in :func:`export_pretrained`: rope-family methods (and static ``ntk``) to the
    standard rope fields (vanilla transformers gives the decoder's logits); ``hope_highfreq``,
    ``hope_hyperbolic``, ``alibi`` and ``nope`` to plain RoPE fields plus a ``hopekit_pe`` block that
    :func:`~hopekit.integrations.hf.load_pretrained` applies (``strict=True``: refused instead); BiPE,
    sinusoidal and learned are refused. ``max_position_embeddings`` is the checkpoint's
    ``train.train_len`` unless the rope type sets it. ``tokenizer``: also save the tokenizer the
    checkpoint's ``data.tokenizer`` names (a BPE one is rebuilt from its cache or its corpus).
    """
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from ...checkpoint import load_checkpoint

    decoder, config, _ = load_checkpoint(ckpt_path)
    mc = decoder.config
    params = mc.pe
    _check_exportable(params, decoder.pe)
    try:
        fields, exact = vanilla_expressible(params, mc.head_dim), True
    except RopeNotExpressible:
        if strict:
            raise
        base = float(getattr(params, "base", 10000.0))
        fields, exact = portable_rope_fields(pe.RopeParams(base=base), head_dim=mc.head_dim), False
    tok = _checkpoint_tokenizer(config) if tokenizer else None
    if tok is not None and tok.vocab_size != mc.vocab_size:
        raise ValueError(f"data.tokenizer={config.data.tokenizer!r}: gives {tok.vocab_size} ids but the checkpoint's "
                         f"vocab_size is {mc.vocab_size}; export with tokenizer=False")
    bos = tok.bos_id if tok is not None else None
    eos = tok.eos_id if tok is not None else None
    d = dict(
        vocab_size=mc.vocab_size, hidden_size=mc.d_model, intermediate_size=mc.ffn_hidden,
        num_hidden_layers=mc.n_layers, num_attention_heads=mc.n_heads, num_key_value_heads=mc.n_kv_heads,
        head_dim=mc.head_dim, hidden_act="silu", max_position_embeddings=config.train.train_len,
        rms_norm_eps=mc.norm_eps, tie_word_embeddings=mc.tie_embeddings, attention_bias=False, mlp_bias=False,
        attention_dropout=0.0, initializer_range=mc.init_std, bos_token_id=bos, eos_token_id=eos, pad_token_id=None,
        architectures=["LlamaForCausalLM"],
    )
    d.update(fields)
    if not exact:
        d["hopekit_pe"] = pe.to_config(params)
    hf_config = LlamaConfig(**d)
    state = _llama_state_dict(decoder.state_dict(), mc.n_layers)
    out = _prepare_dir(out_dir)
    model = LlamaForCausalLM(hf_config)
    model.load_state_dict(state, strict=True)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=eos)
    model.save_pretrained(out, safe_serialization=True)
    _write_portable_rope(out, fields)
    saved = _save_tokenizer(tok, out)
    _write_note(out, params, exact, source=f"hopekit checkpoint {Path(ckpt_path)}", rope=_rope_summary(hf_config),
                tokenizer=saved)
    return Exported(out, params, exact, saved)


def export_hf(name: str, out_dir: str | Path, params: pe.Params | dict | None = None, *, tokenizer: bool = True,
              strict: bool = False) -> Exported:
    """Load ``name`` (``smollm2``, a model directory, a ``.gguf`` file, a hub id; as
    :func:`~hopekit.integrations.hf.load_pretrained`) and :func:`export_pretrained` it with ``params``
    (default: its own encoding), together with its transformers tokenizer."""
    from transformers import AutoConfig

    from .load import load_pretrained, resolve_source, source_kwargs

    if params is not None:  # refuse before loading the weights
        source = resolve_source(name)
        _resolve(AutoConfig.from_pretrained(source["path"], **source_kwargs(source)), params, strict)
    lm = load_pretrained(name)
    return export_pretrained(lm.model, out_dir, params, tokenizer=lm.hf_tokenizer if tokenizer else None,
                             strict=strict)
