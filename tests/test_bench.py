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


# --- grids: one method per combination of a method's swept fields ---------------------------------------

GRID_EXPERIMENT = """\
name: grid
experiment:
  model: {d_model: 32, n_layers: 1, n_heads: 2}
  data: {corpus: shakespeare, tokenizer: byte}
  train: {train_len: 32, batch_size: 4, steps: 3, lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 1, checkpoint_every: 3, log_every: 3}
  eval: {multiples: [1], protocol: nonoverlapping, max_tokens: 256, batch_size: 4, extensions: []}
"""


def grid_bench(tmp_path, methods: str, name: str = "grid.yaml"):
    path = tmp_path / name
    path.write_text(GRID_EXPERIMENT + "methods:\n" + methods)
    return path


def test_a_grid_expands_to_one_named_method_per_combination_in_the_order_written(tmp_path):
    path = grid_bench(tmp_path, "  rope: {kind: rope}\n"
                                "  hope_hyperbolic: {kind: hope_hyperbolic, max_block: 64, "
                                "grid: {penalty: [1.0, 0.3], omega_scale: [0.1, 0.2, 0.25]}}\n"
                                "  alibi: {kind: alibi}\n")
    b = load_bench(path)
    expected = [("rope", None)] + [(f"hope_hyperbolic@penalty={lam},omega_scale={w}", (lam, w))
                                   for lam in (1.0, 0.3) for w in (0.1, 0.2, 0.25)] + [("alibi", None)]
    assert list(b.methods) == [n for n, _ in expected]
    for name, point in expected[1:-1]:
        p = b.methods[name]
        assert (p.penalty, p.omega_scale, p.max_block, p.kind) == (*point, 64, "hope_hyperbolic")
    resolved = b.resolved()
    assert resolved["grids"] == {"hope_hyperbolic": {"penalty": [1.0, 0.3], "omega_scale": [0.1, 0.2, 0.25]}}
    assert resolved["methods"]["hope_hyperbolic@penalty=0.3,omega_scale=0.1"]["penalty"] == 0.3
    assert json.loads(json.dumps(resolved)) == resolved
    # the name is str() of each YAML value: ints stay ints, a list-valued field is swept by a list of lists
    ones, ramp = [1.0] * 8, [1.0 + i / 2 for i in range(8)]   # head_dim 16: 8 rescale factors
    b = load_bench(grid_bench(tmp_path, "  yarn: {kind: yarn, grid: {factor: [2, 4.5]}}\n"
                                        f"  lr: {{kind: longrope, factor: 4, short_rescale: {ones}, "
                                        f"grid: {{long_rescale: [{ones}, {ramp}]}}}}\n"))
    assert list(b.methods) == ["yarn@factor=2", "yarn@factor=4.5", f"lr@long_rescale={ones}", f"lr@long_rescale={ramp}"]
    assert b.methods[f"lr@long_rescale={ramp}"].long_rescale == tuple(ramp)
    assert b.methods["yarn@factor=2"].factor == 2 and b.methods["yarn@factor=2"].train_len == 32


@pytest.mark.parametrize("grid, message", [
    ("{kind: hope_hyperbolic, grid: {lam: [0.3]}}",
     r"^methods\.h\.grid\.lam: not a parameter of hope_hyperbolic; a grid sweeps one of \['base', 'omega_scale', "
     r"'penalty'"),
    ("{kind: hope_hyperbolic, grid: {kind: [rope]}}", r"^methods\.h\.grid\.kind: not a parameter"),
    ("{kind: hope_hyperbolic, grid: {penalty: []}}", r"^methods\.h\.grid\.penalty=\[\]: expected a non-empty list"),
    ("{kind: hope_hyperbolic, grid: {penalty: 0.3}}", r"^methods\.h\.grid\.penalty=0\.3: expected a non-empty list"),
    ("{kind: hope_hyperbolic, grid: {penalty: [0.3, 0.5, 0.3]}}",
     r"^methods\.h\.grid\.penalty=\[0\.3, 0\.5, 0\.3\]: 0\.3 is given twice$"),
    ("{kind: hope_hyperbolic, grid: {penalty: [1, 1.0]}}", r"1\.0 is given twice"),
    ("{kind: hope_hyperbolic, penalty: 0.3, grid: {penalty: [0.5]}}",
     r"^methods\.h\.grid\.penalty: methods\.h\.penalty=0\.3 is given too; a field is either fixed or swept$"),
    ("{kind: hope_hyperbolic, grid: []}", r"^methods\.h\.grid=\[\]: expected a non-empty mapping"),
    ("{kind: hyperbolic, grid: {penalty: [0.3]}}", r"^methods\.h: kind='hyperbolic': unknown positional encoding"),
    # each point is validated like any method, and the error names the point
    ("{kind: hope_hyperbolic, grid: {penalty: [0.3, 0.1]}}",
     r"^methods\.h@penalty=0\.1: HyperbolicParams\.penalty=0\.1: λ must be > max ω_i"),
    ("{kind: longrope, factor: 4, short_rescale: [1, 1, 1, 1, 1, 1, 1, 1], grid: {long_rescale: [1.0, 2.0]}}",
     r"^methods\.h@long_rescale=1\.0: .*long_rescale"),
])
def test_grid_errors_name_the_field_and_the_value(tmp_path, grid, message):
    with pytest.raises((ValueError, TypeError), match=message):
        load_bench(grid_bench(tmp_path, f"  h: {grid}\n"))


