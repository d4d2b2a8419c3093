"""hopekit.train: schedule, optimiser groups, loss falls, bit-identical resume (also after SIGKILL),
refused resumes (other config, other data), init_from (weights only, a new optimiser), divergence, the
run directory (lock, writability, config.yaml, train_log.jsonl, TensorBoard), devices, randomized
positions, DDP and FSDP under torchrun (2 gloo processes on CPU). The checkpoint file format itself:
tests/test_checkpoint.py.

Everything trains a 2-layer, width-32 decoder on a synthetic token stream (tests/_train_worker.py) with
one intra-op thread: bit-identity is promised for the same machine and thread count, and one thread
is also the fastest setting for models this small on a shared 2-core box.
"""

from __future__ import annotations

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

import hopekit.train as train_module
from hopekit.checkpoint import RunLockedError, load_weights_from, model_config_dict, prepare_run_dir
from hopekit.config import ExperimentConfig, TrainConfig, load_config
from hopekit.data import TrainBatches
from hopekit.model import Decoder, ModelConfig, RMSNorm
from hopekit.train import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    FORMAT_VERSION,
    LOG_NAME,
    TENSORBOARD_DIR,
    CheckpointError,
    TrainingDivergedError,
    load_checkpoint,
    lr_at,
    param_groups,
    read_checkpoint,
    sample_positions,
    save_checkpoint,
    train,
)
from tests._train_worker import VOCAB, run, synthetic_batches, synthetic_stream, tiny, unwritable_dir

WORKER = Path(__file__).with_name("_train_worker.py")
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # bit-identical comparisons within one thread count


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


@pytest.mark.slow
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


def test_a_corpus_changed_since_the_checkpoint_is_refused_naming_both_hashes(tmp_path, finished_run):
    saved = read_checkpoint(finished_run)["data_hash"]
    cfg = tiny(steps=6, checkpoint_every=0)
    stream = synthetic_stream().clone()
    stream[-1] = (stream[-1] + 1) % VOCAB                                   # one token at the very end
    edited = TrainBatches(stream, cfg.train.batch_size, cfg.train.train_len, seed=cfg.train.seed).batch
    assert torch.equal(edited(0)[0], synthetic_batches(cfg)(0)[0])          # the first batch does not show it
    out = tmp_path / "edited"
    out.mkdir()
    (out / CHECKPOINT_NAME).write_bytes(finished_run.read_bytes())
    with pytest.raises(CheckpointError, match="training data changed") as info:
        run(cfg, out, batches=edited, resume=True)
    assert saved["stream"] in str(info.value) and str(out / CHECKPOINT_NAME) in str(info.value)
    assert "now sha256:" in str(info.value)

    def shifted(step):                                                      # a plain callable: its first batch
        x, y = synthetic_batches(cfg)(step)
        return (x + 1) % VOCAB, (y + 1) % VOCAB

    with pytest.raises(CheckpointError, match=f"first batch hash was {saved['batch0']}, now sha256:"):
        run(cfg, out, batches=shifted, resume=True)

    def same(step):                                                         # same data through a wrapper: fine
        return synthetic_batches(cfg)(step)

    assert run(cfg, out, batches=same, resume=True).start_step == 3


# ----- init_from: weights only, a new optimiser --------------------------------------------------------

def fine_tune(source, pe_block=None, **train_fields):
    """A run initialised from ``source`` (the tiny shape) at train_len 64 with ``pe_block``."""
    t = dict(train_len=64, batch_size=8, steps=4, warmup_steps=2, checkpoint_every=0, log_every=1)
    return ExperimentConfig.from_dict({"name": "ft", "init_from": str(source), "pe": pe_block,
                                       "train": {**t, **train_fields}})


def test_init_from_starts_from_the_source_weights_exactly(finished_run):
    cfg = fine_tune(finished_run, {"kind": "yarn", "factor": 2.0})
    assert cfg.pe.train_len == 32 and cfg.train.train_len == 64              # the source's original window
    model = Decoder(cfg.model_config(VOCAB))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = load_weights_from(model, model_config_dict(cfg.model_config(VOCAB)), finished_run,
                               cfg.init_from["content_hash"])
    assert source["step"] == 3
    assert_same_tensors(model.state_dict(), source["model"], "model")       # step 0 = the source, bit for bit
    assert not all(torch.equal(before[k], v) for k, v in source["model"].items())


