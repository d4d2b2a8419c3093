"""TaskMixture: a share of the training rows replaced by task instances, still a pure function of
``(seed, step, rank)``; ``corpus_batches`` wires it from ``data.task_fraction`` / ``tasks`` / ``task_style``;
training with it resumes bit-identically; the new DataConfig fields refuse bad values in one line."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from hopekit.config import DataConfig, ExperimentConfig, config_differences
from hopekit.data import ByteTokenizer, TaskMixture, TrainBatches
from hopekit.eval.tasks import training_instance
from hopekit.train import corpus_batches, read_checkpoint, train

pytestmark = pytest.mark.usefixtures("one_thread")   # bit-identical training within one thread count

TOK = ByteTokenizer()
TRAIN_LEN = 64
STREAM = torch.randint(0, 256, (5_000,), generator=torch.Generator().manual_seed(7))


def base(seed: int = 0, batch_size: int = 8) -> TrainBatches:
    return TrainBatches(STREAM, batch_size, TRAIN_LEN, seed=seed)


def instance(seed: int) -> list[int]:
    """A real compact task instance of exactly train_len + 1 tokens (the mixture's contract)."""
    return training_instance(TOK, seed, tasks=("passkey", "copy"), length=TRAIN_LEN + 1, corpus="shakespeare",
                             split="train", style="compact")


def mixture(fraction: float, seed: int = 0, batch_size: int = 8, fn=instance) -> TaskMixture:
    return TaskMixture(base(seed, batch_size), fraction, fn)


def test_fraction_zero_gives_exactly_the_base_batches():
    never = lambda seed: pytest.fail("fraction 0 must never draw an instance")  # noqa: E731
    m, b = mixture(0.0, fn=never), base()
    for step in range(20):
        assert m.task_rows(step) == {}
        for got, want in zip(m.batch(step), b.batch(step)):
            assert torch.equal(got, want)
        assert torch.equal(m.batch(step, rank=1)[0], b.batch(step, rank=1)[0])


def test_unpicked_rows_are_the_base_windows_and_picked_rows_the_instance_of_their_seed():
    m, b = mixture(0.4), base()
    seen_task = seen_base = 0
    for step in range(6):
        for rank in (0, 1):
            rows = m.task_rows(step, rank=rank)
            w, ref = m.windows(step, rank=rank), b.windows(step, rank=rank)
            x, y = m.batch(step, rank=rank)
            assert torch.equal(x, w[:, :-1]) and torch.equal(y, w[:, 1:])
            assert w.shape == ref.shape == (8, TRAIN_LEN + 1) and w.dtype == torch.long
            for row in range(8):
                if row in rows:
                    seen_task += 1
                    assert w[row].tolist() == instance(rows[row])
                    assert w[row].tolist() == training_instance(TOK, rows[row], tasks=("passkey", "copy"),
                                                                length=TRAIN_LEN + 1, corpus="shakespeare",
                                                                style="compact")
                else:
                    seen_base += 1
                    assert torch.equal(w[row], ref[row])
    assert seen_task > 5 and seen_base > 5                          # both kinds of row were checked
    assert torch.equal(base().windows(0), b.windows(0))             # the base sampler was not written to


def test_the_same_seed_step_and_rank_give_the_same_batch_and_others_differ():
    a, b = mixture(0.5), mixture(0.5)                                # two independent objects
    for step in (0, 3, 11):
        for rank in (0, 2):
            assert a.task_rows(step, rank=rank) == b.task_rows(step, rank=rank)
            assert torch.equal(a.windows(step, rank=rank), b.windows(step, rank=rank))
            assert torch.equal(a.windows(step, rank=rank), a.windows(step, rank=rank))
    picks = lambda m, **kw: [m.task_rows(s, **kw) for s in range(12)]  # noqa: E731
    assert picks(a) != picks(a, rank=1) and picks(a) != picks(mixture(0.5, seed=1))
    assert len({tuple(sorted(r)) for r in picks(a)}) > 1             # the picked rows change with the step


def test_share_of_task_rows_is_binomial_around_the_fraction():
    fraction, steps, batch = 0.3, 1500, 8
    m = mixture(fraction, batch_size=batch, fn=lambda seed: [0] * (TRAIN_LEN + 1))
    k = sum(len(m.task_rows(step)) for step in range(steps))
    n = steps * batch
    band = 3.2905 * math.sqrt(n * fraction * (1 - fraction))         # two-sided 99.9 % normal band
    assert abs(k - n * fraction) <= band, (k, n * fraction, band)
    seeds = [s for step in range(50) for s in m.task_rows(step).values()]
    assert len(set(seeds)) == len(seeds)                              # every task row its own instance


def test_an_instance_of_the_wrong_length_is_refused():
    m = mixture(0.5, fn=lambda seed: [1] * TRAIN_LEN)                # train_len, not train_len + 1
    step = next(s for s in range(50) if m.task_rows(s))
    seed = next(iter(m.task_rows(step).values()))
    with pytest.raises(ValueError, match=rf"^task instance of seed {seed}: {TRAIN_LEN} tokens, expected "
                                         rf"train_len \+ 1 = {TRAIN_LEN + 1}$"):
        m.batch(step)


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, float("nan"), True, "0.5", None])
def test_a_fraction_outside_zero_one_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=rf"^fraction={bad!r}: expected a number in \[0, 1\)$"):
        mixture(bad)


