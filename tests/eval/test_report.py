"""Reports are made from records alone, refuse malformed rows by file and line, and leave the
caller's matplotlib backend alone."""

from __future__ import annotations

import json

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
