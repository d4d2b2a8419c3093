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


# --- helpers ------------------------------------------------------------------------------------

import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

#: a decoder small enough that a few steps and an evaluation take well under a second
TINY = ["train.batch_size=2", "train.warmup_steps=1", "train.train_len=16", "model.d_model=16", "model.n_layers=1", "model.n_heads=2",
        "train.checkpoint_every=0", "train.log_every=1"]


def run(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``hopekit argv`` run in-process."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # what the shell would see, whether main returns or exits
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code, err, *fragments):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hopekit: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from hopekit.config import load_config
    from hopekit.train import train

    out = tmp_path_factory.mktemp("ckpt")
    train(load_config("tiny", ["train.steps=2", *TINY]), out, progress=False, log=None)
    return out / "checkpoint.pt"


# --- 1. user errors: one line, exit 2; --debug adds the traceback; bugs keep theirs ----------------

def test_user_error_is_one_line_and_exit_2(capsys):
    code, out, err = run(capsys, "bench", "--preset", "no-such-preset")
    assert_one_error_line(code, err, "preset='no-such-preset'")
    assert out == ""


def test_validation_file_and_yaml_errors_are_user_errors(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--print-config", "train.steps=abc")  # TypeError naming the field
    assert_one_error_line(code, err, "TrainConfig.steps='abc'")
    code, _, err = run(capsys, "train", "--config", str(tmp_path / "missing.yaml"), "--print-config")
    assert_one_error_line(code, err, "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1\n")
    code, _, err = run(capsys, "train", "--config", str(bad), "--print-config")
    assert code == 2 and err.startswith("hopekit: error: ") and str(bad) in err and "Traceback" not in err
    assert "error" not in "".join(err.splitlines(True)[1:])  # extra lines continue the message, no new error


def test_checkpoint_error_is_a_user_error(tmp_path, capsys):
    junk = tmp_path / "checkpoint.pt"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "eval", str(junk))
    assert_one_error_line(code, err, str(junk))


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_the_traceback(where, capsys):
    argv = ["bench", "--preset", "no-such-preset"]
    argv = ["--debug", *argv] if where == "before" else [*argv, "--debug"]
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("hopekit: error: preset=")


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    import hopekit.cli
    from hopekit.config import apply_overrides

    def bug_outside(args):
        return None + 1  # a TypeError not raised by hopekit's validation

    def bug_inside(args):
        return apply_overrides({}, [None])  # a TypeError from an operation inside hopekit, not a raise

    for bug, exc in ((bug_outside, TypeError), (bug_inside, TypeError), (lambda args: 1 / 0, ZeroDivisionError)):
        monkeypatch.setattr(hopekit.cli, "_train", bug)
        with pytest.raises(exc):
            main(["train"])


def test_keyboard_interrupt_exits_130_with_one_line(monkeypatch, capsys):
    import hopekit.cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(hopekit.cli, "_train", interrupted)
    try:
        code, _, err = run(capsys, "train")
    except KeyboardInterrupt:  # escaping would stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130 and len(err.splitlines()) == 1 and "interrupted" in err and "Traceback" not in err


# --- 2. --version -------------------------------------------------------------------------------

def test_version(capsys):
    from importlib.metadata import PackageNotFoundError, version

    import hopekit

    try:
        expected = version("hopekit")
    except PackageNotFoundError:
        expected = hopekit.__version__
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out == f"hopekit {expected}\n"


# --- 3. methods ---------------------------------------------------------------------------------

def _fields(name):
    return dataclasses.fields(pe.REGISTRY[name].params)


def _required(f):
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def test_methods_json_lists_every_method_with_capability_parameters_and_source(capsys):
    code, out, _ = run(capsys, "methods", "--json")
    assert code == 0
    table = json.loads(out)
    assert list(table) == list(pe.REGISTRY)
    for name, entry in table.items():
        method = pe.REGISTRY[name]
        assert entry["source"] == method.summary
        for flag in ("embed", "rotate", "bias", "scores", "tokens"):
            assert (flag in entry["capability"]) == (getattr(method.encoding, f"uses_{flag}") is True), (name, flag)
        assert list(entry["parameters"]) == [f.name for f in _fields(name)]
        for f in _fields(name):
            spec = entry["parameters"][f.name]
            assert spec["required"] == _required(f), (name, f.name)
            if not _required(f):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                if isinstance(default, pe.Params):  # a nested method (bipe's inter) in its config form
                    default = pe.to_config(default)
                assert spec["default"] == json.loads(json.dumps(default)), (name, f.name)
    assert table["bipe"]["capability"][-1] == "+ inter method's"  # its attention hooks come from `inter`


