"""hopekit.pe — every positional encoding of the project behind one protocol and one registry.

``REGISTRY`` is the one list of methods: a plain dict from name to ``Method(params, encoding,
schedule)``. Build an encoding with :func:`build`::

    from hopekit import pe
    enc = pe.build("yarn", head_dim=64, num_heads=8, factor=4.0, train_len=2048)
    q, k = enc.rotate(q, k, q_pos, k_pos)

or from a config mapping that names its method explicitly (``{"kind": "yarn", "factor": 4, ...}``)
with :func:`from_config`. This package imports torch only.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple

from . import schedules
from .absolute import Learned, LearnedParams, Sinusoidal, SinusoidalParams
from .alibi import ALiBi, ALiBiParams, alibi_slopes
from .bipe import BiPE, BiPEParams, bipe_positions
from .base import NoPE, NoPEParams, Params, PositionalEncoding, reset_encodings
from .hope_hyperbolic import HyperbolicEncoding, HyperbolicParams
from .randomized import RandomizedPositions
from .rotary import (LongRoPEEncoding, RotaryEncoding, RotaryFeatures, angles, apply_rotary, cos_sin,
                     half_to_interleaved, interleaved_to_half)
from .schedules import (DynamicNTKParams, HighFreqParams, LinearParams, Llama3Params, LongRoPEParams,
                        NTKParams, RopeParams, Spectrum, YarnParams)

__all__ = [
    "REGISTRY", "Method", "build", "from_config", "resolve", "name_of",
    "PositionalEncoding", "Params", "reset_encodings",
    "RotaryEncoding", "LongRoPEEncoding", "HyperbolicEncoding", "ALiBi", "Sinusoidal", "Learned", "NoPE",
    "RopeParams", "LinearParams", "NTKParams", "DynamicNTKParams", "YarnParams", "Llama3Params",
    "LongRoPEParams", "HighFreqParams", "HyperbolicParams", "ALiBiParams", "SinusoidalParams",
    "LearnedParams", "NoPEParams", "BiPE", "BiPEParams", "bipe_positions", "RandomizedPositions", "Spectrum", "RotaryFeatures",
    "angles", "cos_sin", "apply_rotary", "interleaved_to_half", "half_to_interleaved", "alibi_slopes",
]


class Method(NamedTuple):
    params: type[Params]
    encoding: type[PositionalEncoding]
    schedule: Any = None          # RoPE family only: (params, rotary_dim, seq_len) -> Spectrum
    summary: str = ""


REGISTRY: dict[str, Method] = {
    "rope": Method(RopeParams, RotaryEncoding, schedules.rope, "RoPE (Su et al. 2021), half-split, partial rotary"),
    "linear": Method(LinearParams, RotaryEncoding, schedules.linear, "Position Interpolation (Chen et al. 2023)"),
    "ntk": Method(NTKParams, RotaryEncoding, schedules.ntk, "NTK-aware base scaling (bloc97 2023)"),
    "dynamic_ntk": Method(DynamicNTKParams, RotaryEncoding, schedules.dynamic_ntk, "dynamic NTK: base grows with the current length"),
    "yarn": Method(YarnParams, RotaryEncoding, schedules.yarn, "YaRN (Peng et al. 2023): ramp + attention temperature"),
    "llama3": Method(Llama3Params, RotaryEncoding, schedules.llama3, "Llama-3.1 wavelength-band scaling"),
    "longrope": Method(LongRoPEParams, LongRoPEEncoding, schedules.longrope, "LongRoPE (Ding et al. 2024): searched per-pair rescale, short/long sets, n̂ prefix"),
    "hope_highfreq": Method(HighFreqParams, RotaryEncoding, schedules.hope_highfreq, "High-frequency RoPE (Chen et al. 2024): pairs with θ < 2π/L become position-free"),
    "hope_hyperbolic": Method(HyperbolicParams, HyperbolicEncoding, None, "Hyperbolic RoPE (Dai et al. 2025): Lorentz boosts + decay, stable relative form"),
    "alibi": Method(ALiBiParams, ALiBi, None, "ALiBi (Press et al. 2022): per-head linear logit bias"),
    "sinusoidal": Method(SinusoidalParams, Sinusoidal, None, "sinusoidal absolute encoding (Vaswani et al. 2017)"),
    "learned": Method(LearnedParams, Learned, None, "learned absolute encoding (GPT-2); refuses positions beyond its table"),
    "nope": Method(NoPEParams, NoPE, None, "no positional encoding (Kazemnejad et al. 2023)"),
    "bipe": Method(BiPEParams, BiPE, None, "BiPE (He et al. 2024): intra-segment absolute + inter-segment relative (any)"),
}


def _method(name: Any) -> Method:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"kind={name!r}: unknown positional encoding; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def name_of(params: Params) -> str:
    """Registry name of a parameter object (the first entry whose params class is exactly its type)."""
    for name, method in REGISTRY.items():
        if type(params) is method.params:
            return name
    raise ValueError(f"params={params!r}: not the parameter class of any registered method")


def make_params(kind: str, **params: Any) -> Params:
    """Validated parameters for ``kind``; unknown keys are a ``TypeError`` naming them."""
    cls = _method(kind).params
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise TypeError(f"{kind}: unknown parameter(s) {unknown}; {cls.__name__} accepts {sorted(fields)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in params and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise TypeError(f"{kind}: missing required parameter(s) {missing}")
    return cls(**params)


def build(kind: str | Params, *, head_dim: int, num_heads: int = 1, d_model: int | None = None,
          **params: Any) -> PositionalEncoding:
    """Build an encoding from a registry name plus parameters, or from a parameter object."""
    if isinstance(kind, Params):
        if params:
            raise TypeError(f"build(): got a {type(kind).__name__} and extra parameters {sorted(params)}")
        p, method = kind, REGISTRY[name_of(kind)]
    else:
        method = _method(kind)
        p = make_params(kind, **params)
    extra = {"schedule": method.schedule} if method.schedule is not None else {}
    return method.encoding(p, head_dim=head_dim, num_heads=num_heads, d_model=d_model, **extra)


def _split_config(config: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(config, Mapping):
        raise TypeError(f"pe config: expected a mapping with a 'kind' key, got {type(config).__name__}")
    if "kind" not in config:
        raise ValueError(f"pe config: missing 'kind' (one of {', '.join(REGISTRY)}); got keys {sorted(config)}")
    return config["kind"], {k: v for k, v in config.items() if k != "kind"}


def resolve(config: Mapping[str, Any]) -> dict[str, Any]:
    """The full, validated parameter set of a pe config with every default filled in, e.g.
    ``resolve({"kind": "alibi"}) == {"kind": "alibi", "max_bias": 8.0}`` (BiPE's ``inter`` too).

    Records and checkpoints store this form, so a run made before a default changed still says which
    value it used, and resuming it under the new default is refused rather than silently mixed."""
    kind, rest = _split_config(config)
    params = make_params(kind, **rest)
    out = {"kind": kind, **{f.name: getattr(params, f.name) for f in dataclasses.fields(params)}}
    for key, value in out.items():
        if isinstance(value, tuple):
            out[key] = list(value)
        elif isinstance(value, Mapping) and "kind" in value:  # a nested method (BiPE's inter)
            out[key] = resolve(value)
    return out


def from_config(config: Mapping[str, Any], *, head_dim: int, num_heads: int = 1,
                d_model: int | None = None) -> PositionalEncoding:
    """Build from a mapping that names its method: ``{"kind": "yarn", "factor": 4, ...}``."""
    kind, rest = _split_config(config)
    return build(kind, head_dim=head_dim, num_heads=num_heads, d_model=d_model, **rest)
