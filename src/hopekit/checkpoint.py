"""Training checkpoints and the run directory: atomic writes, validated reads, content and data hashes,
optimiser state by parameter name, the resumability check, and the run-directory lock.

A checkpoint (``<out_dir>/checkpoint.pt``, the latest one only) is written atomically (temporary file,
fsync, ``os.replace``), so a kill at any moment leaves either the previous checkpoint or the new one.
It holds only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``:

=================  ==============================================================================
``format``         ``"hopekit.checkpoint"``; ``version``: :data:`FORMAT_VERSION`
``step``           optimiser steps completed (the next step to run)
``config``         ``ExperimentConfig.resolved()``; ``model_config``: the ``ModelConfig`` fields, or for a
                   fine-tuned pretrained model ``{"hf_config": its architecture}``
``pretrained``     fine-tuning: the base model ``{"name", "source", "digest"}`` (digest: sha256 of its
                   weights before fine-tuning); ``None`` or absent for the reference decoder
``model``          full (unsharded) state dict, FQN keys, on CPU
``optimizer``      full AdamW state dict keyed by parameter FQN (the same for plain, DDP and FSDP)
``rng``            one entry per rank: torch CPU state, CUDA states, Python ``random`` state
``data``           the sampler position ``{"seed", "step"}`` (the sampler itself is stateless)
``data_hash``      :func:`data_fingerprint` of the training data: the corpus a resume must see again
``losses``         mean training loss of every step so far; ``tokens``, ``train_time``: totals
``content_hash``   :func:`content_hash` of everything else, added by :func:`save_checkpoint`
=================  ==============================================================================

A run initialised from another checkpoint (``config.init_from``, ``hopekit train --init-from``)
records its source in ``config``: ``init_from: {path, content_hash, train_len}`` (the source's
content hash and original pre-training length); :func:`load_weights_from` is how it starts.

:func:`read_checkpoint` refuses, with :class:`CheckpointError` naming the file and the reason, a
truncated or corrupt file, one whose content hash does not match (bytes changed inside a tensor), one
holding an object other than tensors and plain containers, a file that is not a hopekit checkpoint,
and one of another format version (version 1, written before the hashes existed, is still read).

Resuming (:func:`check_resumable`) refuses a checkpoint written by a different configuration, except
for the fields in :data:`RESUME_MAY_DIFFER` — those that do not change what the steps already taken
mean (bookkeeping, the device, DDP ↔ FSDP, compiled or eager, evaluation settings, how many processes read
the data and whether they stream it) and ``train.steps`` (to lengthen or
shorten a run; the cosine schedule then changes from the resume point on) — and one written on other
training data. A fine-tuning run must also find the same base model: the weight digest decides, not
``hf`` (the name or path it is reached by may change), so a different base is refused in one line,
and so is a decoder checkpoint resumed as a fine-tuning run and vice versa. Likewise a run initialised
from a checkpoint is identified by its source's content hash, not by the path it was reached by
(``init_from.path`` may differ).

**The run directory.** :func:`prepare_run_dir` creates it, checks that it is writable (before any work
is done), takes an exclusive lock on ``<out_dir>/.lock`` (so a second run on the same directory is
refused with the pid holding it; the lock goes with the process) and removes the temporary files of
dead writers only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config import ExperimentConfig, config_differences
from .hashing import digest
from .model import Decoder, ModelConfig

try:
    import fcntl
except ImportError:  # not POSIX: no run-directory lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "CHECKPOINT_NAME", "FORMAT", "FORMAT_VERSION", "RESUME_MAY_DIFFER", "CheckpointError", "RunLockedError",
    "save_checkpoint", "read_checkpoint", "load_checkpoint", "load_weights_from", "check_resumable", "content_hash",
    "data_fingerprint",
    "model_config_dict", "optimizer_state_by_name", "optimizer_state_by_index", "full_state", "load_full_state",
    "prepare_run_dir", "RunLock",
]

CHECKPOINT_NAME = "checkpoint.pt"
LOCK_NAME = ".lock"
FORMAT = "hopekit.checkpoint"
FORMAT_VERSION = 2           # 2: content_hash and data_hash
READABLE_VERSIONS = (1, 2)   # 1: no hashes (read without verification)
#: resolved-config fields (dotted prefixes) that may differ between a checkpoint and the run resuming it
RESUME_MAY_DIFFER = ("name", "hf", "eval", "train.steps", "train.checkpoint_every", "train.log_every",
                     "train.device", "train.fsdp", "train.compile", "data.num_proc", "data.streaming",
                     "init_from.path")

_REQUIRED = ("step", "config", "model_config", "model", "optimizer", "rng", "data", "losses", "tokens",
             "train_time")
_REQUIRED_V2 = ("content_hash", "data_hash")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, not ours, another version, another config."""


