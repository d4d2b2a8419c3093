"""Reports are made from records alone, refuse malformed rows by file and line, and leave the
caller's matplotlib backend alone."""

from __future__ import annotations

import json
import math

import matplotlib
import pytest

from hopekit.eval.records import append_records, make_record
from hopekit.eval.report import markdown_table, write_report


def ppl(method: str, eval_len: int, value: float, train_len: int = 16) -> dict:
    return make_record(method=method, params={"kind": method.split("+")[0]}, train_len=train_len, eval_len=eval_len,
                       task="lm", metric="ppl", value=value, seed=0, model="toy", corpus="toy", commit="c",
                       time="t", protocol="nonoverlapping")


ROWS = [ppl("rope", 16, 10.0), ppl("rope", 32, 40.0), ppl("alibi", 16, 11.5), ppl("alibi", 32, 12.0),
        ppl("rope+yarn", 32, 14.0)]


def test_markdown_table_from_records():
    table = markdown_table(ROWS)
    assert table.splitlines()[0] == "| method | 16 (1×) | 32 (2×) | Δ vs rope @ 16 |"
    assert "| `alibi` | 11.50 | **12.00** | +1.50 |" in table and "| `rope+yarn` | — | 14.00 | — |" in table


def test_write_report_leaves_the_matplotlib_backend_alone(tmp_path):
    append_records(tmp_path / "records.jsonl", ROWS)
    before = matplotlib.get_backend()
    matplotlib.use("pdf")               # a caller's choice, not Agg
    try:
        report, plot = write_report(tmp_path)
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| `alibi` | 11.50 | **12.00** | +1.50 |" in report.read_text()


@pytest.mark.parametrize("field", ["metric", "method", "eval_len"])
def test_a_malformed_row_is_named_by_file_line_and_field(tmp_path, field):
    path = tmp_path / "records.jsonl"
    bad = {k: v for k, v in ROWS[1].items() if k != field}
    path.write_text("".join(json.dumps(r) + "\n" for r in (ROWS[0], bad, ROWS[2])))
    with pytest.raises(ValueError, match=rf"^{path}:2: record lacks required field\(s\) {field}$"):
        write_report(tmp_path)


# --- several seeds ---------------------------------------------------------------------------------

def seeded(method: str, eval_len: int, values: list[float], **extra) -> list[dict]:
    return [dict(ppl(method, eval_len, v), seed=s, **extra) for s, v in enumerate(values)]


SEEDED = (seeded("rope", 16, [10.0, 10.4, 9.8]) + seeded("rope", 32, [40.0, 52.0, 35.0])
          + seeded("alibi", 16, [11.0, 11.5, 10.6]) + seeded("alibi", 32, [12.0, 12.6, 11.5])
          + seeded("nope", 16, [10.2, 10.1, 10.3]) + seeded("nope", 32, [41.0, 50.0, 37.0]))


def test_cells_are_mean_and_sd_over_seeds_with_the_best_mean_in_bold():
    import statistics

    from hopekit.eval.report import interval_table
    from hopekit.eval.stats import summarize

    table = markdown_table(SEEDED)
    r16, r32 = [10.0, 10.4, 9.8], [40.0, 52.0, 35.0]
    cell = lambda xs: f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f}"  # noqa: E731
    assert f"| `rope` | **{cell(r16)}** | {cell(r32)} | — |" in table
    assert f"| `alibi` | {cell([11.0, 11.5, 10.6])} | **{cell([12.0, 12.6, 11.5])}** |" in table
    s = summarize(r32)
    assert f"[{s.low:.2f}, {s.high:.2f}]" in interval_table(SEEDED).splitlines()[2]


def test_change_against_the_baseline_is_paired_by_seed_and_orderings_follow_the_intervals():
    import math
    import statistics

    from hopekit.eval.report import delta_table, orderings
    from hopekit.eval.stats import t_quantile

    d = [math.log(a / b) for a, b in zip([12.0, 12.6, 11.5], [40.0, 52.0, 35.0])]
    mean = 100 * math.expm1(statistics.fmean(d))
    half = t_quantile(2) * statistics.stdev(d) / math.sqrt(3)
    low, high = (100 * math.expm1(statistics.fmean(d) + h) for h in (-half, half))
    row = next(line for line in delta_table(SEEDED).splitlines() if line.startswith("| `alibi`"))
    assert f"{mean:+.1f} % [{low:+.1f}, {high:+.1f}]*" in row          # excludes 0: starred
    order = orderings(SEEDED)
    assert order[32] == "`alibi` < `rope` ≈ `nope`"   # alibi better on every seed; nope vs rope: no ranking
    assert order[16].startswith("`rope`")


def test_setup_section_states_data_seeds_epochs_and_time_and_warns_about_many_epochs(tmp_path):
    rows = [dict(r, split="test", sampling="spread", tokens=4096, documents=4, windows=32, seconds=1.5,
                 ppl_window_ci95=[r["value"] * 0.99, r["value"] * 1.01]) for r in SEEDED]
    train = [make_record(method=m, params={}, train_len=16, eval_len=16, task="bench", metric=metric, value=value,
                         seed=s, model="toy", corpus="toy", commit="c", time="t",
                         environment={"torch": "9.9", "python": "3.x", "cpu": "cpu X", "cpu_count": 2, "threads": 2})
             for m in ("rope", "alibi") for s in range(3)
             for metric, value in (("epochs", 12.0), ("train_seconds", 3.0), ("final_train_loss", 1.5))]
    append_records(tmp_path / "records.jsonl", rows + train)
    report, _ = write_report(tmp_path)
    text = report.read_text()
    assert "split test; windows: spread" in text and "16: 4,096 tokens from 4 documents" in text
    assert "**Seeds**: 3 (0, 1, 2)" in text and "cpu X (2 cores, 2 threads); torch 9.9" in text
    assert "Warning: more than 4 epochs" in text and "evaluation 0.5 min" in text   # 18 rows × 1.5 s
    assert "| 16 | 0.5 % |" in text        # the window bootstrap's sd (half-width 1 % / 1.96) next to the seed sd


