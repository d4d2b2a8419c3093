"""Rope fields of a Hugging Face config ↔ hopekit parameters: the one place HF's names are translated.

transformers keeps the rotary settings in two layouts:

* **4.x**: ``config.rope_theta`` plus ``config.rope_scaling = {"rope_type": ..., "factor": ..., ...}``
  (legacy key ``type``; ``None`` = plain RoPE); Phi-3 style models also keep
  ``original_max_position_embeddings`` at the top level;
* **5.x**: ``config.rope_parameters = {"rope_type": ..., "rope_theta": ..., ...}`` holds everything,
  ``partial_rotary_factor`` included; ``config.rope_theta`` no longer exists. The 4.x keywords
  (``rope_theta``, ``rope_scaling``, a legacy ``type``, a top-level ``partial_rotary_factor``) are still
  accepted by the constructors and converted; ``config.rope_scaling`` is a deprecated alias of
  ``rope_parameters``. "default" is computed by the model class, not in ``ROPE_INIT_FUNCTIONS``.

:func:`rope_settings` reads either into one flat dict; :func:`params_from_config` turns that into
hopekit's typed parameters; :func:`rope_fields` goes back, for the installed version, to the config
attributes a vanilla transformers of the same major version (and vLLM) reads. A 4.x transformers
ignores 5.x's ``rope_parameters`` (silently: plain RoPE), so a config meant for both versions needs
both layouts. Names (HF → hopekit): ``rope_theta`` → ``base``,
``original_max_position_embeddings`` → ``train_len``, ``partial_rotary_factor`` → ``rotary_fraction``,
``short_factor`` / ``long_factor`` → ``short_rescale`` / ``long_rescale``; rope types ``default`` →
``rope``, ``dynamic`` → ``dynamic_ntk``; ``linear``, ``yarn``, ``llama3``, ``longrope`` keep their names.

Which length each HF type treats as the original (pre-training) length, i.e. hopekit's ``train_len``,
and LongRoPE's factor (it sets only the attention factor; the long set is used past the original length):

* ``dynamic``: ``max_position_embeddings`` in both versions;
* **4.x**: ``yarn`` reads ``original_max_position_embeddings`` from the rope dict, else
  ``max_position_embeddings``; ``llama3`` requires it in the rope dict; ``longrope`` reads it only from
  the top level of the config (Phi-3 style), else ``max_position_embeddings``, and its factor is then
  ``max_position_embeddings / original`` (a ``factor`` in the dict is ignored), else the dict's ``factor``;
* **5.x**: ``yarn``, ``llama3`` and ``longrope`` read it from the rope dict, but a top-level
  ``original_max_position_embeddings`` overrides the dict's (``standardize_rope_params`` copies it in
  before every computation), and without either it is ``max_position_embeddings``; ``longrope`` takes
  the dict's ``factor`` when given, else ``max_position_embeddings / original``.

:func:`rope_fields` writes fields every reader agrees on: the original length in the rope dict and (for
``longrope``) at the top level too, and ``max_position_embeddings = train_len · factor``.
"""

from __future__ import annotations

import math
from typing import Any

import transformers

from ... import pe

__all__ = ["TRANSFORMERS_MAJOR", "RopeNotExpressible", "rope_settings", "params_from_config", "rope_fields",
           "portable_rope_fields", "head_dim_of",
           "set_rope_fields", "HF_ROPE_TYPES"]

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])

#: hopekit method → HF rope type, for the methods vanilla transformers can express
HF_ROPE_TYPES = {"rope": "default", "linear": "linear", "dynamic_ntk": "dynamic", "yarn": "yarn",
                 "llama3": "llama3", "longrope": "longrope"}
_FROM_HF = {v: k for k, v in HF_ROPE_TYPES.items()}


class RopeNotExpressible(ValueError):
    """The encoding has no rope type in vanilla transformers (a hopekit-only method)."""