def test_a_point_named_like_another_method_is_refused(tmp_path):
    path = grid_bench(tmp_path, "  a@factor=2: {kind: yarn, factor: 2}\n  a: {kind: yarn, grid: {factor: [2, 4]}}\n")
    with pytest.raises(ValueError, match=r"^methods\.a@factor=2: named twice \(by methods\.a@factor=2 and "
                                         r"methods\.a\.grid\)"):
        load_bench(path)


def test_methods_selects_a_grid_by_its_name_or_single_points(tmp_path):
    path = grid_bench(tmp_path, "  rope: {kind: rope}\n"
                                "  h: {kind: hope_hyperbolic, grid: {penalty: [0.3, 1.0], omega_scale: [0.1, 0.2]}}\n")
    points = ["h@penalty=0.3,omega_scale=0.1", "h@penalty=0.3,omega_scale=0.2", "h@penalty=1.0,omega_scale=0.1",
              "h@penalty=1.0,omega_scale=0.2"]
    b = load_bench(path, methods=["h", "rope"])
    assert list(b.methods) == points + ["rope"] and b.grids == {"h": {"penalty": [0.3, 1.0], "omega_scale": [0.1, 0.2]}}
    b = load_bench(path, methods=[points[3], "rope", points[1]])
    assert list(b.methods) == [points[3], "rope", points[1]]
    assert b.grids == {"h": {"penalty": [0.3, 1.0], "omega_scale": [0.2]}}   # the axes of the selected points
    assert load_bench(path, methods=["rope"]).grids == {} and load_bench(path, methods=[points[0], "h"]).methods.keys() \
        == dict.fromkeys(points).keys()
    # `--methods a,b` is split at commas: a point's name with a comma is joined back
    assert list(load_bench(path, methods="rope,h@penalty=1.0,omega_scale=0.1".split(",")).methods) == ["rope", points[2]]
    with pytest.raises(ValueError, match=r"^--methods: \['h@penalty=0.5'\] not in the preset; available: \['rope', "
                                         r"'h'\] \(a grid's name selects all its points: \['h@penalty=0.3,omega"):
        load_bench(path, methods=["rope", "h@penalty=0.5"])


def test_a_grid_axis_is_set_by_a_dotted_override(tmp_path):
    path = grid_bench(tmp_path, "  h: {kind: hope_hyperbolic, grid: {penalty: [0.3, 1.0]}}\n")
    b = load_bench(path, overrides=["methods.h.grid.penalty=[0.25, 2]", "methods.h.omega_scale=0.1"])
    assert list(b.methods) == ["h@penalty=0.25", "h@penalty=2"]
    assert [(p.penalty, p.omega_scale) for p in b.methods.values()] == [(0.25, 0.1), (2, 0.1)]
    assert b.resolved()["grids"] == {"h": {"penalty": [0.25, 2]}}
    b = load_bench(path, overrides=["methods.h.grid.omega_scale=[0.05, 0.1]"])   # a second axis
    assert list(b.methods) == ["h@penalty=0.3,omega_scale=0.05", "h@penalty=0.3,omega_scale=0.1",
                               "h@penalty=1.0,omega_scale=0.05", "h@penalty=1.0,omega_scale=0.1"]
    with pytest.raises(ValueError, match=r"methods\.h\.grid\.penalty=\[\]"):
        load_bench(path, overrides=["methods.h.grid.penalty=[]"])


