"""`hopekit bench --preset smoke` end to end: records, report, plot, resumability, config guard."""

from __future__ import annotations

import json

import pytest

from hopekit.bench import load_bench, run_bench
from hopekit.cli import main
from hopekit.eval import REQUIRED_FIELDS, read_records

SIX = ["rope", "hope_highfreq", "hope_hyperbolic", "alibi", "sinusoidal", "nope"]
EXTENSIONS = ["rope+linear", "rope+ntk", "rope+dynamic_ntk", "rope+yarn"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bench") / "smoke"
    assert main(["bench", "--preset", "smoke", "--run-dir", str(run_dir), "--no-progress"]) == 0
    return run_dir


def test_smoke_bench_writes_records_report_and_plot(smoke_run):
    records = read_records(smoke_run / "records.jsonl")
    ppl = [r for r in records if r["metric"] == "ppl"]
    methods = {r["method"] for r in ppl}
    assert methods == set(SIX) | set(EXTENSIONS)
    for r in ppl:
        assert all(f in r for f in REQUIRED_FIELDS)
        assert r["protocol"] == "nonoverlapping" and r["value"] > 1
        if "+" not in r["method"]:   # trained methods: the record's resolved config is the one trained
            assert r["config"]["pe"] == r["params"]
    lengths = {m: sorted(r["eval_len"] for r in ppl if r["method"] == m and r["seed"] == 0) for m in methods}
    assert all(lengths[m] == [32, 64, 128] for m in SIX)
    assert all(lengths[m] == [64, 128] for m in EXTENSIONS)
    # every measurement once per seed, windows spread over every test document, a window bootstrap
    assert sorted((r["method"], r["eval_len"], r["seed"]) for r in ppl) == sorted(
        {(r["method"], r["eval_len"], s) for r in ppl for s in (0, 1)})
    assert all(r["sampling"] == "spread" and r["documents"] == 4 and r["tokens"] >= 512 for r in ppl)
    assert all(lo < r["value"] < hi for r in ppl for lo, hi in [r["ppl_window_ci95"]])
    for name in SIX:   # training rows per (method, seed) and one score-vs-distance curve per method
        for seed in (0, 1):
            rows = {r["metric"]: r for r in records if r["method"] == name and r["seed"] == seed and r["task"] == "bench"}
            assert {"train_seconds", "final_train_loss", "tokens_per_s", "epochs", "train_loss_curve"} <= set(rows)
            assert rows["epochs"]["value"] == pytest.approx(6 * 4 * 32 / rows["epochs"]["train_tokens"])
            assert rows["train_loss_curve"]["steps"][-1] == 6
            assert (smoke_run / "checkpoints" / name / f"seed{seed}" / "checkpoint.pt").is_file()
        assert sum(r["metric"] == "score_vs_distance" and r["method"] == name for r in records) == 1
    assert sum(r["metric"] == "bench_seconds" for r in records) == 1
    report = (smoke_run / "report.md").read_text()
    assert all(f"`{m}`" in report for m in SIX + EXTENSIONS)
    assert "**Seeds**: 2 (0, 1)" in report and "95 % intervals over seeds" in report and "torch " in report
    for name in ("ppl_vs_length", "loss_by_position", "train_curve", "score_vs_distance"):
        png = (smoke_run / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000 and f"]({name}.png)" in report


def test_rerun_resumes_without_retraining_or_remeasuring(smoke_run):
    before = (smoke_run / "records.jsonl").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (smoke_run / "checkpoints").rglob("*.pt")}
    run_bench("smoke", run_dir=smoke_run, progress=False, log=lambda _: None)
    assert (smoke_run / "records.jsonl").read_text() == before
    assert {p: p.stat().st_mtime_ns for p in (smoke_run / "checkpoints").rglob("*.pt")} == mtimes


def test_report_regenerates_from_records_alone(smoke_run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "records.jsonl").write_text((smoke_run / "records.jsonl").read_text())
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.md").read_text().split("\n", 1)[1] == (smoke_run / "report.md").read_text().split("\n", 1)[1]
    assert (copy / "ppl_vs_length.png").exists()


def test_run_dir_with_another_config_is_refused(smoke_run):
    with pytest.raises(ValueError, match=r"different config.*Differences: experiment\.train\.steps: saved 6, now 7$"):
        run_bench("smoke", run_dir=smoke_run, overrides=["train.steps=7"], progress=False, log=lambda _: None)


def test_seeds_can_be_added_to_a_run_and_only_the_new_seed_trains(tmp_path):
    run = tmp_path / "seeds"
    quiet = dict(run_dir=run, methods=["alibi"], overrides=["train.steps=2", "train.warmup_steps=1"], progress=False,
                 log=lambda _: None)
    run_bench("smoke", seeds=1, **quiet)
    first = read_records(run / "records.jsonl")
    run_bench("smoke", seeds=2, **quiet)
    after = read_records(run / "records.jsonl")
    assert after[:len(first)] == first
    new = after[len(first):]
    assert {r["seed"] for r in new if r["metric"] == "ppl"} == {1}
    assert json.loads((run / "bench.json").read_text())["seeds"] == [0, 1]


def test_bench_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="preset"):
        load_bench("nonexistent")
    with pytest.raises(ValueError, match="methods"):
        load_bench("smoke", methods=["rope", "xpos"])
    with pytest.raises(ValueError, match="factor"):
        load_bench("smoke", overrides=["methods.rope={kind: linear, factor: 0.5}"])
    b = load_bench("smoke", overrides=["train.steps=3"])
    assert b.experiment.train.steps == 3 and b.methods["hope_highfreq"].train_len == 32
    json.dumps(b.resolved())
    assert load_bench("smoke").seeds == (0, 1) and load_bench("default").seeds == (0, 1, 2)
    assert load_bench("smoke", ["train.seed=5"], seeds=3).seeds == (5, 6, 7)
    assert load_bench("smoke", ["seeds=4"]).seeds == (0, 1, 2, 3)
    assert load_bench("smoke").method_config("rope", 1).train.seed == 1
    for bad in (0, True, "3"):
        with pytest.raises(ValueError, match=rf"seeds={bad!r}: expected the number of training seeds"):
            load_bench("smoke", seeds=bad)


def test_a_second_bench_on_a_locked_run_dir_is_refused(tmp_path):
    from hopekit.checkpoint import RunLockedError, prepare_run_dir

    lock = prepare_run_dir(tmp_path / "bench", files=())
    try:
        with pytest.raises(RunLockedError, match=str(tmp_path / "bench")):
            run_bench("smoke", run_dir=tmp_path / "bench", progress=False, log=lambda _: None)
    finally:
        lock.release()
