"""Experiment configuration: frozen dataclasses, a YAML loader and dotted command-line overrides.

An experiment is ``ExperimentConfig(model, pe, data, train, eval)``. It is built from a preset (a
YAML file in ``src/hopekit/presets/`` or a path), then ``key.sub=value`` overrides, e.g.::

    hopekit train --config tiny train.steps=200 pe.kind=alibi pe='{"kind": "yarn", "factor": 4, "train_len": 128}'

Every value is validated when the dataclasses are built; an unknown key is an error naming it.
The ``pe`` block is parsed **once**, here, into its method's typed parameters (``hopekit.pe.parse``);
the training length is owned by ``train.train_len`` and handed to every method that has a
``train_len`` parameter the config leaves unset. Inside hopekit ``config.pe`` is that typed object;
``resolved()`` gives the plain-dict form that is printed at start-up and stored in every checkpoint
and record.

**Fine-tuning a pretrained model** (``hf``: ``smollm2``, a model directory or a hub id; the
``finetune`` preset): the model brings its shape (``model`` stays empty) and its tokenizer
(``data.tokenizer: model``), and it owns the training length of the encoding: a method's
``train_len`` left unset becomes the model's pre-training window, not ``train.train_len`` (the
fine-tuning window), and a rotary method's ``base`` left unset becomes the model's own. Those are
known only once the model's config is read, so until then ``pe`` is kept as the mapping given
(checked against the method's parameters), or ``None`` for the model's own encoding; training
resolves it (:mod:`hopekit.integrations.hf.train`) and records every field in ``config.yaml`` and
the checkpoint. A mapping that gives every field of its method (such a record) is parsed at once.
``hf`` appears in ``resolved()`` only when set.

**Fine-tuning a checkpoint of the reference decoder** (``init_from``: the path of a ``hopekit train``
or ``hopekit bench`` checkpoint; ``hopekit train --init-from CKPT``, e.g. progressive extension to a
longer window with another encoding) follows the same rule. The source brings the model's shape
(``model`` empty, or equal to the source's field by field) and its tokenizer (``data.tokenizer`` the
same; for a BPE learned from the corpus the same training data too), and it owns the training length
of the encoding: a method's ``train_len`` left unset becomes the source's **original** pre-training
window (its ``train.train_len``), not ``train.train_len`` (the fine-tuning window); a ``pe.train_len``
equal to that is allowed, any other refused. A source itself initialised from a checkpoint passes on
its own original length, so a chain of fine-tunes keeps the first. ``pe`` unset is the source's
encoding, and a rotary method's ``base`` and ``rotary_fraction`` left unset are the source's (when
the source's encoding is rotary). The path is read **when the config is built** (its plain entries
only; the tensors are memory-mapped, not read): ``init_from`` then becomes the record
``{path, content_hash, train_len}`` (the source's content hash and original length) and ``model``
the source's full shape, which ``resolved()`` stores, so a record read back (``config.yaml``, a
checkpoint) is used as it is, without the source file. Training loads the weights only
(:func:`hopekit.checkpoint.load_weights_from`, which checks the content hash again and refuses
learned positional weights that would be dropped or left untrained) and starts a new optimiser at
step 0. ``init_from`` appears in ``resolved()`` only when set.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Mapping

from .pe import RopeParams
from .pe.base import Params, check_bool, check_choice, check_int, check_real

__all__ = [
    "DataConfig", "TrainConfig", "EvalConfig", "ExperimentConfig", "load_config", "apply_overrides",
    "CONFIG_DIR", "PRETRAINED_TOKENIZER", "preset_path", "load_yaml", "parse_yaml", "dump_yaml", "config_differences",
    "load_pe_file",
]

CONFIG_DIR = Path(__file__).resolve().parent / "presets"
#: ``data.tokenizer`` of a fine-tuning run: the pretrained model's own tokenizer
PRETRAINED_TOKENIZER = "model"


def _fail(obj: Any, name: str, why: str, exc: type[Exception] = ValueError) -> None:
    raise exc(f"{type(obj).__name__}.{name}={getattr(obj, name)!r}: {why}")


def _check_names(obj: Any, name: str, known: tuple[str, ...]) -> None:
    """A non-empty list of distinct names from ``known``, stored as a tuple."""
    value = getattr(obj, name)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        _fail(obj, name, f"expected a non-empty list of names from {list(known)}", TypeError)
    bad = [v for v in value if v not in known]
    if bad or len(set(value)) != len(value):
        _fail(obj, name, f"unknown or repeated name(s) {bad or list(value)}; known: {list(known)}")
    object.__setattr__(obj, name, tuple(value))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where tokens come from. ``corpus``: "shakespeare" (embedded), a local path, or "hf:<dataset>[:<config>]"
    (a Hugging Face dataset of data files, e.g. ``hf:emozilla/pg19``, or local files in a hub format:
    ``hf:parquet`` / ``hf:json`` with ``data_files``).

    For an ``hf:`` corpus only (``hopekit.data.hf_datasets``; the training split is tokenised once into a
    memory-mapped token file, ``hopekit.data.prepare``):

    * ``streaming``: read records as they arrive instead of downloading and preparing the dataset first.
    * ``limit``: the first ``limit`` records of each dataset split read (0 or null: all).
    * ``split``: which dataset split gives our train / validation / test. null: the one of the same name
      (a dataset with its own three splits). A mapping renames some (``{validation: valid}``; the
      others keep their names). A string names the dataset's single split, re-split by work into our
      three (``split: train``, the seed and fractions of the embedded corpus).
    * ``data_files``: passed to ``datasets.load_dataset`` (a path or glob, a list, or a mapping from the
      dataset's split names to them).
    * ``num_proc``: tokenising processes (0: as many as useful, up to the CPU count).

    Task mixture (:class:`hopekit.data.TaskMixture`): ``task_fraction`` of the training rows (each row
    independently) are instances of ``tasks`` (:data:`hopekit.eval.tasks.TASKS`) of exactly the training
    window, in ``task_style`` with ``task_filler`` (also the format ``hopekit eval --task`` and the bench's
    task suite use), corpus filler from the corpus' train split; 0 (the default) trains on the corpus alone.
    """

    corpus: str = "shakespeare"
    tokenizer: str = "byte"          # "byte", "bpe", a path to a tokenizer.json, or "model" (with hf)
    vocab_size: int = 4096           # for "bpe"
    text_column: str = "text"
    streaming: bool = False
    limit: int = 0                   # records; 0 (or null) = all
    split: str | Mapping[str, str] | None = None
    data_files: str | list[str] | Mapping[str, str | list[str]] | None = None
    num_proc: int = 0
    task_fraction: float = 0.0
    tasks: tuple[str, ...] = ("passkey", "copy")
    task_style: str = "standard"     # "standard" (the published formats) or "compact" (short windows)
    task_filler: str = "auto"        # "auto" (repeated sentences for the pass key, the corpus otherwise), "corpus", "repeat"

    def __post_init__(self) -> None:
        from .eval.tasks import FILLERS, STYLES, TASKS

        for name in ("corpus", "tokenizer", "text_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                _fail(self, name, "expected a non-empty string", TypeError)
        check_int(self, "vocab_size", low=1)
        check_bool(self, "streaming")
        if self.limit is None:
            object.__setattr__(self, "limit", 0)
        check_int(self, "limit", low=0)
        check_int(self, "num_proc", low=0)
        check_real(self, "task_fraction", low=0.0, high=1.0, high_open=True)
        _check_names(self, "tasks", TASKS)
        check_choice(self, "task_style", STYLES)
        check_choice(self, "task_filler", FILLERS)
        if self.task_fraction and self.corpus.startswith("hf:"):
            _fail(self, "task_fraction", f"task instances take their filler from an embedded or local corpus, not "
                                         f"corpus={self.corpus!r}")
        self._check_split()
        self._check_data_files()
        if not self.corpus.startswith("hf:"):
            for name, unset in (("streaming", False), ("limit", 0), ("split", None), ("data_files", None)):
                if getattr(self, name) != unset:
                    _fail(self, name, f"only for an hf: corpus, not corpus={self.corpus!r}")

    def _check_split(self) -> None:
        split = self.split
        if split is None or (isinstance(split, str) and split):
            return
        if not isinstance(split, Mapping):
            _fail(self, "split", "expected null, the name of a dataset split to re-split by work, or a mapping "
                                 "{train|validation|test: dataset split name}", TypeError)
        ours = ("train", "validation", "test")
        bad = [k for k in split if k not in ours]
        if bad:
            _fail(self, "split", f"key {bad[0]!r} is not one of our splits {ours}")
        bad = [k for k, v in split.items() if not isinstance(v, str) or not v]
        if bad:
            _fail(self, "split", f"{bad[0]}: expected a dataset split name (a non-empty string)", TypeError)
        object.__setattr__(self, "split", dict(split))

    def _check_data_files(self) -> None:
        def files(value: Any) -> str | list[str] | None:
            if isinstance(value, str) and value:
                return value
            if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
                return list(value)
            return None

        value = self.data_files
        if value is None:
            return
        normal = ({k: files(v) for k, v in value.items()} if isinstance(value, Mapping) and value
                  and all(isinstance(k, str) and k for k in value) else files(value))
        if normal is None or (isinstance(normal, dict) and None in normal.values()):
            _fail(self, "data_files", "expected a path or glob, a non-empty list of them, or a mapping "
                                      "{dataset split name: path(s)}", TypeError)
        object.__setattr__(self, "data_files", normal)

    def __hash__(self) -> int:  # mappings and lists inside: hash the canonical JSON form
        return hash(json.dumps(dataclasses.asdict(self), sort_keys=True))


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
    precision: str = "auto"          # "auto" (bf16 autocast on CUDA, fp32 elsewhere: CPU too), "fp32", "bf16"
    positions: str = "contiguous"    # or "randomized" (Ruoss et al. 2023)
    max_position: int = 0            # range for randomized positions; 0 = 16 × train_len
    fsdp: bool = False               # under torchrun: FSDP instead of DDP
    compile: bool = False            # training forwards through torch.compile (the reference decoder; 1.1-1.5x per step on CPU)

    def __post_init__(self) -> None:
        for name in ("train_len", "batch_size", "steps", "log_every"):
            check_int(self, name, low=1)
        for name in ("warmup_steps", "checkpoint_every", "seed", "max_position"):
            check_int(self, name, low=0)
        check_real(self, "lr", low=0.0, low_open=True)
        check_real(self, "min_lr", low=0.0)
        check_real(self, "weight_decay", low=0.0)
        check_real(self, "grad_clip", low=0.0)
        for name in ("beta1", "beta2"):
            check_real(self, name, low=0.0, high=1.0, high_open=True)
        if self.min_lr > self.lr:
            _fail(self, "min_lr", f"must be <= lr={self.lr}")
        if self.warmup_steps > self.steps:
            _fail(self, "warmup_steps", f"must be <= steps={self.steps} (the warm-up would never finish)")
        check_choice(self, "precision", ("auto", "fp32", "bf16"))
        check_choice(self, "positions", ("contiguous", "randomized"))
        if not isinstance(self.device, str) or not self.device:
            _fail(self, "device", "expected a device string such as 'auto', 'cpu', 'cuda', 'cuda:1'", TypeError)
        check_bool(self, "fsdp")
        check_bool(self, "compile")
        if self.positions == "randomized" and self.max_position and self.max_position < self.train_len:
            _fail(self, "max_position", f"must be >= train_len={self.train_len} (or 0 for 16 × train_len)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Length-extrapolation evaluation: perplexity at ``multiples`` × train_len on the test split."""

    multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    protocol: str = "nonoverlapping"   # or "sliding", "truncate"
    stride: int = 0                    # sliding-window stride; 0 = train_len
    max_tokens: int = 65536            # scored tokens per length
    sampling: str = "spread"           # windows evenly across every document, or "prefix": in order from the start
    batch_size: int = 4
    split: str = "test"
    extensions: tuple[str, ...] = ("linear", "ntk", "dynamic_ntk", "yarn")  # eval-time, for rope models
    # long-context tasks (hopekit eval --task, the bench's task suite; hopekit.eval.tasks)
    tasks: tuple[str, ...] = ("passkey", "copy")
    task_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    task_instances: int = 8            # per (task, length, depth)
    task_scoring: str = "likelihood"   # teacher-forced argmax (greedy's verdict in one forward) or "generation"

    def __post_init__(self) -> None:
        from .eval.tasks import SCORINGS, TASKS

        object.__setattr__(self, "multiples", tuple(self.multiples))
        object.__setattr__(self, "extensions", tuple(self.extensions))
        if not self.multiples or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.multiples):
            _fail(self, "multiples", "expected a non-empty list of ints >= 1")
        check_choice(self, "protocol", ("nonoverlapping", "sliding", "truncate"))
        check_choice(self, "sampling", ("spread", "prefix"))
        check_choice(self, "split", ("train", "validation", "test"))
        check_int(self, "stride", low=0)
        check_int(self, "max_tokens", low=1)
        check_int(self, "batch_size", low=1)
        bad = [e for e in self.extensions if e not in ("linear", "ntk", "dynamic_ntk", "yarn", "longrope")]
        if bad:
            _fail(self, "extensions", f"unknown eval-time extension(s) {bad}")
        _check_names(self, "tasks", TASKS)
        depths = self.task_depths
        if not isinstance(depths, (list, tuple)) or not depths or any(
                isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0 for d in depths):
            _fail(self, "task_depths", "expected a non-empty list of numbers in [0, 1]")
        if len({float(d) for d in depths}) != len(depths):
            _fail(self, "task_depths", "holds a depth twice")
        object.__setattr__(self, "task_depths", tuple(float(d) for d in depths))  # 1 and 1.0: one cell
        check_int(self, "task_instances", low=1)
        check_choice(self, "task_scoring", SCORINGS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """A whole experiment. ``model`` holds ModelConfig fields except ``vocab_size`` (from the tokenizer)
    and ``pe`` (its own section). ``pe`` is the method's typed parameters; a mapping that names its
    method (``{"kind": "yarn", "factor": 4}``) is parsed with ``train.train_len`` as the training
    length (``hopekit.pe.parse``)."""

    name: str = "experiment"
    hf: str | None = None            # a pretrained model to fine-tune (module docstring); None: the reference decoder
    init_from: str | Mapping[str, Any] | None = None  # a decoder checkpoint to start from (module docstring)
    model: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pe: Params | Mapping[str, Any] | None = None   # None: RopeParams(), or with hf the model's own encoding
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        from . import pe as pe_lib

        if self.pe is not None and not isinstance(self.pe, (Params, Mapping)):
            _fail(self, "pe", 'expected a mapping that names its method, e.g. {"kind": "rope"}', TypeError)
        if not isinstance(self.model, Mapping):
            _fail(self, "model", "expected a mapping of ModelConfig fields", TypeError)
        if self.hf is not None and self.init_from is not None:
            raise ValueError(f"init_from={self.init_from!r}: starts the reference decoder from a checkpoint; not "
                             f"with hf={self.hf!r} (a pretrained model brings its own weights)")
        if self.hf is not None:
            self._check_pretrained()
            return
        if self.data.tokenizer == PRETRAINED_TOKENIZER:
            raise ValueError(f"data.tokenizer={PRETRAINED_TOKENIZER!r}: names a pretrained model's own tokenizer; "
                             f"set hf (the model to fine-tune) or another tokenizer")
        for name in ("vocab_size", "pe"):
            if name in self.model:
                _fail(self, "model", f"must not contain {name!r} (set it through {'data.tokenizer' if name == 'vocab_size' else 'pe'})")
        train_len = self.train.train_len              # the encoding's training length
        if self.init_from is not None:
            self._resolve_source()
            train_len = self.init_from["train_len"]   # the source's original window
        object.__setattr__(self, "pe", pe_lib.parse(RopeParams() if self.pe is None else self.pe,
                                                    train_len=train_len))
        for where, value in _train_lens(pe_lib.to_config(self.pe), "pe"):
            if value == train_len or value == float("inf"):
                continue
            if self.init_from is not None:
                raise ValueError(f"{where}={value!r}: differs from the original training length {train_len} of "
                                 f"init_from={self.init_from['path']!r} (train.train_len={self.train.train_len} is "
                                 f"the fine-tuning window); leave {where} unset")
            raise ValueError(f"{where}={value!r}: differs from train.train_len={self.train.train_len}; the "
                             f"experiment owns the training length, leave {where} unset")
        if self.train.positions == "randomized" and pe_lib.method_of(self.pe).encoding.uses_tokens:
            raise ValueError(f"pe.kind={self.pe.kind!r}: derives its positions from the token ids; "
                             f"train.positions='randomized' cannot apply to it")

    def _resolve_source(self) -> None:
        """``init_from`` (module docstring): a record is checked and kept; a path is read now, checked
        against ``model`` and ``data``, and replaced by its record, ``model`` by the source's shape and an
        unset ``pe`` (or its unset rotary fields) by the source's."""
        from . import pe as pe_lib
        from .checkpoint import content_hash, read_checkpoint

        if isinstance(self.init_from, Mapping):
            _check_source_record(self)
            return
        if not isinstance(self.init_from, (str, Path)) or not str(self.init_from):
            _fail(self, "init_from", "expected the path of a checkpoint of hopekit train or hopekit bench", TypeError)
        path = str(self.init_from)
        ckpt = read_checkpoint(path, verify=False)  # config and model_config; the tensors stay on disk
        where = f"init_from={path!r}"
        if ckpt.get("pretrained") is not None:
            raise ValueError(f"{where}: a fine-tuned pretrained model ({ckpt['pretrained']['name']!r}); init_from "
                             "takes a checkpoint of the reference decoder (hopekit train, hopekit bench)")
        source = ckpt["config"]
        shape = {k: v for k, v in ckpt["model_config"].items() if k not in ("vocab_size", "pe")}
        for key, value in self.model.items():
            if key not in shape:
                raise ValueError(f"model.{key}={value!r}: not a model field (fields: {', '.join(shape)})")
            if value != shape[key]:
                raise ValueError(f"model.{key}={value!r}: the source checkpoint ({where}) has {key}={shape[key]!r}; "
                                 "init_from keeps the source's shape, leave model empty")
        data = json.loads(json.dumps(dataclasses.asdict(self.data)))
        tokenizer = source["data"]["tokenizer"]
        learned = re.fullmatch(r"bpe(?:[:-]\d+)?", tokenizer) is not None  # a BPE learned from the training data
        names = ["tokenizer"] + (["vocab_size"] if tokenizer == "bpe" else [])
        names += ["corpus", "text_column", "limit", "split", "data_files"] if learned else []
        for name in names:
            if data[name] != source["data"].get(name):
                why = "the BPE tokenizer it was trained with was learned from that data" if name != "tokenizer" else \
                    "init_from keeps the source's tokenizer"
                raise ValueError(f"data.{name}={data[name]!r}: the source checkpoint ({where}) was trained with "
                                 f"data.{name}={source['data'].get(name)!r}; {why}")
        pe = source["pe"] if self.pe is None else self.pe
        if isinstance(pe, Mapping) and "kind" in pe and pe is not source["pe"]:  # unset rotary fields: the source's
            fields = {f.name for f in dataclasses.fields(pe_lib.method_of(pe["kind"]).params)}
            rotary = [pe_lib.method_of(k).encoding.uses_rotate is True for k in (pe["kind"], source["pe"]["kind"])]
            if all(rotary):
                pe = {**{k: source["pe"][k] for k in ("base", "rotary_fraction") if k in fields}, **pe}
        record = source.get("init_from")   # a chain: the first source's original length
        original = record["train_len"] if isinstance(record, Mapping) else source["train"]["train_len"]
        object.__setattr__(self, "model", shape)
        object.__setattr__(self, "pe", pe)
        digest = ckpt.get("content_hash") or content_hash(ckpt)  # version 1: no stored hash
        object.__setattr__(self, "init_from", {"path": path, "content_hash": digest, "train_len": original})

    def _check_pretrained(self) -> None:
        """The fields a fine-tuning config (``hf`` set) must hold; ``pe`` checked but not yet resolved."""
        from . import pe as pe_lib

        if not isinstance(self.hf, str) or not self.hf:
            _fail(self, "hf", "expected a model name (e.g. smollm2), a model directory or a hub id", TypeError)
        if self.model:
            key = next(iter(self.model))
            raise ValueError(f"model.{key}={self.model[key]!r}: the pretrained model (hf={self.hf!r}) has its own "
                             f"shape; leave model empty")
        if self.data.tokenizer != PRETRAINED_TOKENIZER:
            raise ValueError(f"data.tokenizer={self.data.tokenizer!r}: the pretrained model (hf={self.hf!r}) reads "
                             f"its own tokenizer; set data.tokenizer={PRETRAINED_TOKENIZER} (as the finetune "
                             "preset does)")
        if self.train.positions != "contiguous":
            raise ValueError(f"train.positions={self.train.positions!r}: a pretrained model (hf={self.hf!r}) "
                             f"trains on contiguous positions only")
        if isinstance(self.pe, Mapping):
            # checked now (a stand-in for a train_len left unset: the model's window replaces it later)
            params = pe_lib.parse(self.pe, train_len=self.train.train_len)
            if {f.name for f in dataclasses.fields(params)} <= set(self.pe) - {"kind"}:
                object.__setattr__(self, "pe", pe_lib.parse(self.pe))  # every field given: already resolved
            else:
                object.__setattr__(self, "pe", json.loads(json.dumps(dict(self.pe), default=list)))

    def model_config(self, vocab_size: int):
        from .model import ModelConfig

        if self.hf is not None:
            raise ValueError(f"hf={self.hf!r}: a pretrained model has no reference-decoder ModelConfig")
        return ModelConfig(vocab_size=vocab_size, pe=self.pe, **dict(self.model))

    def resolved(self) -> dict[str, Any]:
        """Plain JSON-able dict (what is printed, checkpointed and recorded), with every pe default
        filled in (``hopekit.pe.to_config``). ``hf`` and ``init_from`` (its record) only when set; with
        ``hf``, ``pe`` is the mapping given (or None) until training resolves it against the model."""
        from . import pe as pe_lib

        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "pe"}
        for name in ("hf", "init_from"):
            if sections[name] is None:
                del sections[name]
        plain = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in sections.items()}
        pe = pe_lib.to_config(self.pe) if isinstance(self.pe, Params) else self.pe
        return json.loads(json.dumps({**plain, "pe": pe}, default=list))

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
                    raise ValueError(f"{key}.{bad[0]}: unknown key; {key} accepts {sorted(fields)}")
                d[key] = sub(**value)
        return cls(**d)