def head_dim_of(config: Any) -> int:
    """The attention head width of a transformers config (``head_dim``, else hidden_size / heads)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_settings(config: Any) -> dict[str, Any]:
    """The rotary settings of ``config`` as one flat dict with ``rope_type`` and ``rope_theta``, read from
    the layout the installed transformers reads: 5.x ``rope_parameters``; 4.x ``rope_scaling`` +
    ``rope_theta`` (4.x ignores a ``rope_parameters`` key a 5.x-saved config may carry, and so do we:
    the model transformers builds is the one described)."""
    params = getattr(config, "rope_parameters", None) if TRANSFORMERS_MAJOR >= 5 else None
    if isinstance(params, dict) and params:
        if all(isinstance(v, dict) for v in params.values()):
            raise ValueError(f"rope_parameters: one dict per layer type ({sorted(params)}); hopekit handles models "
                             f"with one rotary setting for every layer")
        out = dict(params)
    else:
        scaling = dict(getattr(config, "rope_scaling", None) or {})
        theta = getattr(config, "rope_theta", None)
        if theta is None:
            raise ValueError(f"{type(config).__name__}: no rope_theta and no rope_parameters; not a rotary model")
        out = {**scaling, "rope_theta": theta}
    if "rope_type" not in out:
        out["rope_type"] = out.pop("type", "default")
    out.pop("type", None)
    for key in ("partial_rotary_factor", "original_max_position_embeddings"):
        top = getattr(config, key, None)
        if top is not None:
            out.setdefault(f"top_level_{key}" if key == "original_max_position_embeddings" else key, top)
    return out


def _get(settings: dict[str, Any], key: str, rope_type: str) -> Any:
    if settings.get(key) is None:
        layout = "rope_parameters" if TRANSFORMERS_MAJOR >= 5 else "rope_scaling"
        raise ValueError(f"{layout}.{key}: missing, required by rope_type {rope_type!r}")
    return settings[key]


def _original_length(s: dict[str, Any], rope_type: str, max_pos: int) -> int:
    """The original (pre-training) length ``rope_type`` reads, by the installed version's rule."""
    top = s.get("top_level_original_max_position_embeddings")
    if TRANSFORMERS_MAJOR >= 5:
        # 5.x's standardize_rope_params copies a top-level original length over the rope dict's (for
        # yarn, llama3, longrope) every time it computes the frequencies; absent both, max_position_embeddings
        if top is not None:
            return int(top)
        return int(s.get("original_max_position_embeddings") or max_pos)
    if rope_type == "longrope":  # 4.x's longrope reads only the top level
        return int(top or max_pos)
    if rope_type == "llama3":
        return int(_get(s, "original_max_position_embeddings", rope_type))
    return int(s.get("original_max_position_embeddings") or max_pos)  # 4.x yarn: the rope dict only


def params_from_config(config: Any) -> pe.Params:
    """hopekit parameters equal to the rotary embedding ``config`` describes (refused for a rope type
    hopekit has no method for, naming it)."""
    s = rope_settings(config)
    rope_type = s["rope_type"]
    if rope_type not in _FROM_HF:
        raise ValueError(f"rope_type={rope_type!r}: no hopekit method for it; supported: {sorted(_FROM_HF)}")
    kind = _FROM_HF[rope_type]
    max_pos = int(config.max_position_embeddings)
    fields: dict[str, Any] = {"base": float(s["rope_theta"])}
    fraction = s.get("partial_rotary_factor", 1.0)
    if fraction != 1.0:
        fields["rotary_fraction"] = float(fraction)
    if rope_type == "yarn" and TRANSFORMERS_MAJOR >= 5 and "factor" in s and s["factor"] is None:
        # 5.x (DeepSeek-V3 style): an explicit null factor is max_position_embeddings / original length
        fields["factor"] = max_pos / _original_length(s, rope_type, max_pos)
    elif rope_type in ("linear", "dynamic", "yarn", "llama3"):
        fields["factor"] = float(_get(s, "factor", rope_type))
    if rope_type == "dynamic":
        fields["train_len"] = max_pos
    elif rope_type == "yarn":
        fields["train_len"] = _original_length(s, rope_type, max_pos)
        for key in ("beta_fast", "beta_slow", "attention_factor", "mscale", "mscale_all_dim", "truncate"):
            if s.get(key) is not None:
                fields[key] = s[key] if key == "truncate" else float(s[key])
    elif rope_type == "llama3":
        fields["train_len"] = _original_length(s, rope_type, max_pos)
        fields["low_freq_factor"] = float(_get(s, "low_freq_factor", rope_type))
        fields["high_freq_factor"] = float(_get(s, "high_freq_factor", rope_type))
    elif rope_type == "longrope":
        fields["short_rescale"] = list(_get(s, "short_factor", rope_type))
        fields["long_rescale"] = list(_get(s, "long_factor", rope_type))
        original = _original_length(s, rope_type, max_pos)
        if TRANSFORMERS_MAJOR >= 5:  # an explicit factor first, the ratio of lengths only without one
            factor = s.get("factor")
            factor = max_pos / original if factor is None else float(factor)
        elif s.get("top_level_original_max_position_embeddings"):  # 4.x: the ratio, any factor ignored
            factor = max_pos / original
        else:
            factor = float(_get(s, "factor", rope_type))
        fields["train_len"], fields["factor"] = original, factor
        if s.get("attention_factor") is not None:
            fields["attention_factor"] = float(s["attention_factor"])
    params = pe.make_params(kind, **fields)
    params.validate_dims(head_dim_of(config), config.num_attention_heads)
    return params