def test_init_from_trains_with_a_new_optimiser_from_step_0_like_a_hand_written_loop(tmp_path, finished_run):
    cfg = fine_tune(finished_run, {"kind": "yarn", "factor": 2.0}, steps=4)
    result = run(cfg, tmp_path / "ft")
    # the oracle: the source's weights into a fresh decoder, a new AdamW, the schedule from step 0
    train_module.seed_everything(cfg.train.seed)
    model = Decoder(cfg.model_config(VOCAB))
    model.load_state_dict(read_checkpoint(finished_run)["model"])
    optimizer = train_module.build_optimizer(model, cfg.train)
    batches, losses = synthetic_batches(cfg), []
    model.train()
    for step in range(cfg.train.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg.train)
        x, y = batches(step)
        loss = model(x, targets=y)[1]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert result.losses == losses and result.start_step == 0
    assert_same_tensors(result.model.state_dict(), model.state_dict(), "model")
    saved = read_checkpoint(tmp_path / "ft" / CHECKPOINT_NAME)
    assert {float(s["step"]) for s in saved["optimizer"]["state"].values()} == {4.0}  # its own 4 steps, not 3 + 4
    assert saved["config"]["init_from"] == {"path": str(finished_run), "train_len": 32,
                                            "content_hash": read_checkpoint(finished_run)["content_hash"]}
    assert (tmp_path / "ft" / CONFIG_NAME).read_text().count(saved["config"]["init_from"]["content_hash"]) == 1


def test_resume_of_an_init_from_run_is_bit_identical_and_never_reads_the_source_again(tmp_path, finished_run):
    source = tmp_path / "source.pt"
    source.write_bytes(finished_run.read_bytes())
    cfg = fine_tune(source, {"kind": "linear", "factor": 2.0}, steps=6, checkpoint_every=3)
    ref = run(cfg, tmp_path / "ref")
    batches = synthetic_batches(cfg)

    def crash_at_4(step):
        if step == 4:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "crash", batches=crash_at_4)
    source.rename(tmp_path / "moved.pt")                                    # a re-initialisation would fail
    resumed = run(cfg, tmp_path / "crash", resume=True)
    assert resumed.start_step == 3 and resumed.losses == ref.losses
    assert_same_tensors(resumed.model.state_dict(), ref.model.state_dict(), "model")
    a, b = (read_checkpoint(p / CHECKPOINT_NAME) for p in (tmp_path / "ref", tmp_path / "crash"))
    assert_same_tensors(a["optimizer"]["state"], b["optimizer"]["state"], "optimizer")


def test_init_from_refuses_learned_position_weights_it_would_drop_or_leave_untrained(tmp_path, finished_run):
    learned = tmp_path / "learned"
    run(tiny(pe={"kind": "learned", "max_len": 64}, steps=1, warmup_steps=0, checkpoint_every=0), learned)
    with pytest.raises(CheckpointError, match=r"pe\.kind='rope': the source checkpoint .* \(learned\) holds learned "
                                              r"weights pe\.weight .* would be dropped"):
        run(fine_tune(learned / CHECKPOINT_NAME, {"kind": "rope"}), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"pe\.kind='learned': its learned weights pe\.weight would start "
                                              r"untrained \(the source checkpoint .*, rope, has none\)"):
        run(fine_tune(finished_run, {"kind": "learned", "max_len": 64}), tmp_path / "b")
    with pytest.raises(CheckpointError, match=r"pe\.weight: shape \[128, 32\] here, \[64, 32\] in the source"):
        run(fine_tune(learned / CHECKPOINT_NAME, {"kind": "learned", "max_len": 128}), tmp_path / "c")
    assert run(fine_tune(learned / CHECKPOINT_NAME, {"kind": "learned", "max_len": 64}, steps=1, warmup_steps=0),
               tmp_path / "d").step == 1                                     # the same table: fine


