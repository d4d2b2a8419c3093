"""Task tables and figures from records alone: mean over depths, then mean ± sd over seeds, the last of
duplicated rows counting; the report's tasks section, alone or after the perplexity sections."""

from __future__ import annotations

import math
import re

import pytest

from hopekit.eval.records import append_records, make_record
from hopekit.eval.report import write_report
from hopekit.eval.task_report import (
    plot_task_accuracy,
    plot_task_heatmap,
    task_cells,
    task_rows,
    task_section,
    task_table,
)

PNG = b"\x89PNG\r\n\x1a\n"


def rec(task: str, method: str, seed: int, eval_len: int, depth: float, value: float, metric: str = "accuracy",
        **extra) -> dict:
    return make_record(method=method, params={"kind": method.split("+")[0]}, train_len=64, eval_len=eval_len,
                       task=task, metric=metric, value=value, seed=seed, model="toy", corpus="shakespeare",
                       commit="c", time="t", depth=depth, style="compact", split="test", scoring="likelihood",
                       instances=8, **extra)


#: accuracy[(method, seed, eval_len)] = (value at depth 0, value at depth 1)
ACC = {("rope", 0, 64): (1.0, 0.75), ("rope", 1, 64): (0.5, 1.0),
       ("rope", 0, 128): (0.625, 0.0), ("rope", 1, 128): (0.25, 0.125),
       ("alibi", 0, 64): (0.875, 0.875), ("alibi", 1, 64): (1.0, 0.375),
       ("alibi", 0, 128): (0.5, 0.25), ("alibi", 1, 128): (0.75, 0.5)}


def records() -> list[dict]:
    rows = [rec("passkey", "rope", 0, 128, 0, 0.0)]     # measured again below (depth 0.0): this one is overridden
    for (method, seed, L), (d0, d1) in ACC.items():
        rows += [rec("passkey", method, seed, L, 0.0, d0), rec("passkey", method, seed, L, 1.0, d1)]
        rows += [rec("passkey", method, seed, L, d, 1 - v, metric="token_accuracy") for d, v in ((0.0, d0), (1.0, d1))]
    rows.append(rec("copy", "nope", 0, 64, 0.5, 0.25))   # one seed, one length
    rows.append(make_record(method="rope", params={"kind": "rope"}, train_len=64, eval_len=64, task="bench",
                            metric="train_seconds", value=3.0, seed=0, model="toy", corpus="shakespeare", commit="c",
                            time="t"))
    return rows


def hand_cell(method: str, L: int, transform=lambda v: v) -> tuple[float, float]:
    """Mean over the two depths per seed, then mean and sample sd over the two seeds, in %."""
    per_seed = [sum(transform(v) for v in ACC[(method, s, L)]) / 2 for s in (0, 1)]
    mean = (per_seed[0] + per_seed[1]) / 2
    sd = math.sqrt(((per_seed[0] - mean) ** 2 + (per_seed[1] - mean) ** 2) / 1)
    return 100 * mean, 100 * sd


def table_cells(table: str) -> dict[str, list[str]]:
    lines = table.strip().splitlines()
    out = {}
    for line in lines[2:]:
        parts = [p.strip() for p in line.strip("|").split("|")]
        out[parts[0].strip("`")] = parts[1:]
    return out


def test_task_table_is_mean_over_depths_then_mean_and_sd_over_seeds_with_the_best_in_bold():
    table = task_table(records(), "passkey")
    assert table.splitlines()[0] == "| method | 64 (1×) | 128 (2×) |"
    got = table_cells(table)
    assert list(got) == ["rope", "alibi"]
    means = {(m, L): hand_cell(m, L) for m in ("rope", "alibi") for L in (64, 128)}
    for L, col in ((64, 0), (128, 1)):
        best = max(means[(m, L)][0] for m in ("rope", "alibi"))
        for m in ("rope", "alibi"):
            mean, sd = means[(m, L)]
            text = f"{mean:.1f} ± {sd:.1f}"
            assert got[m][col] == (f"**{text}**" if mean == best else text), (m, L)
    assert got["rope"][0].startswith("**") and got["alibi"][1].startswith("**")   # a different winner per column


def test_the_last_of_duplicated_rows_counts_and_other_metrics_have_their_own_table():
    rows = records()
    assert len(task_rows(rows)) == len(ACC) * 2 + 1                  # the duplicate (depth 0 vs 0.0) counted once
    first = next(r for r in task_rows(rows)
                 if (r["method"], r["seed"], r["eval_len"], r["depth"]) == ("rope", 0, 128, 0.0))
    assert first["value"] == 0.625
    tasks, methods, lengths, cells = task_cells(rows)
    assert tasks == ["passkey", "copy"] and methods == ["rope", "alibi", "nope"] and lengths == [64, 128]
    assert cells[("passkey", "rope", 128)] == {0: pytest.approx(0.3125), 1: pytest.approx(0.1875)}
    assert cells[("copy", "nope", 64)] == {0: 0.25}
    # a later re-measurement replaces the cell in the table
    again = rows + [rec("passkey", "rope", 0, 128, 0.0, 1.0)]
    assert task_cells(again)[3][("passkey", "rope", 128)][0] == pytest.approx(0.5)
    tok = table_cells(task_table(rows, "passkey", "token_accuracy"))
    mean, sd = hand_cell("alibi", 64, lambda v: 1 - v)
    assert tok["alibi"][0].strip("*") == f"{mean:.1f} ± {sd:.1f}"


