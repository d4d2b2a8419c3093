"""Long-context tasks from the command line: `hopekit eval CKPT --task ...` (table, records, resumable,
one-line errors) and `hopekit bench --suite tasks|all` (task rows, the report's tasks section, another
suite added to a finished run without retraining)."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from hopekit.bench import SUITES, load_bench
from hopekit.cli import main
from hopekit.eval import read_records
from hopekit.eval.task_report import task_table
from hopekit.eval.tasks import TASK_METRICS, TASKS

#: a decoder small enough that two steps and a task evaluation take well under a second; train_len 64
#: holds a compact pass key (54 tokens without filler)
TINY = ["train.steps=2", "train.batch_size=2", "train.warmup_steps=1", "train.train_len=64", "model.d_model=16",
        "model.n_layers=1", "model.n_heads=2", "train.checkpoint_every=0", "train.log_every=1",
        "data.task_style=compact"]
TASK_EVAL = ["eval.multiples=[1,2]", "eval.task_depths=[0,1]", "eval.task_instances=2"]
EXTENSIONS = ["rope+linear", "rope+ntk", "rope+dynamic_ntk", "rope+yarn"]


def run(capsys, *argv):
    """``(exit status, stdout, stderr)`` of ``hopekit argv`` run in-process."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(code, err, *fragments):
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hopekit: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from hopekit.config import load_config
    from hopekit.train import train

    out = tmp_path_factory.mktemp("ckpt")
    train(load_config("tiny", TINY), out, progress=False, log=None)
    return out / "checkpoint.pt"


# --- hopekit eval --task ------------------------------------------------------------------------

def test_eval_task_prints_the_table_writes_records_and_resumes(checkpoint, tmp_path, capsys):
    records = tmp_path / "run" / "records.jsonl"
    code, out, err = run(capsys, "eval", str(checkpoint), "--task", "passkey", *TASK_EVAL, "--records", str(records))
    assert code == 0, err
    rows = read_records(records)
    assert sorted({(r["method"], r["eval_len"]) for r in rows}) == sorted(
        [("rope", 64), ("rope", 128)] + [(m, 128) for m in EXTENSIONS])
    assert {r["task"] for r in rows} == {"passkey"} and {r["depth"] for r in rows} == {0, 1}
    assert len(rows) == 6 * 2 * len(TASK_METRICS) and {r["instances"] for r in rows} == {2}
    assert {r["style"] for r in rows} == {"compact"}                 # the checkpoint's data.task_style
    assert "passkey: accuracy (%), mean over depths 0, 1" in out and task_table(rows, "passkey") in out
    # the rope cell at 64 by hand: the mean over the two depths of the accuracy rows, in %
    acc = [r["value"] for r in rows if r["metric"] == "accuracy" and r["method"] == "rope" and r["eval_len"] == 64]
    rope_line = next(line for line in out.splitlines() if line.startswith("| `rope` |"))
    assert rope_line.split("|")[2].strip().strip("*") == f"{100 * statistics.fmean(acc):.1f}"
    assert "hopekit report" in out                                  # where the heat maps come from

    code, again, _ = run(capsys, "eval", str(checkpoint), "--task", "passkey", *TASK_EVAL, "--records", str(records),
                         "--quiet")
    assert code == 0 and len(read_records(records)) == len(rows) and task_table(rows, "passkey") in again
    assert "hopekit report" not in again and "already recorded" not in again      # --quiet: the tables alone

    code, _, err = run(capsys, "report", str(records.parent))
    assert code == 0, err
    report = (records.parent / "report.md").read_text()
    assert report.startswith("# run: long-context tasks") and task_table(rows, "passkey") in report
    assert (records.parent / "tasks_passkey_heatmap.png").exists()


def test_eval_task_names_reach_the_config(checkpoint, capsys):
    def tasks(*argv):
        code, out, err = run(capsys, "eval", str(checkpoint), *argv, "--print-config")
        assert code == 0, err
        return yaml.safe_load(out)

    assert tasks("--task", "passkey,copy")["eval"]["tasks"] == ["passkey", "copy"]
    assert tasks("--task", " kv , needle ")["eval"]["tasks"] == ["kv", "needle"]
    assert tasks("--task", "all")["eval"]["tasks"] == list(TASKS)
    printed = tasks("--task", "copy", "data.task_style=standard", "eval.task_scoring=generation")
    assert printed["data"]["task_style"] == "standard" and printed["eval"]["task_scoring"] == "generation"