def test_epochs_count_only_the_corpus_rows():
    b = base()
    for fraction in (0.0, 0.25, 0.9):
        m = mixture(fraction)
        assert m.num_tokens == b.num_tokens == STREAM.numel()
        assert m.epochs(100) == pytest.approx(b.epochs(100) * (1 - fraction), rel=1e-12)
        assert m.epochs(100) == pytest.approx(100 * 8 * TRAIN_LEN * (1 - fraction) / STREAM.numel(), rel=1e-12)


# --- corpus_batches and training ------------------------------------------------------------------

def experiment(**data) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "mix", "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
        "data": {"corpus": "shakespeare", "tokenizer": "byte", **data},
        "train": {"train_len": TRAIN_LEN, "batch_size": 4, "steps": 6, "warmup_steps": 1, "checkpoint_every": 3,
                  "log_every": 1}})


def test_corpus_batches_mix_the_configured_tasks_and_style_from_the_train_split():
    plain, vocab = corpus_batches(experiment())
    mixed, vocab2 = corpus_batches(experiment(task_fraction=0.5, tasks=["copy"], task_style="compact"))
    assert vocab == vocab2 == TOK.vocab_size
    assert isinstance(plain.__self__, TrainBatches) and isinstance(mixed.__self__, TaskMixture)
    sampler = mixed.__self__
    assert sampler.fraction == 0.5 and torch.equal(sampler.base.stream, plain.__self__.stream)
    own = functools.partial(training_instance, TOK, tasks=("copy",), length=TRAIN_LEN + 1, corpus="shakespeare",
                            split="train", style="compact")
    checked = 0
    for step in range(4):
        rows = sampler.task_rows(step)
        x, _ = mixed(step)
        ref, _ = plain(step)
        for row in range(4):
            if row in rows:
                ids = own(rows[row])
                assert x[row].tolist() == ids[:-1] and " Copy: <" in TOK.decode(ids)   # the copy task, compact
                checked += 1
            else:
                assert torch.equal(x[row], ref[row])
    assert checked > 0
    # data.task_fraction = 0 (the default) is the corpus alone
    assert torch.equal(corpus_batches(experiment(task_fraction=0.0, tasks=["kv"]))[0](2)[0], plain(2)[0])


def _train(cfg, out, **kw):
    return train(cfg, out, progress=False, log=None, **kw)


def test_training_with_a_task_mixture_resumes_bit_identically(tmp_path):
    cfg = experiment(task_fraction=0.5, task_style="compact")
    ref = _train(cfg, tmp_path / "ref")
    batches, vocab = corpus_batches(cfg)

    def crash_at_4(step):
        if step == 4:
            raise KeyboardInterrupt
        return batches(step)

    with pytest.raises(KeyboardInterrupt):
        _train(cfg, tmp_path / "crash", batches=crash_at_4, vocab_size=vocab)
    assert read_checkpoint(tmp_path / "crash" / "checkpoint.pt")["step"] == 3
    resumed = _train(cfg, tmp_path / "crash", resume=True)            # the default batches: corpus_batches
    assert resumed.start_step == 3 and resumed.losses == ref.losses
    a, b = ref.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = _train(experiment(), tmp_path / "plain")                   # the task rows did change the training
    assert plain.losses != ref.losses


