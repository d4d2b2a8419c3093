"""The training loop, as plain functions: optimiser, schedule, seeds, checkpoints, torchrun.

Read it top to bottom::

    result = train(load_config("tiny"), "runs/tiny")              # the embedded corpus
    result = train(cfg, "runs/x", resume=True)                     # continue from runs/x/checkpoint.pt
    model, cfg, state = load_checkpoint("runs/x/checkpoint.pt")    # for evaluation

    torchrun --nproc_per_node=4 script.py    # a script calling train(): DDP, or FSDP with train.fsdp=true

**Fine-tuning a pretrained model** (``config.hf``, e.g. ``hopekit train --hf smollm2 --pe
hope_highfreq``) runs this same loop: the model is a Llama-family transformers model with the
encoding patched in (:mod:`hopekit.integrations.hf.train`, the only place that touches transformers),
the corpus is tokenised by the model's own tokenizer (documents joined by its end-of-text token), and
the loss is :func:`next_token_loss` of the logits it returns, the formula the reference decoder uses.
Its checkpoints add the base model's identity (name, source, weight digest; a resume on another base
is refused) and its architecture; the resolved encoding is in ``config``. Everything below holds for
both (FSDP shards the decoder layers of either).

**Determinism.** Every random draw of step ``s`` is a function of ``(train.seed, s)``: the batch comes
from ``batches(s)`` (:class:`hopekit.data.TrainBatches` keys its generator by ``(seed, step)``), the
randomized positions from a generator seeded by :func:`stream_seed` ``("positions", seed, s)``. The
model is initialised after :func:`seed_everything` (torch on every device, Python ``random``). The only
other consumer of the global RNG is dropout; its state (torch CPU, CUDA, Python ``random``, one per
rank) is saved in every checkpoint and restored on resume. Hence ``resume=True`` after a crash gives
**bit-identical** weights to an uninterrupted run on CPU (same machine, same thread count); on GPU,
cuBLAS/SDPA kernels may be non-deterministic.

**Starting from a checkpoint** (``config.init_from``, ``hopekit train --init-from CKPT``, e.g. to
extend a decoder to a longer window with another encoding): the decoder is built as usual, then its
weights are replaced by the source's (:func:`hopekit.checkpoint.load_weights_from`; the encoding may
change when neither side has learned positional weights); the optimiser, the learning-rate schedule and
the step start afresh, and the run's data stream is its own ``(train.seed, step)``. The source is named
in ``config`` (path, content hash, original training length: :mod:`hopekit.config`). A resume of such a
run continues from its own checkpoint and never reads the source again.

**Optimiser.** AdamW with decoupled weight decay on the 2-D+ weights of the network (linear layers and
the token embedding, which the LM head shares). Norm gains, biases and every parameter of the
positional encoding (``pe.*`` in the decoder, ``model.hopekit_pe.*`` in a pretrained model: learned
position tables, hope_hyperbolic's learnable penalty) are not decayed: pulling a position table or a
decay rate towards zero changes *what* the encoding is, not just its scale. Learning rate: linear
warm-up to ``lr`` over ``warmup_steps``, then cosine decay to ``min_lr`` at the last step
(:func:`lr_at`, a pure function of the step; no scheduler object to save). Gradients are clipped to
global norm ``grad_clip`` (0 = off).

**Precision** (:func:`resolve_precision`). ``precision="auto"`` is bf16 autocast on CUDA and fp32
everywhere else, CPU included; ``"bf16"`` forces bf16 autocast (also on CPU); ``"fp32"`` disables
autocast. Parameters and optimiser state stay fp32 either way. On the default bench's model bf16
autocast trains as well as fp32 on CPU (final validation loss within seed noise of fp32 over 3 seeds;
benchmarks/NOTES.md), but it can only be faster where the CPU computes in bf16 natively
(:func:`cpu_has_native_bf16`: AVX512-BF16 or AMX-BF16 on x86, the BF16 extension on Arm); elsewhere
its matmuls and attention are emulated and a step is ~3x *slower* than fp32 (the run logs a note). On
CPUs with native bf16 ``auto`` is fp32 too: no training step has been measured faster there yet (the
run logs a hint to try ``train.precision=bf16``; ``benchmarks/train_throughput.py --precision both``
measures it).

**Speed.** AdamW is torch's fused single-kernel implementation wherever it exists (unsharded CPU and
CUDA parameters). ``train.compile`` (the reference decoder, unsharded) runs the training forwards through
``torch.compile`` (:meth:`hopekit.model.Decoder.compile_for_training`; 1.1-1.5x per step on CPU): the
first step compiles (seconds with a warm inductor cache on disk, up to a minute or more with a cold one;
the run logs how long it took) and evaluation stays eager. The logged ``tokens_per_s`` of the first log
interval and the run's total include that compile time: a short run with a cold cache can be slower
compiled than eager overall even though each later step is faster.

**Checkpoints** (``<out_dir>/checkpoint.pt``, the latest one only) are written every
``checkpoint_every`` steps and at the end, atomically, with a content hash and a hash of the training
data; the format, the checks on reading and the resumability rules live in :mod:`hopekit.checkpoint`
(whose public names this module re-exports). Resuming refuses a checkpoint written by a different
configuration (beyond :data:`RESUME_MAY_DIFFER`) or on other training data.

**Divergence.** Each step's loss stays on the device until the next log or checkpoint step, where the
pending losses are fetched in one sync and checked: a non-finite loss stops the run with
:class:`TrainingDivergedError` (naming the step and the value). Before a checkpoint is written the
weights and optimiser state are checked as well, so the last good checkpoint is never overwritten by a
diverged one.

**The run directory** ``out_dir``: before any work, it is created, checked to be writable and locked
(a second run on it is refused, naming the pid holding it; :func:`hopekit.checkpoint.prepare_run_dir`).
It then holds ``config.yaml`` (the resolved configuration of the latest call), ``train_log.jsonl``
(one JSON row per log step: ``step``, ``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``elapsed``;
on resume the rows after the checkpoint's step are dropped, so a resumed log has no duplicates), the
checkpoint, and ``tensorboard/`` with the same scalars when ``torch.utils.tensorboard`` can be imported.

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
import functools
import hashlib
import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    FORMAT_VERSION,
    RESUME_MAY_DIFFER,
    CheckpointError,
    RunLock,
    check_resumable,
    data_fingerprint,
    full_state,
    load_checkpoint,
    load_full_state,
    load_weights_from,
    model_config_dict,
    prepare_run_dir,
    read_checkpoint,
    save_checkpoint,
)
from .config import ExperimentConfig, TrainConfig, dump_yaml
from .model import Decoder
from .pe.base import PositionalEncoding
from .pe.randomized import RandomizedPositions

__all__ = [
    "train", "TrainResult", "TrainingDivergedError", "load_checkpoint", "read_checkpoint", "save_checkpoint",
    "CheckpointError", "lr_at", "param_groups", "build_optimizer", "stream_seed", "seed_everything",
    "sample_positions", "corpus_batches", "next_token_loss", "Batches", "CHECKPOINT_NAME", "FORMAT", "FORMAT_VERSION",
    "resolve_precision", "cpu_has_native_bf16", "RESUME_MAY_DIFFER", "CONFIG_NAME", "LOG_NAME", "TENSORBOARD_DIR",
]

#: ``batches(step) -> (inputs, targets)``: the global batch of a step, each ``(batch_size, train_len)``
#: int64; must be a pure function of the step (e.g. ``TrainBatches(...).batch``).
Batches = Callable[[int], "tuple[torch.Tensor, torch.Tensor]"]

CONFIG_NAME = "config.yaml"          # the resolved configuration, in out_dir
LOG_NAME = "train_log.jsonl"         # one JSON row per log step, in out_dir
TENSORBOARD_DIR = "tensorboard"      # SummaryWriter event files, in out_dir (when tensorboard is installed)


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite (or the weights did): the run stopped, the last good
    checkpoint is kept. ``step``: the 1-based step (as in the log lines); ``loss``: its value."""

    def __init__(self, message: str, *, step: int, loss: float):
        super().__init__(message)
        self.step, self.loss = step, loss


