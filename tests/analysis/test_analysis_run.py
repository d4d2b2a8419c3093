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
    analyze_distance(methods, **SHAPE, max_distance=300, out=tmp_path, seeds=(0,), samples=4, log=lambda _: None)
    assert path.stat().st_size > size                  # another sample count is another measurement


def test_learned_absolute_positions_are_skipped_with_a_reason_and_bad_sources_refused(tmp_path):
    said = []
    path = analyze_distance({"learned": pe.parse({"kind": "learned", "max_len": 64}),
                             "rope": pe.parse({"kind": "rope"})}, **SHAPE, max_distance=40, out=tmp_path,
                            sources=("aligned",), log=said.append)
    assert any("learned: skipped" in s for s in said)
    assert {r["method"] for r in read_records(path)} == {"rope"}
    path = analyze_distance({"sinusoidal": pe.parse({"kind": "sinusoidal"})}, **SHAPE, max_distance=40,
                            out=tmp_path / "s", seeds=(0,), samples=2, log=said.append)
    assert any("sinusoidal: Gaussian q, k skipped" in s for s in said)      # input-level: aligned only
    assert {r["source"] for r in read_records(path)} == {"aligned"}
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


def _train_tiny(out, kind="hope_hyperbolic"):
    tiny = ["train.steps=3", "train.warmup_steps=1", "train.batch_size=2", "train.train_len=16", "model.d_model=16",
            "model.n_layers=2", "model.n_heads=2", "train.checkpoint_every=0", "train.log_every=1", f"pe.kind={kind}"]
    assert main(["train", "--out", str(out), "-q", *tiny]) == 0
    return out / "checkpoint.pt"


