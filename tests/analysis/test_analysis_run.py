"""hopekit analyze distance: its records are the metric functions applied to the curves, it resumes, and
bad input is one line."""

from __future__ import annotations

import pytest
import torch

from hopekit import pe
from hopekit.analysis import monotone_fraction, oscillation, score_vs_distance
from hopekit.analysis.run import analyze_distance, distance_table, distance_windows
from hopekit.cli import main
from hopekit.eval import read_records

SHAPE = dict(head_dim=16, num_heads=2, train_len=32)


def test_windows_cover_the_distances_in_multiples_of_the_training_length():
    assert distance_windows(32, 300) == [(0, 32), (32, 128), (128, 300)]
    assert distance_windows(128, 100) == [(0, 100)]


def test_records_are_the_metrics_of_the_curves_and_a_rerun_measures_nothing(tmp_path):
    methods = {"rope": pe.parse({"kind": "rope", "base": 100.0}), "hyp": pe.parse({"kind": "hope_hyperbolic"})}
    path = analyze_distance(methods, **SHAPE, max_distance=300, out=tmp_path, seeds=(0, 1), samples=3,
                            log=lambda _: None)
    rows = read_records(path)
    distances = torch.arange(301)
    windows = distance_windows(32, 300)
    for name, params in methods.items():
        enc = pe.build(params, head_dim=16, num_heads=2)
        curve = score_vs_distance(enc, distances)
        want = oscillation(curve, distances, windows)
        got = {tuple(r["window"]): r["value"] for r in rows
               if r["method"] == name and r["source"] == "aligned" and r["metric"] == "sign_changes"}
        assert got == {tuple(w): float(o["sign_changes"]) for w, o in zip(windows, want)}
        mono = next(r["value"] for r in rows if r["method"] == name and r["source"] == "aligned"
                    and r["metric"] == "monotone_fraction" and r["window"] == [0, 32])
        assert mono == monotone_fraction(curve[:33], "either")
        gauss = [r for r in rows if r["method"] == name and r["source"] == "gaussian" and r["metric"] == "sign_changes"]
        assert sorted({r["seed"] for r in gauss}) == [0, 1]
    rope_sc = [r["value"] for r in rows if r["method"] == "rope" and r["metric"] == "sign_changes"
               and r["window"] == [128, 300]]
    hyp_sc = [r["value"] for r in rows if r["method"] == "hyp" and r["metric"] == "sign_changes"
              and r["window"] == [128, 300]]
    assert min(rope_sc) > 0 and max(hyp_sc) == 0      # rope oscillates far out; hope_hyperbolic does not
    far = [r for r in rows if r["metric"] == "far_token_mass"]
    assert all(0 < r["value"] < 1 and r["beyond"] == 32 for r in far)
    assert (tmp_path / "score_vs_distance.png").stat().st_size > 1000
    table = distance_table(rows)
    assert "`rope`" in table and "`hyp`" in table and "sign changes Δ 128–300" in table
    size = path.stat().st_size
    analyze_distance(methods, **SHAPE, max_distance=300, out=tmp_path, seeds=(0, 1), samples=3, log=lambda _: None)
    assert path.stat().st_size == size                 # everything was recorded: nothing measured again


def test_learned_absolute_positions_are_skipped_with_a_reason_and_bad_sources_refused(tmp_path):
    said = []
    path = analyze_distance({"learned": pe.parse({"kind": "learned", "max_len": 64}),
                             "rope": pe.parse({"kind": "rope"})}, **SHAPE, max_distance=40, out=tmp_path,
                            sources=("aligned",), log=said.append)
    assert any("learned: skipped" in s for s in said)
    assert {r["method"] for r in read_records(path)} == {"rope"}
    with pytest.raises(ValueError, match="sources="):
        analyze_distance({"rope": pe.parse({"kind": "rope"})}, **SHAPE, max_distance=40, out=tmp_path,
                         sources=("fixed",))


def test_the_command_prints_the_table_and_writes_records(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["analyze", "distance", "--pe", "alibi", "--max-distance", "200", "--seeds", "1", "--samples", "2",
                 "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "`alibi`" in text and (out / "records.jsonl").exists() and (out / "score_vs_distance.png").exists()
    assert main(["analyze", "distance", "--pe", "rope", "--preset", "smoke", "--out", str(out)]) == 2
    assert "--pe rope and --preset smoke: give one" in capsys.readouterr().err
    assert main(["analyze", "distance", "--pe", "rope", "--sources", "fixed", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sources=['fixed']" in err
    assert main(["analyze", "sweep", str(tmp_path / "nothing")]) == 2
    assert "no records to report" in capsys.readouterr().err