def rope_fields(params: pe.Params, *, head_dim: int, major: int = TRANSFORMERS_MAJOR) -> dict[str, Any]:
    """The config attributes that make vanilla transformers (and vLLM) build exactly ``params``'s
    rotary embedding, in the layout of transformers ``major`` (default: the installed one);
    :class:`RopeNotExpressible` for a method transformers has no rope type for (and for LongRoPE's
    ``start_tokens``, which HF lacks). :func:`portable_rope_fields` gives both layouts at once."""
    kind = pe.name_of(params)
    if kind not in HF_ROPE_TYPES:
        raise RopeNotExpressible(f"pe.kind={kind!r}: vanilla transformers has no rope type for it; rope types it "
                                 f"can express: {sorted(HF_ROPE_TYPES)}")
    if getattr(params, "start_tokens", 0):
        raise RopeNotExpressible(f"pe.start_tokens={params.start_tokens}: vanilla transformers' longrope has no "
                                 f"un-interpolated prefix")
    rope_type = HF_ROPE_TYPES[kind]
    params.validate_dims(head_dim, 1)
    rope: dict[str, Any] = {"rope_type": rope_type}
    top: dict[str, Any] = {}
    if params.rotary_fraction != 1.0:  # 5.x reads it from the rope dict only (a top-level one is moved there)
        (rope if major >= 5 else top)["partial_rotary_factor"] = params.rotary_fraction
    if rope_type in ("linear", "dynamic", "yarn", "llama3", "longrope"):
        rope["factor"] = float(params.factor)
    if rope_type == "dynamic":
        top["max_position_embeddings"] = params.train_len
    elif rope_type == "yarn":
        rope.update(original_max_position_embeddings=params.train_len, beta_fast=params.beta_fast,
                    beta_slow=params.beta_slow)
        for key in ("attention_factor", "mscale", "mscale_all_dim"):
            if getattr(params, key) is not None:
                rope[key] = float(getattr(params, key))
        if not params.truncate:
            rope["truncate"] = False
        top["max_position_embeddings"] = int(math.ceil(params.train_len * params.factor))
    elif rope_type == "llama3":
        rope.update(original_max_position_embeddings=params.train_len, low_freq_factor=params.low_freq_factor,
                    high_freq_factor=params.high_freq_factor)
        top["max_position_embeddings"] = int(math.ceil(params.train_len * params.factor))
    elif rope_type == "longrope":
        max_pos = params.train_len * params.factor
        if max_pos != int(max_pos):
            raise RopeNotExpressible(f"pe.factor={params.factor!r}: transformers derives LongRoPE's factor as "
                                     f"max_position_embeddings / train_len, so train_len·factor must be an integer "
                                     f"(got {max_pos})")
        rope.update(short_factor=list(params.short_rescale), long_factor=list(params.long_rescale),
                    original_max_position_embeddings=params.train_len)
        if not isinstance(params.attention_factor, str):
            rope["attention_factor"] = float(params.attention_factor)
        elif params.attention_factor != "su":
            rope["attention_factor"] = pe.schedules.longrope_attention_factor(params)
        top.update(max_position_embeddings=int(max_pos), original_max_position_embeddings=params.train_len)
    if major >= 5:
        return {**top, "rope_parameters": {**rope, "rope_theta": float(params.base)}}
    return {**top, "rope_theta": float(params.base), "rope_scaling": None if rope_type == "default" else rope}


def portable_rope_fields(params: pe.Params, *, head_dim: int) -> dict[str, Any]:
    """Both layouts in one dict, for a ``config.json`` that 4.x and 5.x (and so vLLM with either) read
    alike: 4.x reads ``rope_theta`` + ``rope_scaling`` and ignores ``rope_parameters``; 5.x reads
    ``rope_scaling`` when both are present and converts it (to the same values). The top-level fields
    agree between the two (5.x moves a top-level ``partial_rotary_factor`` into its dict)."""
    return {**rope_fields(params, head_dim=head_dim, major=5), **rope_fields(params, head_dim=head_dim, major=4)}


def set_rope_fields(config: Any, params: pe.Params) -> None:
    """Write :func:`rope_fields` into ``config`` (in place), removing the top-level rope fields of a
    previous setting that the new one does not write: a stale ``partial_rotary_factor`` would keep the
    model partial, and a stale ``original_max_position_embeddings`` is read by 4.x's longrope and, in
    5.x, overrides the rope dict's original length for yarn, llama3 and longrope."""
    fields = rope_fields(params, head_dim=head_dim_of(config))
    for key in _TOP_LEVEL_ROPE_KEYS:
        if key not in fields and key in vars(config):
            delattr(config, key)
    for key, value in fields.items():
        setattr(config, key, value)


#: rope fields :func:`rope_fields` writes at the top level of a config only for some settings
_TOP_LEVEL_ROPE_KEYS = ("partial_rotary_factor", "original_max_position_embeddings")