def test_one_seed_is_a_bare_number_and_a_missing_cell_a_dash():
    table = task_table(records(), "copy")
    assert table.splitlines()[0] == "| method | 64 (1×) | 128 (2×) |"   # the lengths of every task's records
    assert table_cells(table) == {"nope": ["**25.0**", "—"]}
    assert task_table(records(), "kv") == "_no kv records_\n"
    rows = records() + [rec("copy", "rope", 0, 128, 0.5, 0.0)]       # a column whose best is 0: nothing bold
    got = table_cells(task_table(rows, "copy"))
    assert got == {"nope": ["**25.0**", "—"], "rope": ["—", "0.0"]}


def test_figures_are_written_and_absent_without_records(tmp_path):
    acc = plot_task_accuracy(records(), tmp_path / "acc.png")
    heat = plot_task_heatmap(records(), "passkey", tmp_path / "sub" / "heat.png")
    for path in (acc, heat):
        data = path.read_bytes()
        assert data[:8] == PNG and len(data) > 5_000
    assert plot_task_heatmap(records(), "kv", tmp_path / "kv.png") is None and not (tmp_path / "kv.png").exists()
    no_tasks = [r for r in records() if r["task"] == "bench"]
    assert plot_task_accuracy(no_tasks, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_task_section_holds_every_table_and_figure_and_is_empty_without_task_rows(tmp_path):
    assert task_section([r for r in records() if r["task"] == "bench"], tmp_path) == ""
    assert task_section([], tmp_path) == "" and not list(tmp_path.iterdir())
    rows = records()
    section = task_section(rows, tmp_path)
    assert section.startswith("\n## Long-context tasks\n")
    assert "`compact` format" in section and "`test` split of `shakespeare`" in section
    assert "depths 0, 0.5, 1," in section
    for task in ("passkey", "copy"):
        assert f"### {task}: accuracy (%)\n\n" + task_table(rows, task) in section
        assert f"### {task}: token accuracy (%)\n\n" + task_table(rows, task, "token_accuracy") in section
        assert f"](tasks_{task}_heatmap.png)" in section
        assert (tmp_path / f"tasks_{task}_heatmap.png").read_bytes()[:8] == PNG
    assert "](tasks_accuracy.png)" in section and (tmp_path / "tasks_accuracy.png").read_bytes()[:8] == PNG
    assert task_section(rows, tmp_path, heading="#").startswith("\n# Long-context tasks\n")


def ppl(method: str, eval_len: int, value: float) -> dict:
    return make_record(method=method, params={"kind": method.split("+")[0]}, train_len=64, eval_len=eval_len,
                       task="lm", metric="ppl", value=value, seed=0, model="toy", corpus="toy", commit="c", time="t",
                       protocol="nonoverlapping")


def test_write_report_for_task_rows_alone(tmp_path):
    run_dir = tmp_path / "taskrun"
    append_records(run_dir / "records.jsonl", records())
    report, plot = write_report(run_dir)
    text = report.read_text()
    assert report == run_dir / "report.md" and plot == run_dir / "tasks_accuracy.png"
    assert text.startswith("# taskrun: long-context tasks\n")
    assert "Long-context tasks" not in text and "\n## passkey: accuracy (%)\n" in text   # one heading level down
    assert task_table(records(), "passkey") in text and task_table(records(), "copy") in text
    assert plot.read_bytes()[:8] == PNG and (run_dir / "tasks_passkey_heatmap.png").exists()
    assert not (run_dir / "ppl_vs_length.png").exists()


def test_write_report_with_perplexity_and_task_rows(tmp_path):
    run_dir = tmp_path / "both"
    ppl_rows = [ppl("rope", 64, 10.0), ppl("rope", 128, 40.0), ppl("alibi", 64, 11.0), ppl("alibi", 128, 12.0)]
    append_records(run_dir / "records.jsonl", ppl_rows + records())
    report, plot = write_report(run_dir)
    text = report.read_text()
    assert text.startswith("# both: perplexity vs evaluation length\n") and plot == run_dir / "ppl_vs_length.png"
    assert re.search(r"\| `alibi` \| 11\.00 \| \*\*12\.00\*\* \|", text)
    assert "\n## Long-context tasks\n" in text and text.index("## Long-context tasks") > text.index("`alibi` | 11.00")
    assert task_table(records(), "passkey") in text
    for name in ("ppl_vs_length.png", "tasks_accuracy.png", "tasks_passkey_heatmap.png", "tasks_copy_heatmap.png"):
        assert (run_dir / name).read_bytes()[:8] == PNG
    # and without task rows the report has no tasks section
    plain = tmp_path / "plain"
    append_records(plain / "records.jsonl", ppl_rows)
    assert "Long-context tasks" not in write_report(plain)[0].read_text()
    assert not (plain / "tasks_accuracy.png").exists()


def test_write_report_without_perplexity_or_task_rows_is_refused_naming_the_file(tmp_path):
    append_records(tmp_path / "records.jsonl", [r for r in records() if r["task"] == "bench"])
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'records.jsonl'}: no perplexity or task records to report$"):
        write_report(tmp_path)


def test_a_task_measured_under_two_settings_in_one_file_is_refused():
    rows = records()
    other = [dict(r, scoring="generation") for r in rows if r["task"] == "copy"][:1]
    with pytest.raises(ValueError, match=r"^copy records with several scoring values \('generation', 'likelihood'\)"):
        task_table(rows + other, "copy")
    with pytest.raises(ValueError, match="accuracy or token_accuracy"):
        task_table(rows, "copy", "answer_nll")