@pytest.mark.parametrize("names", ["foo", "passkey,foo", ","])
def test_an_unknown_task_is_one_line(checkpoint, capsys, names):
    code, out, err = run(capsys, "eval", str(checkpoint), "--task", names, "--print-config")
    assert_one_error_line(code, err, f"--task {names}", "passkey, copy, needle, kv")
    assert out == ""


def test_an_empty_task_list_is_refused(checkpoint, capsys):
    code, _, err = run(capsys, "eval", str(checkpoint), "--task", "", "--print-config")
    assert_one_error_line(code, err, "--task")


def test_eval_task_errors_are_one_line(checkpoint, tmp_path, capsys):
    code, _, err = run(capsys, "eval", str(checkpoint), "--task", "passkey", "data.corpus=x", "--print-config")
    assert_one_error_line(code, err, "data.corpus=x", "eval.*")
    code, _, err = run(capsys, "eval", str(checkpoint), "--task", "passkey", "eval.task_depths=[2]", "--print-config")
    assert_one_error_line(code, err, "EvalConfig.task_depths=", "[0, 1]")
    # the published pass-key format needs ~250 tokens: at 64 it does not fit
    records = tmp_path / "records.jsonl"
    code, _, err = run(capsys, "eval", str(checkpoint), "--task", "passkey", "data.task_style=standard",
                       "eval.multiples=[1]", "eval.extensions=[]", "--records", str(records), "--quiet")
    assert_one_error_line(code, err, "task 'passkey' in style 'standard' needs instances of >= 254 tokens",
                          "the shortest here is 64", "data.task_style='compact'")
    assert not records.exists() or read_records(records) == []


@pytest.mark.slow   # the refusal comes after hopekit.integrations.hf is imported (transformers: ~3-5 s)
def test_eval_task_with_a_pretrained_model_is_one_line(capsys):
    code, _, err = run(capsys, "eval", "--hf", "no-such-model", "--task", "passkey")   # measured, once loaded
    assert_one_error_line(code, err, "no-such-model")


# --- hopekit bench --suite ----------------------------------------------------------------------

def test_suites_and_the_tasks_preset_load():
    assert SUITES == ("ppl", "tasks", "all")
    assert load_bench("smoke").suite == "ppl"
    assert load_bench("smoke", suite="tasks").suite == "tasks" and load_bench("smoke", ["suite=all"]).suite == "all"
    assert load_bench("smoke", suite="tasks").resolved()["suite"] == "tasks"
    b = load_bench("tasks")
    exp = b.experiment
    assert b.suite == "all" and b.name == "tasks"
    assert exp.data.task_fraction == 0.5 and exp.data.task_style == "compact" and exp.data.tasks == ("passkey", "copy")
    assert exp.eval.tasks == ("passkey", "copy") and exp.eval.task_depths == (0.0, 0.25, 0.5, 0.75, 1.0)
    for method in b.methods:                                          # every method's config validates
        cfg = b.method_config(method, b.seeds[-1])
        assert cfg.data.task_fraction == 0.5 and cfg.train.seed == b.seeds[-1]
    assert load_bench("tasks", suite="ppl").suite == "ppl"


def test_a_bad_suite_is_refused_naming_it(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"^suite='perplexity': expected one of ppl, tasks, all$"):
        load_bench("smoke", suite="perplexity")
    preset = tmp_path / "bench.yaml"
    preset.write_text("name: x\nsuite: both\nexperiment: {}\nmethods: {rope: {kind: rope}}\n")
    with pytest.raises(ValueError, match=r"^suite='both': expected one of ppl, tasks, all$"):
        load_bench(preset)
    code, out, _ = run(capsys, "bench", "--preset", "smoke", "--suite", "tasks", "--print-config")
    assert code == 0 and yaml.safe_load(out)["suite"] == "tasks"
    code, _, err = run(capsys, "bench", "--preset", "smoke", "--suite", "nope", "--print-config")
    assert code == 2 and "--suite" in err and "invalid choice" in err


