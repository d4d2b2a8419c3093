"""hopekit.train: schedule, optimiser groups, loss falls, bit-identical resume (also after SIGKILL),
refused checkpoints, randomized positions, DDP and FSDP under torchrun (2 gloo processes on CPU).

Everything trains a 2-layer, width-32 decoder on a synthetic token stream (tests/_train_worker.py) with
one intra-op thread: bit-identity is promised for the same machine and thread count, and one thread
is also the fastest setting for models this small on a shared 2-core box.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from hopekit.config import ExperimentConfig, TrainConfig
from hopekit.model import Decoder, ModelConfig, RMSNorm
from hopekit.train import (
    CHECKPOINT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    lr_at,
    param_groups,
    read_checkpoint,
    sample_positions,
    save_checkpoint,
    train,
)
from tests._train_worker import VOCAB, synthetic_batches

WORKER = Path(__file__).with_name("_train_worker.py")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(model: dict | None = None, pe: dict | None = None, **train_fields) -> ExperimentConfig:
    t = dict(train_len=32, batch_size=8, steps=30, lr=3e-3, min_lr=3e-4, warmup_steps=2, checkpoint_every=10,
             log_every=10)
    return ExperimentConfig.from_dict({
        "name": "tiny-test", "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, **(model or {})},
        "pe": pe or {"kind": "rope"}, "train": {**t, **train_fields}})


def run(config: ExperimentConfig, out_dir: Path, batches=None, **kw):
    kw.setdefault("log", None)
    return train(config, out_dir, batches=batches or synthetic_batches(config), vocab_size=VOCAB,
                 progress=False, **kw)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        if isinstance(a[k], dict):
            assert_same_tensors(a[k], b[k], f"{what}.{k}")
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), f"{what}.{k} differs"
        else:
            assert a[k] == b[k], f"{what}.{k} differs"


def worker(jobs: list[dict], *, nproc: int = 1, **popen) -> subprocess.Popen:
    """Start tests/_train_worker.py (under torchrun when nproc > 1)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(WORKER), json.dumps(jobs, default=str), "--threads", "1"]
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **popen)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


# ----- schedule and optimiser ----------------------------------------------------------------------

def test_lr_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    lrs = [lr_at(s, cfg) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[4] == pytest.approx(5e-4)
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-3)   # peak, then decay begins
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[-1] == pytest.approx(1e-4)
    mid = 10 + (99 - 10) / 2                                                 # cosine: halfway at the middle
    assert lr_at(int(mid), cfg) == pytest.approx(5.5e-4, rel=0.05)
    no_warmup = TrainConfig(steps=5, warmup_steps=0, lr=1e-3, min_lr=0.0)
    assert lr_at(0, no_warmup) == 1e-3 and lr_at(4, no_warmup) == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_on_network_matrices_only():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.pe = nn.Module()
            self.pe.table = nn.Parameter(torch.zeros(16, 8))                # a learned position table
            self.proj = nn.Linear(8, 8, bias=True)
            self.norm = RMSNorm(8, 1e-5)
            self.head = nn.Linear(8, 8, bias=False)
            self.head.weight = self.proj.weight                             # tied

    def split(model):
        groups = param_groups(model, 0.1)
        names = {id(p): n for n, p in model.named_parameters()}
        assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
        return [{names[id(p)] for p in g["params"]} for g in groups]

    decayed, kept = split(Toy())
    assert decayed == {"proj.weight"} and kept == {"pe.table", "proj.bias", "norm.weight"}
    model = Decoder(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2))
    decayed, kept = split(model)
    assert "tok_emb.weight" in decayed and "blocks.1.mlp.w_down.weight" in decayed and "lm_head.weight" not in decayed
    assert all(n.endswith("norm.weight") for n in kept)
    assert len(decayed) + len(kept) == len(list(model.parameters()))        # the tied head counted once


# ----- training --------------------------------------------------------------------------------------

