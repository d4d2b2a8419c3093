"""BiPE — Bilevel Positional Encoding (He et al., ICML 2024, "Two Stones Hit One Bird").

Text is cut into segments at boundary tokens (the paper: "." and newline). Each token gets two
positions:

* **intra**: its offset inside its segment (0 at the segment's first token), encoded by an absolute
  encoding added at the input (``intra="learned"``, the paper's choice, or ``"sinusoidal"``);
* **segment**: the number of boundaries before it, used as *the* position of a relative encoding
  between segments (``inter``: any relative registry method — rope, alibi, hope_highfreq,
  hope_hyperbolic, ...).

A boundary token ends its segment: the token after it starts the next one (intra 0, segment + 1).
Positions come from token ids, so this encoding implements the ``token_positions`` hook; during
incremental decoding the running state (next segment index and intra offset per sequence) is
carried by the caller (the model keeps it in its KV cache).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Collection, Mapping

import torch

from .base import Params, PositionalEncoding, check_int

__all__ = ["BiPEParams", "BiPE", "bipe_positions"]

#: byte-tokenizer ids of "." and "\n", the paper's boundaries
BYTE_BOUNDARIES = (46, 10)


def bipe_positions(idx: torch.Tensor, boundary_ids: Collection[int] | torch.Tensor,
                   state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Intra-segment and segment positions of token ids ``(B, T)``.

    ``state`` ``(B, 2)`` = (segment index, intra offset) of the first token of ``idx`` (zeros for a
    fresh sequence). Returns ``(intra, segment, next_state)``, all int64, vectorised with cumsums.
    """
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
        raise ValueError(f"bipe_positions: idx must be (B, T) token ids, got {getattr(idx, 'shape', type(idx))}")
    if state is None:
        state = torch.zeros(idx.shape[0], 2, dtype=torch.long, device=idx.device)
    if idx.shape[1] == 0:
        empty = torch.empty(idx.shape, dtype=torch.long, device=idx.device)
        return empty, empty.clone(), state.clone()
    if not isinstance(boundary_ids, torch.Tensor):
        boundary_ids = tuple(sorted(int(i) for i in boundary_ids))
    ids = torch.as_tensor(boundary_ids, dtype=idx.dtype, device=idx.device)
    is_boundary = torch.isin(idx, ids).long()                                        # (B, T)
    # a boundary ends its segment: boundaries strictly before t
    before = torch.cumsum(is_boundary, dim=1) - is_boundary                          # (B, T)
    segment = state[:, :1] + before                                                  # (B, T)
    t = torch.arange(idx.shape[1], device=idx.device).expand_as(idx)                 # (B, T)
    # index of this segment's first token within idx (0 if the segment started before idx)
    start_marker = torch.where(is_boundary.bool(), t + 1, torch.zeros_like(t))       # next token starts a segment
    shifted = torch.cat([torch.zeros_like(t[:, :1]), start_marker[:, :-1]], dim=1)  # (B, T)
    seg_start = torch.cummax(shifted, dim=1).values                                  # (B, T)
    continues = before == 0                                                          # still in state's segment
    intra = torch.where(continues, state[:, 1:2] + t, t - seg_start)                 # (B, T)
    last_boundary = is_boundary[:, -1].bool()
    next_state = torch.stack([
        segment[:, -1] + is_boundary[:, -1],
        torch.where(last_boundary, torch.zeros_like(intra[:, -1]), intra[:, -1] + 1),
    ], dim=1)
    return intra, segment, next_state


