"""The positional-encoding protocol, parameter validation helpers, and NoPE.

Every method in hopekit fits one small interface. Each hook defaults to "nothing", and a class
declares which hooks it really uses through four capability flags, so that attention code branches
on capabilities and never on a method name:

========================  =====================================  ===========================
hook                      what it does                           used by
========================  =====================================  ===========================
``embed(x, positions)``   absolute code added at the input       sinusoidal, learned
``rotate(q, k, ...)``     multiplicative transform of q and k    RoPE family, hope_highfreq
``bias(q_pos, k_pos)``    additive logit bias ``(H, Tq, Tk)``    alibi
``scores(q, k, ...)``     the whole logit, for methods whose     hope_hyperbolic
                          stable form needs the offset inside
========================  =====================================  ===========================

Nothing is mutated inside a forward: a method that depends on the current length (dynamic NTK,
LongRoPE short/long) takes it as the ``seq_len`` argument.

Encodings hold **no tensor buffers** derived from their parameters (``inv_freq`` and friends are
recomputed from the frozen parameters, in float64, on first use per device, and cached in a plain
dict). Casting a model to bf16, meta-device initialisation + ``to_empty`` and FSDP
re-materialisation therefore cannot corrupt them — the failure modes documented for ``inv_freq``
buffers elsewhere. Learnable parameters (the learned absolute table, hope_hyperbolic's learnable
penalty) are ordinary ``nn.Parameter``s with a ``reset_parameters()``; :func:`reset_encodings`
re-initialises every encoding in a model after ``to_empty``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

__all__ = [
    "Params",
    "PositionalEncoding",
    "NoPE",
    "NoPEParams",
    "check_positions",
    "reset_encodings",
]


# --------------------------------------------------------------------------------------------------
# Validation helpers: every error names the class, the field and the offending value.
# --------------------------------------------------------------------------------------------------


def _where(obj: Any, name: str) -> str:
    return f"{type(obj).__name__}.{name}"


def check_real(obj: Any, name: str, *, low: float | None = None, high: float | None = None,
               low_open: bool = False, high_open: bool = False, allow_inf: bool = False) -> float:
    """Validate that ``obj.name`` is a real number in a range; returns it as a float."""
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{_where(obj, name)}={value!r}: expected a real number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{_where(obj, name)}={value!r}: too large for a float") from None
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{_where(obj, name)}={value!r}: must be finite")
    if low is not None and (value <= low if low_open else value < low):
        op = ">" if low_open else ">="
        raise ValueError(f"{_where(obj, name)}={value!r}: must be {op} {low}")
    if high is not None and (value >= high if high_open else value > high):
        op = "<" if high_open else "<="
        raise ValueError(f"{_where(obj, name)}={value!r}: must be {op} {high}")
    return value


#: the largest length/position hopekit accepts anywhere (2^40 ≈ 10^12 tokens; exact in float64)
MAX_LENGTH = 2 ** 40


def check_int(obj: Any, name: str, *, low: int | None = None, high: int | None = MAX_LENGTH) -> int:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{_where(obj, name)}={value!r}: expected an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{_where(obj, name)}={value!r}: must be >= {low}")
    if high is not None and value > high:
        raise ValueError(f"{_where(obj, name)}={value!r}: must be <= {high}")
    return value


def check_bool(obj: Any, name: str) -> bool:
    value = getattr(obj, name)
    if not isinstance(value, bool):
        raise TypeError(f"{_where(obj, name)}={value!r}: expected a bool, got {type(value).__name__}")
    return value


def check_choice(obj: Any, name: str, choices: tuple) -> Any:
    value = getattr(obj, name)
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{_where(obj, name)}={value!r}: must be one of {choices}")
    return value


@dataclasses.dataclass(frozen=True, kw_only=True)
class Params:
    """Base of every method's frozen parameter dataclass.

    Subclasses validate in ``__post_init__`` and raise ``ValueError`` / ``TypeError`` naming the
    field and the value. ``validate_dims`` checks what can only be checked once the head dim and
    head count are known (list lengths, odd dims).
    """

    def validate_dims(self, head_dim: int, num_heads: int) -> None:  # noqa: B027 - optional hook
        """Checks that need the model shape; default: nothing."""

    def check_tokenizer(self, tokenizer: Any) -> None:  # noqa: B027 - optional hook
        """Checks of parameters that name token ids against the tokenizer in use; default: nothing."""

    @classmethod
    def absent_means_same(cls, name: str, config: Mapping[str, Any]) -> bool:
        """Whether a saved configuration without the field ``name`` (written before the field existed)
        computes what ``config`` (today's resolved fields) computes; default: no field may be absent."""
        return False

    @classmethod
    def fill_train_len(cls, fields: dict[str, Any], train_len: int) -> dict[str, Any]:
        """Config ``fields`` with the experiment's training length given to a ``train_len`` parameter
        the config leaves unset (the experiment owns that fact; see ``hopekit.pe.parse``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "train_len" in names and fields.get("train_len") is None:
            return {**fields, "train_len": train_len}
        return fields

    @property
    def kind(self) -> str:
        """The registry name of these parameters."""
        from . import name_of  # local import: the registry imports this module

        return name_of(self)


def check_dims(head_dim: Any, num_heads: Any, d_model: Any = None) -> tuple[int, int]:
    dims = (("head_dim", head_dim), ("num_heads", num_heads)) + ((("d_model", d_model),) if d_model is not None else ())
    for name, v in dims:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name}={v!r}: expected an int, got {type(v).__name__}")
        if not 1 <= v <= 2 ** 20:
            raise ValueError(f"{name}={v!r}: must be in [1, 2^20]")
    return head_dim, num_heads


def check_positions(positions: Any, name: str, length: int | None = None, batch: int | None = None) -> torch.Tensor:
    """Positions are integer tensors of shape ``(T,)`` or ``(B, T)``; returns them as int64.

    ``length``: the number of tokens they must cover; ``batch``: the batch size a ``(B, T)`` tensor must
    broadcast to (B == batch or B == 1)."""
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"{name}: expected an integer torch.Tensor, got {type(positions).__name__}")
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise TypeError(f"{name}: expected an integer tensor, got dtype {positions.dtype}")
    if positions.dim() not in (1, 2):
        raise ValueError(f"{name}: expected shape (T,) or (B, T), got {tuple(positions.shape)}")
    if length is not None and positions.shape[-1] != length:
        raise ValueError(f"{name}: has {positions.shape[-1]} positions but the input has {length} tokens")
    if batch is not None and positions.dim() == 2 and positions.shape[0] not in (1, batch):
        raise ValueError(f"{name}: batched positions of shape {tuple(positions.shape)} do not match batch size {batch}")
    return positions.long()


def check_floating(**tensors: torch.Tensor) -> None:
    """Refuse integer, bool or complex q/k (a rotation of integers silently returns wrong integers)."""
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {t.dtype}")


def check_qk(pe: "PositionalEncoding", q: Any, k: Any) -> None:
    """q ``(..., Tq, head_dim)`` and k ``(..., Tk, head_dim)``, floating point, with the same leading
    (batch, head) dims."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2 or t.shape[-1] != pe.head_dim:
            raise ValueError(f"{name}: expected shape (..., T, head_dim={pe.head_dim}), got {tuple(t.shape)}")
    check_floating(q=q, k=k)
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q, k: leading (batch, head) dims differ: {tuple(q.shape)} vs {tuple(k.shape)}")


def check_embed_input(pe: "PositionalEncoding", x: Any) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != pe.d_model:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected shape (..., T, d_model={pe.d_model}), got {shape}")


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------


class PositionalEncoding(nn.Module):
    """Base class of every encoding. See the module docstring for the four hooks.

    Capability flags (class attributes) tell attention which hooks to call:
    ``uses_embed``, ``uses_rotate``, ``uses_bias``, ``uses_scores``. ``relative`` is true when the
    logit depends on positions only through ``q_pos - k_pos``; ``causal_only`` when the method is
    undefined for keys after the query.
    """

    uses_embed: ClassVar[bool] = False
    uses_rotate: ClassVar[bool] = False
    uses_bias: ClassVar[bool] = False
    uses_scores: ClassVar[bool] = False
    causal_only: ClassVar[bool] = False
    #: positions are derived from token ids by ``token_positions(idx, state)`` (BiPE)
    uses_tokens: ClassVar[bool] = False

    def __init__(self, params: Params, *, head_dim: int, num_heads: int = 1, d_model: int | None = None):
        super().__init__()
        check_dims(head_dim, num_heads, d_model)
        params.validate_dims(head_dim, num_heads)
        self.params = params
        self.head_dim = head_dim
        self.num_heads = num_heads
        self.d_model = d_model if d_model is not None else head_dim * num_heads
        self._cache: dict[Any, Any] = {}

    # ----- capability metadata -------------------------------------------------------------------
    @property
    def relative(self) -> bool:
        """Logits depend on positions only through q_pos - k_pos (False for absolute methods)."""
        return not self.uses_embed

    @property
    def kind(self) -> str:
        """The registry name of this encoding's parameters."""
        return self.params.kind

    # ----- the four hooks ------------------------------------------------------------------------
    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Absolute encodings add to the token embeddings ``x`` ``(B, T, d_model)``; default: x."""
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
               *, seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Multiplicative transform of q ``(B, H, Tq, D)`` and k ``(B, H, Tk, D)``; default: identity."""
        return q, k

    def features(self, positions: torch.Tensor, seq_len: int | None = None) -> Any:
        """Per-forward position features for :meth:`apply` (rotary: cos/sin), made once at model level."""
        return None

    def apply(self, x: torch.Tensor, features: Any) -> torch.Tensor:
        """Apply ``features`` to q or k ``(B, H, T, D)``; default: identity. ``rotate`` == apply to both."""
        return x

    def token_positions(self, idx: torch.Tensor, state: torch.Tensor | None = None) -> Any:
        """``(embed_positions, attention_positions, next_state)`` from token ids; only for ``uses_tokens``."""
        raise NotImplementedError(f"{type(self).__name__} does not derive positions from tokens (uses_tokens=False)")

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor | None:
        """Additive logit bias ``(H, Tq, Tk)`` (or ``(B, H, Tq, Tk)``); default: None."""
        return None

    def scores(self, q: torch.Tensor, k: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
        """Unscaled logits ``(B, H, Tq, Tk)`` (``-inf`` where masked). Only for ``uses_scores``."""
        raise NotImplementedError(f"{type(self).__name__} has no scores() hook (uses_scores=False)")

    # ----- re-initialisation ---------------------------------------------------------------------
    def reset_cache(self) -> None:
        """Drop derived tables; they are rebuilt from the frozen parameters on next use."""
        self._cache.clear()

    def reset_parameters(self) -> None:
        """Re-initialise learnable parameters (if any) and derived tables."""
        self.reset_cache()

    def extra_repr(self) -> str:
        return f"{self.params}, head_dim={self.head_dim}, num_heads={self.num_heads}"


def reset_encodings(model: nn.Module, *, parameters: bool = True) -> int:
    """Re-initialise every positional encoding inside ``model``; returns how many were found.

    Call this after meta-device construction followed by ``model.to_empty(device=...)``, or after any
    re-materialisation that leaves parameters uninitialised (FSDP, sharded loading). With
    ``parameters=False`` only derived tables are dropped (learned weights are kept, e.g. after
    loading a checkpoint into a ``to_empty`` model).
    """
    n = 0
    for m in model.modules():
        if isinstance(m, PositionalEncoding):
            if parameters:
                with torch.no_grad():
                    m.reset_parameters()
            else:
                m.reset_cache()
            n += 1
    return n


# --------------------------------------------------------------------------------------------------
# NoPE
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoPEParams(Params):
    """NoPE (Kazemnejad et al. 2023): no positional information; causal masking alone orders tokens."""


class NoPE(PositionalEncoding):
    """No positional encoding. Every hook is the default (identity / nothing)."""

    @property
    def relative(self) -> bool:  # trivially: logits do not depend on positions at all
        return True