def _check_source_record(config: ExperimentConfig) -> None:
    """An ``init_from`` record (``{path, content_hash, train_len}``, as ``resolved()`` stores it)."""
    record = config.init_from
    keys = ("path", "content_hash", "train_len")
    if set(record) != set(keys):
        _fail(config, "init_from", f"expected a checkpoint path, or a record with exactly the keys {list(keys)}")
    for key in ("path", "content_hash"):
        if not isinstance(record[key], str) or not record[key]:
            _fail(config, "init_from", f"{key}: expected a non-empty string", TypeError)
    length = record["train_len"]
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        _fail(config, "init_from", "train_len: expected the source's original training length, an int >= 1", TypeError)
    object.__setattr__(config, "init_from", dict(record))


def config_differences(saved: Mapping[str, Any], now: Mapping[str, Any], ignore: tuple[str, ...] = (), *,
                       saved_as: str = "saved") -> list[str]:
    """``"key.path: <saved_as> X, now Y"`` for every dotted key whose value differs between two resolved
    configs (a key present on one side only shows as ``(absent)``), except keys under ``ignore``. A
    ``data`` / ``train`` / ``eval`` field absent from ``saved`` (written before the field existed) and at
    its default now is no difference: the default is what the older code did. So is a positional-encoding
    field absent from ``saved`` whose method says that its absence computes what ``now`` computes (the
    parameter class's ``absent_means_same``, for fields added later)."""
    a, b = _flatten(saved), _flatten(now)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va is missing and (vb == _section_default(key) or _absent_pe_field_means_same(key, b)):
            continue
        if va != vb:
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            lines.append(f"{key}: {saved_as} {show(va)}, now {show(vb)}")
    return lines


