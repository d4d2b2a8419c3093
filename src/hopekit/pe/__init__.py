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
from typing import Any, Callable, Mapping, NamedTuple

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
    "REGISTRY", "Method", "build", "from_config", "parse", "to_config", "resolve", "name_of", "method_of",
    "example_config", "make_params", "same_as_absent",
    "PositionalEncoding", "Params", "reset_encodings",
    "RotaryEncoding", "LongRoPEEncoding", "HyperbolicEncoding", "ALiBi", "Sinusoidal", "Learned", "NoPE",
    "RopeParams", "LinearParams", "NTKParams", "DynamicNTKParams", "YarnParams", "Llama3Params",
    "LongRoPEParams", "HighFreqParams", "HyperbolicParams", "ALiBiParams", "SinusoidalParams",
    "LearnedParams", "NoPEParams", "BiPE", "BiPEParams", "bipe_positions", "RandomizedPositions", "Spectrum", "RotaryFeatures",
    "angles", "cos_sin", "apply_rotary", "interleaved_to_half", "half_to_interleaved", "alibi_slopes",
]


class Method(NamedTuple):
    """A registry entry: everything hopekit knows about one method lives here.

    ``params``: the frozen parameter dataclass; ``encoding``: the module class (its capability flags
    tell attention what to call); ``schedule``: RoPE family only, ``(params, rotary_dim, seq_len) ->
    Spectrum``; ``summary``: one line with the source; ``example``: a valid, non-trivial configuration
    (without ``kind``) as a function of ``head_dim``, used by the demo, the docs and the tests.
    """

    params: type[Params]
    encoding: type[PositionalEncoding]
    schedule: Any = None
    summary: str = ""
    example: Callable[[int], dict[str, Any]] = lambda head_dim: {}

    @property
    def capabilities(self) -> tuple[str, ...]:
        """The protocol hooks its encoding uses (the ``uses_*`` flags), e.g. ``("rotate",)``; a flag that
        depends on a configured inner method (BiPE's attention hooks) adds ``"+ inter method's"``."""
        cls = self.encoding
        caps = [c for c in ("embed", "rotate", "bias", "scores", "tokens") if getattr(cls, f"uses_{c}") is True]
        if any(isinstance(getattr(cls, f"uses_{c}"), property) for c in ("rotate", "bias", "scores")):
            caps.append("+ inter method's")
        return tuple(caps)


def _longrope_example(head_dim: int) -> dict[str, Any]:
    pairs = head_dim // 2
    return {"short_rescale": [1.0 + 0.1 * i for i in range(pairs)],
            "long_rescale": [1.0 + 0.5 * i for i in range(pairs)], "train_len": 64, "factor": 4.0}


