"""The command-line entry points run and print what they promise."""

from hopekit import pe
from hopekit.cli import main


def test_demo_prints_every_method(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for name in pe.REGISTRY:
        assert f"\n{name}" in out
    # hope_highfreq's floor: each position-free pair adds cos 0 = 1 at every distance, while the kept
    # pairs' cosines average out far away (papers/hope_highfreq.md)
    from hopekit.pe.schedules import highfreq_keep_mask

    params = pe.parse(pe.example_config("hope_highfreq", head_dim=64))
    position_free = int((~highfreq_keep_mask(params, 64)).sum())
    assert position_free > 0
    row = next(line for line in out.splitlines() if line.startswith("hope_highfreq"))
    assert abs(float(row.split()[-1]) - position_free) < 0.5


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    tiny = ["train.steps=3", "train.warmup_steps=1", "train.batch_size=2", "train.train_len=16", "model.d_model=16", "model.n_layers=1",
            "model.n_heads=2", "train.checkpoint_every=0", "train.log_every=1"]
    assert main(["train", "--out", str(out), "--no-progress", *tiny]) == 0
    assert (out / "checkpoint.pt").exists()
    assert main(["eval", str(out / "checkpoint.pt"), "eval.multiples=[1,2]", "eval.max_tokens=64"]) == 0
    table = capsys.readouterr().out
    assert "| `rope` |" in table and "| `rope+yarn` |" in table
    from hopekit.eval import read_records

    rows = read_records(out / "records.jsonl")
    assert {r["method"] for r in rows} == {"rope", "rope+linear", "rope+ntk", "rope+dynamic_ntk", "rope+yarn"}
    # resumable: a second run measures nothing new
    assert main(["eval", str(out / "checkpoint.pt"), "eval.multiples=[1,2]", "eval.max_tokens=64"]) == 0
    assert len(read_records(out / "records.jsonl")) == len(rows)