def _section_default(key: str) -> Any:
    """The resolved default of a dotted ``…data.<field>`` / ``…train.<field>`` / ``…eval.<field>`` key (a
    unique object for any other key, so it never equals a value)."""
    parts = key.split(".")
    sections = {"data": DataConfig, "train": TrainConfig, "eval": EvalConfig}
    if len(parts) < 2 or parts[-2] not in sections:
        return _NO_DEFAULT
    field = next((f for f in dataclasses.fields(sections[parts[-2]]) if f.name == parts[-1]), None)
    if field is None or field.default is dataclasses.MISSING:
        return _NO_DEFAULT
    return json.loads(json.dumps(field.default))   # as resolved() stores it (tuples as lists)


_NO_DEFAULT = object()


def _absent_pe_field_means_same(key: str, flat: Mapping[str, Any]) -> bool:
    """True when ``…<field>``'s sibling ``…kind`` names a pe method that says a config without that field
    computes what today's (its siblings in ``flat``) computes (:func:`hopekit.pe.same_as_absent`)."""
    from . import pe as pe_lib

    prefix, _, name = key.rpartition(".")
    start = f"{prefix}." if prefix else ""
    siblings = {k[len(start):]: v for k, v in flat.items() if k.startswith(start) and "." not in k[len(start):]}
    return pe_lib.same_as_absent(siblings, name)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _train_lens(config: Mapping[str, Any], where: str):
    """``(dotted key, value)`` of every ``train_len`` in a pe config, nested methods included."""
    for key, value in config.items():
        if key == "train_len" and value is not None:
            yield f"{where}.{key}", value
        elif isinstance(value, Mapping):
            yield from _train_lens(value, f"{where}.{key}")


