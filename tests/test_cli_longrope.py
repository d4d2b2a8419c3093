"""``hopekit longrope``: a search from the command line, its files, its errors, and its factors used by
``hopekit eval --longrope``."""

import json

import pytest

from hopekit import pe
from hopekit.cli import main
from hopekit.eval import read_records

TINY = ["train.batch_size=2", "train.warmup_steps=1", "train.train_len=16", "model.d_model=16", "model.n_layers=1",
        "model.n_heads=2", "train.checkpoint_every=0", "train.log_every=1", "train.steps=3"]
BUDGET = ["--population", "6", "--iterations", "2", "--no-progress"]


def run(capsys, *argv):
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("rope")
    assert main(["train", "--out", str(out), "--no-progress", "--quiet", *TINY]) == 0
    return out / "checkpoint.pt"


def test_search_writes_its_files_and_eval_reads_the_factors(checkpoint, tmp_path, capsys):
    out = tmp_path / "s"
    code, text, err = run(capsys, "longrope", str(checkpoint), "--factor", "4", "--out", str(out), *BUDGET)
    assert code == 0, err
    assert "best perplexity" in text and "long factors:" in text
    for name in ("longrope.json", "factors.csv", "records.jsonl", "best_per_iteration.csv", "search_curve.png",
                 "search_state.json", "evaluations.jsonl", "rope_parameters.json"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "longrope.json").read_text())
    params = pe.parse(cfg)
    # P 6 -> 3 parents, 1 mutant, 2 crossovers: 6 + 2·3 evaluations, one per distinct candidate
    evaluated = [json.loads(line)["key"] for line in (out / "evaluations.jsonl").read_text().splitlines()]
    assert len(evaluated) == len(set(evaluated)) == 12
    assert params.factor == 4.0 and params.train_len == 16 and len(params.long_rescale) == 4   # head_dim 8 -> 4 pairs
    assert [float(v) for v in (out / "factors.csv").read_text().split()] == list(params.long_rescale)
    rows = [r for r in read_records(out / "records.jsonl") if r["metric"] == "search_best_ppl"]
    assert [r["iteration"] for r in rows] == [0, 1, 2] and all(r["eval_len"] == 64 for r in rows)
    # a finished search is not started over
    code, _, err = run(capsys, "longrope", str(checkpoint), "--factor", "4", "--out", str(out), *BUDGET)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    # its factors drive hopekit eval's longrope row, with the search's factor as the attention factor's
    code, text, err = run(capsys, "eval", str(checkpoint), "--longrope", str(out / "longrope.json"), "--extensions", "",
                          "eval.multiples=[1,4]", "eval.max_tokens=64", "--records", str(tmp_path / "r.jsonl"))
    assert code == 0, err
    longrope = [r for r in read_records(tmp_path / "r.jsonl") if r["method"] == "rope+longrope" and r["metric"] == "ppl"]
    assert {r["eval_len"] for r in longrope} == {16, 64}
    assert all(r["params"]["long_rescale"] == list(params.long_rescale) and r["params"]["factor"] == 4.0 for r in longrope)


@pytest.mark.parametrize("argv, field", [
    (["--factor", "1"], "factor=1.0"),
    (["--factor", "4", "--population", "7", "--parents", "2", "--mutations", "2", "--crossovers", "2"], "population=7"),
    (["--factor", "4", "--lambda-max", "big"], "--lambda-max"),
    (["--factor", "4", "--start-tokens", "1,x"], "--start-tokens"),
    (["--short"], "short=True"),
    ([], "--factor: missing"),
    (["--factor", "4", "--split", "test"], "split='test'"),
    (["--factor", "4", "--population", "6", "--parents", "6", "--mutations", "0", "--crossovers", "0"], "parents=6"),
    (["--short", "--base", "/nonexistent/longrope.json"], "--base /nonexistent/longrope.json"),
    (["--factor", "4", "--seeds", "pi,bogus"], "bogus"),
])
def test_bad_arguments_are_one_line_errors(checkpoint, tmp_path, capsys, monkeypatch, argv, field):
    monkeypatch.chdir(tmp_path)                  # (the default output directory is relative)
    code, _, err = run(capsys, "longrope", str(checkpoint), "--no-progress", *argv)
    assert code == 2 and field in err and len(err.strip().splitlines()) == 1, err


def test_progressive_extension_and_short_set_from_the_command_line(checkpoint, tmp_path, capsys):
    """Search 4x on the rope model, fine-tune with those factors at 4·L (init_from), search a further 8x on
    the fine-tuned model (its factors multiplied), re-search its short set, and evaluate the fine-tuned
    model with the searched factors swapped in."""
    first, ft, prog, short = (tmp_path / n for n in ("4x", "ft", "8x", "short"))
    assert run(capsys, "longrope", str(checkpoint), "--factor", "4", "--out", str(first), *BUDGET)[0] == 0
    code, _, err = run(capsys, "train", "--init-from", str(checkpoint), "--pe-file", str(first / "longrope.json"),
                       "--out", str(ft), "--no-progress", "--quiet", "train.train_len=64", "train.steps=2",
                       "train.warmup_steps=1", "train.batch_size=2", "train.checkpoint_every=0")
    assert code == 0, err
    code, text, err = run(capsys, "longrope", str(ft / "checkpoint.pt"), "--factor", "8", "--out", str(prog), *BUDGET)
    assert code == 0, err
    tuned = pe.parse(json.loads((first / "longrope.json").read_text()))
    further = pe.parse(json.loads((prog / "longrope.json").read_text()))
    state = json.loads((prog / "search_state.json").read_text())
    assert state["config"]["target"]["multiply"] == list(tuned.long_rescale) and further.factor == 8.0
    best = [int(v) / 100 for v in state["population"][0][0].split(":")[1].split(",")]
    assert list(further.long_rescale) == [a * b for a, b in zip(tuned.long_rescale, best)]
    code, _, err = run(capsys, "longrope", str(ft / "checkpoint.pt"), "--short", "--out", str(short), *BUDGET)
    assert code == 0, err
    readjusted = pe.parse(json.loads((short / "longrope.json").read_text()))
    assert readjusted.long_rescale == tuned.long_rescale and readjusted.factor == tuned.factor
    assert max(readjusted.short_rescale) <= tuned.factor                  # the short set's lower bound: s
    code, _, err = run(capsys, "eval", str(ft / "checkpoint.pt"), "--longrope", str(prog / "longrope.json"),
                       "eval.multiples=[2]", "eval.max_tokens=256", "--records", str(tmp_path / "r.jsonl"))
    assert code == 0, err
    rows = {r["method"]: r for r in read_records(tmp_path / "r.jsonl") if r["metric"] == "ppl"}
    assert rows["longrope+searched"]["params"]["long_rescale"] == list(further.long_rescale)
    assert rows["longrope"]["params"]["long_rescale"] == list(tuned.long_rescale)
