"""Eval-time context extension of a RoPE-trained model, without fine-tuning.

A model trained with ``{"kind": "rope", "base": b}`` at ``train_len`` L is evaluated at
``eval_len`` = s·L with its encoding swapped for a scaled one. These encodings hold no weights (the
schedule is a pure function of frozen parameters), so the swapped model shares every weight with
the trained one::

    cfgs = extension_configs(model.config.pe, train_len=128, eval_len=2048,
                             kinds=("rope", "linear", "ntk", "dynamic_ntk", "yarn"))
    for name, pe_config in cfgs.items():
        res = perplexity(with_pe(model, pe_config), test_docs, 2048)
        rows = ppl_records(res, method=extension_name(name), params=pe_config, train_len=128, ...)

The configurations at s = eval_len / train_len (base and rotary_fraction always kept from the trained
model; ℓ is the length a forward covers, max position + 1, here the window: ℓ = eval_len):

* ``rope`` — the trained encoding unchanged (plain extrapolation; the baseline row).
* ``linear`` — Position Interpolation, ``factor = s``.
* ``ntk`` — static NTK-aware base scaling, ``factor = s`` (base′ = b·s^(r/(r−2))).
* ``dynamic_ntk`` — transformers' dynamic rule with ``factor = 1``, ``train_len = L``: at length ℓ the
  base is NTK-scaled by ℓ/L (effective NTK factor F·ℓ/L − (F − 1) with F = 1), the Dynamic-NTK that
  YaRN and LongRoPE compare against (YaRN's "s = max(1, ℓ/L)"). Under windowed perplexity every
  forward is one window of ℓ = s·L, so this row's spectrum *is* ``ntk``'s with factor s (the same
  ``inv_freq`` to the last bit when eval_len is a whole multiple of train_len, as ``eval.multiples``
  are; within one rounding of the factor otherwise) and the two rows give the same perplexity. They
  differ only where one forward or one cache covers several lengths, e.g. generation past train_len
  (:meth:`hopekit.model.Decoder.generate` re-derives the spectrum at every step). ``dynamic_factor=F``
  gives instead what ``rope_scaling={"rope_type": "dynamic", "factor": F}`` gives a transformers
  user: effective NTK factor F·ℓ/L − (F − 1), which with F = s is s² − s + 1 at ℓ = s·L (241 at 16×),
  far more interpolation than static NTK at its target length.
* ``yarn`` — ``factor = s``, ``train_len = L``, HF defaults (β_fast 32, β_slow 1, attention factor
  0.1·ln s + 1).
* ``longrope`` — needs searched factors and the ratio they were searched for:
  ``longrope={"short_rescale": [...], "long_rescale": [...], "factor": F}`` (``rotary_dim/2`` rescale
  factors each; optionally ``attention_factor``, ``start_tokens``), with ``train_len = L``. ``factor``
  F is the target ratio L′/L of the search, a constant of the configuration as transformers' ``factor``
  is: the attention factor (default sqrt(1 + ln F / ln L)) is the same at every evaluated length, and
  is applied to both sets, also at ℓ ≤ L. Without ``factor`` the mapping is refused (it is never taken
  from the evaluated length). The encoding picks its short / long set by length itself (the HF rule:
  long iff ℓ > L), so one configuration serves every length.

At ``eval_len ≤ train_len`` every other extension *is* the plain rope (factor 1 / below train_len the
schedules reduce to RoPE — the reductions tested in tests/pe), so its configuration is the trained
one and the rows are identical by construction.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Mapping, Sequence

from torch import nn

from .. import pe as pe_lib
from ..config import EvalConfig

__all__ = ["EXTENSIONS", "check_longrope", "extension_configs", "extension_name", "with_pe"]

#: eval-time extensions of a rope model ("rope" = the unmodified baseline)
EXTENSIONS = ("rope", "linear", "ntk", "dynamic_ntk", "yarn", "longrope")


def extension_name(kind: str, base: str = "rope") -> str:
    """The method name reports use for an extension row: ``"rope"`` itself, else ``"rope+<kind>"``."""
    return base if kind == base else f"{base}+{kind}"


def check_longrope(longrope: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``longrope`` mapping of :func:`extension_configs` as plain config fields (lists, no ``kind``),
    refused without ``short_rescale``, ``long_rescale`` or ``factor`` (one line naming the field); the
    values themselves are validated with the rest of the configuration."""
    if not isinstance(longrope, Mapping):
        got = "none given" if longrope is None else f"got a {type(longrope).__name__}"
        raise ValueError(f"longrope: {got}; kind 'longrope' needs searched factors: longrope={{'short_rescale': "
                         f"[...], 'long_rescale': [...], 'factor': F}}")
    missing = [k for k in ("short_rescale", "long_rescale") if k not in longrope]
    if missing:
        raise ValueError(f"longrope.{missing[0]}: missing; kind 'longrope' needs searched factors: "
                         f"longrope={{'short_rescale': [...], 'long_rescale': [...], 'factor': F}}")
    if longrope.get("factor") is None:
        raise ValueError("longrope.factor: missing; give the target ratio L'/L (target length / train_len) the "
                         "rescale factors were searched for: it sets the attention factor, the same at every "
                         "evaluated length, as transformers' factor")
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in longrope.items() if k != "kind"}