BENCH = ["--preset", "smoke", "--methods", "rope,alibi", "--seeds", "1", "--no-progress", "--quiet",
         "train.steps=2", "train.warmup_steps=1", "eval.multiples=[1,2]", "eval.extensions=[yarn]",
         "eval.tasks=[copy]", "eval.task_depths=[0,1]", "eval.task_instances=2", "data.task_style=compact",
         "data.task_fraction=0.5", "data.tasks=[copy]"]


def test_bench_task_suite_then_all_adds_perplexity_without_retraining(tmp_path, capsys):
    run_dir = tmp_path / "bench"
    code, out, err = run(capsys, "bench", *BENCH, "--suite", "tasks", "--run-dir", str(run_dir))
    assert code == 0, err
    records = read_records(run_dir / "records.jsonl")
    tasks = [r for r in records if r.get("task") in TASKS]
    assert not [r for r in records if r["metric"] == "ppl"]
    assert sorted({(r["method"], r["eval_len"]) for r in tasks}) == [("alibi", 32), ("alibi", 64), ("rope", 32),
                                                                      ("rope", 64), ("rope+yarn", 64)]
    assert len(tasks) == 5 * 2 * len(TASK_METRICS) and {r["style"] for r in tasks} == {"compact"}
    for name in ("rope", "alibi"):                                   # trained on the mixture: half the corpus rows
        epochs = next(r for r in records if r["method"] == name and r["metric"] == "epochs")
        assert epochs["value"] == pytest.approx(2 * 4 * 32 * 0.5 / epochs["train_tokens"])
        assert epochs["config"]["data"]["task_fraction"] == 0.5
    report = (run_dir / "report.md").read_text()
    assert out.strip() == report.strip()
    assert report.startswith(f"# {run_dir.name}: long-context tasks\n") and "\n## copy: accuracy (%)" in report
    assert task_table(records, "copy") in report and (run_dir / "tasks_copy_heatmap.png").exists()
    assert json.loads((run_dir / "bench.json").read_text())["suite"] == "tasks"

    ckpts = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*.pt")}
    assert len(ckpts) == 2
    code, _, err = run(capsys, "bench", *BENCH, "--suite", "all", "--run-dir", str(run_dir))
    assert code == 0, err
    after = read_records(run_dir / "records.jsonl")
    assert after[:len(records)] == records
    new = after[len(records):]
    assert not [r for r in new if r.get("task") in TASKS]            # the task cells were recorded already
    assert {(r["method"], r["eval_len"]) for r in new if r["metric"] == "ppl"} == {
        ("rope", 32), ("rope", 64), ("alibi", 32), ("alibi", 64), ("rope+yarn", 64)}
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*.pt")} == ckpts   # not retrained
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# bench: perplexity vs evaluation length") and "\n## Long-context tasks\n" in report
    assert task_table(after, "copy") in report and (run_dir / "ppl_vs_length.png").exists()

    # a bench.json written before a field existed: at its default it matches, otherwise it is reported
    saved = json.loads((run_dir / "bench.json").read_text())
    del saved["experiment"]["eval"]["task_scoring"]                  # likelihood, the default
    (run_dir / "bench.json").write_text(json.dumps(saved))
    code, _, err = run(capsys, "bench", *BENCH, "--suite", "tasks", "--run-dir", str(run_dir))
    assert code == 0, err
    assert len(read_records(run_dir / "records.jsonl")) == len(after)
    saved = json.loads((run_dir / "bench.json").read_text())
    del saved["experiment"]["eval"]["task_instances"]                # 2 here, not the default 8
    (run_dir / "bench.json").write_text(json.dumps(saved))
    code, _, err = run(capsys, "bench", *BENCH, "--suite", "tasks", "--run-dir", str(run_dir))
    assert_one_error_line(code, err, "different config", "experiment.eval.task_instances: saved (absent), now 2")


def test_a_task_suite_that_cannot_fit_is_refused_before_anything_trains(tmp_path, capsys):
    run_dir = tmp_path / "bench"
    code, _, err = run(capsys, "bench", *BENCH, "--suite", "tasks", "data.task_style=standard", "--run-dir", str(run_dir))
    assert_one_error_line(code, err, "--suite tasks", "needs instances of >=", "data.task_style='compact'")
    assert not (run_dir / "checkpoints").exists()
    code, _, err = run(capsys, "bench", *BENCH, "eval.task_depths=[0.5,0.5]", "--print-config")
    assert_one_error_line(code, err, "EvalConfig.task_depths=[0.5, 0.5]", "holds a depth twice")