def test_loss_falls_and_result_reports(tmp_path):
    lines: list[str] = []
    result = run(tiny(steps=40), tmp_path, log=lines.append)
    losses = result.losses
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    assert losses[0] == pytest.approx(math.log(VOCAB), abs=0.3)             # uniform at initialisation
    assert sum(losses[-5:]) / 5 < losses[0] - 0.8
    assert result.step == 40 and result.start_step == 0 and result.tokens_per_s > 0 and result.wall_time > 0
    assert result.checkpoint == tmp_path / CHECKPOINT_NAME and result.checkpoint.exists()
    assert not result.model.training
    assert any(line.startswith("config: ") for line in lines)
    assert any(line.startswith("step 10/40 | loss") and "tok/s" in line for line in lines)

    model, config, state = load_checkpoint(result.checkpoint)
    assert config.resolved() == tiny(steps=40).resolved() and config.pe.base == 10000.0  # defaults stored
    assert state["step"] == 40 and state["losses"] == losses
    assert state["version"] == FORMAT_VERSION and state["data"] == {"seed": 0, "step": 40}
    assert_same_tensors(model.state_dict(), result.model.state_dict(), "model")
    torch.load(result.checkpoint, weights_only=True)                        # weights-only safe


def test_resume_after_crash_is_bit_identical_with_dropout_and_randomized_positions(tmp_path):
    """A crash between checkpoints loses the steps since the last one; resuming replays them exactly:
    data and positions are keyed by (seed, step), dropout's RNG state comes from the checkpoint."""
    cfg = tiny(model={"dropout": 0.1}, positions="randomized", max_position=256, steps=30)
    ref = run(cfg, tmp_path / "ref")

    batches = synthetic_batches(cfg)

    def crash_at_25(step):
        if step == 25:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "crash", batches=crash_at_25)
    assert read_checkpoint(tmp_path / "crash" / CHECKPOINT_NAME)["step"] == 20
    resumed = run(cfg, tmp_path / "crash", resume=True)
    assert resumed.start_step == 20 and resumed.losses == ref.losses
    assert_same_tensors(resumed.model.state_dict(), ref.model.state_dict(), "model")
    a, b = (read_checkpoint(p / CHECKPOINT_NAME) for p in (tmp_path / "ref", tmp_path / "crash"))
    assert_same_tensors(a["optimizer"]["state"], b["optimizer"]["state"], "optimizer")
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])

    again = run(cfg, tmp_path / "crash", resume=True)                       # finished: nothing left to do
    assert again.start_step == 30 and again.losses == ref.losses


def test_sigkill_then_resume_in_a_new_process_is_bit_identical(tmp_path):
    cfg = tiny(steps=30, checkpoint_every=10)
    job = {"out_dir": tmp_path / "killed", "config": cfg.resolved(), "sleep": 0.2}
    proc = worker([job])
    ref = run(cfg, tmp_path / "ref")                          # uninterrupted, in this process, meanwhile
    ckpt = tmp_path / "killed" / CHECKPOINT_NAME
    deadline = time.monotonic() + 180
    try:
        while not ckpt.exists():
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_checkpoint(ckpt)["step"]
    assert killed_at in (10, 20)

    finish(worker([{**job, "sleep": 0.0, "resume": True}]))
    resumed = read_checkpoint(ckpt)
    assert resumed["step"] == 30 and resumed["losses"] == ref.losses
    assert_same_tensors(resumed["model"], {k: v for k, v in ref.model.state_dict().items()}, "model")
    assert_same_tensors(resumed["optimizer"], read_checkpoint(tmp_path / "ref" / CHECKPOINT_NAME)["optimizer"],
                        "optimizer")
    assert not list((tmp_path / "killed").glob("*.tmp.*"))


# ----- refused checkpoints ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    torch.set_num_threads(1)
    run(tiny(steps=3, checkpoint_every=0), out)
    return out / CHECKPOINT_NAME


def _refused(path: Path, match: str) -> CheckpointError:
    with pytest.raises(CheckpointError, match=match) as info:
        read_checkpoint(path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is None                                     # no raw zip/pickle traceback
    assert info.value.__context__ is None or info.value.__suppress_context__
    return info.value


def test_truncated_or_random_checkpoint_is_refused_clearly(tmp_path, finished_run):
    data = finished_run.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "random": os.urandom(4096), "empty": b"",
             "tail-cut": data[:-10]}
    for name, payload in cases.items():
        bad = tmp_path / f"{name}.pt"
        bad.write_bytes(payload)
        _refused(bad, "truncated or corrupt")

    out = tmp_path / "run"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        run(tiny(steps=3, checkpoint_every=0), out, resume=True)