def test_a_missing_seed_is_shown_not_averaged_away_and_orderings_use_log_perplexity():
    from hopekit.eval.report import orderings

    rows = SEEDED[:-1] + [dict(ppl("nope", 32, None), seed=2)]          # nope's seed 2 failed at 32
    table = markdown_table(rows)
    assert "(n=2)" in next(line for line in table.splitlines() if line.startswith("| `nope`"))
    assert "(n=" not in next(line for line in table.splitlines() if line.startswith("| `rope`"))
    # arithmetic and geometric means disagree: a has the lower arithmetic mean, b the lower log mean
    skew = seeded("a", 16, [1.0, 30.0, 1.0]) + seeded("b", 16, [3.0, 3.0, 3.0])
    assert orderings(skew)[16].startswith("`b`")


# --- the rule of each eval-time extension row, read from the rows' resolved parameters -------------

def extension_rows(dynamic_factor=None) -> list[dict]:
    """rope at 1×, 2×, 4× (train_len 16) and its extensions as the evaluation records them; dynamic_ntk
    with ``dynamic_factor`` (None: the length ratio s at each length)."""
    rows = [ppl("rope", L, 10.0 + L) for L in (16, 32, 64)]
    lr = {"short_rescale": [1.0] * 4, "long_rescale": [2.0] * 4, "factor": 8.0, "train_len": 16}
    for L in (32, 64):
        s = L / 16
        for kind, params in (("linear", {"factor": s}), ("ntk", {"factor": s}),
                             ("dynamic_ntk", {"factor": s if dynamic_factor is None else dynamic_factor, "train_len": 16}),
                             ("yarn", {"factor": s, "train_len": 16, "attention_factor": None})):
            rows.append(dict(ppl(f"rope+{kind}", L, 9.0 + L), params={"kind": kind, "base": 10000.0, **params}))
    rows += [dict(ppl("rope+longrope", L, 8.0 + L), params={"kind": "longrope", **lr}) for L in (16, 32, 64)]
    return rows


def test_extension_rules_follow_the_recorded_parameters():
    from hopekit.eval.report import extension_rules

    rules = extension_rules(extension_rows(dynamic_factor=1.0))
    assert list(rules) == ["rope+linear", "rope+ntk", "rope+dynamic_ntk", "rope+yarn", "rope+longrope"]
    assert rules["rope+linear"] == "Position Interpolation, factor ℓ/L"
    assert rules["rope+ntk"] == "static NTK-aware base scaling, factor ℓ/L"
    assert rules["rope+dynamic_ntk"].startswith("transformers' dynamic rule with factor 1 (effective NTK factor ℓ/L;")
    assert rules["rope+yarn"] == "YaRN, factor ℓ/L (attention factor 0.1·ln factor + 1)"
    su = math.sqrt(1.0 + math.log(8.0) / math.log(16.0))
    assert rules["rope+longrope"] == (f"LongRoPE, searched factors for factor 8, attention factor {su:.4g} at every "
                                      "length; short set at ℓ ≤ L, long set beyond")
    # the same method name recorded under another rule describes that rule
    old = extension_rules(extension_rows())["rope+dynamic_ntk"]
    assert old == "transformers' dynamic rule with factor s = ℓ/L (effective NTK factor s² − s + 1 at ℓ = s·L)"
    assert extension_rules(extension_rows(dynamic_factor=4.0))["rope+dynamic_ntk"].endswith(
        "factor 4 (effective NTK factor 4·ℓ/L − 3)")
    assert extension_rules(ROWS) == {"rope+yarn": "rope"}          # no factor recorded: the kind alone


def test_report_setup_lists_each_extension_rule(tmp_path):
    from hopekit.eval.report import extension_rules

    rows = extension_rows(dynamic_factor=1.0)
    append_records(tmp_path / "records.jsonl", rows)
    report, _ = write_report(tmp_path)
    line = next(x for x in report.read_text().splitlines() if x.startswith("- **Eval-time extensions**"))
    assert all(f"`{m}`: {rule}" in line for m, rule in extension_rules(rows).items())
    assert "rope+dynamic_ntk`: transformers' dynamic rule with factor 1 (effective NTK factor ℓ/L" in line
    (tmp_path / "records.jsonl").write_text("")
    append_records(tmp_path / "records.jsonl", ROWS[:4])
    assert "Eval-time extensions" not in write_report(tmp_path)[0].read_text()   # no extension rows: no line


def test_extension_rules_describe_the_rows_the_tables_use():
    """A measurement re-made under a new rule (dynamic NTK from factor s to factor 1) is described by its
    last row only, as the tables use it; the superseded rows' factors do not appear."""
    from hopekit.eval.report import extension_rules

    def row(factor, eval_len):
        return {"metric": "ppl", "method": "rope+dynamic_ntk", "eval_len": eval_len, "seed": 0,
                "protocol": "nonoverlapping", "train_len": 16, "value": 5.0,
                "params": {"kind": "dynamic_ntk", "base": 10000.0, "factor": factor, "train_len": 16}}

    old = [row(2.0, 32), row(4.0, 64)]
    new = [row(1.0, 32), row(1.0, 64)]
    assert extension_rules(old + new) == extension_rules(new)
    assert extension_rules(old) != extension_rules(new)
