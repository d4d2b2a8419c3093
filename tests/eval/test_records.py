"""The records file survives interrupted writes, refuses malformed rows by file and line, and says
which commit (or installed version) and which weights a measurement came from."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess

import pytest
import torch

from hopekit.eval import records
from hopekit.eval.extensions import with_pe
from hopekit.eval.perplexity import perplexity
from hopekit.eval.records import (REQUIRED_FIELDS, append_records, git_commit, make_record, model_descriptor,
                                  model_digest, ppl_records, read_records, skipped_records)
from hopekit.model import Decoder, ModelConfig

VOCAB = 24


def row(i: int) -> dict:
    return make_record(method="rope", params={"kind": "rope"}, train_len=16, eval_len=16 * (i + 1), task="lm",
                       metric="ppl", value=10.0 + i, seed=0, model="toy", corpus="toy", commit="c", time="t")


def lines_are_rows(path) -> list[dict]:
    """Every line of the file is a whole JSON object ending in a newline."""
    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# ----- append_records: interrupted writes ---------------------------------------------------------


def test_append_cuts_a_partial_last_line_and_keeps_every_complete_row(tmp_path):
    path = tmp_path / "records.jsonl"
    append_records(path, [row(0), row(1)])
    whole = json.dumps(row(2), sort_keys=True)
    with open(path, "a") as f:
        f.write(whole[: len(whole) // 2])                     # a run killed mid-row
    assert read_records(path) == [row(0), row(1)]            # readers already skip it ...
    with pytest.warns(RuntimeWarning, match="partial last line"):
        append_records(path, [row(3)])                        # ... and the next append repairs it
    assert lines_are_rows(path) == [row(0), row(1), row(3)]
    assert read_records(path) == [row(0), row(1), row(3)]


def test_append_completes_a_whole_last_row_that_lacks_its_newline(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(row(0)) + "\n" + json.dumps(row(1)))
    append_records(path, [row(2)])
    assert lines_are_rows(path) == [row(0), row(1), row(2)]


def test_append_to_a_file_holding_only_a_fragment(tmp_path):
    path = tmp_path / "records.jsonl"
    fragment = '{"method": "ro'
    path.write_text(fragment)
    with pytest.warns(RuntimeWarning, match=f"{len(fragment)} bytes"):
        append_records(path, [row(0)])
    assert lines_are_rows(path) == [row(0)]


def test_a_write_that_fails_part_way_is_rolled_back_and_the_next_append_is_valid(tmp_path, monkeypatch):
    path = tmp_path / "records.jsonl"
    append_records(path, [row(0)])
    real_write = records._write

    def disk_full_half_way(f, data):
        real_write(f, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records, "_write", disk_full_half_way)
    with pytest.raises(OSError, match="No space left"):
        append_records(path, [row(1), row(2)])
    monkeypatch.undo()
    assert lines_are_rows(path) == [row(0)]                   # nothing half-written is left behind
    append_records(path, [row(3)])
    assert lines_are_rows(path) == read_records(path) == [row(0), row(3)]


# ----- read_records: malformed rows ---------------------------------------------------------------


@pytest.mark.parametrize("drop,named", [(("metric",), "metric"), (("method", "value"), "method, value")])
def test_a_row_missing_required_fields_is_named_by_file_line_and_field(tmp_path, drop, named):
    path = tmp_path / "records.jsonl"
    bad = {k: v for k, v in row(1).items() if k not in drop}
    path.write_text("\n".join(json.dumps(r) for r in (row(0), bad, row(2))) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}:2: record lacks required field\(s\) {named}$"):
        read_records(path)


def test_a_row_that_is_not_an_object_or_not_json_is_named_by_line(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(row(0)) + "\n[1, 2]\n")
    with pytest.raises(ValueError, match=rf"{path}:2: expected a JSON object, got list"):
        read_records(path)
    path.write_text(json.dumps(row(0)) + "\n{oops\n" + json.dumps(row(1)) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not a valid JSON line"):
        read_records(path)
    path.write_bytes(json.dumps(row(0)).encode() + b"\n\xff\xfe\n" + json.dumps(row(1)).encode() + b"\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not a valid JSON line"):
        read_records(path)


def test_infinite_values_round_trip(tmp_path):
    path = tmp_path / "records.jsonl"
    append_records(path, [make_record(**{**row(0), "value": float("inf")})])
    assert read_records(path)[0]["value"] == float("inf")


# ----- git_commit: only hopekit's own checkout ----------------------------------------------------


def git(cwd, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false",
                           *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def init_repo(path) -> str:
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "init")
    return git(path, "rev-parse", "HEAD")


def hopekit_layout(root, name: str = "hopekit"):
    (root / "src" / "hopekit").mkdir(parents=True)
    (root / "src" / "hopekit" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text(f'[project]\nname = "{name}"\nversion = "0.1.0"\n')


needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@needs_git
def test_the_commit_of_hopekits_own_checkout(tmp_path):
    hopekit_layout(tmp_path)
    sha = init_repo(tmp_path)
    assert git_commit(_root=tmp_path) == sha
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "hopekit"\nversion = "0.2.0"\n')
    assert git_commit(_root=tmp_path) == sha + "+dirty"


@needs_git
def test_a_checkout_whose_git_times_out_records_an_unknown_commit_not_the_release(tmp_path, monkeypatch):
    import subprocess

    hopekit_layout(tmp_path)
    init_repo(tmp_path)
    monkeypatch.setattr(records.metadata, "version", lambda name: {"hopekit": "9.8.7"}[name])
    real = subprocess.run

    def slow_status(cmd, *args, **kwargs):
        if cmd[:2] == ["git", "status"]:
            raise subprocess.TimeoutExpired(cmd, kwargs.get("timeout"))
        return real(cmd, *args, **kwargs)

    monkeypatch.setattr(records.subprocess, "run", slow_status)
    with pytest.warns(UserWarning, match="did not answer"):
        assert git_commit(_root=tmp_path) == "unknown"


@needs_git
def test_an_install_inside_another_repository_records_the_installed_version(tmp_path, monkeypatch):
    monkeypatch.setattr(records.metadata, "version", lambda name: {"hopekit": "9.8.7"}[name])
    (tmp_path / "README").write_text("someone else's project\n")
    site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"  # parents[3] of an installed records.py
    site.mkdir(parents=True)
    vendored = tmp_path / "vendor" / "hopekit"                        # a hopekit tree without its own .git
    hopekit_layout(vendored)
    other = tmp_path / "other"                                        # a checkout of another project
    hopekit_layout(other, name="not-hopekit")
    outer = init_repo(tmp_path)
    for root in (site.parent, vendored, other):
        assert git_commit(_root=root) == "hopekit-9.8.7" != outer


def test_unknown_when_neither_a_checkout_nor_installed(tmp_path, monkeypatch):
    def missing(name):
        raise records.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(records.metadata, "version", missing)
    assert git_commit(_root=tmp_path) == "unknown"


# ----- rows of a perplexity measurement -----------------------------------------------------------


def make(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(ModelConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=2, pe={"kind": "rope"})).eval()


def test_model_digest_follows_the_weights():
    a = make()
    assert model_digest(a) == model_digest(make()) and model_digest(a).startswith("sha256:") and len(model_digest(a)) == 71
    assert model_digest(a) != model_digest(make(seed=1))
    assert model_digest(with_pe(a, {"kind": "linear", "factor": 2.0})) == model_digest(a)   # same weights
    with torch.no_grad():
        a.tok_emb.weight[3, 5] += 1e-3
    assert model_digest(a) != model_digest(make())
    assert model_digest(make().to(torch.bfloat16)) != model_digest(make())


def test_ppl_records(tmp_path):
    model = make()
    stream = torch.randint(0, VOCAB, (500,), generator=torch.Generator().manual_seed(1))
    res = perplexity(model, stream, 64, "sliding", stride=16, max_tokens=None)
    cfg = {"kind": "yarn", "factor": 4.0, "train_len": 16}
    rows = ppl_records(res, method="rope+yarn", params=cfg, train_len=16, seed=3,
                       model=model_descriptor(model), corpus="toy", tokenizer="byte")
    assert [r["metric"] for r in rows] == ["ppl", "nll", "loss_by_position"]
    for r in rows:
        assert all(f in r for f in REQUIRED_FIELDS)
        assert (r["task"], r["protocol"], r["stride"], r["tokens"], r["eval_len"], r["multiple"]) == \
            ("lm", "sliding", 16, 499, 64, 4.0)
        assert r["params"] == cfg and r["tokenizer"] == "byte" and r["seed"] == 3
    assert rows[0]["value"] == pytest.approx(res.ppl) and rows[1]["value"] == pytest.approx(res.nll)
    assert len(rows[2]["value"]) == 32 and rows[2]["bin_start"][:3] == [0, 2, 4]
    append_records(tmp_path / "r.jsonl", rows)
    assert read_records(tmp_path / "r.jsonl") == json.loads(json.dumps(rows))
    assert model_descriptor(model).startswith("decoder-d32-l2-h2-kv2-v24-")


def test_skipped_records_carry_the_reason_and_stride():
    rows = skipped_records(method="learned", params={"kind": "learned", "max_len": 16}, train_len=16, eval_len=64,
                           protocol="sliding", stride=16, seed=0, model="toy", corpus="toy", reason="past max_len")
    assert [(r["metric"], r["value"], r["skipped"], r["stride"]) for r in rows] == \
        [("ppl", None, "past max_len", 16), ("nll", None, "past max_len", 16)]
    with pytest.raises(ValueError, match="protocol"):
        skipped_records(method="x", params={}, train_len=16, eval_len=64, protocol="chunked", seed=0, model="m",
                        corpus="c", reason="r")


def test_canonical_params_drop_fields_that_are_the_same_as_absent_also_when_nested():
    from hopekit.eval.records import canonical_params, record_key

    old = {"kind": "bipe", "inter": {"kind": "hope_hyperbolic", "omega_scale": 0.2}}
    new = {"kind": "bipe", "inter": {"kind": "hope_hyperbolic", "omega_scale": 0.2, "logit_scale": "none",
                                     "train_len": 128}}
    assert canonical_params(old) == canonical_params(new)
    scaled = {"kind": "hope_hyperbolic", "omega_scale": 0.2, "logit_scale": "log_length", "train_len": 128}
    assert record_key({"params": scaled}, ["params"]) != record_key({"params": new["inter"]}, ["params"])