def extension_configs(base_pe: Mapping[str, Any], train_len: int, eval_len: int,
                      kinds: Sequence[str] = EvalConfig.extensions, *,
                      longrope: Mapping[str, Any] | None = None,
                      dynamic_factor: float | None = None) -> dict[str, dict[str, Any]]:
    """``{kind: pe_config}`` for evaluating a rope model (``base_pe``) trained at ``train_len`` at
    ``eval_len``; see the module docstring for each configuration. ``longrope``: the searched factors
    with their ``factor`` (:func:`check_longrope`); ``dynamic_factor``: transformers' ``factor`` for the
    ``dynamic_ntk`` row (default 1: NTK scaling by the current length ratio). Every configuration is
    validated."""
    if isinstance(base_pe, pe_lib.Params):
        base_pe = pe_lib.to_config(base_pe)
    if not isinstance(base_pe, Mapping) or base_pe.get("kind") != "rope":
        raise ValueError(f"base_pe={base_pe!r}: eval-time extensions apply to a model trained with "
                         f"{{'kind': 'rope', ...}}")
    for name, v in (("train_len", train_len), ("eval_len", eval_len)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}={v!r}: expected an int >= 1")
    unknown = [k for k in kinds if k not in EXTENSIONS]
    if unknown:
        raise ValueError(f"kinds: unknown extension(s) {unknown}; expected some of {EXTENSIONS}")
    rope = {k: v for k, v in base_pe.items() if k != "kind"}
    pe_lib.make_params("rope", **rope)   # a bad base config fails here, naming the field
    s = eval_len / train_len
    out: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        if kind == "longrope":
            cfg = {"kind": "longrope", **rope, "train_len": train_len, **check_longrope(longrope)}
        elif kind == "rope" or s <= 1:
            cfg = {"kind": "rope", **rope}
        elif kind in ("linear", "ntk"):
            cfg = {"kind": kind, **rope, "factor": s}
        elif kind == "dynamic_ntk":
            cfg = {"kind": kind, **rope, "factor": 1.0 if dynamic_factor is None else dynamic_factor,
                   "train_len": train_len}
        else:  # yarn
            cfg = {"kind": kind, **rope, "factor": s, "train_len": train_len}
        pe_lib.make_params(cfg["kind"], **{k: v for k, v in cfg.items() if k != "kind"})
        out[kind] = cfg
    return out


def with_pe(model: nn.Module, pe_config: Mapping[str, Any]) -> nn.Module:
    """A model that shares every weight of ``model`` (the same ``Parameter`` objects, no copy) but
    encodes positions with ``pe_config``.

    Works for any module with a ``config`` (a dataclass with a ``pe`` field and ``build_pe()``) and a
    ``pe`` submodule that its forward reads — the :class:`hopekit.model.Decoder` contract (the encoding
    is built once and passed to every block per forward). Refused when the trained encoding has
    learnable parameters or buffers (they would be dropped) or the new one has any (they would be
    untrained). The returned shell is a shallow copy: its own submodule table, the original's
    children; ``model`` is left untouched.
    """
    old = getattr(model, "pe", None)
    cfg = getattr(model, "config", None)
    if not isinstance(old, nn.Module) or cfg is None or not dataclasses.is_dataclass(cfg):
        raise TypeError(f"with_pe: expected a model with a .pe encoding and a dataclass .config, "
                        f"got {type(model).__name__}")
    learned = [n for n, _ in old.named_parameters()] + [n for n, _ in old.named_buffers()]
    if learned:
        raise ValueError(f"with_pe: the model's encoding {cfg.pe!r} has learnable parameters/buffers "
                         f"{learned}; swapping it would drop trained weights")
    new_cfg = dataclasses.replace(cfg, pe=dict(pe_config))                 # validates against the shape
    enc = new_cfg.build_pe()
    fresh = [n for n, _ in enc.named_parameters()] + [n for n, _ in enc.named_buffers()]
    if fresh:
        raise ValueError(f"with_pe: {dict(pe_config)!r} has learnable parameters {fresh}; they would be "
                         f"untrained in a swapped model — train it instead")
    new = copy.copy(model)
    for key, value in list(vars(new).items()):  # own tables (modules, params, buffers, hooks), same entries
        if key.startswith("_") and isinstance(value, (dict, set)):
            vars(new)[key] = copy.copy(value)
    new.config = new_cfg
    new.pe = enc.train(model.training)
    return new