def test_foreign_or_unsafe_or_other_version_checkpoint_is_refused(tmp_path, finished_run):
    torch.save({"weights": torch.ones(3)}, tmp_path / "foreign.pt")
    _refused(tmp_path / "foreign.pt", "not a hopekit training checkpoint")

    torch.save({"format": "hopekit.checkpoint", "x": argparse.Namespace(a=1)}, tmp_path / "unsafe.pt")
    _refused(tmp_path / "unsafe.pt", "Namespace")

    ckpt = torch.load(finished_run, weights_only=True)
    torch.save({**ckpt, "version": FORMAT_VERSION + 1}, tmp_path / "future.pt")
    _refused(tmp_path / "future.pt", "format version")

    with pytest.raises(FileNotFoundError, match="nothing-here"):
        read_checkpoint(tmp_path / "nothing-here.pt")


def test_checkpoint_of_another_config_is_refused_naming_the_fields(tmp_path, finished_run):
    out = finished_run.parent
    cases = [
        (tiny(steps=3, checkpoint_every=0, lr=1e-3), VOCAB, r"train\.lr: checkpoint 0\.003, now 0\.001"),
        (tiny({"d_model": 64}, steps=3, checkpoint_every=0), VOCAB, r"model\.d_model: checkpoint 32, now 64"),
        (tiny(pe={"kind": "alibi"}, steps=3, checkpoint_every=0), VOCAB, r"pe\.kind: checkpoint 'rope', now 'alibi'"),
        (tiny(steps=3, checkpoint_every=0), VOCAB + 1, r"model_config\.vocab_size"),
    ]
    for config, vocab, match in cases:
        with pytest.raises(CheckpointError, match=match) as info:
            train(config, out, resume=True, batches=synthetic_batches(config), vocab_size=vocab, progress=False,
                  log=None)
        assert str(finished_run) in str(info.value)
    with pytest.raises(FileExistsError, match="resume=True"):
        run(tiny(steps=3, checkpoint_every=0), out)                           # never overwritten silently


def test_resume_may_change_steps_and_bookkeeping(tmp_path, finished_run):
    out = tmp_path / "longer"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(finished_run.read_bytes())
    longer = ExperimentConfig.from_dict({**tiny(steps=6, checkpoint_every=2, log_every=1).resolved(), "name": "renamed"})
    result = run(longer, out, resume=True)
    assert result.start_step == 3 and result.step == 6 and len(result.losses) == 6
    assert read_checkpoint(out / CHECKPOINT_NAME)["config"]["name"] == "renamed"


def test_checkpoint_write_is_atomic(tmp_path, finished_run):
    path = tmp_path / CHECKPOINT_NAME
    path.write_bytes(finished_run.read_bytes())
    with pytest.raises(Exception):
        save_checkpoint(path, {"unpicklable": lambda: None})
    assert read_checkpoint(path)["step"] == 3                                # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]         # and no temporary left behind


# ----- randomized positions ----------------------------------------------------------------------

def test_randomized_positions_are_keyed_by_seed_and_step_and_train(tmp_path):
    cfg = tiny(positions="randomized", max_position=512, steps=20, checkpoint_every=0).train
    p = sample_positions(cfg, 3, 8)
    assert p.shape == (8, 32) and p.dtype == torch.long
    assert (p.diff(dim=-1) > 0).all() and p.min() >= 0 and p.max() < 512
    assert torch.equal(p, sample_positions(cfg, 3, 8))
    assert not torch.equal(p, sample_positions(cfg, 4, 8))
    assert sample_positions(tiny().train, 3, 8) is None                     # contiguous: the model's 0 … T−1
    assert sample_positions(tiny(positions="randomized").train, 0, 2).max() < 16 * 32  # default range

    randomized = run(tiny(positions="randomized", max_position=512, steps=20, checkpoint_every=0), tmp_path / "r")
    contiguous = run(tiny(steps=20, checkpoint_every=0), tmp_path / "c")
    assert all(math.isfinite(x) for x in randomized.losses)
    assert sum(randomized.losses[-3:]) / 3 < randomized.losses[0] - 0.3
    assert randomized.losses != contiguous.losses
    with pytest.raises(ValueError, match="max_position"):
        run(tiny(positions="randomized", max_position=16), tmp_path / "bad")


# ----- torchrun: DDP and FSDP, 2 gloo processes on CPU --------------------------------------------

