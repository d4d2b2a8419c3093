"""The training loop, as plain functions: optimiser, schedule, seeds, checkpoints, torchrun.

Read it top to bottom::

    result = train(load_config("tiny"), "runs/tiny")              # the embedded corpus
    result = train(cfg, "runs/x", resume=True)                     # continue from runs/x/checkpoint.pt
    model, cfg, state = load_checkpoint("runs/x/checkpoint.pt")    # for evaluation

    torchrun --nproc_per_node=4 script.py    # a script calling train(): DDP, or FSDP with train.fsdp=true

**Determinism.** Every random draw of step ``s`` is a function of ``(train.seed, s)``: the batch comes
from ``batches(s)`` (:class:`hopekit.data.TrainBatches` keys its generator by ``(seed, step)``), the
randomized positions from a generator seeded by :func:`stream_seed` ``("positions", seed, s)``. The
model is initialised after :func:`seed_everything` (torch on every device, Python ``random``). The only
other consumer of the global RNG is dropout; its state (torch CPU, CUDA, Python ``random``, one per
rank) is saved in every checkpoint and restored on resume. Hence ``resume=True`` after a crash gives
**bit-identical** weights to an uninterrupted run on CPU (same machine, same thread count); on GPU,
cuBLAS/SDPA kernels may be non-deterministic.

**Optimiser.** AdamW with decoupled weight decay on the 2-D+ weights of the network (linear layers and
the token embedding, which the LM head shares). Norm gains, biases and every parameter of the
positional encoding (``pe.*``: learned position tables, hope_hyperbolic's learnable penalty) are not
decayed: pulling a position table or a decay rate towards zero changes *what* the encoding is, not
just its scale. Learning rate: linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to
``min_lr`` at the last step (:func:`lr_at`, a pure function of the step; no scheduler object to
save). Gradients are clipped to global norm ``grad_clip`` (0 = off).

**Precision.** ``precision="auto"`` is bf16 autocast on CUDA and fp32 on CPU; ``"bf16"`` forces bf16
autocast (also on CPU); ``"fp32"`` disables autocast. Parameters and optimiser state stay fp32.

**Checkpoints** (``<out_dir>/checkpoint.pt``, the latest one only) are written every
``checkpoint_every`` steps and at the end, atomically (temporary file, fsync, ``os.replace``), so a
kill at any moment leaves either the previous checkpoint or the new one. A checkpoint holds only
tensors and plain containers, so it loads with ``torch.load(weights_only=True)``:

=================  ==============================================================================
``format``         ``"hopekit.checkpoint"``; ``version``: :data:`FORMAT_VERSION`
``step``           optimiser steps completed (the next step to run)
``config``         ``ExperimentConfig.resolved()``; ``model_config``: the ``ModelConfig`` fields
``model``          full (unsharded) state dict, FQN keys, on CPU
``optimizer``      full AdamW state dict keyed by parameter FQN (the same for plain, DDP and FSDP)
``rng``            one entry per rank: torch CPU state, CUDA states, Python ``random`` state
``data``           the sampler position ``{"seed", "step"}`` (the sampler itself is stateless)
``losses``         mean training loss of every step so far; ``tokens``, ``train_time``: totals
=================  ==============================================================================

Resuming refuses a checkpoint written by a different configuration, except for the fields in
:data:`RESUME_MAY_DIFFER` — those that do not change what the steps already taken mean (bookkeeping,
the device, DDP ↔ FSDP, evaluation settings) and ``train.steps`` (to lengthen or shorten a run; note
that the cosine schedule then changes from the resume point on). A truncated or corrupt file, a file
that is not a hopekit checkpoint, and one of another format version are refused with
:class:`CheckpointError` naming the file and the reason.

**Distributed.** Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here (gloo on
CPU, nccl on CUDA; one GPU per local rank). ``batches(step)`` returns the **global** batch of
``batch_size`` rows; rank ``r`` of ``W`` trains on rows ``r·B/W … (r+1)·B/W − 1``, so a W-process run
sees the same data as a single-process one (``batch_size`` must be divisible by W). The model is
wrapped in ``DistributedDataParallel``, or sharded with FSDP2 ``fully_shard`` (each block, then the
root) when ``train.fsdp`` is true — which runs on CPU with gloo as well as on GPUs. Checkpoints are
gathered to full state dicts (collectively) and written by rank 0; every rank reads the checkpoint to
resume, so ``out_dir`` must be visible to all ranks (one node, or a shared file system).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .config import ExperimentConfig, TrainConfig
from .model import Decoder, ModelConfig
from .pe.randomized import RandomizedPositions

__all__ = [
    "train", "TrainResult", "load_checkpoint", "read_checkpoint", "save_checkpoint", "CheckpointError",
    "lr_at", "param_groups", "build_optimizer", "stream_seed", "seed_everything", "sample_positions",
    "corpus_batches", "Batches", "CHECKPOINT_NAME", "FORMAT", "FORMAT_VERSION", "RESUME_MAY_DIFFER",
]

#: ``batches(step) -> (inputs, targets)``: the global batch of a step, each ``(batch_size, train_len)``
#: int64; must be a pure function of the step (e.g. ``TrainBatches(...).batch``).
Batches = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "hopekit.checkpoint"
FORMAT_VERSION = 1
#: resolved-config fields (dotted prefixes) that may differ between a checkpoint and the run resuming it
RESUME_MAY_DIFFER = ("name", "eval", "train.steps", "train.checkpoint_every", "train.log_every",
                     "train.device", "train.fsdp")


# --- schedule and optimiser ----------------------------------------------------------------------

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up reaching ``lr`` at step ``warmup_steps − 1``,
    then cosine decay from ``lr`` at ``warmup_steps`` to ``min_lr`` at the last step, ``steps − 1``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: 2-D+ network weights decayed; norms, biases and ``pe.*`` parameters not.
    Tied weights appear once (``named_parameters`` de-duplicates them)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not name.startswith("pe.") else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`. ``fused``: the single-kernel CUDA implementation (the fast path
    for unsharded models on GPU); otherwise torch's default."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr_at(0, cfg),
                             betas=(cfg.beta1, cfg.beta2), **({"fused": True} if fused else {}))


# --- randomness ----------------------------------------------------------------------------------

def stream_seed(tag: str, seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit generator seed for one named random stream at ``(seed, step, rank)`` (BLAKE2b, so
    neighbouring steps get unrelated streams and nothing depends on Python's hash randomisation)."""
    h = hashlib.blake2b(f"hopekit-{tag}:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device) and Python ``random``."""
    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])