def test_bench_json_holds_the_points_and_the_grid_and_accepts_a_run_from_before_grids(tmp_path):
    from hopekit.bench import _save_config

    grid = load_bench(grid_bench(tmp_path, "  h: {kind: hope_hyperbolic, grid: {penalty: [0.3, 1.0]}}\n"))
    explicit = load_bench(grid_bench(tmp_path, "  h@penalty=0.3: {kind: hope_hyperbolic, penalty: 0.3}\n"
                                               "  h@penalty=1.0: {kind: hope_hyperbolic, penalty: 1.0}\n", "x.yaml"))
    assert explicit.resolved()["methods"] == grid.resolved()["methods"] and explicit.resolved()["grids"] == {}
    run = tmp_path / "run"
    run.mkdir()
    _save_config(explicit, run)                      # a run made with the points written out by hand
    _save_config(grid, run)
    saved = json.loads((run / "bench.json").read_text())
    assert saved["methods"] == grid.resolved()["methods"] and saved["grids"] == {"h": {"penalty": [0.3, 1.0]}}
    del saved["grids"]                               # a bench.json written before grids existed
    (run / "bench.json").write_text(json.dumps(saved))
    _save_config(load_bench(grid_bench(tmp_path, "  h: {kind: hope_hyperbolic, grid: {penalty: [0.5, 0.3]}}\n")), run)
    saved = json.loads((run / "bench.json").read_text())
    assert list(saved["methods"]) == ["h@penalty=0.3", "h@penalty=1.0", "h@penalty=0.5"]
    assert saved["grids"] == {"h": {"penalty": [0.5, 0.3]}}
    _save_config(grid, run)                          # axes merge: saved values first, then the new ones
    assert json.loads((run / "bench.json").read_text())["grids"] == {"h": {"penalty": [0.5, 0.3, 1.0]}}
    changed = load_bench(grid_bench(tmp_path, "  h: {kind: hope_hyperbolic, omega_scale: 0.1, grid: {penalty: [0.3]}}\n"))
    with pytest.raises(ValueError, match=r"Differences: methods\.h@penalty=0\.3\.omega_scale: saved 0\.2, now 0\.1$"):
        _save_config(changed, run)               # a point's params changed under its name: refused like any method's


@pytest.mark.slow
def test_a_sweep_resumes_and_a_new_grid_value_trains_only_its_point(tmp_path):
    run = tmp_path / "run"
    quiet = dict(run_dir=run, progress=False, log=lambda _: None)
    grid = grid_bench(tmp_path, "  h: {kind: hope_hyperbolic, grid: {penalty: [0.3, 1.0]}}\n")
    run_bench(grid, **quiet)
    first = read_records(run / "records.jsonl")
    assert {r["method"] for r in first if r["metric"] == "ppl"} == {"h@penalty=0.3", "h@penalty=1.0"}
    ckpts = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*.pt")}
    assert {p.parent.parent.name for p in ckpts} == {"h@penalty=0.3", "h@penalty=1.0"}

    run_bench(grid, **quiet)                                     # nothing retrained, nothing re-measured
    assert len(read_records(run / "records.jsonl")) == len(first)
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*.pt")} == ckpts

    run_bench(grid, overrides=["methods.h.grid.penalty=[0.3, 0.5, 1.0]"], **quiet)   # a new value: only it trains
    after = read_records(run / "records.jsonl")
    assert after[:len(first)] == first
    new = after[len(first):]
    assert {r["method"] for r in new if r["method"]} == {"h@penalty=0.5"}
    assert {r["metric"] for r in new if r["method"]} >= {"ppl", "train_seconds", "score_vs_distance"}
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*.pt") if p in ckpts} == ckpts
    assert (run / "checkpoints" / "h@penalty=0.5" / "seed0" / "checkpoint.pt").is_file()
    assert json.loads((run / "bench.json").read_text())["grids"] == {"h": {"penalty": [0.3, 1.0, 0.5]}}
    sweep = (run / "sweep.md").read_text()                      # a grid bench writes its sweep report too
    assert all(f"| {lam} |" in sweep for lam in (0.3, 0.5, 1.0)) and (run / "sweep_h_penalty.png").is_file()


def test_the_hyperbolic_scale_preset_sweeps_the_penalty_at_a_fixed_omega_scale():
    b = load_bench("hyperbolic_scale")
    penalties = [0.202, 0.21, 0.25, 0.3, 0.4, 0.6, 1.0]
    assert list(b.methods) == [f"hope_hyperbolic@penalty={lam}" for lam in penalties]
    assert [(p.kind, p.omega_scale, p.penalty) for p in b.methods.values()] == [
        ("hope_hyperbolic", 0.2, lam) for lam in penalties]
    assert b.grids == {"hope_hyperbolic": {"penalty": penalties}} and b.seeds == (0, 1, 2)
    assert b.experiment.eval.split == "validation" and b.experiment.eval.multiples == (1, 4, 16)


def test_a_learned_table_shorter_than_the_longest_length_draws_no_score_curve_and_stops_nothing(tmp_path):
    """The score-vs-distance record probes positions up to the longest evaluated length; a learned table
    (random until trained, possibly shorter) is left out instead of failing the bench before training."""
    from hopekit.bench import _record_score_vs_distance

    path = grid_bench(tmp_path, "  rope: {kind: rope}\n  learned: {kind: learned, max_len: 32}\n")
    bench = load_bench(path, ["eval.multiples=[1,4]"])
    _record_score_vs_distance(bench, tmp_path / "records.jsonl")
    assert {r["method"] for r in read_records(tmp_path / "records.jsonl")} == {"rope"}