def test_ddp_and_fsdp_under_torchrun(tmp_path):
    """One torchrun launch (2 ranks) runs three jobs: DDP for 20 steps, FSDP for 20 steps, then FSDP
    resuming the DDP run to 30 steps (one checkpoint format for both). Each rank trains on its half of
    the global batch, so both agree with a single process up to float rounding; DDP replicas are
    identical; FSDP shards tile the full tensors."""
    cfg = tiny(steps=20, checkpoint_every=10)
    fsdp = tiny(steps=20, checkpoint_every=10, fsdp=True)
    jobs = [{"out_dir": tmp_path / "ddp", "config": cfg.resolved(), "dump": True},
            {"out_dir": tmp_path / "fsdp", "config": fsdp.resolved(), "dump": True},
            {"out_dir": tmp_path / "ddp", "config": tiny(steps=30, checkpoint_every=10, fsdp=True).resolved(),
             "resume": True}]
    proc = worker(jobs, nproc=2)
    single = run(cfg, tmp_path / "single")                                  # meanwhile, the same run in-process
    out = finish(proc)
    assert "2 process(es), FSDP" in out

    ddp = [torch.load(tmp_path / "ddp" / f"final-rank{r}.pt") for r in (0, 1)]
    ddp_losses = [json.loads((tmp_path / "ddp" / f"losses-rank{r}.json").read_text()) for r in (0, 1)]
    assert_same_tensors(ddp[0], ddp[1], "DDP replicas")
    assert ddp_losses[0] == ddp_losses[1] and all(math.isfinite(x) for x in ddp_losses[0])
    assert sum(ddp_losses[0][-3:]) / 3 < ddp_losses[0][0] - 0.4
    torch.testing.assert_close(torch.tensor(ddp_losses[0]), torch.tensor(single.losses), rtol=1e-4, atol=1e-4)
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(ddp[0][k], v, rtol=1e-3, atol=1e-4, msg=f"DDP vs single process: {k}")

    full = read_checkpoint(tmp_path / "fsdp" / CHECKPOINT_NAME)
    assert full["step"] == 20 and full["world_size"] == 2
    torch.testing.assert_close(torch.tensor(full["losses"]), torch.tensor(single.losses), rtol=1e-4, atol=1e-4)
    shards = [torch.load(tmp_path / "fsdp" / f"final-rank{r}.pt") for r in (0, 1)]
    for k, v in full["model"].items():                                       # dim-0 shards tile the full tensor
        assert shards[0][k].shape[0] < v.shape[0]
        assert torch.equal(torch.cat([shards[0][k], shards[1][k]]), v), k
        torch.testing.assert_close(v, ddp[0][k], rtol=1e-3, atol=1e-4, msg=f"FSDP vs DDP: {k}")
    assert set(full["optimizer"]["state"]) == set(read_checkpoint(tmp_path / "single" / CHECKPOINT_NAME)["optimizer"]["state"])

    longer = read_checkpoint(tmp_path / "ddp" / CHECKPOINT_NAME)               # DDP run resumed by FSDP, 20 -> 30
    assert longer["step"] == 30 and len(longer["losses"]) == 30 and longer["losses"][:20] == ddp_losses[0]
    assert all(math.isfinite(x) for x in longer["losses"]) and max(longer["losses"][20:]) < ddp_losses[0][0] - 0.4
    assert len(longer["rng"]) == 2 and longer["config"]["train"]["fsdp"]

    alone = run(tiny(steps=30, checkpoint_every=10), tmp_path / "fsdp", resume=True)  # FSDP run resumed by 1 process
    assert alone.start_step == 20 and alone.losses[:20] == full["losses"]
    assert max(alone.losses[20:]) < alone.losses[0] - 0.4


# ----- GPU ---------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_autocast_on_gpu_trains(tmp_path):
    cfg = tiny(steps=30, checkpoint_every=0)
    result = run(cfg, tmp_path)
    assert next(result.model.parameters()).device.type == "cuda"
    assert next(result.model.parameters()).dtype == torch.float32          # fp32 master weights
    assert sum(result.losses[-3:]) / 3 < result.losses[0] - 0.8
    model, _, _ = load_checkpoint(result.checkpoint)                         # loads back on CPU
    assert next(model.parameters()).device.type == "cpu"