def test_methods_text_is_one_aligned_block_per_method(capsys):
    code, out, _ = run(capsys, "methods")
    assert code == 0
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if line and not line.startswith(" ")]
    assert [lines[i].split()[0] for i in starts[1:]] == list(pe.REGISTRY)  # after the header
    column = lines[starts[1]].index(pe.REGISTRY["rope"].summary)
    for i, name in zip(starts[1:], pe.REGISTRY):
        assert lines[i].index(pe.REGISTRY[name].summary) == column  # sources aligned
        block = " ".join(lines[i + 1:(starts + [len(lines)])[starts.index(i) + 1]])
        for f in _fields(name):
            assert f"pe.{f.name}=" in block
            assert (f"pe.{f.name}=<required>" in block) == _required(f)
    yarn = " ".join(lines[starts[1 + list(pe.REGISTRY).index("yarn")]:])
    assert "pe.beta_fast=32.0" in yarn and "pe.truncate=true" in yarn  # defaults as typed in an override


# --- 4. presets ---------------------------------------------------------------------------------

def test_presets_lists_every_packaged_preset_and_each_loads(capsys):
    from hopekit.bench import BENCH_PRESETS, load_bench
    from hopekit.config import CONFIG_DIR, load_config

    code, out, _ = run(capsys, "presets", "--json")
    assert code == 0
    table = json.loads(out)
    assert set(BENCH_PRESETS) <= set(table["bench"]) and "tiny" in table["experiment"]
    assert len(table["bench"]) + len(table["experiment"]) == len(list(CONFIG_DIR.glob("*.yaml")))
    assert set(table["scrolls"]) == {p.stem for p in (CONFIG_DIR / "scrolls").glob("*.yaml")} and table["scrolls"]
    for name in table["experiment"]:
        load_config(name)
    for name in table["bench"]:
        load_bench(name)
    from hopekit.eval.scrolls import load_scrolls_config

    for name in table["scrolls"]:
        load_scrolls_config(name)
    code, text, _ = run(capsys, "presets")
    smoke_comment = (CONFIG_DIR / "bench_smoke.yaml").read_text().splitlines()[0].lstrip("# ")
    assert table["bench"]["smoke"] == smoke_comment  # its first comment line (one sentence)
    for group in table.values():
        for name, description in group.items():
            assert description and re.search(rf"^  {name} +{re.escape(description)}$", text, re.M)


# --- 5. --print-config, 7. overrides mixed with options -----------------------------------------------

def test_train_print_config_is_the_resolved_config_and_loads_back(tmp_path, monkeypatch, capsys):
    from hopekit.config import load_config

    monkeypatch.chdir(tmp_path)
    # overrides before, between and after options; the later of two values wins
    code, out, _ = run(capsys, "train", "train.steps=5", "--print-config", "model.n_layers=1", "--config", "tiny",
                       "pe.kind=alibi", "--out", "x", "train.steps=7", "train.warmup_steps=2")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed == load_config("tiny", ["model.n_layers=1", "pe.kind=alibi", "train.steps=7",
                                           "train.warmup_steps=2"]).resolved()
    assert printed["train"]["steps"] == 7 and printed["pe"]["kind"] == "alibi"
    (tmp_path / "printed.yaml").write_text(out)
    assert load_config(tmp_path / "printed.yaml").resolved() == printed
    assert list(tmp_path.iterdir()) == [tmp_path / "printed.yaml"]  # nothing was run


def test_overrides_and_options_mix_in_any_order_when_training(tmp_path, capsys):
    from hopekit.train import load_checkpoint

    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "train.steps=2", "--out", str(out), TINY[0], "--no-progress", *TINY[1:])
    assert code == 0, err
    _, config, ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["step"] == 2 and config.model["d_model"] == 16 and config.train.batch_size == 2


