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
model):

* ``rope`` — the trained encoding unchanged (plain extrapolation; the baseline row).
* ``linear`` — Position Interpolation, ``factor = s``.
* ``ntk`` — static NTK-aware base scaling, ``factor = s`` (base′ = b·s^(r/(r−2))).
* ``dynamic_ntk`` — ``factor = s`` (or ``dynamic_factor``), ``train_len = L``: the HF configuration a
  user gets from ``rope_scaling={"rope_type": "dynamic", "factor": s}``. The spectrum follows the
  current length ℓ (here the window, ℓ = eval_len): effective NTK factor s·ℓ/L − (s − 1), which at
  ℓ = s·L is s² − s + 1 — i.e. with factor s it interpolates *more* than static NTK at the target
  length. We keep HF's meaning of ``factor`` rather than ``factor = 1`` (YaRN's "s = max(1, ℓ/L)"
  dynamic scaling), because with factor 1 and one forward per window it would equal ``ntk`` exactly.
* ``yarn`` — ``factor = s``, ``train_len = L``, HF defaults (β_fast 32, β_slow 1, attention factor
  0.1·ln s + 1).
* ``longrope`` — needs searched factors: ``longrope={"short_rescale": [...], "long_rescale": [...]}``
  (``rotary_dim/2`` each; optionally ``factor``, ``attention_factor``, ``start_tokens``), with
  ``train_len = L`` and ``factor = max(s, 1)`` unless given. It picks its short / long set by
  length itself (the HF rule), so it is kept as is at every length.

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

__all__ = ["EXTENSIONS", "extension_configs", "extension_name", "with_pe"]

#: eval-time extensions of a rope model ("rope" = the unmodified baseline)
EXTENSIONS = ("rope", "linear", "ntk", "dynamic_ntk", "yarn", "longrope")


def extension_name(kind: str, base: str = "rope") -> str:
    """The method name reports use for an extension row: ``"rope"`` itself, else ``"rope+<kind>"``."""
    return base if kind == base else f"{base}+{kind}"


def extension_configs(base_pe: Mapping[str, Any], train_len: int, eval_len: int,
                      kinds: Sequence[str] = EvalConfig.extensions, *,
                      longrope: Mapping[str, Any] | None = None,
                      dynamic_factor: float | None = None) -> dict[str, dict[str, Any]]:
    """``{kind: pe_config}`` for evaluating a rope model (``base_pe``) trained at ``train_len`` at
    ``eval_len``; see the module docstring for each configuration. Every configuration is validated."""
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
            if longrope is None or "short_rescale" not in longrope or "long_rescale" not in longrope:
                raise ValueError("kind 'longrope' needs searched factors: "
                                 "longrope={'short_rescale': [...], 'long_rescale': [...]}")
            cfg = {"kind": "longrope", **rope, "train_len": train_len, "factor": max(s, 1.0),
                   **{k: (list(v) if isinstance(v, tuple) else v) for k, v in longrope.items() if k != "kind"}}
        elif kind == "rope" or s <= 1:
            cfg = {"kind": "rope", **rope}
        elif kind in ("linear", "ntk"):
            cfg = {"kind": kind, **rope, "factor": s}
        elif kind == "dynamic_ntk":
            cfg = {"kind": kind, **rope, "factor": s if dynamic_factor is None else dynamic_factor,
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
