"""The embedded "code" corpus: split by project, checksums, README counts, licences, the preset."""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hopekit.data import (
    EMBEDDED,
    SPLITS,
    assign_splits,
    corpus_stats,
    embedded_manifest,
    load_corpus,
    load_tokenizer,
    split_documents,
)
from hopekit.data.corpus import embedded_dir

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "build_code_corpus.py"
ALLOWED = {"MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "PSF-2.0"}
#: wording each allowed licence's text contains (an independent check of the build's reading)
WORDING = {"MIT": "Permission is hereby granted, free of charge",
           "BSD-2-Clause": "Redistribution and use in source and binary forms",
           "BSD-3-Clause": "Neither the name",
           "Apache-2.0": "Apache License",
           "PSF-2.0": "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2"}


@pytest.fixture(scope="module")
def manifest():
    return embedded_manifest("code")


@pytest.fixture(scope="module")
def by_split():
    return {s: load_corpus("code", s) for s in SPLITS}


@pytest.fixture(scope="module")
def folder():
    return Path(str(embedded_dir("code")))


@functools.cache
def _script():
    """scripts/build_code_corpus.py as a module (registered first: its dataclass needs that)."""
    spec = importlib.util.spec_from_file_location("build_code_corpus", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _licence_ids(expression: str) -> set[str]:
    return {w for w in expression.split() if w not in ("AND", "OR")}


def test_code_is_an_embedded_corpus_of_whole_files(by_split, manifest):
    assert "code" in EMBEDDED
    docs = [d for s in SPLITS for d in by_split[s]]
    assert len(docs) == len(manifest["documents"]) == len(load_corpus("code", "all"))
    assert len({d.id for d in docs}) == len(docs)
    for d in docs:
        project = d.meta["project"]
        assert d.title == d.id == f"{project}/{d.meta['source_file']}" and d.id.endswith(".py")
        assert d.meta["corpus"] == "code" and d.meta["work"] == project
        assert d.meta["split"] in SPLITS and d.meta["licence"]
        assert len(d.text.encode()) >= manifest["selection"]["min_bytes"]
        assert "\r" not in d.text


def test_splits_are_disjoint_by_project(by_split, manifest):
    projects = {s: {d.meta["project"] for d in docs} for s, docs in by_split.items()}
    assert all(len(p) >= 3 for p in projects.values()), projects       # several projects each
    assert not projects["train"] & projects["validation"]
    assert not projects["train"] & projects["test"]
    assert not projects["validation"] & projects["test"]
    assert set().union(*projects.values()) == {p["project"] for p in manifest["projects"]}
    for p in manifest["projects"]:
        assert p["project"] in projects[p["split"]]
    for s in ("validation", "test"):                                     # enough text to evaluate on
        assert corpus_stats(by_split[s])["bytes"] >= 300_000


def test_stored_split_is_assign_splits_by_project_with_the_recorded_seed(manifest, by_split):
    sp = manifest["split"]
    assert sp["unit"] == "project"
    recomputed = assign_splits([p["project"] for p in manifest["projects"]], seed=sp["seed"],
                               validation=sp["validation"], test=sp["test"])
    assert {p["project"]: p["split"] for p in manifest["projects"]} == recomputed
    again = split_documents(load_corpus("code", "all"), seed=sp["seed"], validation=sp["validation"],
                            test=sp["test"])
    assert ({s: [d.id for d in v] for s, v in again.items()}
            == {s: [d.id for d in v] for s, v in by_split.items()})


def test_reseeding_moves_whole_projects():
    resplit = {s: load_corpus("code", s, seed=1) for s in SPLITS}
    where = {}
    for s, docs in resplit.items():
        for d in docs:
            where.setdefault(d.meta["project"], set()).add(s)
    assert all(len(v) == 1 for v in where.values())
    shipped = {p["project"]: p["split"] for p in embedded_manifest("code")["projects"]}
    assert {p: v.pop() for p, v in where.items()} != shipped


def test_every_manifest_checksum_matches_the_shipped_text(manifest, folder):
    ids_by_file: dict[str, set[str]] = {}
    for d in manifest["documents"]:
        ids_by_file.setdefault(d["file"], set()).add(d["id"])
    texts = {}
    for name in ids_by_file:   # read independently of the loader: every record, none extra
        lines = gzip.decompress((folder / name).read_bytes()).decode("utf-8").split("\n")
        records = [json.loads(line) for line in lines if line]
        assert {r["id"] for r in records} == ids_by_file[name] and len(records) == len(ids_by_file[name])
        texts.update((r["id"], r["text"]) for r in records)
    loaded = {d.id: d.text for d in load_corpus("code", "all")}
    for d in manifest["documents"]:
        data = texts[d["id"]].encode("utf-8")
        assert hashlib.sha256(data).hexdigest() == d["sha256"], d["id"]
        assert (len(data), len(texts[d["id"]]), texts[d["id"]].count("\n")) == (d["bytes"], d["chars"], d["lines"])
        assert loaded[d["id"]] == texts[d["id"]]
    for p in manifest["projects"]:
        mine = [d for d in manifest["documents"] if d["project"] == p["project"]]
        assert (p["documents"], p["bytes"]) == (len(mine), sum(d["bytes"] for d in mine))
        assert {d["split"] for d in mine} == {p["split"]} and {d["file"] for d in mine} == {p["file"]}


def test_counts_per_split_match_the_readme(folder, by_split):
    readme = (folder / "README.md").read_text(encoding="utf-8")
    rows = {m[0]: tuple(int(x.replace(",", "")) for x in m[1:])
            for m in re.findall(r"^\| (train|validation|test|total) \| (\d+) \| (\d+) \| ([\d,]+) \|$", readme, re.M)}
    everything = [d for s in SPLITS for d in by_split[s]]
    for name, docs in (*by_split.items(), ("total", everything)):
        expected = (len({d.meta["project"] for d in docs}), len(docs), corpus_stats(docs)["bytes"])
        assert rows[name] == expected, name


def test_no_shipped_file_over_5_mb_and_nothing_unlisted(folder, manifest):
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert all(f.stat().st_size < 5_000_000 for f in files)
    listed = ({"manifest.json", "README.md"} | {p["file"] for p in manifest["projects"]}
              | {lf["file"] for p in manifest["projects"] for lf in p["licence_files"]})
    assert {f.relative_to(folder).as_posix() for f in files} == listed


def test_licences_are_permissive_and_shipped_verbatim(folder, manifest):
    assert set(manifest["selection"]["allowed_licences"]) == ALLOWED
    for p in manifest["projects"]:
        ids = _licence_ids(p["licence"])
        assert ids and ids <= ALLOWED, p["project"]
        text = " ".join(" ".join((folder / lf["file"]).read_text(encoding="utf-8").split())
                        for lf in p["licence_files"])
        for i in ids:
            assert WORDING[i] in text, (p["project"], i)
        assert "Mozilla Public License" not in text and "under the terms of the GNU" not in text
    for d in manifest["documents"]:
        assert d["licence"] == next(p["licence"] for p in manifest["projects"] if p["project"] == d["project"])


def test_manifest_sources_are_the_pins_of_the_build_script(manifest):
    pins = _script().PINS
    recorded = [(p["project"], p["version"], p["sdist_url"], p["sdist_sha256"], p["licence"])
                for p in manifest["projects"]]
    assert recorded == [(p.project, p.version, p.url, p.sha256, p.licence) for p in pins]
    assert all(p["sdist_url"].startswith("https://files.pythonhosted.org/") for p in manifest["projects"])


def test_byte_tokenizer_round_trips_a_document(by_split):
    tok = load_tokenizer("byte")
    doc = max(by_split["test"], key=lambda d: len(d.text.encode()) - len(d.text))   # most non-ASCII
    assert len(doc.text.encode()) > len(doc.text)
    ids = tok.encode(doc.text)
    assert len(ids) == doc.meta["bytes"] and max(ids) < 256
    assert tok.decode(ids) == doc.text


def test_code_bench_preset_is_the_default_bench_on_code():
    from hopekit.bench import load_bench

    code, default = load_bench("code"), load_bench("default")
    assert code.name == "code"
    assert code.experiment.data.corpus == "code" and code.experiment.data.tokenizer == "byte"
    assert code.experiment.model == default.experiment.model
    assert code.experiment.train == default.experiment.train
    assert code.methods == default.methods


# --- the build script -----------------------------------------------------------------------------

def _sdists() -> Path | None:
    names = [p.filename for p in _script().PINS]
    for cand in (os.environ.get("HOPEKIT_CODE_SDISTS"), "/tmp/code_sdists"):
        if cand and all((Path(cand) / n).is_file() for n in names):
            return Path(cand)
    return None


@pytest.mark.slow
@pytest.mark.skipif(_sdists() is None, reason="the pinned sdists are not available: set HOPEKIT_CODE_SDISTS "
                    "to a folder holding them (python scripts/build_code_corpus.py --sdists DIR --download)")
def test_build_script_reproduces_the_shipped_code_corpus(tmp_path, folder):
    out = tmp_path / "code"
    r = subprocess.run([sys.executable, str(SCRIPT), "--sdists", str(_sdists()), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shipped = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*") if f.is_file())
    assert shipped == sorted(f.relative_to(out).as_posix() for f in out.rglob("*") if f.is_file())
    for n in shipped:
        assert (folder / n).read_bytes() == (out / n).read_bytes(), n
