"""hope_hyperbolic attention without a T×T logit tensor, on the fused SDPA kernel.

The reference (:func:`hopekit.functional.chunked_attention` over :meth:`HyperbolicEncoding.scores`)
materialises every chunk's logits Σ_c Q_c K_c e^{−r_c(m−n)} and runs an eager softmax. This path
computes the same attention with CPU flash-attention calls that each return an output and its
log-sum-exp, merged exactly at the end. It rests on one observation about the stable form
(``hopekit.pe.hope_hyperbolic``, eigen-channels c with decay rates r_c > 0):

**Past keys need no bound on the block length.** For query rows m ≥ lo and key rows n < lo
(positions non-decreasing), with the anchor at the position p_lo of row lo,

    Q_c K_c e^{−r_c(p_m − p_n)} = [Q_c e^{−r_c(p_m − p_lo)}] · [K_c e^{−r_c(p_lo − p_n)}],

and both factors lie in (0, 1]: nothing can overflow however long the query block is, and where a
factor underflows, the exact term is smaller still (the correct decay limit: the logit tends to 0,
never to −inf). So the causal triangle is cut like a binary tree over the query rows: at level ℓ
every node of N rows contributes one rectangle (its second half of queries × its first half of
keys, anchored at the second half's first row), and all rectangles of a level are one batched,
unmasked flash call of equal shapes. Below the tree, leaves of R rows whose positions span at most
2·_LEAF_EXPONENT / max r_c run one batched causal call, anchored at the leaf's midpoint as in the
reference (every factor within e^{±_LEAF_EXPONENT}). With a KV cache, the cached keys are one more
rectangle against all new queries. The exponents are formed in float64 from the float32 rates and
cast once, so each factor carries one rounding (the reference's float32 exponents carry |r·Δ|·2⁻²⁴).

A factor e^{−x} with x > _NEGLIGIBLE is set to exactly 0: the term it multiplies is then below
e^{−30}·|Q_c K_c| ≈ 1e-13·|Q_c K_c|, far below float32 rounding, and keeping it would fill the
matmuls with subnormal numbers (measured: 5× slower on x86).

Query rows are padded to R·2^L (zero rows that only padded queries see; their outputs are dropped).
The backward pass calls the flash backward once per rectangle group with the merged output and
log-sum-exp (which makes each group's gradients exact), recomputing the scaled copies instead of
keeping them, and chains through the factors by hand, including the gradient of learnable rates.

The plan (tree shape, distances, factor tables) is made from the positions on the host once per
forward: every layer passes the same position tensors, and the last plan is kept with them. Where
this path does not apply (:func:`applies`: another device, dropout, a mask, float16) or the positions
decrease or the queries' positions are not the last keys' positions (found when the plan is made),
:func:`attend` runs the reference.
"""

from __future__ import annotations

import dataclasses

import torch

from . import enabled

__all__ = ["applies", "attend"]

_LEAF_EXPONENT = 30.0   # |r_c · (position − leaf anchor)| bound inside a leaf
_NEGLIGIBLE = 30.0      # a decay factor e^{−x} with x above this is set to 0 (see the module docstring)
_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def _flash_ops():
    ops = torch.ops.aten
    if not (hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu")
            and hasattr(ops, "_scaled_dot_product_flash_attention_for_cpu_backward")):
        return None
    return ops._scaled_dot_product_flash_attention_for_cpu, ops._scaled_dot_product_flash_attention_for_cpu_backward


def applies(enc, q: torch.Tensor, k: torch.Tensor, *, mask, dropout_p: float) -> bool:
    """Whether :func:`attend` computes this call: a hope_hyperbolic encoding, no mask, no dropout,
    CPU tensors (B, H, T, D) in float32, bfloat16 or float64, the kernels enabled."""
    from ..pe.hope_hyperbolic import HyperbolicEncoding

    return (enabled() and isinstance(enc, HyperbolicEncoding) and mask is None and not dropout_p
            and isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor)
            and q.dim() == 4 and k.dim() == 4 and q.device.type == "cpu" and k.device.type == "cpu"
            and q.dtype in _DTYPES and k.dtype == q.dtype and _flash_ops() is not None)