def preset_path(name: str | Path, prefix: str = "") -> Path:
    """A preset name (``tiny``; ``default`` with ``prefix="bench_"``) resolves to the packaged YAML; a
    name ending in .yaml/.yml, or naming an existing file, is a path. A folder of the same name in the
    working directory is not mistaken for a preset file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"config: {p} is not a file")
        return p
    candidate = CONFIG_DIR / f"{prefix}{name}.yaml"
    if not candidate.is_file():
        known = sorted(x.stem[len(prefix):] for x in CONFIG_DIR.glob(f"{prefix}*.yaml")
                       if prefix or not x.stem.startswith("bench_"))
        raise ValueError(f"preset={str(name)!r}: not a file and not a preset; presets: {known}")
    return candidate


def _yaml_loader():
    """PyYAML's safe loader with YAML 1.2 floats: ``1e-3`` is a float (YAML 1.1 reads it as a string)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML ``text``; a syntax error is a one-line ``ValueError`` naming ``source`` and the line."""
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: invalid YAML: {problem}") from None


def dump_yaml(data: Any) -> str:
    """A resolved configuration as YAML (sections as blocks, lists inline) that :func:`parse_yaml`
    reads back to the same values."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file holding a mapping (a preset); errors name the file."""
    path = Path(path)
    d = parse_yaml(path.read_text(), str(path)) or {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(d).__name__}")
    return d


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
        value = parse_yaml(text, f"override {item!r}")
        if parts[-1] == "pe" and len(parts) == 1 and isinstance(value, dict):
            node["pe"] = value                                        # replace the whole pe block
        elif len(parts) == 2 and parts[0] == "pe" and parts[1] == "kind" and node.get("kind") != value:
            node.clear()                                              # a new method starts from its defaults
            node["kind"] = value
        else:
            node[parts[-1]] = value
    return out


def load_pe_file(path: str | Path) -> dict[str, Any]:
    """A ``pe`` block from a JSON or YAML file (``hopekit train --pe-file``: factor lists are long for
    the command line): a mapping that names its method, ``{"kind": "longrope", ...}``. Errors name the
    file; the fields are checked with the rest of the config."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pe file {path}: no such file")
    block = parse_yaml(path.read_text(), str(path))  # JSON is YAML
    if not isinstance(block, dict) or "kind" not in block:
        got = f"keys {sorted(block)}" if isinstance(block, dict) else type(block).__name__
        raise ValueError(f"{path}: expected a pe block, a mapping that names its method "
                         f'({{"kind": "longrope", ...}}), got {got}')
    return block


def load_config(name: str | Path | Mapping[str, Any] | None = None, overrides: list[str] | None = None
                ) -> ExperimentConfig:
    """Load a preset or YAML file (or start from a config mapping, e.g. a checkpoint's), apply dotted
    overrides, validate."""
    d = dict(name) if isinstance(name, Mapping) else load_yaml(preset_path(name)) if name is not None else {}
    d = apply_overrides(d, overrides or [])
    return ExperimentConfig.from_dict(d)
