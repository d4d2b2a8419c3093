"""``hopekit eval --hf``: a pretrained transformers model (a tiny random Llama saved as a model
directory) evaluated from the command line end to end — records, resume, report — and its one-line
errors. The library behind it is tested in tests/eval/test_pretrained.py."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
from hopekit.cli import main  # noqa: E402
from hopekit.eval import read_records  # noqa: E402

from tests.eval._tiny_hf import BASE, WINDOW, words  # noqa: E402


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text("\n\n".join(words(n_docs=2)))
    return path


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def ppl_rows(path):
    return [r for r in read_records(path) if r["metric"] == "ppl"]


def test_eval_hf_writes_records_resumes_and_reports(tiny_dir, text_file, tmp_path, capsys):
    records = tmp_path / "run" / "records.jsonl"
    common = ("--hf", str(tiny_dir), "--text", str(text_file), "--records", str(records), "--lengths", "16,32")
    code, out, err = run(capsys, "eval", *common)
    assert code == 0, err
    code, out, err = run(capsys, "eval", *common, "--pe", "yarn", "pe.factor=2", "eval.max_tokens=40")
    assert code == 0, err
    assert "| `rope+yarn×2` |" in out and "already recorded" not in out
    rows = ppl_rows(records)
    assert [(r["method"], r["eval_len"]) for r in rows] == [("rope", 16), ("rope", 32), ("rope+yarn×2", 16),
                                                            ("rope+yarn×2", 32)]
    yarn = rows[-1]
    assert yarn["params"]["kind"] == "yarn" and yarn["params"]["base"] == BASE and yarn["params"]["factor"] == 2
    assert (yarn["max_tokens"], yarn["tokens"], yarn["train_len"], yarn["dtype"], yarn["bos"]) == \
        (40, 64, WINDOW, "float32", False)                       # windows are kept whole: 2 of 32
    assert rows[2]["tokens"] == 48                                # 3 windows of 16 reach 40 scored targets
    size = records.stat().st_size
    code, out, _ = run(capsys, "eval", "eval.max_tokens=40", *common, "pe.factor=2", "--pe", "yarn")
    assert code == 0 and out.count("already recorded") == 2 and records.stat().st_size == size
    code, out, err = run(capsys, "report", str(records.parent))
    assert code == 0, err
    report = (records.parent / "report.md").read_text()
    assert "| `rope+yarn×2` |" in report and "pretrained model" in report
    assert (records.parent / "ppl_vs_length.png").stat().st_size > 0


def test_eval_hf_quiet_prints_only_the_table(tiny_dir, text_file, tmp_path, capsys):
    code, out, err = run(capsys, "eval", "--hf", str(tiny_dir), "--text", str(text_file), "-q", "--bos",
                         "--records", str(tmp_path / "r.jsonl"), "--lengths", "8", "--pe", "alibi")
    assert code == 0, err
    assert out.lstrip().startswith("| method") and "| `rope+alibi` |" in out and "eval_len" not in out
    assert [(r["eval_len"], r["bos"], r["pe_impl"]) for r in ppl_rows(tmp_path / "r.jsonl")] == [(8, True, "hopekit")]


def test_eval_hf_print_config_resolves_the_encoding(tiny_dir, capsys):
    import yaml

    code, out, err = run(capsys, "eval", "--hf", str(tiny_dir), "--pe", "linear", "pe.factor=4", "--print-config",
                         "eval.protocol=sliding")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["pe"] == {"kind": "linear", "base": BASE, "rotary_fraction": 1.0, "factor": 4.0}
    assert printed["lengths"] == [8, 16, 32, 64] and printed["eval"]["protocol"] == "sliding"


@pytest.mark.parametrize("argv, expected", [
    (["--pe", "yarn", "pe.nosuch=1"], "pe.nosuch: not a parameter of yarn"),
    (["--pe", "yarn", "pe.factor=-2"], "factor"),
    (["--pe", "nosuch"], "kind='nosuch'"),
    (["pe.factor=2"], "pe.factor=2: pe.* overrides need --pe KIND"),
    (["train.steps=3"], "train.steps=3: with --hf only pe.*"),
    (["eval.multiples=[1,2]"], "--lengths"),
    (["eval.nosuch=1"], "eval.nosuch: unknown key"),
    (["--lengths", "16,x"], "--lengths 16,x: expected comma-separated ints"),
    (["--lengths", "100000"], "eval_len=100000"),
    (["--extensions", "yarn"], "--extensions / --longrope"),
])
def test_eval_hf_errors_are_one_line(tiny_dir, text_file, tmp_path, capsys, argv, expected):
    code, out, err = run(capsys, "eval", "--hf", str(tiny_dir), "--text", str(text_file),
                         "--records", str(tmp_path / "r.jsonl"), *argv)
    assert code == 2 and err.startswith("hopekit: error: ") and len(err.strip().splitlines()) == 1, err
    assert expected in err
    assert not (tmp_path / "r.jsonl").exists()


def test_a_too_short_text_says_how_many_tokens_it_has(tiny_dir, tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("the king doth speak")
    code, _, err = run(capsys, "eval", "--hf", str(tiny_dir), "--text", str(short), "--lengths", "8,64")
    assert code == 2 and "19 tokens in 1 document(s)" in err and "eval_len=64" in err


def test_unknown_models_and_options_without_hf(tmp_path, capsys):
    code, _, err = run(capsys, "eval", "--hf", str(tmp_path / "absent"))
    assert code == 2 and "hf=" in err and "no such file or directory" in err
    code, _, err = run(capsys, "eval", "--pe", "yarn", str(tmp_path / "ckpt.pt"))
    assert code == 2 and "--pe: only with --hf NAME" in err
    code, _, err = run(capsys, "eval")
    assert code == 2 and "give a checkpoint or --hf NAME" in err
    code, _, err = run(capsys, "eval", str(tmp_path / "ckpt.pt"), "--hf", str(tmp_path))
    assert code == 2 and "not both" in err


def test_the_records_of_a_text_name_the_file(tiny_dir, text_file, tmp_path, capsys):
    records = tmp_path / "r.jsonl"
    assert run(capsys, "eval", "--hf", str(tiny_dir), "--text", str(text_file), "--records", str(records),
               "--lengths", "8", "-q")[0] == 0
    row = ppl_rows(records)[0]
    assert row["corpus"] == f"file:{text_file.resolve()}" and row["split"] is None
    assert json.loads(json.dumps(row["hf_source"])) == {"path": str(tiny_dir)}


def test_eval_hf_reads_the_encoding_from_a_pe_file(tiny_dir, tmp_path, capsys):
    """``--pe-file`` (e.g. a LongRoPE search's longrope.json) gives the same encoding as ``--pe`` with
    overrides; ``pe.*`` overrides apply on top; ``--pe`` with ``--pe-file`` is refused."""
    import json

    import yaml

    path = tmp_path / "yarn.json"
    path.write_text(json.dumps({"kind": "yarn", "factor": 4}))
    code, from_file, err = run(capsys, "eval", "--hf", str(tiny_dir), "--pe-file", str(path), "--print-config")
    assert code == 0, err
    code, from_flags, err = run(capsys, "eval", "--hf", str(tiny_dir), "--pe", "yarn", "pe.factor=4", "--print-config")
    assert code == 0, err
    assert yaml.safe_load(from_file)["pe"] == yaml.safe_load(from_flags)["pe"]
    code, out, err = run(capsys, "eval", "--hf", str(tiny_dir), "--pe-file", str(path), "pe.factor=2", "--print-config")
    assert code == 0 and yaml.safe_load(out)["pe"]["factor"] == 2.0, err
    code, _, err = run(capsys, "eval", "--hf", str(tiny_dir), "--pe-file", str(path), "--pe", "yarn")
    assert code == 2 and "--pe yarn and --pe-file" in err