def test_a_task_mixture_keeps_the_corpus_stream_in_the_data_fingerprint():
    from hopekit.checkpoint import data_fingerprint

    plain, _ = corpus_batches(experiment())
    mixed, _ = corpus_batches(experiment(task_fraction=0.5, task_style="compact"))
    assert data_fingerprint(plain)["stream"] is not None
    assert data_fingerprint(mixed)["stream"] == data_fingerprint(plain)["stream"]


# --- DataConfig fields ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, exc, fragment", [
    ("task_fraction", 1.0, ValueError, "must be < 1.0"),
    ("task_fraction", -0.5, ValueError, "must be >= 0.0"),
    ("task_fraction", "half", TypeError, "expected a real number"),
    ("task_fraction", True, TypeError, "expected a real number"),
    ("tasks", ["passkey", "nope"], ValueError, "unknown or repeated name(s) ['nope']"),
    ("tasks", ["copy", "copy"], ValueError, "unknown or repeated name(s)"),
    ("tasks", [], TypeError, "expected a non-empty list of names"),
    ("tasks", "passkey", TypeError, "expected a non-empty list of names"),
    ("task_style", "tiny", ValueError, "must be one of ('standard', 'compact')"),
])
def test_bad_data_task_fields_are_one_line_naming_field_and_value(field, value, exc, fragment):
    with pytest.raises(exc) as info:
        DataConfig(**{field: value})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"DataConfig.{field}=")
    assert fragment in message and (repr(value) in message or repr(tuple(value)) in message)


def test_an_hf_corpus_refuses_a_task_fraction_and_the_defaults_are_the_corpus_alone():
    with pytest.raises(ValueError, match=r"^DataConfig\.task_fraction=0\.5: .*corpus='hf:wikitext'"):
        DataConfig(corpus="hf:wikitext", task_fraction=0.5)
    d = DataConfig(tasks=["passkey", "kv"])
    assert d.task_fraction == 0.0 and d.tasks == ("passkey", "kv") and d.task_style == "standard"


def test_a_saved_config_without_the_new_data_fields_matches_at_their_defaults_only():
    now = experiment().resolved()
    saved = {**now, "data": {k: v for k, v in now["data"].items() if not k.startswith("task")}}
    assert config_differences(saved, now) == []
    mixed = experiment(task_fraction=0.25, tasks=["kv"]).resolved()
    assert config_differences(saved, mixed) == ["data.task_fraction: saved (absent), now 0.25",
                                                "data.tasks: saved (absent), now ['kv']"]
    # only absence on the saved side is forgiven: a field the current config lacks still shows
    assert config_differences(now, saved) == [f"data.{k}: saved {now['data'][k]!r}, now (absent)"
                                              for k in sorted(("task_filler", "task_fraction", "tasks", "task_style"))]


def test_a_checkpoint_saved_before_the_task_fields_resumes_unless_they_are_set(tmp_path):
    from hopekit.checkpoint import CheckpointError, save_checkpoint

    cfg = experiment()
    _train(cfg, tmp_path)
    path = tmp_path / "checkpoint.pt"
    ckpt = read_checkpoint(path)
    for section, prefix in (("data", "task"), ("eval", "task")):     # as written before the fields existed
        ckpt["config"][section] = {k: v for k, v in ckpt["config"][section].items() if not k.startswith(prefix)}
    save_checkpoint(path, {k: v for k, v in ckpt.items() if k != "content_hash"})
    assert "task_fraction" not in read_checkpoint(path)["config"]["data"]
    assert _train(cfg, tmp_path, resume=True).start_step == 6          # the defaults: what older code did
    with pytest.raises(CheckpointError, match=r"data\.task_fraction: checkpoint \(absent\), now 0\.25"):
        _train(experiment(task_fraction=0.25, task_style="compact"), tmp_path, resume=True)


def test_a_task_that_cannot_fit_the_training_window_is_refused_when_the_batches_are_built():
    from hopekit.train import corpus_batches

    # the standard pass key needs ~250 bytes of template: refused up front, naming the task, style and window
    cfg = experiment(task_fraction=0.5, tasks=["copy", "passkey"], task_style="standard")
    with pytest.raises(ValueError, match=rf"^data\.task_fraction=0\.5 with train\.train_len={TRAIN_LEN}: task 'copy' "
                                         rf"in style 'standard' needs instances of >= 111 tokens, the shortest here "
                                         rf"is {TRAIN_LEN + 1}") as info:
        corpus_batches(cfg)
    assert "\n" not in str(info.value)
    corpus_batches(experiment(task_fraction=0.5, tasks=["copy", "passkey"], task_style="compact"))   # fits
