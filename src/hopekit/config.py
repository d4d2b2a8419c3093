"""Experiment configuration: frozen dataclasses, a YAML loader and dotted command-line overrides.

An experiment is ``ExperimentConfig(model, pe, data, train, eval)``. It is built from a preset (a
YAML file in ``configs/`` or a path), then ``key.sub=value`` overrides, e.g.::

    hopekit train --config tiny train.steps=200 pe.kind=alibi pe='{"kind": "yarn", "factor": 4, "train_len": 128}'

Every value is validated when the dataclasses are built; an unknown key is an error naming it.
``resolved()`` gives the plain-dict form that is printed at start-up and stored in every checkpoint
and record.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

__all__ = [
    "DataConfig", "TrainConfig", "EvalConfig", "ExperimentConfig", "load_config", "apply_overrides",
    "CONFIG_DIR", "preset_path",
]

CONFIG_DIR = Path(__file__).resolve().parent / "presets"


def _fail(obj: Any, name: str, why: str, exc: type[Exception] = ValueError) -> None:
    raise exc(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: {why}")


def _int(obj: Any, name: str, low: int = 0) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, int):
        _fail(obj, name, "expected an int", TypeError)
    if v < low:
        _fail(obj, name, f"must be >= {low}")


def _real(obj: Any, name: str, low: float = 0.0, strict: bool = False) -> None:
    v = getattr(obj, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        _fail(obj, name, "expected a real number", TypeError)
    if not math.isfinite(v) or (v <= low if strict else v < low):
        _fail(obj, name, f"must be finite and {'>' if strict else '>='} {low}")


def _choice(obj: Any, name: str, choices: tuple[str, ...]) -> None:
    if getattr(obj, name) not in choices:
        _fail(obj, name, f"must be one of {choices}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where tokens come from. ``corpus``: "shakespeare" (embedded), a local path, or "hf:<dataset>"."""

    corpus: str = "shakespeare"
    tokenizer: str = "byte"          # "byte", "bpe", or a path to a tokenizer.json
    vocab_size: int = 4096           # for "bpe"
    text_column: str = "text"

    def __post_init__(self) -> None:
        for name in ("corpus", "tokenizer", "text_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                _fail(self, name, "expected a non-empty string", TypeError)
        _int(self, "vocab_size", 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The training run. ``steps`` optimiser steps of ``batch_size`` windows of ``train_len`` tokens."""

    train_len: int = 128
    batch_size: int = 16
    steps: int = 1000
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100      # steps; 0 = only at the end
    log_every: int = 10
    device: str = "auto"             # "auto", "cpu", "cuda", "cuda:1", ...
    precision: str = "auto"          # "auto" (bf16 autocast on GPU, fp32 on CPU), "fp32", "bf16"
    positions: str = "contiguous"    # or "randomized" (Ruoss et al. 2023)
    max_position: int = 0            # range for randomized positions; 0 = 16 × train_len
    fsdp: bool = False               # under torchrun: FSDP instead of DDP

    def __post_init__(self) -> None:
        for name in ("train_len", "batch_size", "steps", "log_every"):
            _int(self, name, 1)
        for name in ("warmup_steps", "checkpoint_every", "seed", "max_position"):
            _int(self, name, 0)
        _real(self, "lr", 0.0, strict=True)
        _real(self, "min_lr", 0.0)
        _real(self, "weight_decay", 0.0)
        _real(self, "grad_clip", 0.0)
        for name in ("beta1", "beta2"):
            _real(self, name, 0.0)
            if getattr(self, name) >= 1:
                _fail(self, name, "must be < 1")
        if self.min_lr > self.lr:
            _fail(self, "min_lr", f"must be <= lr={self.lr}")
        _choice(self, "precision", ("auto", "fp32", "bf16"))
        _choice(self, "positions", ("contiguous", "randomized"))
        if not isinstance(self.device, str):
            _fail(self, "device", "expected a string", TypeError)
        if not isinstance(self.fsdp, bool):
            _fail(self, "fsdp", "expected a bool", TypeError)


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Length-extrapolation evaluation: perplexity at ``multiples`` × train_len on the test split."""

    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    protocol: str = "nonoverlapping"   # or "sliding", "truncate"
    stride: int = 0                    # sliding-window stride; 0 = train_len
    max_tokens: int = 65536            # scored tokens per length (windows are taken in order)
    batch_size: int = 4
    split: str = "test"
    extensions: tuple[str, ...] = ("linear", "ntk", "dynamic_ntk", "yarn")  # eval-time, for rope models

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiples", tuple(self.multiples))
        object.__setattr__(self, "extensions", tuple(self.extensions))
        if not self.multiples or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.multiples):
            _fail(self, "multiples", "expected a non-empty list of ints >= 1")
        _choice(self, "protocol", ("nonoverlapping", "sliding", "truncate"))
        _choice(self, "split", ("train", "validation", "test"))
        _int(self, "stride", 0)
        _int(self, "max_tokens", 1)
        _int(self, "batch_size", 1)
        bad = [e for e in self.extensions if e not in ("linear", "ntk", "dynamic_ntk", "yarn", "longrope")]
        if bad:
            _fail(self, "extensions", f"unknown eval-time extension(s) {bad}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """A whole experiment. ``model`` holds ModelConfig fields except ``vocab_size`` (from the tokenizer)
    and ``pe`` (its own section)."""

    name: str = "experiment"
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pe: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"kind": "rope"})
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.pe, Mapping) or "kind" not in self.pe:
            _fail(self, "pe", 'expected a mapping that names its method, e.g. {"kind": "rope"}')
        if self.train.positions == "randomized" and self.pe.get("kind") == "bipe":
            _fail(self, "pe", "bipe derives its positions from token ids; train.positions='randomized' "
                  "cannot apply to it")
        for name in ("vocab_size", "pe"):
            if name in self.model:
                _fail(self, "model", f"must not contain {name!r} (set it through {'data.tokenizer' if name == 'vocab_size' else 'pe'})")

    def model_config(self, vocab_size: int):
        from . import pe as pe_lib
        from .model import ModelConfig

        # every pe default filled in, so checkpoints say which values were used (see pe.resolve)
        return ModelConfig(vocab_size=vocab_size, pe=pe_lib.resolve(self.pe), **dict(self.model))

    def resolved(self) -> dict[str, Any]:
        """Plain JSON-able dict (what is printed, checkpointed and recorded), with every pe default
        filled in (``pe.resolve``)."""
        from . import pe as pe_lib

        return json.loads(json.dumps({**dataclasses.asdict(self), "pe": pe_lib.resolve(self.pe)}, default=list))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExperimentConfig":
        d = dict(d)
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"config: unknown top-level key(s) {unknown}; allowed: {sorted(allowed)}")
        sections = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
        for key, sub in sections.items():
            if key in d:
                value = d[key]
                if isinstance(value, sub):
                    continue
                if not isinstance(value, Mapping):
                    raise TypeError(f"config.{key}: expected a mapping, got {type(value).__name__}")
                fields = {f.name for f in dataclasses.fields(sub)}
                bad = sorted(set(value) - fields)
                if bad:
                    raise ValueError(f"config.{key}: unknown key(s) {bad}; allowed: {sorted(fields)}")
                d[key] = sub(**value)
        return cls(**d)


def preset_path(name: str | Path) -> Path:
    """A preset name ("tiny") resolves to the packaged YAML; anything else is a path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise FileNotFoundError(f"config: {p} does not exist")
        return p
    candidate = CONFIG_DIR / f"{name}.yaml"
    if not candidate.exists():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"config={str(name)!r}: not a file and not a preset; presets: {known}")
    return candidate


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a nested dict, returning a copy."""
    out = json.loads(json.dumps(d))
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key.path=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
        value = _parse_value(text)
        if parts[-1] == "pe" and len(parts) == 1 and isinstance(value, dict):
            node["pe"] = value                                        # replace the whole pe block
        elif len(parts) == 2 and parts[0] == "pe" and parts[1] == "kind" and node.get("kind") != value:
            node.clear()                                              # a new method starts from its defaults
            node["kind"] = value
        else:
            node[parts[-1]] = value
    return out


def load_config(name: str | Path | None = None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load a preset or YAML file, apply dotted overrides, validate."""
    import yaml

    d: dict[str, Any] = {}
    if name is not None:
        with open(preset_path(name)) as f:
            d = yaml.safe_load(f) or {}
        if not isinstance(d, dict):
            raise ValueError(f"config {name}: expected a mapping at the top level")
    d = apply_overrides(d, overrides or [])
    return ExperimentConfig.from_dict(d)