REGISTRY: dict[str, Method] = {
    "rope": Method(RopeParams, RotaryEncoding, schedules.rope, "RoPE (Su et al. 2021), half-split, partial rotary",
                   lambda d: {"base": 10000.0}),
    "linear": Method(LinearParams, RotaryEncoding, schedules.linear, "Position Interpolation (Chen et al. 2023)",
                     lambda d: {"factor": 4.0}),
    "ntk": Method(NTKParams, RotaryEncoding, schedules.ntk, "NTK-aware base scaling (bloc97 2023)",
                  lambda d: {"factor": 4.0}),
    "dynamic_ntk": Method(DynamicNTKParams, RotaryEncoding, schedules.dynamic_ntk,
                          "dynamic NTK: base grows with the current length", lambda d: {"factor": 4.0, "train_len": 64}),
    "yarn": Method(YarnParams, RotaryEncoding, schedules.yarn, "YaRN (Peng et al. 2023): ramp + attention temperature",
                   lambda d: {"factor": 4.0, "train_len": 64}),
    "llama3": Method(Llama3Params, RotaryEncoding, schedules.llama3, "Llama-3.1 wavelength-band scaling",
                     lambda d: {"factor": 4.0, "train_len": 64, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
    "longrope": Method(LongRoPEParams, LongRoPEEncoding, schedules.longrope,
                       "LongRoPE (Ding et al. 2024): searched per-pair rescale, short/long sets, n̂ prefix",
                       _longrope_example),
    "hope_highfreq": Method(HighFreqParams, RotaryEncoding, schedules.hope_highfreq,
                            "High-frequency RoPE (Chen et al. 2024): pairs with θ < 2π/L become position-free",
                            lambda d: {"train_len": 64}),
    "hope_hyperbolic": Method(HyperbolicParams, HyperbolicEncoding, None,
                              "Hyperbolic RoPE (Dai et al. 2025): Lorentz boosts + decay, stable relative form",
                              lambda d: {"omega_scale": 0.05, "penalty": 0.06}),
    "alibi": Method(ALiBiParams, ALiBi, None, "ALiBi (Press et al. 2022): per-head linear logit bias"),
    "sinusoidal": Method(SinusoidalParams, Sinusoidal, None, "sinusoidal absolute encoding (Vaswani et al. 2017)"),
    "learned": Method(LearnedParams, Learned, None,
                      "learned absolute encoding (GPT-2); refuses positions beyond its table",
                      lambda d: {"max_len": 4096}),
    "nope": Method(NoPEParams, NoPE, None, "no positional encoding (Kazemnejad et al. 2023)"),
    "bipe": Method(BiPEParams, BiPE, None,
                   "BiPE (He et al. 2024): intra-segment absolute + inter-segment relative (any)",
                   lambda d: {"inter": {"kind": "rope"}, "intra_max_len": 512}),
}


def _method(name: Any) -> Method:
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"kind={name!r}: unknown positional encoding; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def name_of(params: Params) -> str:
    """Registry name of a parameter object (the entry whose params class is exactly its type)."""
    for name, method in REGISTRY.items():
        if type(params) is method.params:
            return name
    raise ValueError(f"params={params!r}: not the parameter class of any registered method")


def method_of(params: Params | str) -> Method:
    """The registry entry of a parameter object or a registry name."""
    return _method(params if isinstance(params, str) else name_of(params))


def example_config(name: str, head_dim: int = 64) -> dict[str, Any]:
    """The registry's example configuration of ``name`` for ``head_dim`` (with ``kind``)."""
    return {"kind": name, **_method(name).example(head_dim)}


def make_params(kind: str, **params: Any) -> Params:
    """Validated parameters for ``kind``; unknown keys are a ``TypeError`` naming them."""
    cls = _method(kind).params
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise TypeError(f"pe.{unknown[0]}: not a parameter of {kind}; {cls.__name__} accepts {sorted(fields)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.name not in params and f.default is dataclasses.MISSING
                     and f.default_factory is dataclasses.MISSING)
    if missing:
        raise TypeError(f"pe.{missing[0]}: missing, required by {kind} (required parameters: {missing})")
    return cls(**params)


def _split_config(config: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(config, Mapping):
        raise TypeError(f"pe config: expected a mapping with a 'kind' key, got {type(config).__name__}")
    if "kind" not in config:
        raise ValueError(f"pe config: missing 'kind' (one of {', '.join(REGISTRY)}); got keys {sorted(config)}")
    return config["kind"], {k: v for k, v in config.items() if k != "kind"}


def parse(config: Mapping[str, Any] | Params, *, train_len: int | None = None) -> Params:
    """The one boundary from a config mapping (YAML, command line, checkpoint) to typed parameters.

    ``config`` names its method: ``{"kind": "yarn", "factor": 4}``. ``train_len``: the experiment's
    training length, the one owner of that fact; methods with a ``train_len`` parameter get it
    unless the config sets one (:meth:`Params.fill_train_len`). A ``Params`` object passes through.
    """
    if isinstance(config, Params):
        return config
    kind, fields = _split_config(config)
    cls = _method(kind).params
    if train_len is not None:
        fields = cls.fill_train_len(fields, train_len)
    return make_params(kind, **fields)


def to_config(params: Params) -> dict[str, Any]:
    """The plain, JSON-able form of parameters, every default filled in, e.g.
    ``to_config(parse({"kind": "alibi"})) == {"kind": "alibi", "max_bias": 8.0}``.

    Records and checkpoints store this form, so a run made before a default changed still says which
    value it used, and resuming it under the new default is refused rather than silently mixed."""
    out: dict[str, Any] = {"kind": name_of(params)}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if isinstance(value, Params):          # a nested method (BiPE's inter)
            value = to_config(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def same_as_absent(config: Mapping[str, Any], name: str) -> bool:
    """Whether a saved pe config lacking the field ``name`` computes what ``config`` (a resolved pe config
    of today) computes: a field added later, at the value that reproduces the older code
    (``Params.absent_means_same``). Used to resume older runs and to match older records."""
    kind = config.get("kind")
    return isinstance(kind, str) and kind in REGISTRY and REGISTRY[kind].params.absent_means_same(name, config)


def resolve(config: Mapping[str, Any] | Params) -> dict[str, Any]:
    """``to_config(parse(config))``: a config mapping (or parameters) with every default filled in."""
    return to_config(parse(config))


def build(kind: str | Params, *, head_dim: int, num_heads: int = 1, d_model: int | None = None,
          **params: Any) -> PositionalEncoding:
    """Build an encoding from a registry name plus parameters, or from a parameter object."""
    if isinstance(kind, Params):
        if params:
            raise TypeError(f"build(): got a {type(kind).__name__} and extra parameters {sorted(params)}")
        p, method = kind, method_of(kind)
    else:
        method = _method(kind)
        p = make_params(kind, **params)
    extra = {"schedule": method.schedule} if method.schedule is not None else {}
    return method.encoding(p, head_dim=head_dim, num_heads=num_heads, d_model=d_model, **extra)


def from_config(config: Mapping[str, Any] | Params, *, head_dim: int, num_heads: int = 1,
                d_model: int | None = None) -> PositionalEncoding:
    """Build from a mapping that names its method (``{"kind": "yarn", "factor": 4, ...}``) or from
    parameters."""
    return build(parse(config), head_dim=head_dim, num_heads=num_heads, d_model=d_model)