# --- schedule and optimiser ----------------------------------------------------------------------

def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up reaching ``lr`` at step ``warmup_steps − 1``,
    then cosine decay from ``lr`` at ``warmup_steps`` to ``min_lr`` at the last step, ``steps − 1``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - 1 - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: 2-D+ network weights decayed; norms, biases and the positional encoding's
    parameters (``pe.*``, or any :class:`~hopekit.pe.PositionalEncoding` module's, such as a pretrained
    model's ``model.hopekit_pe``) not. Tied weights appear once (``named_parameters`` de-duplicates them)."""
    positional = {id(p) for m in model.modules() if isinstance(m, PositionalEncoding) for p in m.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 and not name.startswith("pe.") and id(p) not in positional else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig, *, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`. ``fused``: torch's single-kernel implementation (one pass over all
    parameters instead of a dozen small ops per tensor: ~4x faster on CPU, results equal to float32
    rounding); ``None`` (default) uses it where torch has it for these parameters (plain CPU or CUDA
    tensors), ``False`` never (e.g. sharded parameters)."""
    groups = param_groups(model, cfg.weight_decay)
    if fused is None:
        fused = all(type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr_at(0, cfg), betas=(cfg.beta1, cfg.beta2),
                             **({"fused": True} if fused else {}))


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


# --- precision -----------------------------------------------------------------------------------

#: CPU capability names (``torch.cpu.get_capabilities()``; x86 /proc/cpuinfo flags) meaning native bf16
#: arithmetic: AVX512-BF16 and AMX-BF16 on x86; the BF16 extension (``bf16``, ``sve_bf16``) on Arm
_NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16", "svebf16")


@functools.cache
def _cpu_capabilities() -> dict[str, Any]:
    """The CPU's capability flags: ``torch.cpu.get_capabilities()`` where torch has it, else the first
    ``flags`` / ``Features`` line of /proc/cpuinfo (Linux), else none."""
    get = getattr(torch.cpu, "get_capabilities", None)
    if get is not None:
        try:
            return dict(get())
        except Exception:  # a torch build whose cpuinfo cannot read this CPU: fall through
            pass
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    return _flags_from_cpuinfo(text)


def _flags_from_cpuinfo(text: str) -> dict[str, bool]:
    """``{flag: True}`` for every flag of the first ``flags`` (x86) or ``Features`` (Arm) line."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return {flag: True for flag in value.split()}
    return {}


def cpu_has_native_bf16() -> bool:
    """Whether this machine's CPU computes bf16 natively (x86: AVX512-BF16 or AMX-BF16; Arm: the BF16
    extension). Without it, bf16 matmuls and attention are emulated through float32 and run several times
    slower than float32 ones."""
    caps = _cpu_capabilities()
    return any(bool(caps.get(flag, False)) for flag in _NATIVE_BF16)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``train.precision`` on ``device``: ``"bf16"`` (bf16 autocast, fp32 parameters and optimiser state)
    or ``"fp32"`` (no autocast). ``"auto"``: bf16 on CUDA, fp32 elsewhere (CPU, with or without native
    bf16: see the module's Precision paragraph)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision={precision!r}: expected 'auto', 'fp32' or 'bf16'")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision


def _precision_note(precision: str, resolved: str, device: torch.device) -> str | None:
    """A log line when bf16 is emulated on this CPU, or available natively but not chosen by ``auto``."""
    if device.type != "cpu":
        return None
    if resolved == "bf16" and not cpu_has_native_bf16():
        return ("note: train.precision=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): its matmuls are "
                "emulated, a step is ~3x slower than fp32")
    if precision == "auto" and cpu_has_native_bf16():
        return ("note: this CPU has native bf16; train.precision=bf16 (bf16 autocast, loss within seed noise of "
                "fp32 on the default bench) may train faster than the fp32 that auto picks on CPU")
    return None


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
    """``train.device`` as a torch device (``auto``: CUDA when available); a device this machine does
    not have is a ``ValueError`` naming the field."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ValueError(f"train.device={spec!r}: not a device name (expected 'auto', 'cpu', 'cuda', 'cuda:N', "
                         "'mps', ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"train.device={spec!r}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"train.device={spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
                             + (f" (local rank {local_rank})" if spec == "cuda" else ""))
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"train.device={spec!r}: MPS is not available on this machine")
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
        blocks = model.blocks if isinstance(model, Decoder) else model.model.layers  # a transformers model
        for block in blocks:
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


# --- data ----------------------------------------------------------------------------------------

def corpus_batches(config: ExperimentConfig, tokenizer: Any = None) -> tuple[Batches, int]:
    """``(batches, vocab_size)`` for ``config.data``: the train split of the corpus, tokenised and
    joined (``doc SEP doc SEP …``, SEP the tokenizer's ``eos_id``), sampled by
    :class:`hopekit.data.TrainBatches` keyed by ``(train.seed, step)``. An ``hf:`` corpus is tokenised
    once into a cached memory-mapped token file (:func:`hopekit.data.prepare_tokens`) and sampled in
    place; the others are tokenised in memory. ``batches.__self__`` is the sampler (``num_tokens``,
    ``epochs(steps)``). With ``data.task_fraction`` a :class:`hopekit.data.TaskMixture` replaces that
    share of the rows by task instances (:func:`hopekit.eval.tasks.training_instance`). ``tokenizer``: a
    pretrained model's own (needed when ``config.hf`` is set), instead of ``data.tokenizer``."""
    from .data import TaskMixture, TrainBatches, corpus_tokens, tokenizer_from_config
    from .eval.tasks import check_fits, training_instance

    data, t = config.data, config.train
    if tokenizer is None:
        if config.hf is not None:
            raise ValueError(f"hf={config.hf!r}: corpus_batches needs the pretrained model's tokenizer")
        tokenizer = tokenizer_from_config(data)
    config.pe.check_tokenizer(tokenizer)  # e.g. bipe's boundary ids against this tokenizer
    sampler = TrainBatches(corpus_tokens(data, "train", tokenizer), t.batch_size, t.train_len, seed=t.seed)
    if data.task_fraction:
        instance = functools.partial(training_instance, tokenizer, length=t.train_len + 1, corpus=data.corpus,
                                     split="train", style=data.task_style, filler=data.task_filler)
        check_fits(data.tasks, tokenizer, t.train_len + 1, style=data.task_style,   # now, not at a first row
                   where=f"data.task_fraction={data.task_fraction} with train.train_len={t.train_len}")
        sampler = TaskMixture(sampler, data.task_fraction, functools.partial(instance, tasks=data.tasks))
    return sampler.batch, tokenizer.vocab_size


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``logits`` ``(B, T, vocab)`` against ``targets`` ``(B, T)`` (``-1``
    ignored), in float32: the reference decoder's own loss, applied to a pretrained model's logits."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)


# --- the loop ------------------------------------------------------------------------------------

@dataclasses.dataclass
class TrainResult:
    model: nn.Module          # the trained model, unwrapped (under FSDP: the sharded module), eval mode
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


def _quiet(message: str) -> None:
    pass


def train(config: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, batches: Batches | None = None,
          vocab_size: int | None = None, progress: bool = True,
          log: Callable[[str], None] | None = _log_default) -> TrainResult:
    """Train ``config.model`` with ``config.pe`` for ``config.train.steps`` steps; checkpoints in ``out_dir``.
    With ``config.hf`` set, fine-tune that pretrained model with ``config.pe`` put in instead
    (``TrainResult.config`` then holds the encoding resolved against the model).

    ``batches``: ``step -> (inputs, targets)`` global batches (default: :func:`corpus_batches`, which
    also gives the vocabulary size; with your own ``batches`` pass ``vocab_size``, except for a
    pretrained model, which has its own). ``resume``: continue
    from ``out_dir/checkpoint.pt`` if there is one (else start afresh); without it an existing
    checkpoint is an error rather than something to overwrite. ``progress``: a tqdm bar on rank 0 when
    stderr is a terminal. ``log``: where rank 0's log lines go (``None``: nowhere; with
    ``progress=False`` nothing is printed). Raises :class:`TrainingDivergedError` on a non-finite loss,
    :class:`hopekit.checkpoint.RunLockedError` when another run holds ``out_dir``.
    """
    out_dir = Path(out_dir)
    d = _setup_distributed(config.train)
    lock: RunLock | None = None
    try:
        _check_run(config, out_dir, d, resume)
        lock = _on_rank0(d, prepare_run_dir, out_dir, (CHECKPOINT_NAME, CONFIG_NAME, LOG_NAME))  # writable, locked
        return _train(config, out_dir, d, resume=resume, batches=batches, vocab_size=vocab_size,
                      progress=progress, log=(log if d.main and log is not None else _quiet))
    finally:
        if lock is not None:
            lock.release()
        if d.owns_group:
            dist.destroy_process_group()


def _check_run(config: ExperimentConfig, out_dir: Path, d: _Dist, resume: bool) -> None:
    """What can be refused before anything is loaded or created."""
    cfg = config.train
    path = out_dir / CHECKPOINT_NAME
    if path.exists() and not resume:
        raise FileExistsError(f"{path} exists: pass resume=True to continue that run, or use another out_dir")
    if cfg.batch_size % d.world:
        raise ValueError(f"train.batch_size={cfg.batch_size} must be divisible by the number of processes ({d.world})")


def _on_rank0(d: _Dist, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` on rank 0 only (``None`` elsewhere). Its failure is raised on every rank, so that no
    rank goes on to wait for a collective that rank 0 will never join."""
    result, error = None, None
    if d.main:
        try:
            result = fn(*args)
        except Exception as e:
            error = e
    if d.world > 1:
        message = [None if error is None else f"{type(error).__name__}: {error}"]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and error is None:
            raise RuntimeError(f"rank 0 failed: {message[0]}")
    if error is not None:
        raise error
    return result


def _train(config: ExperimentConfig, out_dir: Path, d: _Dist, *, resume: bool, batches: Batches | None,
           vocab_size: int | None, progress: bool, log: Callable[[str], None]) -> TrainResult:
    cfg = config.train
    path = out_dir / CHECKPOINT_NAME
    use_bf16 = resolve_precision(cfg.precision, d.device) == "bf16"
    autocast = torch.autocast(d.device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()

    # Model (from the seed; a resume then overwrites every tensor from the checkpoint), data, optimiser.
    resuming = resume and path.exists()
    net = _model_and_data(config, batches, vocab_size, d.device)
    config, raw, batches = net.config, net.model, net.batches  # with hf: config.pe resolved against the model
    if config.init_from is not None and not resuming:  # weights only: the optimiser and the step start afresh
        source = load_weights_from(raw, net.model_config, config.init_from["path"], config.init_from["content_hash"])
        log(f"initialised from {config.init_from['path']} (step {source['step']} of its run, "
            f"{config.init_from['content_hash'][:19]}…): weights only; new optimiser from step 0; "
            f"pe.train_len is its original training length {config.init_from['train_len']}")
        del source
    data_hash = data_fingerprint(batches)
    model = _wrap(raw, cfg, d)
    sharded = cfg.fsdp and d.world > 1
    optimizer = build_optimizer(raw, cfg, fused=False if sharded else None)
    compiled = cfg.compile and isinstance(raw, Decoder) and not sharded
    if compiled:
        raw.compile_for_training()
    elif cfg.compile:
        log("note: train.compile applies to the reference decoder, unsharded; this model trains eager")
    log(f"config: {json.dumps(config.resolved(), sort_keys=True)}")
    log(f"model: {net.summary}; device {d.device}, {d.world} process(es){', FSDP' if sharded else ''}, "
        f"{'bf16 autocast' if use_bf16 else 'fp32'}{', compiled' if compiled else ''}")
    note = _precision_note(cfg.precision, "bf16" if use_bf16 else "fp32", d.device)
    if note:
        log(note)
    if cfg.fsdp and d.world == 1:
        log("note: train.fsdp has no effect in a single process (launch with torchrun to shard)")
    if net.pretrained is not None and cfg.lr > 1e-3:
        log(f"note: train.lr={cfg.lr} is a from-scratch rate; fine-tuning usually wants 1e-4 or less "
            "(the finetune preset)")

    # Where to start: step 0, or the checkpoint's step with its losses and totals.
    start, losses, tokens_before, time_before = 0, [], 0, 0.0
    if resuming:
        ckpt = _resume(path, config, net, model, optimizer, sharded, d, data_hash, log)
        start, losses = ckpt["step"], list(ckpt["losses"])
        tokens_before, time_before = ckpt["tokens"], ckpt["train_time"]
        del ckpt
    elif resume:
        log(f"no checkpoint at {path}: starting from step 0")
    if d.main:
        _write_config(out_dir / CONFIG_NAME, config)

    tokens_per_step = cfg.batch_size * cfg.train_len  # global
    pending: list[torch.Tensor] = []                  # per-step losses not yet fetched from the device
    grad_norm: torch.Tensor | None = None
    model.train()
    t0 = t_log = time.perf_counter()
    step_log = start
    with _MetricsLog(out_dir, start, enabled=d.main, log=log) as metrics, \
            tqdm(total=cfg.steps, initial=start, unit="step", dynamic_ncols=True,
                 disable=None if progress and d.main else True) as bar:  # None: only on a terminal
        for step in range(start, cfg.steps):
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y, positions = _device_batch(batches, cfg, step, d)
            with autocast:
                loss = _loss(model, x, y, positions, pretrained=net.pretrained is not None)
            loss.backward()
            if cfg.grad_clip > 0:  # returns the norm before clipping
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            pending.append(loss.detach())
            bar.update(1)
            if compiled and step == start:  # the compile happened inside this step: say what it cost
                log(f"first (compiling) step: {time.perf_counter() - t0:.1f}s; later steps run the compiled graph")

            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                _flush_losses(pending, losses, d, cfg.steps)
                now = time.perf_counter()
                row = {"step": done, "loss": losses[-1], "lr": lr, "grad_norm": _norm_value(grad_norm),
                       "tokens_per_s": (done - step_log) * tokens_per_step / max(now - t_log, 1e-9),
                       "elapsed": time_before + now - t0}
                _report(row, cfg.steps, bar, log, metrics)
                t_log, step_log = now, done
            if done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                _flush_losses(pending, losses, d, cfg.steps)
                _write_checkpoint(path, config, net, model, optimizer, sharded, d, step=done,
                                  losses=losses, tokens=tokens_before + (done - start) * tokens_per_step,
                                  train_time=time_before + time.perf_counter() - t0, data_hash=data_hash)

    wall = time.perf_counter() - t0
    tokens_per_s = (cfg.steps - start) * tokens_per_step / max(wall, 1e-9)
    if cfg.steps > start:
        log(f"done: {cfg.steps - start} steps in {wall:.1f}s, {tokens_per_s:,.0f} tok/s; final loss {losses[-1]:.4f}; "
            f"checkpoint {path}")
    return TrainResult(model=raw.eval(), config=config, losses=losses, tokens_per_s=tokens_per_s, wall_time=wall,
                       total_train_time=time_before + wall, step=cfg.steps, start_step=start, checkpoint=path)


# --- what the loop calls -------------------------------------------------------------------------

class _Net(NamedTuple):
    """What :func:`_model_and_data` sets up."""

    config: ExperimentConfig        # the run's config (with hf: pe resolved against the model)
    model: nn.Module                # the reference Decoder, or a patched transformers model (unwrapped)
    batches: Batches
    model_config: dict[str, Any]    # what checkpoints store as model_config (and a resume compares)
    pretrained: dict[str, Any] | None  # the base model's identity (name, source, digest); None: the decoder
    summary: str                    # the "model:" log line


def _model_and_data(config: ExperimentConfig, batches: Batches | None, vocab_size: int | None,
                    device: torch.device) -> _Net:
    """The model, initialised after :func:`seed_everything`, and the training batches: the reference
    decoder of ``config.model`` (vocabulary from the tokenizer or ``vocab_size``), or the pretrained
    model ``config.hf`` with ``config.pe`` put in and the corpus tokenised by its own tokenizer."""
    if config.hf is not None:
        from .integrations.hf.train import load_for_training

        seed_everything(config.train.seed)
        ft = load_for_training(config.hf, config.pe, device)
        if vocab_size is not None and vocab_size != ft.vocab_size:
            raise ValueError(f"vocab_size={vocab_size}: hf={config.hf!r} embeds {ft.vocab_size} token ids")
        config = dataclasses.replace(config, pe=ft.pe)
        if batches is None:
            batches, _ = corpus_batches(config, ft.tokenizer)
        return _Net(config, ft.model, batches, ft.model_config, ft.pretrained, ft.summary)
    if batches is None:
        batches, vocab_size = corpus_batches(config)
    elif vocab_size is None:
        raise TypeError("train(batches=...): pass vocab_size as well (it is the tokenizer's, not the config's)")
    model_cfg = config.model_config(vocab_size)
    seed_everything(config.train.seed)
    raw = Decoder(model_cfg).to(device)
    summary = f"{raw.num_parameters():,} parameters ({raw.num_parameters(non_embedding=True):,} non-embedding)"
    return _Net(config, raw, batches, model_config_dict(model_cfg), None, summary)


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, positions: torch.Tensor | None, *,
          pretrained: bool) -> torch.Tensor:
    """The step's mean next-token loss: the decoder computes it; a transformers model gives logits."""
    if pretrained:
        from .integrations.hf.train import causal_lm_logits

        return next_token_loss(causal_lm_logits(model, x), y)
    return model(x, positions=positions, targets=y)[1]


def _resume(path: Path, config: ExperimentConfig, net: _Net, model: nn.Module, optimizer: torch.optim.Optimizer,
            sharded: bool, d: _Dist, data_hash: dict[str, str | None], log: Callable[[str], None]) -> dict[str, Any]:
    """Check the checkpoint against this run (config, base model and data), then restore weights,
    optimiser and this rank's RNG state."""
    ckpt = read_checkpoint(path)
    check_resumable(ckpt, config, net.model_config, path, data_hash, pretrained=net.pretrained)
    load_full_state(model, net.model, optimizer, sharded, ckpt, path)
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
    if ckpt.get("data_hash") is None:
        log(f"note: {path} predates data hashes (format version {ckpt['version']}): the training data is not checked")
    log(f"resumed from {path} at step {ckpt['step']}")
    return ckpt


def _device_batch(batches: Batches, cfg: TrainConfig, step: int, d: _Dist
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """This rank's rows of step ``step``'s global batch and positions, on the device."""
    x, y = batches(step)
    positions = sample_positions(cfg, step, x.shape[0])
    x, y, positions = (_shard(t, d) for t in (x, y, positions))
    x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
    if positions is not None:
        positions = positions.to(d.device, non_blocking=True)
    return x, y, positions


def _flush_losses(pending: list[torch.Tensor], losses: list[float], d: _Dist, steps: int) -> None:
    """Move the ``pending`` per-step losses (one device sync, averaged over ranks: collective) to the end
    of ``losses``; a non-finite one raises :class:`TrainingDivergedError` (on every rank)."""
    if not pending:
        return
    values = _mean_over_ranks(torch.stack(pending).float(), d).tolist()
    pending.clear()
    for i, value in enumerate(values):
        if not math.isfinite(value):
            step = len(losses) + i + 1
            raise TrainingDivergedError(
                f"training diverged at step {step}/{steps}: loss {value}; stopped without writing a checkpoint "
                "(the last good one, if any, is kept); lower train.lr or raise train.warmup_steps",
                step=step, loss=value)
    losses.extend(values)


def _norm_value(grad_norm: torch.Tensor | None) -> float | None:
    """The gradient norm as a float (collective under FSDP, where it is a DTensor); None without clipping."""
    if grad_norm is None:
        return None
    return float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)


def _report(row: dict[str, Any], steps: int, bar: Any, log: Callable[[str], None], metrics: "_MetricsLog") -> None:
    """One log step: the progress bar, a log line, a ``train_log.jsonl`` row and TensorBoard scalars."""
    bar.set_postfix(loss=f"{row['loss']:.4f}", tok_s=f"{row['tokens_per_s']:,.0f}")
    log(f"step {row['step']}/{steps} | loss {row['loss']:.4f} | lr {row['lr']:.2e} | "
        + (f"grad norm {row['grad_norm']:.3f} | " if row["grad_norm"] is not None else "")
        + f"{row['tokens_per_s']:,.0f} tok/s")
    metrics.write(row)


def _first_non_finite(state: Mapping[str, Any], prefix: str = "") -> str | None:
    """The name of the first floating tensor in a (nested) state dict holding NaN or ±inf, else None."""
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            bad = _first_non_finite(value, name + ".")
            if bad is not None:
                return bad
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _write_checkpoint(path: Path, config: ExperimentConfig, net: _Net, model: nn.Module,
                      optimizer: torch.optim.Optimizer, sharded: bool, d: _Dist, *, step: int, losses: list[float],
                      tokens: int, train_time: float, data_hash: dict[str, str | None]) -> None:
    """Collective: gather full states and every rank's RNG state; refuse non-finite weights or optimiser
    state (:class:`TrainingDivergedError`, the previous checkpoint stays); rank 0 writes."""
    model_state, optim_state = full_state(model, net.model, optimizer, sharded)
    rng = [_rng_state()]
    if d.world > 1:
        rng = [None] * d.world
        dist.all_gather_object(rng, _rng_state())
    bad = [_first_non_finite({"model": model_state, "optimizer": optim_state.get("state", {})}) if d.main else None]
    if d.world > 1:
        dist.broadcast_object_list(bad, src=0)  # under FSDP only rank 0 holds the full state
    if bad[0] is not None:
        raise TrainingDivergedError(
            f"training diverged by step {step}/{config.train.steps}: {bad[0]} is not finite (loss {losses[-1]}); "
            f"not writing it, the last good checkpoint (if any) in {path.parent} is kept; lower train.lr",
            step=step, loss=losses[-1])
    if d.main:
        save_checkpoint(path, {
            "format": FORMAT, "version": FORMAT_VERSION, "step": step,
            "config": config.resolved(), "model_config": net.model_config, "pretrained": net.pretrained,
            "model": model_state, "optimizer": optim_state, "rng": rng,
            "data": {"seed": config.train.seed, "step": step}, "data_hash": data_hash, "losses": list(losses),
            "tokens": tokens, "train_time": train_time,
            "world_size": d.world, "torch_version": str(torch.__version__),
        })
    if d.world > 1:
        dist.barrier()  # nobody runs ahead (or exits) before the file is in place


# --- the run directory: config.yaml, train_log.jsonl, TensorBoard ---------------------------------

def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_config(path: Path, config: ExperimentConfig) -> None:
    """The resolved configuration as YAML (``load_config(path)`` reads it back)."""
    _write_atomic(path, dump_yaml(config.resolved()))


def _trim_log(path: Path, start: int) -> None:
    """Keep the rows of steps ``<= start`` (those the checkpoint covers); drop later rows, left by a run
    that stopped after its last checkpoint, and a partial last line, so a resumed log has no duplicates."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= start:
            kept.append(line + "\n")
    _write_atomic(path, "".join(kept))


class _MetricsLog:
    """Rank 0's ``train_log.jsonl`` and TensorBoard writer (a no-op elsewhere); closes on exit."""

    def __init__(self, out_dir: Path, start: int, *, enabled: bool, log: Callable[[str], None]):
        self.path: Path | None = None
        self.writer: Any = None
        if not enabled:
            return
        self.path = out_dir / LOG_NAME
        _trim_log(self.path, start)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        except Exception as e:  # installed but broken: train on, say so
            log(f"note: TensorBoard not used ({type(e).__name__}: {e})")
            return
        # purge_step: events after the checkpoint's step (from a run that stopped later) are dropped
        self.writer = SummaryWriter(log_dir=str(out_dir / TENSORBOARD_DIR), purge_step=start + 1)

    def write(self, row: dict[str, Any]) -> None:
        if self.path is None:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
                if row[key] is not None:
                    self.writer.add_scalar(f"train/{key}", row[key], row["step"])

    def __enter__(self) -> "_MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.writer is not None:
            self.writer.close()
