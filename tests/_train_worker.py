"""Training processes for tests/test_train.py: run as a script, alone or under torchrun.

    python tests/_train_worker.py JOBS_JSON [--threads N]

``JOBS_JSON`` is a list of jobs run in order, each ``{"out_dir", "config", "resume": false,
"sleep": 0.0, "dump": false}``. A job trains ``config`` (an ExperimentConfig dict) on the synthetic
token stream below into ``out_dir``. ``sleep`` slows every step down (so a test can kill the process
between checkpoints); ``dump`` writes this rank's final parameters to ``out_dir/final-rank<r>.pt`` and
its losses to ``out_dir/losses-rank<r>.json``. Under torchrun with several jobs the process group is
initialised here once (``train`` then joins it); with one job ``train`` initialises it itself.

It also holds the helpers the training tests share (tests/test_train.py, tests/test_checkpoint.py):
:func:`tiny` (a 2-layer, width-32 config), :func:`run` (train it quietly on the synthetic stream),
:func:`unwritable_dir`.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path

import torch

VOCAB = 48


@functools.lru_cache(maxsize=None)
def synthetic_stream(n: int = 20_000, vocab: int = VOCAB, seed: int = 1234) -> torch.Tensor:
    """A learnable token stream: a fixed random successor table (t -> next[t]) followed 80% of the
    time, a uniformly random token otherwise. A tiny model learns it within tens of steps."""
    g = torch.Generator().manual_seed(seed)
    successor = torch.randperm(vocab, generator=g).tolist()
    noise = torch.randint(0, vocab, (n,), generator=g).tolist()
    follow = (torch.rand(n, generator=g) < 0.8).tolist()
    out = [0]
    for i in range(1, n):
        out.append(successor[out[-1]] if follow[i] else noise[i])
    return torch.tensor(out, dtype=torch.long)


def synthetic_batches(config, *, sleep: float = 0.0):
    """``step -> (x, y)`` global batches of the synthetic stream, through hopekit's own sampler."""
    from hopekit.data import TrainBatches

    t = config.train
    sampler = TrainBatches(synthetic_stream(), t.batch_size, t.train_len, seed=t.seed)
    if not sleep:
        return sampler.batch

    def slow(step: int):
        time.sleep(sleep)
        return sampler.batch(step)

    return slow


def tiny(model: dict | None = None, pe: dict | None = None, **train_fields):
    """A 2-layer, width-32 decoder config; ``train_fields`` override the short training defaults."""
    from hopekit.config import ExperimentConfig

    t = dict(train_len=32, batch_size=8, steps=30, lr=3e-3, min_lr=3e-4, warmup_steps=2, checkpoint_every=10,
             log_every=10)
    return ExperimentConfig.from_dict({
        "name": "tiny-test", "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, **(model or {})},
        "pe": pe or {"kind": "rope"}, "train": {**t, **train_fields}})


def run(config, out_dir, batches=None, **kw):
    """``train`` on the synthetic stream, silently (``log=None``, no progress bar) unless ``kw`` says."""
    from hopekit.train import train

    kw.setdefault("log", None)
    return train(config, out_dir, batches=batches or synthetic_batches(config), vocab_size=VOCAB,
                 progress=False, **kw)


def unwritable_dir(tmp_path: Path) -> Path:
    """An existing directory this process cannot create files in: a read-only one, or (root ignores
    permission bits) /proc/self, where nobody can. Skips the test where neither exists."""
    import pytest

    d = tmp_path / "read-only"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "x").touch()
    except OSError:
        return d
    (d / "x").unlink()
    if Path("/proc/self").is_dir():
        return Path("/proc/self")
    pytest.skip("no directory this user cannot write to")


def run_job(job: dict) -> None:
    from hopekit.config import ExperimentConfig
    from hopekit.train import train

    config = ExperimentConfig.from_dict(job["config"])
    result = train(config, job["out_dir"], resume=job.get("resume", False), vocab_size=VOCAB, progress=False,
                   batches=synthetic_batches(config, sleep=job.get("sleep", 0.0)))
    if job.get("dump"):
        rank = int(os.environ.get("RANK", "0"))
        out = Path(job["out_dir"])
        # DDP: every rank's full replica. FSDP: this rank's shards (DTensor -> its local piece).
        state = {k: (v.to_local() if hasattr(v, "to_local") else v).detach().clone()
                 for k, v in result.model.state_dict().items()}
        torch.save(state, out / f"final-rank{rank}.pt")
        (out / f"losses-rank{rank}.json").write_text(json.dumps(result.losses))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("jobs_json")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    jobs = json.loads(args.jobs_json)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and len(jobs) > 1
    if distributed:
        torch.distributed.init_process_group("gloo")
    try:
        for job in jobs:
            run_job(job)
    finally:
        if distributed:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
