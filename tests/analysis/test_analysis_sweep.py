"""The sweep report against synthetic records whose means and sds are known: row order, cells, columns,
the axes read from bench.json or off the names, and the figures."""

from __future__ import annotations

import json
import random
import statistics

import pytest

from hopekit.analysis.sweep import _log_x, plot_sweep, sweep_points, sweep_table, write_sweep_report
from hopekit.eval.records import REQUIRED_FIELDS

T0 = 32
PNG = b"\x89PNG\r\n\x1a\n"


def row(method: str, params: dict, eval_len: int, seed: int, value: float | None, metric: str = "ppl") -> dict:
    r = dict(method=method, params=params, train_len=T0, eval_len=eval_len, task="lm", metric=metric, value=value,
             seed=seed, model="decoder-test", corpus="shakespeare", commit="abc", time="2026-01-01T00:00:00+00:00",
             protocol="nonoverlapping", split="validation", sampling="spread", tokens=256, documents=2)
    assert set(REQUIRED_FIELDS) <= set(r)
    return r


def hyp(penalty: float, omega_scale: float = 0.2) -> dict:
    return {"kind": "hope_hyperbolic", "base": 10000.0, "omega_scale": omega_scale, "penalty": penalty,
            "learnable": False, "per_head": False, "max_block": 256}


PENALTIES = [0.202, 0.3, 1.0]   # grid order; the records below hold them in another order


def one_axis_records(rng: random.Random) -> tuple[list[dict], dict]:
    """Records of grid h (penalty) at 1×, 4×, 16× and 3 seeds, plus a rope row and nll rows; and the
    oracle {(penalty, eval_len): [values]}."""
    records, truth = [], {}
    for lam in reversed(PENALTIES):
        for L in (T0, 4 * T0, 16 * T0):
            seeds = (0, 1) if (lam, L) == (0.3, 16 * T0) else (0, 1, 2)   # one measurement missing
            values = [rng.uniform(5, 9) for _ in seeds]
            truth[(lam, L)] = values
            for s, v in zip(seeds, values):
                records.append(row(f"h@penalty={lam}", hyp(lam), L, s, v))
                records.append(row(f"h@penalty={lam}", hyp(lam), L, s, 2 + lam, metric="nll"))
    records += [row("rope", {"kind": "rope", "base": 10000.0}, T0, s, 6.0) for s in (0, 1, 2)]
    return records, truth


def cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}"


def test_sweep_table_rows_are_grid_points_in_grid_order_with_mean_and_sd_over_seeds():
    records, truth = one_axis_records(random.Random(1))
    for grids in ({"h": {"penalty": PENALTIES}}, None):          # from bench.json, or off the names
        points = sweep_points(records, grids=grids)
        assert [p.method for p in points] == [f"h@penalty={lam}" for lam in PENALTIES]   # rope is no point
        assert [p.values for p in points] == [{"penalty": lam} for lam in PENALTIES]
        for p in points:
            lam = p.values["penalty"]
            assert {L: sorted(v.values()) for L, v in p.cells.items()} == {
                L: sorted(vals) for (ll, L), vals in truth.items() if ll == lam}
        table = sweep_table(records, grids=grids)
        lines = table.splitlines()
        assert lines[0] == "### `h`: perplexity against `penalty`"
        assert lines[2] == "| penalty | n | 32 (1×) | 128 (4×) | 512 (16×) |"   # in distribution first
        body = lines[4:]
        assert [line.split(" | ")[0] for line in body] == [f"| {lam}" for lam in PENALTIES]
        means = {k: statistics.fmean(v) for k, v in truth.items()}
        for line, lam in zip(body, PENALTIES):
            cells = line.strip("| ").split(" | ")[2:]
            for text, L in zip(cells, (T0, 4 * T0, 16 * T0)):
                expect = cell(truth[(lam, L)]) + (" (n=2)" if len(truth[(lam, L)]) == 2 else "")
                best = means[(lam, L)] == min(means[(x, L)] for x in PENALTIES)
                assert text == (f"**{expect}**" if best else expect)
            assert line.split(" | ")[1] == ("2–3" if lam == 0.3 else "3")
    only = sweep_table(records, multiple=4).splitlines()
    assert only[2] == "| penalty | n | 128 (4×) |"
    assert [line.split(" | ")[-1].strip("|* ") for line in only[4:]] == [cell(truth[(lam, 4 * T0)]) for lam in PENALTIES]
    nll = sweep_table(records, metric="nll").splitlines()
    assert nll[0] == "### `h`: nll against `penalty`"
    assert nll[4:] == ["| 0.202 | 3 | **2.20 ± 0.00** | **2.20 ± 0.00** | **2.20 ± 0.00** |",
                       "| 0.3 | 2–3 | 2.30 ± 0.00 | 2.30 ± 0.00 | 2.30 ± 0.00 (n=2) |",
                       "| 1.0 | 3 | 3.00 ± 0.00 | 3.00 ± 0.00 | 3.00 ± 0.00 |"]
    with pytest.raises(ValueError, match=r"^multiple=3: not measured; multiples measured: \['1', '4', '16'\]$"):
        sweep_table(records, multiple=3)
    assert sweep_table([r for r in records if r["method"] == "rope"]) == "_no grid points with ppl records_\n"