def sample_positions(cfg: TrainConfig, step: int, batch: int) -> torch.Tensor | None:
    """Training positions of ``step`` for the global batch: ``None`` (0 … T−1, the model's default) for
    ``positions="contiguous"``; for ``"randomized"`` a ``(batch, train_len)`` sorted random subset of
    ``range(max_position or 16 · train_len)`` per row, from a generator keyed by ``(seed, step)``."""
    if cfg.positions == "contiguous":
        return None
    sampler = RandomizedPositions(max_position=cfg.max_position or 16 * cfg.train_len)
    g = torch.Generator().manual_seed(stream_seed("positions", cfg.seed, step))
    return sampler.sample(batch, cfg.train_len, generator=g)


# --- distributed ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Dist:
    device: torch.device
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _resolve_device(spec: str, local_rank: int) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def _setup_distributed(cfg: TrainConfig) -> _Dist:
    """Single process, or one rank of a torchrun job (the process group is initialised if needed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_initialized() and world == 1:
        return _Dist(device=_resolve_device(cfg.device, 0))
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() if dist.is_initialized() else 0))
    device = _resolve_device(cfg.device, local_rank)
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        owns = True
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), device=device, owns_group=owns)


def _wrap(model: nn.Module, cfg: TrainConfig, d: _Dist) -> nn.Module:
    """DDP, or FSDP2 ``fully_shard`` (each block, then the root) when ``cfg.fsdp``; the model itself in
    a single process. FSDP shards ``model`` in place, so the optimiser is built after this."""
    if d.world == 1:
        return model
    if cfg.fsdp:
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:  # torch 2.4–2.5
            from torch.distributed._composable.fsdp import fully_shard
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(d.device.type, (d.world,))
        for block in model.blocks:
            fully_shard(block, mesh=mesh)
        return fully_shard(model, mesh=mesh)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def _shard(t: torch.Tensor | None, d: _Dist) -> torch.Tensor | None:
    """This rank's rows of a global batch."""
    if t is None or d.world == 1:
        return t
    n = t.shape[0] // d.world
    return t[d.rank * n:(d.rank + 1) * n]