@dataclasses.dataclass(frozen=True, kw_only=True)
class BiPEParams(Params):
    """BiPE. ``inter``: a relative method's parameters (a config such as ``{"kind": "rope"}`` is parsed);
    ``intra``: "learned" or "sinusoidal"; ``intra_max_len``: size of the learned intra table (a longer
    segment is refused); ``boundary_ids``: token ids that end a segment (default: the byte tokenizer's
    "." and "\\n")."""

    inter: Params = dataclasses.field(default_factory=lambda: _parse({"kind": "rope"}))
    intra: str = "learned"
    intra_max_len: int = 1024
    boundary_ids: tuple[int, ...] = BYTE_BOUNDARIES

    def __post_init__(self) -> None:
        from . import method_of

        inter = self.inter
        if isinstance(inter, Mapping):
            try:
                inter = _parse(inter)
            except (ValueError, TypeError) as e:
                raise type(e)(f"BiPEParams.inter: {e}") from None
        elif not isinstance(inter, Params):
            raise ValueError(f"BiPEParams.inter={inter!r}: expected a mapping naming a relative method, "
                             f'e.g. {{"kind": "rope"}}')
        if method_of(inter).encoding.uses_embed:  # absolute (or BiPE itself): not an inter-segment method
            raise ValueError(f"BiPEParams.inter={inter.kind!r}: must be a relative method "
                             f"(rope family, hope_highfreq, hope_hyperbolic, alibi, nope)")
        if getattr(inter, "logit_scale", "none") != "none":  # its s(m) counts tokens; BiPE's positions are segments
            raise ValueError(f"BiPEParams.inter.logit_scale={inter.logit_scale!r}: the log-length scale counts the "
                             f"keys a query sees by token position, but inside BiPE the positions are segment "
                             f"indices; use logit_scale='none'")
        object.__setattr__(self, "inter", inter)
        if self.intra not in ("learned", "sinusoidal"):
            raise ValueError(f"BiPEParams.intra={self.intra!r}: must be 'learned' or 'sinusoidal'")
        check_int(self, "intra_max_len", low=1)
        ids = self.boundary_ids
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__") or not len(tuple(ids)):
            raise TypeError(f"BiPEParams.boundary_ids={ids!r}: expected a non-empty sequence of token ids")
        for i in tuple(ids):
            if isinstance(i, bool) or not isinstance(i, int) or i < 0:
                raise ValueError(f"BiPEParams.boundary_ids={ids!r}: entries must be non-negative ints")
        object.__setattr__(self, "boundary_ids", tuple(ids))

    def validate_dims(self, head_dim: int, num_heads: int) -> None:
        self.inter.validate_dims(head_dim, num_heads)

    @classmethod
    def fill_train_len(cls, fields: dict[str, Any], train_len: int) -> dict[str, Any]:
        """The training length goes to the inter-segment method (e.g. hope_highfreq's)."""
        inter = fields.get("inter", {"kind": "rope"})
        if isinstance(inter, Mapping) and "kind" in inter:
            from . import REGISTRY

            if inter["kind"] in REGISTRY:
                inter = REGISTRY[inter["kind"]].params.fill_train_len(dict(inter), train_len)
            return {**fields, "inter": inter}
        return fields

    def check_tokenizer(self, tokenizer: Any) -> None:
        """The default boundary ids are the byte tokenizer's "." and newline; another tokenizer needs its
        own, or segments would be cut at random tokens."""
        if self.boundary_ids == BYTE_BOUNDARIES and not str(getattr(tokenizer, "name", "")).startswith("byte"):
            from ..data import boundary_ids_for  # only reached with a tokenizer, i.e. with hopekit.data loaded

            ids = sorted(boundary_ids_for(tokenizer))
            raise ValueError(f"pe.boundary_ids={list(BYTE_BOUNDARIES)}: bipe's default ids are the byte tokenizer's "
                             f"'.' and newline, but the tokenizer is {getattr(tokenizer, 'name', tokenizer)!r}; pass "
                             f"its own, e.g. pe.boundary_ids={ids} (hopekit.data.boundary_ids_for(tokenizer))")


def _parse(config: Mapping[str, Any]) -> Params:
    from . import parse  # local import: the registry imports this module

    return parse(config)


class BiPE(PositionalEncoding):
    """Composite: an absolute intra-segment encoding plus a relative inter-segment one.

    Capabilities are the union of ``embed`` (intra) and whatever the inter encoding uses; every
    attention-side hook forwards to ``self.inter`` with *segment* positions.
    """

    uses_embed = True
    uses_tokens = True

    def __init__(self, params: BiPEParams, *, head_dim: int, num_heads: int = 1, d_model: int | None = None):
        super().__init__(params, head_dim=head_dim, num_heads=num_heads, d_model=d_model)
        from . import build

        self.inter = build(params.inter, head_dim=head_dim, num_heads=num_heads, d_model=d_model)
        intra_params = {"max_len": params.intra_max_len} if params.intra == "learned" else {}
        self.intra = build(params.intra, head_dim=head_dim, num_heads=num_heads, d_model=d_model, **intra_params)

    # capabilities of the inter encoding (instance-level: they depend on the configuration)
    @property
    def uses_rotate(self) -> bool:  # type: ignore[override]
        return self.inter.uses_rotate

    @property
    def uses_bias(self) -> bool:  # type: ignore[override]
        return self.inter.uses_bias

    @property
    def uses_scores(self) -> bool:  # type: ignore[override]
        return self.inter.uses_scores

    @property
    def causal_only(self) -> bool:  # type: ignore[override]
        return self.inter.causal_only

    @property
    def relative(self) -> bool:
        return False  # intra positions are absolute

    def token_positions(self, idx: torch.Tensor, state: torch.Tensor | None = None):
        """``(intra, segment, next_state)`` for token ids ``idx`` ``(B, T)``; see :func:`bipe_positions`."""
        return bipe_positions(idx, self.params.boundary_ids, state)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``positions`` here are the *intra-segment* positions."""
        return self.intra.embed(x, positions)

    @property
    def rotary_dim(self) -> int:
        return self.inter.rotary_dim

    def spectrum(self, seq_len=None):
        return self.inter.spectrum(seq_len)

    def features(self, positions, seq_len=None):
        return self.inter.features(positions, seq_len)

    def apply(self, x, features):
        return self.inter.apply(x, features)

    def rotate(self, q, k, q_pos, k_pos, *, seq_len=None):
        return self.inter.rotate(q, k, q_pos, k_pos, seq_len=seq_len)

    def bias(self, q_pos, k_pos):
        return self.inter.bias(q_pos, k_pos)

    def scores(self, q, k, q_pos, k_pos):
        return self.inter.scores(q, k, q_pos, k_pos)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.inter.reset_parameters()
        self.intra.reset_parameters()
