"""What a positional encoding's parameters mean in tokens: half-lives, rotating pairs, wavelengths.

:func:`describe` builds the encoding (``hopekit.pe``) and reads the numbers off the encoding object
itself — its spectrum (``inv_freq``, ``attn_scale``), ALiBi slopes, hope_hyperbolic decay rates, the
sinusoidal table, the learned table — so they are the values the method computes with, not a second
implementation of its formulas. It returns a plain dict of Python floats, ints and lists, keyed by
the encoding's capability:

* **rotate** (RoPE family, hope_highfreq): per pair the frequency and period 2π/inv_freq (``math.inf``
  for a pair that does not rotate), how many pairs turn fully within ``train_len`` (period ≤
  train_len), and, against RoPE with the same base and rotary dim, each pair's *stretch* (RoPE's
  inv_freq / this method's: 1 = untouched, s = interpolated by s) and how many pairs stay inside the
  angles a RoPE model saw in training when run to ``eval_len``.
* **scores** (hope_hyperbolic): per eigen-channel the decay rate r_c and half-life ln 2 / r_c (the
  logit factor is exactly e^{−r_c Δ}); per pair the half-life of the aligned-probe kernel
  e^{−λΔ}cosh(ω_iΔ) = ½(e^{−(λ−ω_i)Δ} + e^{−(λ+ω_i)Δ}); and the distance beyond which every channel's
  factor is below 1e-3.
* **bias** (ALiBi): per head the slope m_h and half-life ln 2 / m_h (the distance at which the bias has
  removed ln 2 from the logit, i.e. halved the unnormalised weight).
* **embed** (sinusoidal, learned): the sinusoidal wavelengths (read from the encoding's own table) or
  the learned table's size against ``train_len``.
* **tokens** (BiPE): the intra (absolute) and inter (relative, distances in segments) encodings, each
  described as above.

A method with no positional parameters (NoPE) gets only the common keys.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import torch

from hopekit import pe

__all__ = ["describe", "in_tokens", "NEGLIGIBLE"]

#: a logit factor below this counts as gone: ``negligible_beyond`` is where the slowest channel reaches it
NEGLIGIBLE = 1e-3

_LN2 = math.log(2.0)


def describe(kind_or_params: str | Mapping[str, Any] | pe.Params | pe.PositionalEncoding, *,
             head_dim: int | None = None, num_heads: int = 1, train_len: int, factor: float | None = None,
             eval_len: int | None = None, d_model: int | None = None) -> dict[str, Any]:
    """The numbers that say what an encoding's parameters mean in tokens (see the module docstring).

    ``kind_or_params``: a registry name (its defaults), a config mapping naming its method
    (``{"kind": "yarn", "factor": 16}``), a parameter object, or a built encoding (then ``head_dim``,
    ``num_heads`` and ``d_model`` are its own). ``train_len``: the training length; methods with a
    ``train_len`` parameter get it unless the config sets one (as ``hopekit.pe.parse`` does).
    ``factor``: given to a method's ``factor`` parameter when the config leaves it unset.
    ``eval_len``: the length a length-dependent spectrum (dynamic NTK, LongRoPE) is taken at and the
    in-distribution count refers to; default ``round(factor · train_len)`` for methods with a factor,
    else ``train_len``.
    """
    if isinstance(train_len, bool) or not isinstance(train_len, int) or train_len < 1:
        raise ValueError(f"train_len={train_len!r}: expected an int >= 1")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not math.isfinite(factor) or factor < 1):
        raise ValueError(f"factor={factor!r}: expected a real number >= 1")
    if eval_len is not None and (isinstance(eval_len, bool) or not isinstance(eval_len, int) or eval_len < 1):
        raise ValueError(f"eval_len={eval_len!r}: expected an int >= 1")
    enc = _encoding(kind_or_params, head_dim=head_dim, num_heads=num_heads, d_model=d_model,
                    train_len=train_len, factor=factor)
    p_factor = getattr(enc.params, "factor", None)
    if eval_len is None:
        eval_len = max(1, round(float(p_factor) * train_len)) if p_factor is not None else train_len
    return _describe(enc, train_len, eval_len)


def _encoding(obj: Any, *, head_dim: int | None, num_heads: int, d_model: int | None, train_len: int,
              factor: float | None) -> pe.PositionalEncoding:
    if isinstance(obj, pe.PositionalEncoding):
        return obj
    if head_dim is None:
        raise TypeError("head_dim: required unless an encoding object is given")
    if isinstance(obj, str):
        obj = {"kind": obj}
    if isinstance(obj, Mapping) and factor is not None and "factor" not in obj:
        if obj.get("kind") in pe.REGISTRY and any(
                f.name == "factor" for f in dataclasses.fields(pe.method_of(obj["kind"]).params)):
            obj = {**obj, "factor": factor}
    params = pe.parse(obj, train_len=train_len)
    return pe.build(params, head_dim=head_dim, num_heads=num_heads, d_model=d_model)


def _describe(enc: pe.PositionalEncoding, train_len: int, eval_len: int) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": enc.kind, "config": pe.to_config(enc.params), "head_dim": enc.head_dim,
                           "num_heads": enc.num_heads, "d_model": enc.d_model, "train_len": train_len,
                           "eval_len": eval_len, "capabilities": list(pe.method_of(enc.kind).capabilities)}
    if enc.uses_tokens:  # BiPE: an absolute intra-segment encoding plus a relative one between segments
        out["intra"] = _describe(enc.intra, train_len, eval_len)
        out["inter"] = _describe(enc.inter, train_len, eval_len)
        out["inter_unit"] = "segments"
        return out
    if enc.uses_rotate:
        out.update(_rotary(enc, train_len, eval_len))
    elif enc.uses_scores:
        out.update(_decay(enc, train_len))
    elif enc.uses_bias:
        out.update(_bias(enc, train_len))
    elif enc.uses_embed:
        out.update(_absolute(enc, train_len))
    return out


# --------------------------------------------------------------------------------------------------
# rotate: the RoPE family and hope_highfreq
# --------------------------------------------------------------------------------------------------


def _period(inv_freq: torch.Tensor) -> list[float]:
    return [2 * math.pi / f if f > 0 else math.inf for f in inv_freq.tolist()]


def _rotary(enc: Any, train_len: int, eval_len: int) -> dict[str, Any]:
    spectrum = enc.spectrum(eval_len)
    inv_freq = spectrum.inv_freq.double().cpu()
    # RoPE with the same base and rotary dim: what a model trained with plain RoPE saw
    rope = pe.build("rope", head_dim=enc.head_dim, base=enc.params.base,
                    rotary_fraction=enc.params.rotary_fraction).spectrum().inv_freq.double().cpu()
    stretch = [r / f if f > 0 else math.inf for r, f in zip(rope.tolist(), inv_freq.tolist())]
    period = _period(inv_freq)
    rope_period = _period(rope)
    # a pair stays within trained angles at eval_len if RoPE already turned it fully within train_len, or
    # if its largest angle at eval_len is no larger than RoPE's at train_len
    in_dist = [rp <= train_len or f * eval_len <= r * train_len * (1 + 1e-12)
               for rp, f, r in zip(rope_period, inv_freq.tolist(), rope.tolist())]
    finite = [s for s in stretch if math.isfinite(s)]
    return {
        "rotary_dim": enc.rotary_dim,
        "pairs": len(period),
        "inv_freq": inv_freq.tolist(),
        "period": period,
        "attn_scale": float(spectrum.attn_scale),
        "rotating_pairs": sum(1 for t in period if t <= train_len),
        "position_free_pairs": sum(1 for t in period if math.isinf(t)),
        "longest_period": max((t for t in period if math.isfinite(t)), default=math.inf),
        "rope_period": rope_period,
        "rope_rotating_pairs": sum(1 for t in rope_period if t <= train_len),
        "stretch": stretch,
        "unchanged_pairs": sum(1 for s in stretch if abs(s - 1.0) <= 1e-9),
        "max_stretch": max(finite, default=math.inf),
        "in_distribution_pairs": sum(in_dist),
    }


# --------------------------------------------------------------------------------------------------
# scores: hope_hyperbolic
# --------------------------------------------------------------------------------------------------


def _pair_half_life(a: float, b: float) -> float:
    """Δ > 0 with ½(e^{−aΔ} + e^{−bΔ}) = ½ (0 < a ≤ b), by bisection in float64."""
    lo, hi = 0.0, _LN2 / a  # at hi the slow term alone is ½, so the kernel is below ½: a bracket
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * (math.exp(-a * mid) + math.exp(-b * mid)) > 0.5:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _decay(enc: Any, train_len: int) -> dict[str, Any]:
    with torch.no_grad():
        rates = enc.rates().detach().double().cpu()          # (H or 1, head_dim): [λ − ω_i …, λ + ω_i …]
    pairs = rates.shape[-1] // 2
    slow, fast = rates[:, :pairs], rates[:, pairs:]
    omega = ((fast - slow) / 2)[0]                           # ω_i, the same for every head
    penalty = ((fast + slow) / 2)[:, 0]                      # λ per head
    half = (_LN2 / rates)
    r_min = float(rates.min())
    return {
        "pairs": pairs,
        "channels": [f"u{i}" for i in range(pairs)] + [f"v{i}" for i in range(pairs)],
        "omega": omega.tolist(),
        "penalty": penalty.tolist(),
        "rates": rates.tolist(),
        "half_life": half.tolist(),
        "pair_half_life": [[_pair_half_life(float(a), float(b)) for a, b in zip(s, f)]
                           for s, f in zip(slow.tolist(), fast.tolist())],
        "slowest_half_life": float(half.max()),
        "fastest_half_life": float(half.min()),
        "factor_at_train_len": math.exp(-r_min * train_len),
        "negligible_beyond": math.log(1 / NEGLIGIBLE) / r_min,
    }


# --------------------------------------------------------------------------------------------------
# bias: ALiBi
# --------------------------------------------------------------------------------------------------


def _bias(enc: Any, train_len: int) -> dict[str, Any]:
    slopes = enc.slopes().double().cpu()
    return {
        "slopes": slopes.tolist(),
        "half_life": (_LN2 / slopes).tolist(),
        "bias_at_train_len": (-slopes * train_len).tolist(),
    }


# --------------------------------------------------------------------------------------------------
# embed: sinusoidal, learned
# --------------------------------------------------------------------------------------------------


def _absolute(enc: Any, train_len: int) -> dict[str, Any]:
    if hasattr(enc, "table"):  # sinusoidal: read the frequencies off the table at positions 0 and 1
        with torch.no_grad():
            table = enc.table(torch.arange(2)).double()     # (2, d_model): [sin, cos] interleaved
        amplitude = table[0, 1::2]                          # cos(0) · scale
        inv_freq = torch.atan2(table[1, 0::2], table[1, 1::2])   # angle 1 · inv_freq_i < π: unambiguous
        wavelength = _period(inv_freq)
        return {
            "frequencies": len(wavelength),
            "inv_freq": inv_freq.tolist(),
            "wavelength": wavelength,
            "amplitude": float(amplitude.mean()),
            "full_cycle_frequencies": sum(1 for w in wavelength if w <= train_len),
            "shortest_wavelength": min(wavelength),
            "longest_wavelength": max(wavelength),
        }
    if not hasattr(enc, "weight"):
        return {}
    rows = int(enc.weight.shape[0])                     # learned: one trainable row per position
    return {
        "table_rows": rows,
        "trained_rows": min(rows, train_len),
        "untrained_rows": max(0, rows - train_len),
    }


# --------------------------------------------------------------------------------------------------
# one line
# --------------------------------------------------------------------------------------------------


def format_number(x: float, digits: int = 3) -> str:
    """A number for prose: ``digits`` significant figures, thousands separated, no exponent (∞ for
    infinity; below 1e-3 in scientific notation)."""
    if math.isinf(x):
        return "∞"
    if x == 0:
        return "0"
    if abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    if abs(x) >= 10 ** (digits - 1):
        return f"{round(x):,}"                # whole tokens: 35,333, not 35,300
    x = float(f"{x:.{digits}g}")           # round first: 0.0099999998 has the magnitude of 0.01
    decimals = max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))
    return f"{round(x, decimals):,.{decimals}f}"


_g = format_number


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def in_tokens(d: Mapping[str, Any], unit: str = "tokens") -> str:
    """One line saying what the described encoding means in tokens (``hopekit methods`` style);
    ``unit`` names what distances count (BiPE's inter encoding: segments)."""
    L = d["train_len"]
    if "inter" in d:
        return (f"intra: {in_tokens(d['intra'])}; inter (distances in segments, at most {L} in a window): "
                f"{in_tokens(d['inter'], 'segments')}")
    if "stretch" in d:
        if d["eval_len"] == L and d["unchanged_pairs"] == d["pairs"] - d["position_free_pairs"]:
            text = (f"{d['rotating_pairs']} of {d['pairs']} pairs turn fully within {L} {unit} "
                    f"(periods {_g(min(d['period']))}–{_g(d['longest_period'])})")
            if d["position_free_pairs"]:
                text += f", the other {d['position_free_pairs']} are position-free"
        else:
            text = (f"at {d['eval_len']} {unit}: {d['unchanged_pairs']} of {d['pairs']} pairs untouched, "
                    f"max stretch {_g(d['max_stretch'])}×; {d['in_distribution_pairs']} of {d['pairs']} stay "
                    f"within the angles RoPE saw in {L} {unit} (RoPE: {d['rope_rotating_pairs']})")
        if d["attn_scale"] != 1.0:
            text += f"; cos/sin × {_g(d['attn_scale'], 4)}"
        return text
    if "rates" in d:
        flat = sorted(h for head in d["half_life"] for h in head)
        short = sum(1 for h in flat if h < 10)
        return (f"channel half-lives {_g(flat[0])}–{_g(flat[-1])} {unit} ({short} of {len(flat)} under 10); "
                f"every logit < {NEGLIGIBLE:g} of its Δ=0 value beyond {_g(d['negligible_beyond'])} {unit}")
    if "slopes" in d:
        return "head half-lives " + ", ".join(_g(h) for h in d["half_life"]) + f" {unit}"
    if "wavelength" in d:
        return (f"{d['full_cycle_frequencies']} of {d['frequencies']} frequencies complete a cycle within {L} "
                f"tokens (wavelengths {_g(d['shortest_wavelength'])}–{_g(d['longest_wavelength'])})")
    if "table_rows" in d:
        return f"{_n(d['table_rows'], 'row')}; {d['untrained_rows']} beyond train_len {L} never trained"
    return "no positional parameters"