def _mean_over_ranks(values: torch.Tensor, d: _Dist) -> torch.Tensor:
    if d.world > 1:
        values = values.clone()
        dist.all_reduce(values)  # SUM (gloo has no AVG)
        values /= d.world
    return values


# --- checkpoints ---------------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, not ours, another version, another config."""


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace``: readers
    (and a process killed mid-write) only ever see a complete file."""
    path = Path(path)
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


_REQUIRED = ("step", "config", "model_config", "model", "optimizer", "rng", "data", "losses", "tokens",
             "train_time")


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint (weights-only unpickling); :class:`CheckpointError` names the
    file and the reason when it is unreadable, truncated, not a hopekit checkpoint or another version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    size = path.stat().st_size
    try:
        with warnings.catch_warnings():  # random bytes can look like an exotic pickle protocol
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip / pickle / weights-only errors: say what it means, not how it failed
        text = str(e).strip()
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe:
            why = (f"it holds a {unsafe.group(1)} object, not only tensors and plain containers "
                   "(hopekit checkpoints load with weights_only=True)")
        else:
            first = text.splitlines()[0] if text else type(e).__name__
            why = f"the file is truncated or corrupt ({size:,} bytes; torch.load: {first[:160]})"
        raise CheckpointError(f"checkpoint {path}: cannot be read: {why}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a hopekit training checkpoint (no format={FORMAT!r} marker)")
    if ckpt.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {ckpt.get('version')!r}; this hopekit reads "
                              f"version {FORMAT_VERSION}")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path}: incomplete, missing {missing}")
    return ckpt


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_differences(saved: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or key.startswith(p + ".") for p in ignore):
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            show = lambda v: "(absent)" if v is missing else repr(v)  # noqa: E731
            lines.append(f"  {key}: checkpoint {show(va)}, now {show(vb)}")
    return lines


def _check_resumable(ckpt: dict[str, Any], config: ExperimentConfig, model_cfg: ModelConfig, path: Path) -> None:
    diffs = _config_differences(ckpt["config"], config.resolved(), RESUME_MAY_DIFFER)
    diffs += _config_differences({"model_config": ckpt["model_config"]},
                                 {"model_config": json.loads(json.dumps(model_cfg.to_dict()))})
    if diffs:
        raise CheckpointError(
            f"checkpoint {path}: written by a different configuration, refusing to resume:\n" + "\n".join(diffs)
            + f"\n(fields that may differ on resume: {', '.join(RESUME_MAY_DIFFER)}; "
            "use another out_dir to start a new run)")
    if ckpt["step"] > config.train.steps:
        raise CheckpointError(f"checkpoint {path}: at step {ckpt['step']}, beyond train.steps={config.train.steps}")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[Decoder, ExperimentConfig, dict[str, Any]]:
    """``(model, config, state)`` from a checkpoint, for evaluation: the decoder in eval mode on
    ``device``, the experiment config, and the whole checkpoint dict (``step``, ``losses`` ...)."""
    ckpt = read_checkpoint(path)
    config = ExperimentConfig.from_dict(ckpt["config"])
    model = Decoder(ModelConfig(**ckpt["model_config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path}: model weights do not fit its model_config: {e}") from None
    return model.to(device).eval(), config, ckpt


def _optimizer_state_by_name(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter *names* in place of indices (the layout
    ``torch.distributed.checkpoint`` uses for FSDP, so plain, DDP and FSDP checkpoints are one format)."""
    names = {p: n for n, p in model.named_parameters()}
    order = [names[p] for group in optimizer.param_groups for p in group["params"]]
    sd = optimizer.state_dict()
    return {"state": {order[i]: s for i, s in sd["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]}


def _optimizer_state_by_index(model: nn.Module, optimizer: torch.optim.Optimizer, by_name: dict[str, Any],
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


def _full_state(model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool) -> tuple[dict, dict]:
    """Full (unsharded) model and optimiser state dicts on CPU, keyed by parameter name. Under FSDP
    this is collective (every rank must call it) and goes through ``torch.distributed.checkpoint``."""
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    model_state = {k: v.detach().cpu() for k, v in raw.state_dict().items()}
    return model_state, _optimizer_state_by_name(raw, optimizer)


def _load_full_state(model: nn.Module, raw: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool,
                     ckpt: dict[str, Any], path: Path) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(model, optimizer, model_state_dict=ckpt["model"], optim_state_dict=ckpt["optimizer"],
                       options=StateDictOptions(full_state_dict=True))
        return
    raw.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(_optimizer_state_by_index(raw, optimizer, ckpt["optimizer"], path))


# --- data ----------------------------------------------------------------------------------------

def corpus_batches(config: ExperimentConfig) -> tuple[Batches, int]:
    """``(batches, vocab_size)`` for ``config.data``: the train split of the corpus, tokenised and
    joined (``doc SEP doc SEP …``), sampled by :class:`hopekit.data.TrainBatches` keyed by
    ``(train.seed, step)``."""
    from .data import TrainBatches, load_corpus, load_tokenizer, token_stream

    data, t = config.data, config.train
    spec = f"bpe:{data.vocab_size}" if data.tokenizer == "bpe" else data.tokenizer
    tokenizer = load_tokenizer(spec, corpus=data.corpus)
    config.pe.check_tokenizer(tokenizer)  # e.g. bipe's boundary ids against this tokenizer
    documents = load_corpus(data.corpus, "train", text_field=data.text_column)
    sampler = TrainBatches(token_stream(documents, tokenizer), t.batch_size, t.train_len, seed=t.seed)
    return sampler.batch, tokenizer.vocab_size


# --- the loop ------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
    model: nn.Module          # the trained decoder, unwrapped (under FSDP: the sharded module), eval mode
    config: ExperimentConfig
    losses: list[float]       # mean training loss of every step 0 … step−1 (over ranks; incl. before a resume)
    tokens_per_s: float       # global training throughput of this call
    wall_time: float          # seconds spent in the loop in this call
    total_train_time: float   # seconds spent training over every call (resumes included)
    step: int                 # steps completed
    start_step: int           # 0, or the checkpoint step this call resumed from
    checkpoint: Path          # the last checkpoint written (or resumed from)


def _log_default(message: str) -> None:
    tqdm.write(message)  # prints around an active progress bar


def train(config: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, batches: Batches | None = None,
          vocab_size: int | None = None, progress: bool = True,
          log: Callable[[str], None] | None = _log_default) -> TrainResult:
    """Train ``config.model`` with ``config.pe`` for ``config.train.steps`` steps; checkpoints in ``out_dir``.

    ``batches``: ``step -> (inputs, targets)`` global batches (default: :func:`corpus_batches`, which
    also gives the vocabulary size; with your own ``batches`` pass ``vocab_size``). ``resume``: continue
    from ``out_dir/checkpoint.pt`` if there is one (else start afresh); without it an existing
    checkpoint is an error rather than something to overwrite. ``progress``: a tqdm bar on rank 0 when
    stderr is a terminal. ``log``: where rank 0's log lines go (``None``: nowhere).
    """
    cfg = config.train
    d = _setup_distributed(cfg)
    try:
        return _train(config, Path(out_dir), d, resume=resume, batches=batches, vocab_size=vocab_size,
                      progress=progress, log=(log if d.main and log is not None else (lambda _: None)))
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _resume(path: Path, config: ExperimentConfig, model_cfg: ModelConfig, model: nn.Module, raw: nn.Module,
            optimizer: torch.optim.Optimizer, sharded: bool, d: _Dist, log: Callable[[str], None]) -> dict[str, Any]:
    """Check the checkpoint against this run, then restore weights, optimiser and this rank's RNG state."""
    ckpt = read_checkpoint(path)
    _check_resumable(ckpt, config, model_cfg, path)
    _load_full_state(model, raw, optimizer, sharded, ckpt, path)
    rng = ckpt["rng"]
    if len(rng) == d.world:
        _set_rng_state(rng[d.rank])
    else:  # another world size: the per-rank dropout streams cannot be continued
        _set_rng_state(rng[0])
        torch.manual_seed(stream_seed("rng", config.train.seed, ckpt["step"], d.rank))
        log(f"note: checkpoint written by {len(rng)} process(es), resuming with {d.world}: fresh dropout seeds")
    if ckpt["config"]["train"]["steps"] != config.train.steps:
        log(f"note: train.steps changed {ckpt['config']['train']['steps']} -> {config.train.steps}; "
            "the learning-rate schedule changes from here on")
    log(f"resumed from {path} at step {ckpt['step']}")
    return ckpt


def _train(config: ExperimentConfig, out_dir: Path, d: _Dist, *, resume: bool, batches: Batches | None,
           vocab_size: int | None, progress: bool, log: Callable[[str], None]) -> TrainResult:
    cfg = config.train
    path = out_dir / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists: pass resume=True to continue that run, or use another out_dir")
    if cfg.batch_size % d.world:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the number of processes ({d.world})")
    if cfg.positions == "randomized" and cfg.max_position and cfg.max_position < cfg.train_len:
        raise ValueError(f"train.max_position={cfg.max_position} must be >= train.train_len={cfg.train_len} "
                         "(or 0 for 16 × train_len)")
    if batches is None:
        batches, vocab_size = corpus_batches(config)
    elif vocab_size is None:
        raise TypeError("train(batches=...): pass vocab_size as well (it is the tokenizer's, not the config's)")
    model_cfg = config.model_config(vocab_size)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and d.device.type == "cuda")
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    # Model and optimiser, from the seed (a resume then overwrites every tensor from the checkpoint).
    seed_everything(cfg.seed)
    raw = Decoder(model_cfg).to(d.device)
    model = _wrap(raw, cfg, d)
    sharded = cfg.fsdp and d.world > 1
    optimizer = build_optimizer(raw, cfg, fused=d.device.type == "cuda" and not sharded)
    log(f"config: {json.dumps(config.resolved(), sort_keys=True)}")
    log(f"model: {raw.num_parameters():,} parameters ({raw.num_parameters(non_embedding=True):,} non-embedding); "
        f"device {d.device}, {d.world} process(es){', FSDP' if sharded else ''}, "
        f"{'bf16 autocast' if use_bf16 else 'fp32'}")

    if cfg.fsdp and d.world == 1:
        log("note: train.fsdp has no effect in a single process (launch with torchrun to shard)")

    start, losses, tokens_before, time_before = 0, [], 0, 0.0
    if resume and path.exists():
        ckpt = _resume(path, config, model_cfg, model, raw, optimizer, sharded, d, log)
        start, losses = ckpt["step"], list(ckpt["losses"])
        tokens_before, time_before = ckpt["tokens"], ckpt["train_time"]
        del ckpt
    elif resume:
        log(f"no checkpoint at {path}: starting from step 0")
    if d.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f"{CHECKPOINT_NAME}.tmp.*"):  # left by a process killed mid-write
            stale.unlink(missing_ok=True)

    tokens_per_step = cfg.batch_size * cfg.train_len  # global
    pending: list[torch.Tensor] = []                  # per-step losses not yet fetched from the device
    grad_norm = torch.zeros(())
    last_saved = start if resume and start > 0 else -1

    def flush() -> None:
        """Fetch pending losses (one sync), averaged over ranks (collective)."""
        if pending:
            losses.extend(_mean_over_ranks(torch.stack(pending).float(), d).tolist())
            pending.clear()

    def checkpoint(step: int, elapsed: float) -> None:
        """Collective: gather full states (and every rank's RNG state); rank 0 writes."""
        nonlocal last_saved
        flush()
        model_state, optim_state = _full_state(model, raw, optimizer, sharded)
        rng = [_rng_state()]
        if d.world > 1:
            rng = [None] * d.world
            dist.all_gather_object(rng, _rng_state())
        if d.main:
            save_checkpoint(path, {
                "format": FORMAT, "version": FORMAT_VERSION, "step": step,
                "config": config.resolved(), "model_config": json.loads(json.dumps(model_cfg.to_dict())),
                "model": model_state, "optimizer": optim_state, "rng": rng,
                "data": {"seed": cfg.seed, "step": step}, "losses": list(losses),
                "tokens": tokens_before + (step - start) * tokens_per_step, "train_time": time_before + elapsed,
                "world_size": d.world, "torch_version": str(torch.__version__),
            })
        if d.world > 1:
            dist.barrier()  # nobody runs ahead (or exits) before the file is in place
        last_saved = step

    bar = tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True,
               disable=None if progress and d.main else True)  # None: only on a terminal
    model.train()
    t0 = t_log = time.perf_counter()
    step_log = start
    for step in range(start, cfg.steps):
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batches(step)
        positions = sample_positions(cfg, step, x.shape[0])
        x, y, positions = (_shard(t, d) for t in (x, y, positions))
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        if positions is not None:
            positions = positions.to(d.device, non_blocking=True)
        with autocast:
            _, loss = model(x, positions=positions, targets=y)
        loss.backward()
        if cfg.grad_clip > 0:  # returns the norm before clipping
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        pending.append(loss.detach())
        bar.update(1)

        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            flush()
            now = time.perf_counter()
            tok_s = (done - step_log) * tokens_per_step / max(now - t_log, 1e-9)
            norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm  # FSDP: DTensor
            bar.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tok_s:,.0f}")
            log(f"step {done}/{cfg.steps} | loss {losses[-1]:.4f} | lr {lr:.2e} | "
                + (f"grad norm {float(norm):.3f} | " if cfg.grad_clip > 0 else "") + f"{tok_s:,.0f} tok/s")
            t_log, step_log = now, done
        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            checkpoint(done, time.perf_counter() - t0)
    if last_saved != cfg.steps:
        checkpoint(cfg.steps, time.perf_counter() - t0)
    flush()
    bar.close()
    wall = time.perf_counter() - t0
    tokens_per_s = (cfg.steps - start) * tokens_per_step / max(wall, 1e-9)
    if cfg.steps > start:
        log(f"done: {cfg.steps - start} steps in {wall:.1f}s, {tokens_per_s:,.0f} tok/s; final loss {losses[-1]:.4f}; "
            f"checkpoint {path}")
    return TrainResult(model=raw.eval(), config=config, losses=losses, tokens_per_s=tokens_per_s, wall_time=wall,
                       total_train_time=time_before + wall, step=cfg.steps, start_step=start, checkpoint=path)