def test_init_from_refuses_a_source_changed_since_the_config_and_another_vocabulary(tmp_path, finished_run):
    source = tmp_path / "source.pt"
    source.write_bytes(finished_run.read_bytes())
    cfg = fine_tune(source, {"kind": "yarn", "factor": 2.0})
    ckpt = read_checkpoint(source)
    save_checkpoint(source, {**ckpt, "losses": ckpt["losses"][:-1]})          # another file at the same path
    with pytest.raises(CheckpointError, match=rf"init_from\.content_hash='{ckpt['content_hash']}': checkpoint "
                                              rf".* changed since the config recorded it \(now sha256:"):
        run(cfg, tmp_path / "a")
    cfg = fine_tune(finished_run, {"kind": "yarn", "factor": 2.0})
    with pytest.raises(CheckpointError, match=rf"model\.vocab_size={VOCAB + 1}: this run's tokenizer has "):
        train(cfg, tmp_path / "b", batches=synthetic_batches(cfg), vocab_size=VOCAB + 1, progress=False, log=None)


# ----- divergence ------------------------------------------------------------------------------------

def test_nan_loss_stops_with_a_clear_error_and_writes_no_checkpoint(tmp_path):
    cfg = tiny(steps=30, lr=1.0e6, checkpoint_every=10)                      # NaN within a few steps
    with pytest.raises(TrainingDivergedError, match=r"training diverged at step \d+/30: loss nan") as info:
        run(cfg, tmp_path)
    assert 1 <= info.value.step < 10 and math.isnan(info.value.loss)
    assert isinstance(info.value, RuntimeError)
    assert not (tmp_path / CHECKPOINT_NAME).exists()                         # never a checkpoint of NaN weights


def test_divergence_after_a_checkpoint_keeps_it_untouched(tmp_path, monkeypatch):
    cfg = tiny(steps=20, checkpoint_every=10, log_every=5)
    run(tiny(steps=10, checkpoint_every=10, log_every=5), tmp_path)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    monkeypatch.setattr(train_module, "lr_at", lambda step, c: 1.0e6)       # blows up from step 11 on
    with pytest.raises(TrainingDivergedError) as info:
        run(cfg, tmp_path, resume=True)
    assert 10 < info.value.step <= 20 and not math.isfinite(info.value.loss)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    monkeypatch.undo()
    assert run(cfg, tmp_path, resume=True).start_step == 10                 # and the directory is usable again


def test_non_finite_weights_with_a_finite_loss_are_never_checkpointed(tmp_path, monkeypatch):
    """The last step's update makes the weights infinite; its loss (computed before it) is still finite."""
    cfg = tiny(steps=10, checkpoint_every=5, log_every=5)
    monkeypatch.setattr(train_module, "lr_at", lambda step, c: math.inf if step == 9 else lr_at(step, c))
    with pytest.raises(TrainingDivergedError, match=r"by step 10/10: model\..* is not finite") as info:
        run(cfg, tmp_path)
    assert info.value.step == 10 and math.isfinite(info.value.loss)
    kept = read_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert kept["step"] == 5 and all(torch.isfinite(v).all() for v in kept["model"].values())


# ----- the run directory -------------------------------------------------------------------------------

def test_a_second_run_on_a_locked_run_dir_is_refused_naming_the_pid(tmp_path):
    cfg = tiny(steps=3, checkpoint_every=0)
    lock = prepare_run_dir(tmp_path)                                          # as another run would hold it
    try:
        with pytest.raises(RunLockedError) as info:
            run(cfg, tmp_path, resume=True)
        assert str(tmp_path) in str(info.value) and f"pid {os.getpid()}" in str(info.value)
        assert not (tmp_path / CHECKPOINT_NAME).exists()
    finally:
        lock.release()
    run(cfg, tmp_path)                                                      # released: the run goes ahead
    run(tiny(steps=4, checkpoint_every=0), tmp_path, resume=True)           # and its own lock was released