@torch.compiler.disable  # host-side planning and an opaque kernel: one clean graph break under torch.compile
def attend(enc, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
           *, scale: float, past: int) -> torch.Tensor:
    """Causal hope_hyperbolic attention, exactly ``chunked_attention(enc, q, k, v, q_pos, k_pos,
    past=past, scale=scale, chunk=…)`` without mask and dropout, to float rounding.

    q ``(B, H, Tq, D)``, k and v ``(B, H, Tk, D)`` with ``Tk = past + Tq`` (raw projections, heads
    repeated for GQA); query row i sees keys ``0 … past + i``. Positions: integers ``(T,)`` or
    ``(B, T)``, non-decreasing. Returns ``(B, H, Tq, D)`` in v's dtype; differentiable in q, k, v and
    a learnable penalty."""
    from ..pe.base import check_positions, check_qk

    check_qk(enc, q, k)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v: expected (B, H, T, head_dim), got {tuple(q.shape)}, {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v: expected (B, H, Tk) = {tuple(k.shape[:3])} leading dims, got {tuple(v.shape)}")
    if past != Tk - Tq:
        raise ValueError(f"past={past}: must be Tk − Tq = {Tk} − {Tq}")
    if enc._heads > 1 and H != enc._heads:
        raise ValueError(f"q: has {H} heads but the per-head penalty has num_heads={enc._heads}")
    q_pos = check_positions(q_pos, "q_pos", Tq, batch=B)
    k_pos = check_positions(k_pos, "k_pos", Tk, batch=B)
    rates = enc.rates(q.device)                                              # (H|1, D) float32
    plan = None
    if Tq > 0 and q.dtype in _DTYPES and k.dtype == v.dtype == q.dtype:
        r_max = float(rates.detach().max())
        plan = _cached_plan(q_pos, k_pos, Tq, past, 2 * _LEAF_EXPONENT / max(r_max, 1e-30))
    if plan is None:  # positions this path does not cover: the reference (same result, T×chunk memory)
        from ..functional import chunked_attention

        return chunked_attention(enc, q, k, v, q_pos, k_pos, past=past, scale=scale, chunk=256)
    row_scale = None
    if enc.params.logit_scale == "log_length":
        from ..pe.hope_hyperbolic import log_length_scale

        row_scale = log_length_scale(plan.q_pos, float(enc.params.train_len))  # (Bp, T_pad) float32
    with torch.autocast(device_type="cpu", enabled=False):
        return _HyperbolicAttention.apply(q, k, v, rates, plan, float(scale), row_scale)


# --------------------------------------------------------------------------------------------------
# The plan: tree shape and exponents, from the positions alone
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Plan:
    """Row structure of one call. ``q_pos`` (Bp, T_pad): query positions, padded by continuing in steps
    of 1. Distances are int64 tensors shaped (Bp|1, nodes|1, rows), shared wherever they are equal."""

    tq: int
    past: int
    levels: int                       # L: tree levels above the leaves
    leaf: int                         # R: rows per leaf; T_pad = R · 2^L
    q_pos: torch.Tensor
    leaf_delta: torch.Tensor          # p_m − leaf anchor (signed)
    level_delta: list[torch.Tensor]   # |p − p_lo| per level ℓ (node size T_pad / 2^ℓ)
    prefix_q: torch.Tensor | None     # p_m − p_first (queries against the cached keys), (Bp, 1, Tq)
    prefix_k: torch.Tensor | None     # p_first − p_n (cached keys), (Bp, 1, past)
    groups: tuple | None = None       # (rates, dtype, groups) of the last call (see _groups)

    @property
    def padded(self) -> int:
        return self.leaf << self.levels


def _shared(delta: torch.Tensor) -> torch.Tensor:
    """(Bp, nodes, rows) → (1, 1, rows) when every batch row and node has the same distances."""
    first = delta[:1, :1]
    return first if bool((delta == first).all()) else delta


def _plan(q_pos: torch.Tensor, k_pos: torch.Tensor, tq: int, past: int, span_limit: float) -> _Plan | None:
    """The tree for ``tq`` query rows whose leaves span ≤ ``span_limit`` positions; None where the
    positions decrease or the queries' positions are not the last keys' positions."""
    qp, kp = q_pos.detach().cpu(), k_pos.detach().cpu()
    qp, kp = qp.reshape(-1, qp.shape[-1]), kp.reshape(-1, kp.shape[-1])       # (B|1, T)
    bp = max(qp.shape[0], kp.shape[0])
    qp, kp = qp.expand(bp, -1), kp.expand(bp, -1)
    if not torch.equal(kp[:, past:], qp) or bool((kp.diff(dim=-1) < 0).any()):
        return None
    if qp.shape[0] > 1 and bool((qp == qp[:1]).all()) and bool((kp == kp[:1]).all()):
        qp, kp = qp[:1], kp[:1]
        bp = 1
    levels = 0
    while True:
        nodes = 1 << levels
        leaf = -(-tq // nodes)
        padded = leaf * nodes
        pos = torch.cat([qp, qp[:, -1:] + torch.arange(1, padded - tq + 1)], dim=-1)   # (Bp, T_pad)
        rows = pos.view(bp, nodes, leaf)
        span = int((rows.amax(-1) - rows.amin(-1)).max())
        if span <= span_limit or leaf == 1:
            break
        levels += 1
    anchor = (rows.amin(-1, keepdim=True) + rows.amax(-1, keepdim=True)) // 2
    leaf_delta = _shared(rows - anchor)
    level_delta = []
    for lvl in range(levels):
        n = 1 << lvl
        node = pos.view(bp, n, padded // n)
        lo = node[:, :, padded // n // 2, None]
        level_delta.append(_shared((node - lo).abs()))
    prefix_q = prefix_k = None
    if past:
        first = qp[:, :1]
        prefix_q = (qp - first)[:, None]                                        # (Bp, 1, Tq)
        prefix_k = (first - kp[:, :past])[:, None]                              # (Bp, 1, past)
    return _Plan(tq, past, levels, leaf, pos, leaf_delta, level_delta, prefix_q, prefix_k)


#: the last plan made, with copies of the positions it was made from: every layer of a forward passes the
#: same positions, so the plan (and its factor tables) is made once per forward. Positions are compared by
#: value (O(T), no host sync on CPU): identity and version counters miss writes through ``.data`` or numpy.
_LAST: list[tuple] = []


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.device == b.device and torch.equal(a, b)


def _cached_plan(q_pos: torch.Tensor, k_pos: torch.Tensor, tq: int, past: int, span_limit: float) -> _Plan | None:
    key = (tq, past, span_limit)
    for qp, kp, k, plan in _LAST:
        if k == key and _same(qp, q_pos) and _same(kp, k_pos):
            return plan
    plan = _plan(q_pos, k_pos, tq, past, span_limit)
    _LAST[:] = [(q_pos.detach().clone(), k_pos.detach().clone(), key, plan)]
    return plan


def _factor(delta: torch.Tensor, rates64: torch.Tensor, sign: float, dtype: torch.dtype, cut: bool) -> torch.Tensor:
    """e^{−sign · r_c · δ}, shape (Bp|1, H|1, nodes|1, rows, D), in float64 then cast once to ``dtype``;
    with ``cut``, exponents below −_NEGLIGIBLE give exactly 0."""
    x = delta.to(torch.float64)[:, None, :, :, None] * rates64[None, :, None, None, :]  # r·δ, (Bp, H, n, rows, D)
    if not cut:
        return torch.exp(-sign * x).to(dtype)
    far = x > _NEGLIGIBLE
    return torch.exp(-x.clamp_(max=_NEGLIGIBLE)).masked_fill_(far, 0.0).to(dtype)  # no subnormal exp


# --------------------------------------------------------------------------------------------------
# The attention
# --------------------------------------------------------------------------------------------------


def _eigen(x: torch.Tensor, rows: int, dtype: torch.dtype) -> torch.Tensor:
    """Half-split pairs (a, b) → [a + b, a − b] (the eigenbasis times √2; the 1/2 goes into the scale),
    ``(B, H, rows, D)`` in ``dtype``, zero rows beyond x's."""
    B, H, T, D = x.shape
    x = x.to(dtype)
    h = D // 2
    out = x.new_empty((B, H, rows, D))
    torch.add(x[..., :h], x[..., h:], out=out[:, :, :T, :h])
    torch.sub(x[..., :h], x[..., h:], out=out[:, :, :T, h:])
    out[:, :, T:].zero_()
    return out


def _uneigen(g: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The transpose of :func:`_eigen` (the same map) on ``g`` ``(B, H, T, D)``: [gu + gv, gu − gv]."""
    h = g.shape[-1] // 2
    out = torch.empty(g.shape, dtype=dtype)
    torch.add(g[..., :h], g[..., h:], out=out[..., :h])
    torch.sub(g[..., :h], g[..., h:], out=out[..., h:])
    return out


def _inputs(q, k, v, plan: _Plan, row_scale, acc):
    """The query rows ``(B, H, T_pad, D)`` and key rows ``(B, H, past + T_pad, D)`` in the eigenbasis
    (queries times s(m) under ``log_length``), and v padded to the key rows."""
    B, H, Tk, D = v.shape
    rows = plan.past + plan.padded
    qe = _eigen(q, plan.padded, acc)
    if row_scale is not None:
        qe.mul_(row_scale[:, None, :, None].to(acc))
    ke = _eigen(k, rows, acc)
    if Tk != rows or not v.is_contiguous():
        vf = v.new_zeros((B, H, rows, D))
        vf[:, :, :Tk] = v
        v = vf
    return qe, ke, v


def _qrows(x: torch.Tensor, kind: str, nodes: int, plan: _Plan) -> torch.Tensor:
    """A group's query rows of ``x`` ``(B, H, T_pad, …)`` as ``(B, H, nodes, rows, …)`` (a view)."""
    if kind == "leaf":
        return x.unflatten(2, (nodes, -1))
    if kind == "level":                                   # the second half of every node
        return x.unflatten(2, (nodes, 2, -1))[:, :, :, 1]
    return x[:, :, None, :plan.tq]                         # prefix: every real query


def _krows(x: torch.Tensor, kind: str, nodes: int, plan: _Plan) -> torch.Tensor:
    """A group's key rows of ``x`` ``(B, H, past + T_pad, …)`` as ``(B, H, nodes, rows, …)`` (a view)."""
    if kind == "leaf":
        return x[:, :, plan.past:].unflatten(2, (nodes, -1))
    if kind == "level":                                   # the first half of every node
        return x[:, :, plan.past:].unflatten(2, (nodes, 2, -1))[:, :, :, 0]
    return x[:, :, None, :plan.past]                       # prefix: the cached keys


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, H, nodes, rows, …) → (B, H · nodes, rows, …) for a flash call (a view where the strides allow)."""
    return x.flatten(1, 2)


def _groups(plan: _Plan, rates: torch.Tensor, acc: torch.dtype) -> list[tuple]:
    """The rectangle groups of one call, each ``(kind, nodes, fq, fk, dq, dk, causal)``: factor tables
    (Bp|1, H|1, nodes|1, rows, D) for its query and key rows, the distances δ with factor e^{−r·δ}.
    Kept on the plan for the next call with the same rates (the other layers of the forward)."""
    r64 = rates.detach().to(torch.float64)                                 # exact: the rates are float32
    if plan.groups is not None and plan.groups[1] == acc and torch.equal(plan.groups[0], r64):
        return plan.groups[2]
    groups = _make_groups(plan, r64, acc)
    plan.groups = (r64.clone(), acc, groups)
    return groups


def _make_groups(plan: _Plan, r64: torch.Tensor, acc: torch.dtype) -> list[tuple]:
    d = plan.leaf_delta
    groups = [("leaf", 1 << plan.levels, _factor(d, r64, 1.0, acc, False), _factor(d, r64, -1.0, acc, False),
               d, -d, True)]
    for lvl, d in enumerate(plan.level_delta):
        h = plan.padded >> (lvl + 1)
        dq, dk = d[..., h:], d[..., :h]
        groups.append(("level", 1 << lvl, _factor(dq, r64, 1.0, acc, True), _factor(dk, r64, 1.0, acc, True),
                       dq, dk, False))
    if plan.past:
        dq, dk = plan.prefix_q, plan.prefix_k
        groups.append(("prefix", 1, _factor(dq, r64, 1.0, acc, True), _factor(dk, r64, 1.0, acc, True),
                       dq, dk, False))
    return groups


def _operands(group, qe, ke, vf, plan: _Plan, dtype):
    """The flash call's q, k, v ``(B, H · nodes, rows, D)``: the rows times their factors, in ``dtype``."""
    kind, nodes, fq, fk = group[:4]
    Q = (_qrows(qe, kind, nodes, plan) * fq).to(dtype)
    K = (_krows(ke, kind, nodes, plan) * fk).to(dtype)
    return _flat(Q), _flat(K), _flat(_krows(vf, kind, nodes, plan))


def _finish(ctx, q, k, v, rates, plan, scale, row_scale, groups, qe, ke, vf, out, lse):
    """Save what the backward needs; the output rows of the real queries in v's dtype."""
    out = out.to(v.dtype)
    lse = lse.to(torch.float64 if q.dtype == torch.float64 else torch.float32)
    if q.dtype == qe.dtype:   # keep the eigenbasis rows (the size of q and k) instead of q and k
        if vf is v:           # v itself: saved so that autograd sees an in-place change of it
            ctx.save_for_backward(rates, v)
            ctx.rows = (qe, ke)
        else:
            ctx.save_for_backward(rates)
            ctx.rows = (qe, ke, vf)
    else:
        ctx.save_for_backward(rates, q, k, v)
        ctx.rows = None
    ctx.state = (plan, scale, row_scale, groups, out, lse, q.dtype, k.shape, v.dtype)
    return out[:, :, :plan.tq]


class _HyperbolicAttention(torch.autograd.Function):

    @staticmethod
    def forward(ctx, q, k, v, rates, plan: _Plan, scale: float, row_scale):
        flash, _ = _flash_ops()
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        B, H, Tq, D = q.shape
        groups = _groups(plan, rates, acc)
        qe, ke, vf = _inputs(q, k, v, plan, row_scale, acc)
        parts = []
        for group in groups:
            Q, K, V = _operands(group, qe, ke, vf, plan, q.dtype)
            o, part_lse = flash(Q, K, V, 0.0, group[-1], scale=scale / 2)  # [a ± b] is √2 · the eigenbasis
            parts.append((o.unflatten(1, (H, -1)), part_lse.unflatten(1, (H, -1))))
            del Q, K, V
        if len(parts) == 1:   # one leaf holds everything: nothing to merge
            out, lse = parts[0][0].reshape(B, H, plan.padded, D), parts[0][1].reshape(B, H, plan.padded)
            return _finish(ctx, q, k, v, rates, plan, scale, row_scale, groups, qe, ke, vf, out, lse)
        # merge: lse = log Σ_g e^{lse_g} over the groups a row is in, then out = Σ_g e^{lse_g − lse} out_g
        # (in float64: the weights then carry only the rounding of each group's own lse)
        every = torch.full((len(groups), B, H, plan.padded), float("-inf"), dtype=torch.float64)
        for (kind, nodes, *_), part, (_, part_lse) in zip(groups, every, parts):
            _qrows(part, kind, nodes, plan).copy_(part_lse)
        lse = torch.logsumexp(every, dim=0)                                    # (B, H, T_pad)
        weights = every.sub_(lse).exp_().to(acc)[..., None]                   # (G, B, H, T_pad, 1)
        out = parts[0][0].reshape(B, H, plan.padded, D)                      # the leaves hold every row
        out = out.mul_(weights[0]) if out.dtype == acc else out * weights[0]
        for (kind, nodes, *_), weight, (o, _) in zip(groups[1:], weights[1:], parts[1:]):
            _qrows(out, kind, nodes, plan).addcmul_(o, _qrows(weight, kind, nodes, plan))
        del parts
        return _finish(ctx, q, k, v, rates, plan, scale, row_scale, groups, qe, ke, vf, out, lse)

    @staticmethod
    def backward(ctx, grad):
        _, flash_bwd = _flash_ops()
        plan, scale, row_scale, groups, out, lse, dtype, k_shape, v_dtype = ctx.state
        rates, *saved = ctx.saved_tensors
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        B, H, Tk, D = k_shape
        Tq, past, T = plan.tq, plan.past, plan.padded
        want_q, want_k, want_v, want_rates = ctx.needs_input_grad[:4]
        with torch.autocast(device_type="cpu", enabled=False):
            qe, ke, vf = ctx.rows + tuple(saved) if ctx.rows is not None else _inputs(*saved, plan, row_scale, acc)
            if T != Tq or grad.dtype != out.dtype:
                g = out.new_zeros((B, H, T, D))
                g[:, :, :Tq] = grad
            else:   # one copy to plain memory here, not one per group (the decoder's grad is a transpose)
                g = grad.contiguous()
            dqe = torch.empty((B, H, T, D), dtype=acc)
            dke = torch.empty((B, H, past + T, D), dtype=acc)
            dv = torch.empty((B, H, past + T, D), dtype=acc)
            drates = torch.zeros((H, D), dtype=acc)
            for group in groups:  # the leaves write every tree row, the prefix every cached row: no zero fill
                kind, nodes, fq, fk, dlq, dlk, causal = group
                Q, K, V = _operands(group, qe, ke, vf, plan, dtype)
                gq, gk, gv = flash_bwd(_flat(_qrows(g, kind, nodes, plan)), Q, K, V,
                                       _flat(_qrows(out, kind, nodes, plan)), _flat(_qrows(lse, kind, nodes, plan)),
                                       0.0, causal, scale=scale / 2)
                gq, gk, gv = gq.unflatten(1, (H, -1)), gk.unflatten(1, (H, -1)), gv.unflatten(1, (H, -1))
                q_rows, k_rows, v_rows = (_qrows(dqe, kind, nodes, plan), _krows(dke, kind, nodes, plan),
                                          _krows(dv, kind, nodes, plan))
                if kind == "leaf":                                 # the first group: every tree row
                    torch.mul(gq, fq, out=q_rows)
                else:
                    q_rows.addcmul_(gq, fq)
                if kind == "level":
                    k_rows.addcmul_(gk, fk)
                    v_rows.add_(gv)
                else:                                              # leaves: the tree rows; prefix: the cached rows
                    torch.mul(gk, fk, out=k_rows)
                    v_rows.copy_(gv)
                if want_rates:  # d e^{−rδ}/dr = −δ·e^{−rδ}: sum over rows of −δ · (dQ ⊙ Q), likewise for K
                    for gx, x, dl in ((gq, Q, dlq), (gk, K, dlk)):
                        prod = gx.to(acc) * x.unflatten(1, (H, -1)).to(acc)        # (B, H, nodes, rows, D)
                        drates -= (prod * dl.to(acc)[:, None, :, :, None]).sum(dim=(0, 2, 3))
                del Q, K, V, gq, gk, gv
            dq = dk = dvv = dr = None
            if want_q:
                if row_scale is not None:
                    dqe.mul_(row_scale[:, None, :, None].to(acc))
                dq = _uneigen(dqe[:, :, :Tq], dtype)
            if want_k:
                dk = _uneigen(dke[:, :, :Tk], dtype)
            if want_v:
                dvv = dv[:, :, :Tk].to(v_dtype)
            if want_rates:
                dr = (drates if rates.shape[0] == H else drates.sum(0, keepdim=True)).to(rates.dtype)
        return dq, dk, dvv, dr, None, None, None