def test_bench_print_config(tmp_path, monkeypatch, capsys):
    from hopekit.bench import load_bench

    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "bench", "--preset", "smoke", "train.steps=2", "--methods", "rope,alibi",
                       "--print-config", "eval.multiples=[1,2]")
    assert code == 0
    expected = load_bench("smoke", ["train.steps=2", "eval.multiples=[1,2]"], ["rope", "alibi"]).resolved()
    assert yaml.safe_load(out) == expected
    assert not list(tmp_path.iterdir())  # no results/ directory: nothing was run


def test_eval_print_config_applies_eval_overrides(checkpoint, capsys):
    from hopekit.train import load_checkpoint

    _, saved, _ = load_checkpoint(checkpoint)
    code, out, _ = run(capsys, "eval", str(checkpoint), "--extensions", "linear,yarn", "eval.multiples=[1,2]",
                       "--print-config", "eval.protocol=sliding")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["eval"]["multiples"] == [1, 2] and printed["eval"]["protocol"] == "sliding"
    assert printed["eval"]["extensions"] == ["linear", "yarn"]
    unchanged = {k: v for k, v in saved.resolved().items() if k != "eval"}
    assert {k: v for k, v in printed.items() if k != "eval"} == unchanged
    assert not (checkpoint.parent / "records.jsonl").exists()


def test_eval_refuses_non_eval_overrides(checkpoint, capsys):
    code, _, err = run(capsys, "eval", str(checkpoint), "train.steps=3", "--print-config")
    assert_one_error_line(code, err, "train.steps=3", "eval.*")


# --- 6. --quiet, 8. --extensions '' -------------------------------------------------------------

def test_eval_empty_extensions_means_none_and_quiet_prints_only_the_table(checkpoint, tmp_path, capsys):
    from hopekit.eval import read_records

    records = tmp_path / "records.jsonl"
    code, out, err = run(capsys, "eval", str(checkpoint), "--extensions", "", "--records", str(records),
                         "eval.multiples=[1,2]", "--quiet", "eval.max_tokens=64")
    assert code == 0, err
    rows = read_records(records)
    assert {r["method"] for r in rows} == {"rope"} and {r["eval_len"] for r in rows if r["metric"] == "ppl"} == {16, 32}
    assert out.lstrip().startswith("|") and "eval_len" not in out  # the table, no log lines
    assert err == ""


def test_eval_longrope_file_needs_its_factor(checkpoint, tmp_path, capsys):
    import math

    from hopekit.eval import read_records

    records, factors = tmp_path / "records.jsonl", tmp_path / "factors.json"
    half = 4                                                             # d_model 16, 2 heads: 4 pairs
    searched = {"short_rescale": [1.0] * half, "long_rescale": [1.0 + i for i in range(half)]}
    factors.write_text(json.dumps(searched))
    argv = ["eval", str(checkpoint), "--extensions", "", "--longrope", str(factors), "--records", str(records),
            "eval.multiples=[1,2]", "eval.max_tokens=64", "--quiet"]
    code, _, err = run(capsys, *argv)
    assert_one_error_line(code, err, f"--longrope {factors}: longrope.factor: missing", "target ratio")
    assert not records.exists()
    factors.write_text(json.dumps({**searched, "factor": 4.0}))
    code, _, err = run(capsys, *argv)
    assert code == 0, err
    rows = [r for r in read_records(records) if r["metric"] == "ppl" and r["method"] == "rope+longrope"]
    assert [r["eval_len"] for r in rows] == [16, 32] and {r["params"]["factor"] for r in rows} == {4.0}
    params = pe.parse(rows[0]["params"])
    assert pe.schedules.longrope_attention_factor(params) == pytest.approx(math.sqrt(1 + math.log(4.0) / math.log(16)))


def test_train_quiet_prints_only_the_result(tmp_path, capsys):
    code, out, err = run(capsys, "train", "--quiet", "--out", str(tmp_path / "run"), "train.steps=2", *TINY)
    assert code == 0
    assert out.splitlines() == [f"trained 2 steps; final loss {out.split('final loss ')[1].split(';')[0]}; "
                                f"checkpoint {tmp_path / 'run' / 'checkpoint.pt'}"]
    assert err == ""