def test_a_two_axis_grid_is_ordered_by_its_axes_and_a_resumed_row_replaces_the_earlier_one():
    records = []
    for w in (0.2, 0.1):                         # records in the opposite order to the axes
        for lam in (1.0, 0.5):
            records += [row(f"h@omega_scale={w},penalty={lam}", hyp(lam, w), T0, s, 10 * lam + w + s)
                        for s in (0, 1)]
    records.append(row("h@omega_scale=0.1,penalty=0.5", hyp(0.5, 0.1), T0, 1, 100.0))   # re-measured: it wins
    grids = {"h": {"omega_scale": [0.1, 0.2], "penalty": [0.5, 1.0]}}
    points = sweep_points(records, grids=grids)
    assert [(p.values["omega_scale"], p.values["penalty"]) for p in points] == [(0.1, 0.5), (0.1, 1.0), (0.2, 0.5),
                                                                                (0.2, 1.0)]
    assert points[0].cells == {T0: {0: 5.1, 1: 100.0}}
    assert [p.method for p in sweep_points(records)] == [p.method for p in points]   # off the names: ascending
    for p in sweep_points([dict(r, method=r["method"].replace("=", "=x")) for r in records]):   # not numbers
        assert list(p.values) == ["omega_scale", "penalty"]
    body = sweep_table(records, grids=grids).splitlines()[4:]
    assert body[0] == f"| 0.1 | 0.5 | 2 | {cell([5.1, 100.0])} |" and body[2].startswith("| 0.2 | 0.5 | 2 | **")
    with pytest.raises(ValueError, match=r"^param=None: grid 'h' sweeps \['omega_scale', 'penalty'\]; name one$"):
        plot_sweep(records, "x.png", grids=grids)
    with pytest.raises(ValueError, match=r"^param='lam': not an axis of grid 'h'; its axes: "):
        plot_sweep(records, "x.png", grids=grids, param="lam")
    with pytest.raises(ValueError, match=r"^grid='g': no such grid in the records; grids: \['h'\]$"):
        plot_sweep(records, "x.png", grid="g", param="penalty")


def test_log_x_when_the_values_span_more_than_ten_times():
    assert _log_x([0.002, 0.01, 0.8]) and not _log_x([0.202, 0.3, 1.0]) and not _log_x([0.1, 1.0])
    assert not _log_x([0.0, 1.0, 100.0]) and not _log_x(["a", "b"]) and not _log_x([[1.0], [20.0]])


def test_plot_sweep_writes_a_png(tmp_path):
    records, _ = one_axis_records(random.Random(2))
    path = plot_sweep(records, tmp_path / "sweep.png", multiples=[1, 16])
    data = path.read_bytes()
    assert path == tmp_path / "sweep.png" and data[:8] == PNG and len(data) > 10_000
    with pytest.raises(ValueError, match=r"^multiples=2: not measured"):
        plot_sweep(records, tmp_path / "x.png", multiples=[2])
    with pytest.raises(ValueError, match=r"log_x=True: the values of 'kind' are not all positive numbers"):
        grid = [row(f"g@kind={k}", {"kind": k}, T0, 0, 5.0) for k in ("rope", "alibi")]
        plot_sweep(grid, tmp_path / "x.png", log_x=True)


def test_write_sweep_report_from_records_and_bench_json(tmp_path):
    records, truth = one_axis_records(random.Random(3))
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="no grid points"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "records.jsonl").write_text(json.dumps(records[-1]) + "\n")
        write_sweep_report(tmp_path / "empty")
    md, pngs = write_sweep_report(tmp_path)                  # no bench.json: the axes off the names
    text = md.read_text()
    assert md == tmp_path / "sweep.md" and pngs == [tmp_path / "sweep_h_penalty.png"]
    assert "## `h`: perplexity against `penalty`" in text and "split validation" in text
    assert f"| 1.0 | 3 | {cell(truth[(1.0, T0)])}" in text or f"| 1.0 | 3 | **{cell(truth[(1.0, T0)])}**" in text
    assert "](sweep_h_penalty.png)" in text and pngs[0].read_bytes()[:8] == PNG and pngs[0].stat().st_size > 10_000
    methods = {f"h@penalty={lam}": hyp(lam) for lam in PENALTIES}
    (tmp_path / "bench.json").write_text(json.dumps({"methods": methods, "grids": {"h": {"penalty": PENALTIES}}}))
    text_again = write_sweep_report(tmp_path)[0].read_text()
    assert text_again.replace("The same at every point: kind=hope_hyperbolic, base=10000.0, omega_scale=0.2, "
                              "learnable=false, per_head=false, max_block=256.\n\n", "") == text