def test_analyze_attention_records_the_profile_of_the_checkpoint_and_resumes(tmp_path, capsys):
    from hopekit.analysis.attention import attention_profile, text_windows
    from hopekit.analysis.run import load_for_analysis

    ckpt = _train_tiny(tmp_path / "run")
    out = tmp_path / "a"
    assert main(["analyze", "attention", str(ckpt), "--windows", "3", "--far-lengths", "32", "--out", str(out),
                 "-q"]) == 0
    text = capsys.readouterr().out
    assert "| 16 | 4, 2 | 3 | 1 |" in text, text
    rows = read_records(out / "records.jsonl")
    model, _, docs = load_for_analysis(str(ckpt))
    want = attention_profile(model, text_windows(docs, 16, 3), first=4, near=2)   # near: 16 / 8
    got = {(r["layer"], r["head"]): r["value"] for r in rows if r["metric"] == "u_shape_index"}
    assert got == {(la, h): float(want.u_index[:, la, h].mean()) for la in range(2) for h in range(2)}
    assert {r["eval_len"] for r in rows if r["metric"] == "far_token_mass"} == {32}
    assert all((out / f).stat().st_size > 1000 for f in ("u_index.png", "attention_by_key.png", "far_mass.png"))
    n = len(rows)
    assert main(["analyze", "attention", str(ckpt), "--windows", "3", "--far-lengths", "32", "--out", str(out),
                 "-q"]) == 0
    assert len(read_records(out / "records.jsonl")) == n                       # recorded: nothing measured again
    # the log-length scale is 1 inside the training window: the same U index there, another method's rows
    assert main(["analyze", "attention", str(ckpt), "pe.logit_scale=log_length", "--windows", "3", "--out",
                 str(out), "-q"]) == 0
    scaled = {(r["layer"], r["head"]): r["value"] for r in read_records(out / "records.jsonl")
              if r["metric"] == "u_shape_index" and r["method"] == "tiny+logit_scale=log_length"}
    assert scaled == got
    # another group rule into the same directory: its own table rows, never averaged with the first
    assert main(["analyze", "attention", str(ckpt), "--windows", "3", "--near", "4", "--out", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "| 16 | 4, 2 | 3 | 1 |" in text and "| 16 | 4, 4 | 3 | 1 |" in text
    # a changed sample count is another measurement (never the old numbers reported as the new)
    assert main(["analyze", "attention", str(ckpt), "--windows", "2", "--out", str(out), "-q"]) == 0
    assert len([r for r in read_records(out / "records.jsonl") if r.get("windows_requested") == 2]) > 0
    for bad, says in ((["--far-lengths", "1,x"], "--far-lengths 1,x: expected comma-separated integers"),
                      (["--far-lengths", "1"], "far_lengths: 1 is not a length >= 2"),
                      (["--windows", "0"], "windows=0: expected an int >= 1"),
                      (["--beyond", "-3"], "beyond=-3: expected an int >= 0"),
                      (["--length", "100000"], "use a shorter --length")):
        assert main(["analyze", "attention", str(ckpt), *bad, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    missing = str(tmp_path / "h@penalty=0.3" / "checkpoint.pt")      # a grid point's folder holds "="
    assert main(["analyze", "attention", missing, "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    before = len(read_records(out / "records.jsonl"))
    assert main(["analyze", "attention", str(ckpt), "train.steps=9", "--out", str(out)]) == 2
    assert "train.steps=9: only pe.FIELD=VALUE overrides" in capsys.readouterr().err
    assert main(["analyze", "attention", str(ckpt), missing, "--windows", "5", "--out", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert len(read_records(out / "records.jsonl")) == before        # refused before measuring anything
    assert main(["analyze", "attention", "--out", str(out)]) == 2
    assert "give checkpoints or --hf NAME" in capsys.readouterr().err


def test_analyze_attention_reads_a_transformers_models_own_weights(tiny_dir, tmp_path, capsys):
    out = tmp_path / "hf"
    assert main(["analyze", "attention", "--hf", str(tiny_dir), "--length", "24", "--windows", "2", "--out",
                 str(out), "-q"]) == 0
    rows = [r for r in read_records(out / "records.jsonl") if r["metric"] == "u_shape_index"]
    assert rows and all(r["hf"] == str(tiny_dir) and r["eval_len"] == 24 for r in rows)
    assert main(["analyze", "attention", "--hf", str(tiny_dir), "--out", str(out)]) == 2   # no --length
    assert "--length: give the window for a pretrained model" in capsys.readouterr().err


def test_analyze_pairs_splits_a_rotary_checkpoint_and_refuses_other_encodings(tmp_path, capsys):
    ckpt = _train_tiny(tmp_path / "run", kind="rope")
    out = tmp_path / "p"
    assert main(["analyze", "pairs", str(ckpt), "--windows", "3", "--out", str(out), "-q"]) == 0
    assert "period ≤ L (L = 16)" in capsys.readouterr().out
    rows = read_records(out / "records.jsonl")
    pairs = [r for r in rows if r["component"] == "pair"]
    assert {r["pair"] for r in pairs} == set(range(4))                  # head_dim 8: four rotary pairs
    for layer in (0, 1):
        for head in (0, 1):
            shares = [r["share"] for r in pairs if r["layer"] == layer and r["head"] == head]
            assert abs(sum(shares) - 1) < 1e-3                          # the pairs' shares of Σ mean |term|
    assert (out / "pairs_delta.png").stat().st_size > 1000
    n = len(rows)
    assert main(["analyze", "pairs", str(ckpt), "--windows", "3", "--out", str(out), "-q"]) == 0
    assert len(read_records(out / "records.jsonl")) == n                 # recorded: nothing measured again
    hyp = _train_tiny(tmp_path / "hyp")
    assert main(["analyze", "pairs", str(hyp), "--out", str(out)]) == 2
    assert "no rotary pairs to decompose" in capsys.readouterr().err
    assert main(["analyze", "pairs", str(ckpt), "--windows", "0", "--out", str(out)]) == 2
    assert "windows=0: expected an int >= 1" in capsys.readouterr().err