def test_only_temporaries_of_dead_writers_are_removed(tmp_path):
    pid_max = Path("/proc/sys/kernel/pid_max")
    dead = int(pid_max.read_text()) + 1 if pid_max.exists() else 2 ** 22 + 1  # no process has this pid
    live = os.getppid()                                                     # alive while this test runs
    for pid in (dead, live):
        (tmp_path / f"{CHECKPOINT_NAME}.tmp.{pid}").write_bytes(b"partial")
    (tmp_path / f"{LOG_NAME}.tmp.{dead}").write_text("partial")
    (tmp_path / "notes.tmp.1").write_text("not ours")
    run(tiny(steps=2, checkpoint_every=0), tmp_path)
    assert not (tmp_path / f"{CHECKPOINT_NAME}.tmp.{dead}").exists()
    assert not (tmp_path / f"{LOG_NAME}.tmp.{dead}").exists()
    assert (tmp_path / f"{CHECKPOINT_NAME}.tmp.{live}").read_bytes() == b"partial"
    assert (tmp_path / "notes.tmp.1").exists()


def test_unwritable_out_dir_fails_before_any_training(tmp_path):
    d = unwritable_dir(tmp_path)
    cfg = tiny(steps=20, checkpoint_every=0)
    steps: list[int] = []

    def counting(step):
        steps.append(step)
        return synthetic_batches(cfg)(step)

    with pytest.raises(OSError, match=f"out_dir {d}: cannot write there"):
        run(cfg, d, batches=counting)
    assert steps == []                                                      # refused before the first batch


def test_run_dir_holds_config_log_and_tensorboard_without_duplicates_after_resume(tmp_path):
    cfg = tiny(steps=20, checkpoint_every=10, log_every=5)
    batches = synthetic_batches(cfg)

    def crash_at_17(step):
        if step == 17:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path, batches=crash_at_17)
    rows = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15]                         # 15 is after the checkpoint (10)
    (tmp_path / LOG_NAME).write_text((tmp_path / LOG_NAME).read_text() + '{"step": 1')  # a torn last line too

    result = run(cfg, tmp_path, resume=True)
    rows = [json.loads(line) for line in (tmp_path / LOG_NAME).read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert all(set(r) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"} for r in rows)
    assert [r["loss"] for r in rows] == [result.losses[s - 1] for s in (5, 10, 15, 20)]
    assert [r["lr"] for r in rows] == [lr_at(s - 1, cfg.train) for s in (5, 10, 15, 20)]
    assert all(r["grad_norm"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    assert rows[1]["elapsed"] < rows[2]["elapsed"] < rows[3]["elapsed"]      # total training time, resumes included

    assert load_config(tmp_path / CONFIG_NAME).resolved() == cfg.resolved()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / TENSORBOARD_DIR))
    events.Reload()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [5, 10, 15, 20]  # the crashed run's 15 purged
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([r["loss"] for r in rows])


def test_quiet_mode_prints_nothing(tmp_path, capfd):
    train(tiny(steps=4, checkpoint_every=2, log_every=1), tmp_path, batches=synthetic_batches(tiny()),
          vocab_size=VOCAB, log=None, progress=False)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    lines: list[str] = []
    run(tiny(steps=6, checkpoint_every=2, log_every=1), tmp_path, resume=True, log=lines.append)
    assert any(line.startswith("resumed from") for line in lines)


# ----- devices -----------------------------------------------------------------------------------------

def test_a_device_this_machine_lacks_is_refused_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError) as info:
        run(tiny(device="cuda"), tmp_path / "a")
    assert str(info.value) == "train.device='cuda': CUDA is not available on this machine"
    with pytest.raises(ValueError, match=r"^train\.device='gpu0': not a device name"):
        run(tiny(device="gpu0"), tmp_path / "b")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"^train\.device='cuda:3': this machine has 1 CUDA device"):
        run(tiny(device="cuda:3"), tmp_path / "c")
    assert not any(tmp_path.iterdir())                                       # nothing created


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

@pytest.mark.slow
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