class RunLockedError(RuntimeError):
    """Another live process is training into the same run directory."""


# --- hashes --------------------------------------------------------------------------------------

def content_hash(payload: dict[str, Any]) -> str:
    """``"sha256:<hex>"`` of every entry of a checkpoint except ``content_hash`` itself: model and
    optimiser tensors by their raw bytes (in name order), everything else by value."""
    return digest({k: v for k, v in payload.items() if k != "content_hash"})


def data_fingerprint(batches: Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]) -> dict[str, str | None]:
    """What a resume must find again: ``{"batch0": sha256 of batches(0), "stream": sha256 of the token
    stream or None}``. ``stream`` is known when ``batches`` is ``TrainBatches(...).batch`` (what
    :func:`hopekit.train.corpus_batches` returns), so any change to the corpus is seen; for other
    callables only the first batch (inputs and targets) is. Components are compared where both sides
    have them."""
    stream = getattr(getattr(batches, "__self__", None), "stream", None)
    return {"batch0": digest(list(batches(0))), "stream": digest(stream) if isinstance(stream, torch.Tensor) else None}


# --- writing and reading -------------------------------------------------------------------------

def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Add ``content_hash`` and ``torch.save`` to a temporary file in the same folder, fsync, then
    ``os.replace``: readers (and a process killed mid-write) only ever see a complete file."""
    path = Path(path)
    payload = {**payload, "content_hash": content_hash(payload)}
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


#: torch.load messages (weights-only unpickler) that name an object it refused to build
_DISALLOWED = (
    re.compile(r"Unsupported global: GLOBAL (\S+)"),                                  # not allow-listed
    re.compile(r"Trying to load unsupported GLOBAL (\S+) whose module \S+ is blocked"),  # os, sys, ...
    re.compile(r"Trying to call reduce for unrecognized function (.+?)(?: which belongs|$)", re.M),
    re.compile(r"Can only (?:create new object|build) .*?but got (<class '[^']+'>)"),
)


def _why_unreadable(e: Exception, size: int) -> str:
    text = str(e).strip()
    for pattern in _DISALLOWED:
        match = pattern.search(text)
        if match:
            return (f"it holds a disallowed object ({match.group(1)}), not only tensors and plain containers "
                    "(hopekit checkpoints load with weights_only=True)")
    first = text.splitlines()[0] if text else type(e).__name__
    return f"the file is truncated or corrupt ({size:,} bytes; torch.load: {first[:160]})"


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *,
                    verify: bool = True) -> dict[str, Any]:
    """Load and validate a checkpoint (weights-only unpickling); :class:`CheckpointError` names the
    file and the reason when it is unreadable, truncated, corrupt (content hash mismatch), holds a
    disallowed object, is not a hopekit checkpoint or is another version. ``verify=False``: a quick
    look at its plain entries (``config``, ``model_config``, the stored ``content_hash``): the tensors
    are memory-mapped, not read, and the content hash is not recomputed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():  # random bytes can look like an exotic pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True, **({} if verify else {"mmap": True}))
    except Exception as e:  # zip / pickle / weights-only errors: say what it means, not how it failed
        raise CheckpointError(f"checkpoint {path}: cannot be read: {_why_unreadable(e, size)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a hopekit training checkpoint (no format={FORMAT!r} marker)")
    version = ckpt.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path}: format version {version!r}; this hopekit reads "
                              f"version {FORMAT_VERSION} (and {', '.join(map(str, READABLE_VERSIONS[:-1]))})")
    missing = [k for k in _REQUIRED + (_REQUIRED_V2 if version >= 2 else ()) if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path}: incomplete, missing {missing}")
    if version >= 2 and verify:
        actual = content_hash(ckpt)
        if actual != ckpt["content_hash"]:
            raise CheckpointError(f"checkpoint {path}: the content hash does not match (corrupt file: its data "
                                  f"changed after it was written): stored {ckpt['content_hash']}, computed {actual}")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ExperimentConfig, dict[str, Any]]:
    """``(model, config, state)`` from a checkpoint, for evaluation: the model in eval mode on
    ``device`` (the :class:`Decoder`, or for a fine-tuning run the transformers model with its encoding,
    built from the architecture the checkpoint stores: :mod:`hopekit.integrations.hf.train`), the
    experiment config, and the whole checkpoint dict (``step``, ``losses`` ...)."""
    ckpt = read_checkpoint(path)
    config = ExperimentConfig.from_dict(ckpt["config"])
    if ckpt.get("pretrained") is not None:
        try:
            from .integrations.hf.train import model_from_checkpoint
        except ImportError as e:
            raise CheckpointError(f"checkpoint {path}: a fine-tuned {ckpt['pretrained']['name']!r} needs transformers "
                                  f"(pip install 'hopekit[hf]'): {e}") from None

        try:
            return model_from_checkpoint(ckpt, device), config, ckpt
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {path}: model weights do not fit its model_config: {e}") from None
    model = Decoder(ModelConfig(**ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: model weights do not fit its model_config: {e}") from None
    return model.to(device).eval(), config, ckpt


def load_weights_from(model: Decoder, model_cfg: dict[str, Any], source: str | Path,
                      expected_hash: str | None = None) -> dict[str, Any]:
    """Initialise ``model`` (a :class:`Decoder` built for this run: ``model_cfg``, its
    :func:`model_config_dict`) with the weights of the checkpoint at ``source``, a reference decoder of
    the same shape whose encoding may differ: every parameter comes from the source, the buffers stay
    ``model``'s own (they follow from its encoding's configuration). Only weights: no optimiser state,
    step or RNG state is read. Returns the source checkpoint (verified by :func:`read_checkpoint`).

    Refused (one line naming the field): a source whose content hash is not ``expected_hash`` (it
    changed since the run's config recorded it), a fine-tuned pretrained model, another shape or
    vocabulary, and an encoding change that would drop learned positional weights of the source or
    leave learned ones of this run untrained (learned → rope; rope → longrope / yarn / linear is fine:
    neither has any)."""
    ckpt = read_checkpoint(source)
    actual = ckpt.get("content_hash") or content_hash(ckpt)
    if expected_hash is not None and actual != expected_hash:
        raise CheckpointError(f"init_from.content_hash={expected_hash!r}: checkpoint {source} changed since the "
                              f"config recorded it (now {actual}); rebuild the config from the file as it is")
    if ckpt.get("pretrained") is not None:
        raise CheckpointError(f"init_from={str(source)!r}: a fine-tuned pretrained model "
                              f"({ckpt['pretrained']['name']!r}); init_from takes a reference-decoder checkpoint")
    src_cfg = ckpt["model_config"]
    for key, value in model_cfg.items():
        if key != "pe" and src_cfg.get(key) != value:
            what = "this run's tokenizer has" if key == "vocab_size" else "this run has"
            raise CheckpointError(f"model.{key}={value!r}: {what} {value!r}, the source checkpoint {source} "
                                  f"{src_cfg.get(key)!r}; init_from keeps the source's shape and tokenizer")
    with torch.device("meta"):
        src_params = {n: tuple(p.shape) for n, p in
                      Decoder(ModelConfig(**src_cfg)).named_parameters(remove_duplicate=False)}
    ours = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    src_kind, kind = src_cfg["pe"]["kind"], model_cfg["pe"]["kind"]
    dropped, untrained = sorted(src_params.keys() - ours.keys()), sorted(ours.keys() - src_params.keys())
    if dropped:
        raise CheckpointError(f"pe.kind={kind!r}: the source checkpoint {source} ({src_kind}) holds learned "
                              f"weights {', '.join(dropped)} that {kind} has no place for; they would be dropped")
    if untrained:
        raise CheckpointError(f"pe.kind={kind!r}: its learned weights {', '.join(untrained)} would start untrained "
                              f"(the source checkpoint {source}, {src_kind}, has none)")
    for name in ours:
        if ours[name] != src_params[name]:
            raise CheckpointError(f"{name}: shape {list(ours[name])} here, {list(src_params[name])} in the source "
                                  f"checkpoint {source} ({src_kind})")
    state = model.state_dict()
    state.update({name: ckpt["model"][name] for name in ours})
    model.load_state_dict(state)
    return ckpt


# --- resuming ------------------------------------------------------------------------------------

def model_config_dict(model_cfg: ModelConfig) -> dict[str, Any]:
    """The ``ModelConfig`` fields as plain JSON values (what a checkpoint stores)."""
    return json.loads(json.dumps(model_cfg.to_dict()))


def _base(pretrained: dict[str, Any] | None) -> str:
    if pretrained is None:
        return "the reference decoder"
    return f"hf={pretrained['name']!r} (weights {pretrained['digest'][:19]}…)"


def check_resumable(ckpt: dict[str, Any], config: ExperimentConfig, model_cfg: ModelConfig | dict[str, Any],
                    path: Path, data_hash: dict[str, str | None] | None = None, *,
                    pretrained: dict[str, Any] | None = None) -> None:
    """Refuse (:class:`CheckpointError`) a checkpoint of another base model (``pretrained``: this run's
    ``{"name", "source", "digest"}``, None for the reference decoder), of another configuration
    (beyond :data:`RESUME_MAY_DIFFER`), one past ``train.steps``, or one written on other training
    data. ``model_cfg``: the decoder's ``ModelConfig``, or the plain dict a checkpoint stores."""
    saved_base = ckpt.get("pretrained")
    if (saved_base is None) != (pretrained is None) or (
            pretrained is not None and saved_base["digest"] != pretrained["digest"]):
        raise CheckpointError(f"checkpoint {path}: trained from {_base(saved_base)}, this run from "
                              f"{_base(pretrained)}; refusing to resume on another base model (use another "
                              "out_dir to start a new run)")
    if isinstance(model_cfg, ModelConfig):
        model_cfg = model_config_dict(model_cfg)
    diffs = config_differences(ckpt["config"], config.resolved(), RESUME_MAY_DIFFER, saved_as="checkpoint")
    diffs += config_differences({"model_config": ckpt["model_config"]}, {"model_config": model_cfg},
                                saved_as="checkpoint")
    if diffs:
        raise CheckpointError(
            f"checkpoint {path}: written by a different configuration, refusing to resume:\n"
            + "\n".join(f"  {line}" for line in diffs)
            + f"\n(fields that may differ on resume: {', '.join(RESUME_MAY_DIFFER)}; "
            "use another out_dir to start a new run)")
    if ckpt["step"] > config.train.steps:
        raise CheckpointError(f"checkpoint {path}: at step {ckpt['step']}, beyond train.steps={config.train.steps}")
    saved = ckpt.get("data_hash")
    if data_hash is None or saved is None:  # a version-1 checkpoint: nothing to compare
        return
    for part, what in (("stream", "token stream"), ("batch0", "first batch")):
        a, b = saved.get(part), data_hash.get(part)
        if a is not None and b is not None and a != b:
            raise CheckpointError(f"checkpoint {path}: the training data changed since it was written (its {what} "
                                  f"hash was {a}, now {b}); refusing to resume on other data "
                                  "(use another out_dir to start a new run)")


# --- optimiser and model state -------------------------------------------------------------------

def optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter *names* in place of indices (the layout
    ``torch.distributed.checkpoint`` uses for FSDP, so plain, DDP and FSDP checkpoints are one format)."""
    names = {p: n for n, p in model.named_parameters()}
    order = [names[p] for group in optimizer.param_groups for p in group["params"]]
    sd = optimizer.state_dict()
    return {"state": {order[i]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]}


def optimizer_state_by_index(model: nn.Module, optimizer: torch.optim.Optimizer, by_name: dict[str, Any],
                             path: Path) -> dict[str, Any]:
    """The inverse, for ``optimizer.load_state_dict``: indices follow *this* optimiser's parameter order."""
    names = {p: n for n, p in model.named_parameters()}
    current = [[names[p] for p in group["params"]] for group in optimizer.param_groups]
    saved = by_name["param_groups"]
    if [sorted(c) for c in current] != [sorted(g["params"]) for g in saved]:
        raise CheckpointError(f"checkpoint {path}: its optimiser parameter groups do not match this model's")
    index = {n: i for i, n in enumerate(n for group in current for n in group)}
    # Hyper-parameters come from the checkpoint; the implementation (fused on GPU, ...) stays this run's.
    impl = [{k: g[k] for k in ("fused", "foreach", "capturable", "differentiable") if k in g}
            for g in optimizer.param_groups]
    return {"state": {index[n]: s for n, s in by_name["state"].items()},
            "param_groups": [{**g, **i, "params": [index[n] for n in c]} for g, i, c in zip(saved, impl, current)]}


def full_state(model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state dicts on CPU, keyed by parameter name. Under FSDP
    this is collective (every rank must call it) and goes through ``torch.distributed.checkpoint``."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model_state = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
    return model_state, optimizer_state_by_name(raw, optimizer)


def load_full_state(model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool,
                    ckpt: dict[str, Any], path: Path) -> None:
    """Restore :func:`full_state` output into the (possibly sharded) model and its optimiser."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        return
    raw.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(optimizer_state_by_index(raw, optimizer, ckpt["optimizer"], path))


# --- the run directory ---------------------------------------------------------------------------

@dataclasses.dataclass
class RunLock:
    """An exclusive ``flock`` on ``<out_dir>/.lock``, held until :meth:`release` (or process exit)."""

    path: Path
    fd: int | None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the lock; the file stays (no unlink race)
            self.fd = None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _lock(out_dir: Path) -> RunLock:
    path = out_dir / LOCK_NAME
    if fcntl is None:
        return RunLock(path, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"pid {holder[0]}" if holder else "a process that has not written its pid yet"
        if len(holder) > 1 and holder[1] != socket.gethostname():
            who += f" on {holder[1]}"
        raise RunLockedError(f"{out_dir}: another training run ({who}) is using this run directory "
                             f"(lock {path}); wait for it to finish or use another out_dir") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return RunLock(path, fd)


def _check_writable(out_dir: Path) -> None:
    probe = out_dir / f".write-probe.{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as e:
        raise type(e)(f"out_dir {out_dir}: cannot write there ({e.strerror or e}); checked before training, "
                      "so nothing was lost") from None


def prepare_run_dir(out_dir: str | Path, files: tuple[str, ...] = (CHECKPOINT_NAME,)) -> RunLock:
    """Create ``out_dir``, check it is writable, lock it (:class:`RunLockedError` if another live run
    holds it) and remove the temporaries ``<name>.tmp.<pid>`` of ``files`` left by writers that are no
    longer alive (a live writer's file is never touched). The caller releases the returned lock when
    the run ends."""
    out_dir = Path(out_dir)
    _check_writable(out_dir)
    lock = _lock(out_dir)
    for name in files:
        for tmp in out_dir.glob(f"{name}.tmp.*"):  # left by a process killed mid-write
            pid = tmp.name.rsplit(".", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                tmp.unlink(missing_ok=True)
    return lock