@pytest.mark.slow  # trains and evaluates a (tiny) method: ~3-6 s
def test_bench_quiet_prints_only_the_report(tmp_path, capsys):
    run_dir = tmp_path / "bench"
    code, out, err = run(capsys, "bench", "--preset", "smoke", "--methods", "rope", "--run-dir", str(run_dir),
                         "-q", "train.steps=2", "eval.multiples=[1]", "eval.max_tokens=64", "eval.extensions=[]")
    assert code == 0
    assert out == (run_dir / "report.md").read_text() + "\n"
    assert err == ""


# --- 9. the help's examples work ------------------------------------------------------------------

def test_train_help_examples_build_a_model(capsys):
    from hopekit.config import load_config

    code, out, _ = run(capsys, "train", "--help")
    assert code == 0
    examples = [m.rstrip("`.,;)") for m in re.findall(r"(?<![\w.-])[a-z_]+\.[a-z_]+=\S+", out)]
    assert any(e.startswith("pe.kind=") for e in examples), out
    for example in examples:  # each one alone gives a model that can be built (e.g. not pe.kind=yarn without train_len)
        load_config("tiny", [example]).model_config(vocab_size=256)


# --- 10. fine-tuning a checkpoint: --init-from, --pe-file ------------------------------------------

def test_train_init_from_with_a_pe_file_starts_from_the_sources_config(checkpoint, tmp_path, capsys):
    from hopekit.train import load_checkpoint, read_checkpoint

    source = read_checkpoint(checkpoint)
    (tmp_path / "yarn.json").write_text(json.dumps({"kind": "yarn", "factor": 4.0}))
    (tmp_path / "longrope.yaml").write_text("kind: longrope\nshort_rescale: [1, 1, 1, 1]\n"
                                            "long_rescale: [1, 2, 3, 4.5]\nfactor: 4\n")
    code, out, err = run(capsys, "train", "--init-from", str(checkpoint), "--pe-file", str(tmp_path / "longrope.yaml"),
                         "train.train_len=64", "pe.start_tokens=2", "--print-config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["pe"]["long_rescale"] == [1.0, 2.0, 3.0, 4.5] and printed["pe"]["start_tokens"] == 2
    assert printed["pe"]["train_len"] == 16 and printed["train"]["train_len"] == 64   # the original window
    assert printed["init_from"] == {"path": str(checkpoint), "content_hash": source["content_hash"], "train_len": 16}
    assert {k: v for k, v in printed.items() if k not in ("pe", "train", "init_from", "model")} == {
        k: v for k, v in source["config"].items() if k not in ("pe", "train", "model")}  # the source's config: the base
    assert printed["model"] == {k: v for k, v in source["model_config"].items() if k not in ("vocab_size", "pe")}
    out_dir = tmp_path / "ft"
    code, out, err = run(capsys, "train", "-q", "--init-from", str(checkpoint), "--pe-file", str(tmp_path / "yarn.json"),
                         "train.train_len=32", "train.steps=1", "train.warmup_steps=0", "--out", str(out_dir))
    assert code == 0, err
    _, config, ckpt = load_checkpoint(out_dir / "checkpoint.pt")
    assert config.pe.kind == "yarn" and config.pe.train_len == 16 and config.init_from["path"] == str(checkpoint)
    assert ckpt["step"] == 1 and float(next(iter(ckpt["optimizer"]["state"].values()))["step"]) == 1.0


def test_pe_file_works_without_init_from_and_its_errors_name_the_file(tmp_path, capsys):
    (tmp_path / "alibi.yaml").write_text("kind: alibi\nmax_bias: 4.0\n")
    code, out, _ = run(capsys, "train", "--pe-file", str(tmp_path / "alibi.yaml"), "--print-config")
    assert code == 0 and yaml.safe_load(out)["pe"] == {"kind": "alibi", "max_bias": 4.0}
    (tmp_path / "bad.json").write_text('["yarn"]')
    code, _, err = run(capsys, "train", "--pe-file", str(tmp_path / "bad.json"), "--print-config")
    assert_one_error_line(code, err, str(tmp_path / "bad.json"), "expected a pe block")
    code, _, err = run(capsys, "train", "--pe-file", str(tmp_path / "alibi.yaml"), "--pe", "rope", "--print-config")
    assert_one_error_line(code, err, "--pe rope and --pe-file")
    code, _, err = run(capsys, "train", "--init-from", str(tmp_path / "missing.pt"), "--print-config")
    assert_one_error_line(code, err, str(tmp_path / "missing.pt"), "no such file")
