#!/usr/bin/env python
"""Build the embedded "code" corpus (src/hopekit/data/corpus/code/): Python source files of 27
well-known pure-Python projects, taken from their PyPI sdists, pinned by version and SHA-256.

    python scripts/build_code_corpus.py --sdists DIR --download   # fetch the pinned sdists into DIR
    python scripts/build_code_corpus.py --sdists DIR              # DIR already holds them

A document is one ``.py`` file of a project's importable package. What it does, in order (all of
it recorded in the generated README.md and manifest.json):

1. Checks every sdist against its pinned SHA-256 (``--download`` fetches a missing one from its
   pinned files.pythonhosted.org URL first), and checks the project's licence files: their
   wording must grant the licence pinned below (one of MIT, BSD-2/3-Clause, Apache-2.0, PSF-2.0)
   and no copyleft licence.
2. Takes the ``.py`` files under the project's package root(s) (``Pin.roots``), leaving out test,
   benchmark and vendored folders (``SKIP_DIRS``) and test modules (``test_*.py``, ``*_test.py``,
   ``conftest.py``).
3. Decodes each as UTF-8 (strict; a leading BOM dropped) and normalises line endings to LF;
   nothing else is touched (licence headers, comments and trailing whitespace stay).
4. Keeps files of at least ``MIN_BYTES`` bytes, then drops generated files (a "do not edit" /
   "automatically generated" marker in the first 30 lines), data tables (``DATA_TABLE`` of the
   non-blank lines inside assignments of literal values) and files that carry a copyleft licence
   of their own, recording each drop and its reason.
5. Assigns train / validation / test **by project** with ``hopekit.data.splits.assign_splits``
   (seed 0, 10 % / 10 % of projects), writes ``<project>.jsonl.gz`` (one ``{"id", "text"}``
   record per file, gzip level 9, mtime 0: byte-for-byte reproducible), ``manifest.json``,
   ``README.md`` and verbatim copies of every project's licence files under ``licenses/``.

Running it twice gives identical files (tests/data checks this when the sdists are available).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import gzip
import hashlib
import json
import os
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hopekit.data.splits import (  # noqa: E402
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST,
    DEFAULT_VALIDATION,
    SPLITS,
    assign_splits,
    canonical_id,
)

DEFAULT_OUT = REPO / "src" / "hopekit" / "data" / "corpus" / "code"
CORPUS_FORMAT = 1
#: a file shorter than this is not a document: the default bench evaluates windows of up to 2,048
#: byte tokens, and a 4 KB file holds two of them, so every kept file can host a full 16x window
MIN_BYTES = 4096
#: a file whose non-blank lines lie at least this much inside literal-valued assignments is a
#: data table (translations, licence lists), not code
DATA_TABLE = 0.85
SKIP_DIRS = frozenset({"tests", "test", "benchmarks", "_vendor", "_vendored", "vendor", "vendored", "extern"})
ALLOWED_LICENCES = ("MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "PSF-2.0")
GENERATED = re.compile(r"do not edit|automatically generated|auto-?generated", re.I)
COPYLEFT = re.compile(r"under the terms of the GNU|GNU (?:LESSER |AFFERO )?GENERAL PUBLIC LICENSE\s+Version"
                      r"|Mozilla Public License,? (?:Version|v\.)|Eclipse Public License|European Union Public")


@dataclasses.dataclass(frozen=True)
class Pin:
    project: str                      # normalised PyPI name; also the work id the split uses
    version: str
    licence: str                      # SPDX expression, checked against licence_files
    licence_files: tuple[str, ...]    # paths inside the sdist, shipped verbatim
    roots: tuple[str, ...]            # the importable package(s): folders or single modules
    path: str                         # the sdist's path under files.pythonhosted.org/packages/
    sha256: str

    @property
    def url(self) -> str:
        return _PY + self.path

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1]


_PY = "https://files.pythonhosted.org/packages/"
PINS = (
    Pin("arrow", "1.4.0", "Apache-2.0", ("LICENSE",), ("arrow",),
        "b9/33/032cdc44182491aa708d06a68b62434140d8c50820a087fac7af37703357/arrow-1.4.0.tar.gz",
        "ed0cc050e98001b8779e84d461b0098c4ac597e88704a655582b21d116e526d7"),
    Pin("attrs", "26.1.0", "MIT", ("LICENSE",), ("src/attr", "src/attrs"),
        "9a/8e/82a0fe20a541c03148528be8cac2408564a6c9a0cc7e9171802bc1d26985/attrs-26.1.0.tar.gz",
        "d03ceb89cb322a8fd706d4fb91940737b6642aa36998fe130a9bc96c985eff32"),
    Pin("bottle", "0.13.4", "MIT", ("LICENSE",), ("bottle.py",),
        "7a/71/cca6167c06d00c81375fd668719df245864076d284f7cb46a694cbeb5454/bottle-0.13.4.tar.gz",
        "787e78327e12b227938de02248333d788cfe45987edca735f8f88e03472c3f47"),
    Pin("click", "8.5.1", "BSD-3-Clause", ("LICENSE.txt",), ("src/click",),
        "45/37/edbf1b0707709013c0cf2e8317e03d97ed29bf4cac709fe328904ae92a38/click-8.5.1.tar.gz",
        "9bbfada76703fd1d784b83eea012e3e8c6a001a876543ef104fa56aaaeb072b4"),
    Pin("flask", "3.1.3", "BSD-3-Clause", ("LICENSE.txt",), ("src/flask",),
        "26/00/35d85dcce6c57fdc871f3867d465d780f302a175ea360f62533f12b27e2b/flask-3.1.3.tar.gz",
        "0ef0e52b8a9cd932855379197dd8f94047b359ca0a78695144304cb45f87c9eb"),
    Pin("h11", "0.16.0", "MIT", ("LICENSE.txt",), ("h11",),
        "01/ee/02a2c011bdab74c6fb3c75474d40b3052059d95df7e73351460c8588d963/h11-0.16.0.tar.gz",
        "4e35b956cf45792e4caa5885e69fba00bdbc6ffafbfa020300e549b208ee5ff1"),
    Pin("httpx", "0.28.1", "BSD-3-Clause", ("LICENSE.md",), ("httpx",),
        "b1/df/48c586a5fe32a0f01324ee087459e112ebb7224f646c0b5023f5e79e9956/httpx-0.28.1.tar.gz",
        "75e98c5f16b0f35b567856f597f06ff2270a374470a5c2392242528e3e3e42fc"),
    Pin("isort", "9.0.2", "MIT", ("LICENSE",), ("isort",),
        "da/cf/068066b8fdab91cd40bcd63e483137908710a3d25a4d3a01b538be45d9d6/isort-9.0.2.tar.gz",
        "d2298980ce44350f11d9d24c8150eaef1883431ec203dddbb4e9b5c3ceb54c70"),
    Pin("jinja2", "3.1.6", "BSD-3-Clause", ("LICENSE.txt",), ("src/jinja2",),
        "df/bf/f7da0350254c0ed7c72f3e33cef02e048281fec7ecec5f032d4aac52226b/jinja2-3.1.6.tar.gz",
        "0137fb05990d35f1275a587e9aee6d56da821fc83491a0fb838183be43f66d6d"),
    Pin("jsonschema", "4.26.0", "MIT", ("COPYING",), ("jsonschema",),
        "b3/fc/e067678238fa451312d4c62bf6e6cf5ec56375422aee02f9cb5f909b3047/jsonschema-4.26.0.tar.gz",
        "0c26707e2efad8aa1bfc5b7ce170f3fccc2e4918ff85989ba9ffa9facb2be326"),
    Pin("lark", "1.3.1", "MIT", ("LICENSE",), ("lark",),
        "da/34/28fff3ab31ccff1fd4f6c7c7b0ceb2b6968d8ea4950663eadcb5720591a0/lark-1.3.1.tar.gz",
        "b426a7a6d6d53189d318f2b6236ab5d6429eaf09259f1ca33eb716eed10d2905"),
    Pin("markdown", "3.11.3", "BSD-3-Clause", ("LICENSE.md",), ("markdown",),
        "ca/eb/dc0fd6eff604bfb870b7fb68b90985a32caaf3c76f67736bbf7f438acd59/markdown-3.11.3.tar.gz",
        "81eb91631dc97ad1efbc76019ef0f80fe90ca49ddf81546752d79989c3bfff3e"),
    Pin("marshmallow", "4.4.0", "MIT", ("LICENSE", "NOTICE"), ("src/marshmallow",),
        "0d/3e/2b75ae631789fc13191ab82bc08957af381c00fffc5fefc6248b719bc9d2/marshmallow-4.4.0.tar.gz",
        "9e6ffa8511012ca89732324c1c253efd7b4d35632dcbdf80aa793fe01804af3e"),
    Pin("mistune", "3.4.0", "BSD-3-Clause", ("LICENSE",), ("src/mistune",),
        "96/eb/749a4e69bf7396e751ae37444abe997eff2254e695a8095b84d1c89c1181/mistune-3.4.0.tar.gz",
        "2eaf7952af928ca8d33b779762effc1da517b62c6ad85ec8ca957e3b07b9782a"),
    Pin("more-itertools", "11.2.1", "MIT", ("LICENSE",), ("more_itertools",),
        "52/b8/c63995bebbb9ac9c059350e0fb8c82c2420c85aeca7d34e40aecf3df9281/more_itertools-11.2.1.tar.gz",
        "cbf08fd0af284dc69718b9b76a8e6203df624d70209ea511e4219d350c856f63"),
    Pin("packaging", "26.4", "Apache-2.0 OR BSD-2-Clause", ("LICENSE", "LICENSE.APACHE", "LICENSE.BSD"),
        ("src/packaging",),
        "c3/75/ffb1dc0ed12352139fb4ca0e3fde4325a23e3d0f3f40efe89717bc4f557b/packaging-26.4.tar.gz",
        "c4b671c41ddb9bf26e543c37723610d28fb6bf7affc4da17cf048d419d2c062a"),
    Pin("pycodestyle", "2.15.0", "MIT", ("LICENSE",), ("pycodestyle.py",),
        "86/df/178e41c9ed0ff33c23b3f3757e4e658c889f9abc5ad76ece6cd607b12e9c/pycodestyle-2.15.0.tar.gz",
        "318f5db083869b4c4dad922d0b11124fb27ab181b6730b93371da671e31bd50e"),
    Pin("pyflakes", "4.1.0", "MIT", ("LICENSE",), ("pyflakes",),
        "9b/43/f4566b992ab97abd18426aeba516a83c7a833230614a2c3f4d3e9d8ff0f0/pyflakes-4.1.0.tar.gz",
        "592beb57058eb82eb190fb7514f2081c555c51000b029ff71286a681e6cf2f83"),
    Pin("pyparsing", "3.3.3", "MIT", ("LICENSE",), ("pyparsing",),
        "e4/11/b213bebff182584360cb8d17c72c1677fec5c5c228de439e63bcf8ab1c8f/pyparsing-3.3.3.tar.gz",
        "928ae7e20211f3b6f3915a72f06a0cfd29ab9d24279dd6346b6b1a7146397d36"),
    Pin("python-dateutil", "4.0.0", "Apache-2.0 AND BSD-3-Clause", ("LICENSE",), ("src/dateutil",),
        "18/39/b3927f3616f6223832f9b760e4208e8a7c7e1dea2b4d9ad7d32a5d214c3a/python_dateutil-4.0.0.tar.gz",
        "d7295ff14fdc0f92f662100bfb6c551d160ca090f2939f1ec5b9794265c03f06"),
    Pin("requests", "2.34.2", "Apache-2.0", ("LICENSE", "NOTICE"), ("src/requests",),
        "ac/c3/e2a2b89f2d3e2179abd6d00ebd70bff6273f37fb3e0cc209f48b39d00cbf/requests-2.34.2.tar.gz",
        "f288924cae4e29463698d6d60bc6a4da69c89185ad1e0bcc4104f584e960b9ed"),
    Pin("sortedcontainers", "2.4.0", "Apache-2.0", ("LICENSE",), ("sortedcontainers",),
        "e8/c4/ba2f8066cceb6f23394729afe52f3bf7adec04bf9ed2c820b39e19299111/sortedcontainers-2.4.0.tar.gz",
        "25caa5a06cc30b6b83d11423433f65d1f9d76c4c6a0c90e3379eaa43b9bfdb88"),
    Pin("sqlparse", "0.6.1", "BSD-3-Clause", ("LICENSE",), ("sqlparse",),
        "7e/e0/361c764ea58cc1a75f7b4b424a74b08449db8bfa5e9199c7275999fdd1b9/sqlparse-0.6.1.tar.gz",
        "ca722573f848ff2d30e40ea30f53a104b7dea7635ea9285891263eb2c58fb6e7"),
    Pin("starlette", "1.10.0", "BSD-3-Clause", ("LICENSE.md",), ("starlette",),
        "48/bb/3d8757f21e9a53d9035c9eb039a777047139a16bfdbedfc7a58241c3d914/starlette-1.10.0.tar.gz",
        "b8399098d4c1e3522734f7235dc79b1fc967f96cf139c81e0fa30479e0685f9b"),
    Pin("toolz", "1.2.0", "BSD-3-Clause", ("LICENSE.txt",), ("toolz", "tlz"),
        "31/6f/ae20c212a07aa2d156c787383d8088a5e045ee39628661edb190c97e1659/toolz-1.2.0.tar.gz",
        "9667a038e9d6ecba37995e26cb2f59ec6420b6ad8dd9677de59db9b956b08490"),
    Pin("typing-extensions", "4.16.0", "PSF-2.0", ("LICENSE",), ("src/typing_extensions.py",),
        "f6/cc/6253133b5bb138fc3306cebfbda2c520f545d36b5be2c7255cc528bb45d6/typing_extensions-4.16.0.tar.gz",
        "dc983d19a509c94dba722ee6abd33940f7c05a89e243c47e907eb4db6f1a43e5"),
    Pin("urllib3", "2.8.0", "MIT", ("LICENSE.txt",), ("src/urllib3",),
        "e3/05/b17359e1cefb4f909b5e40b1b90a496d987258916dbbf88e842c729f510e/urllib3-2.8.0.tar.gz",
        "63bf2ead4c879426ebf22ef2a781eeb4aa3b4ae798a0435506f8687fd5bb9b63"),
)

#: files that carry code from elsewhere under its own permissive notice (kept in the file itself)
FILE_NOTICES = {
    "click/src/click/parser.py": "parts of the standard library's optparse (Gregory P. Ward, PSF)",
    "markdown/markdown/serializers.py": "ElementTree 1.3 code under Fredrik Lundh's permission notice",
    "packaging/src/packaging/licenses/__init__.py": "adapted from hatchling (MIT, Ofek Lev)",
    "urllib3/src/urllib3/util/ssl_match_hostname.py": "from the standard library's ssl module (PSF licence)",
}


# --- reading and checking an sdist ---------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(pin: Pin, folder: Path, download: bool) -> Path:
    """The pinned sdist in ``folder`` (downloaded first if missing and ``download``), checksum checked."""
    path = folder / pin.filename
    if not path.is_file():
        if not download:
            raise SystemExit(f"{path}: missing (run with --download, or pip download --no-deps "
                             f"--no-binary :all: {pin.project}=={pin.version} -d {folder})")
        folder.mkdir(parents=True, exist_ok=True)
        print(f"  downloading {pin.url}")
        with urllib.request.urlopen(pin.url, timeout=120) as r:
            data = r.read()
        got = hashlib.sha256(data).hexdigest()
        if got != pin.sha256:
            raise SystemExit(f"{pin.url}: sha256 {got} != pinned {pin.sha256}")
        path.write_bytes(data)
    got = sha256_of(path)
    if got != pin.sha256:
        raise SystemExit(f"{path}: sha256 {got} != pinned {pin.sha256} ({pin.project}=={pin.version})")
    return path


def read_sdist(path: Path) -> dict[str, bytes]:
    """Regular files of the sdist by path inside it (the top ``<name>-<version>/`` folder dropped)."""
    out = {}
    with tarfile.open(path, "r:gz") as tar:
        for m in tar.getmembers():
            if m.isfile() and "/" in m.name:
                out[m.name.split("/", 1)[1]] = tar.extractfile(m).read()
    return out


def licence_families(text: str) -> set[str]:
    """Which allowed licences a licence file grants, read from its wording."""
    t = " ".join(text.split())
    found = set()
    if "Permission is hereby granted, free of charge" in t:
        found.add("MIT")
    if re.search(r"Apache License,? Version 2\.0", t, re.I):
        found.add("Apache-2.0")
    if "Redistribution and use in source and binary forms" in t:
        found.add("BSD-3-Clause" if re.search(r"endorse or promote", t) else "BSD-2-Clause")
    if "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in t:
        found.add("PSF-2.0")
    return found


def licence_ids(expression: str) -> list[str]:
    """The licence ids of an SPDX expression made of ids, AND and OR."""
    return [w for w in expression.replace("(", " ").replace(")", " ").split() if w not in ("AND", "OR")]


def check_licences(pin: Pin, files: dict[str, bytes]) -> dict[str, bytes]:
    texts = {}
    for name in pin.licence_files:
        if name not in files:
            raise SystemExit(f"{pin.filename}: licence file {name!r} not found")
        texts[name] = files[name]
    joined = "\n".join(b.decode("utf-8") for b in texts.values())
    if COPYLEFT.search(" ".join(joined.split())):
        raise SystemExit(f"{pin.project}: its licence files grant a copyleft licence")
    found = licence_families(joined)
    wanted = set(licence_ids(pin.licence))
    if not wanted <= set(ALLOWED_LICENCES):
        raise SystemExit(f"{pin.project}: pinned licence {pin.licence!r} is not in {ALLOWED_LICENCES}")
    if not wanted <= found:
        raise SystemExit(f"{pin.project}: pinned licence {pin.licence!r}, but its licence files read as "
                         f"{sorted(found)}")
    return texts


# --- selecting documents ---------------------------------------------------------------------------

def normalise(raw: bytes) -> str:
    text = raw.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    return text.replace("\r\n", "\n").replace("\r", "\n")


def data_fraction(text: str, where: str = "") -> float:
    """Share of the non-blank lines that lie inside assignments of literal values (``ast``).
    A file this Python cannot parse counts as code (0.0)."""
    try:
        tree = ast.parse(text)
    except SyntaxError:
        print(f"  warning: {where}: this Python cannot parse it; data-table check skipped", file=sys.stderr)
        return 0.0
    covered: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            try:
                ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            covered.update(range(node.lineno, node.end_lineno + 1))
    nonblank = [i for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    return len(covered.intersection(nonblank)) / max(1, len(nonblank))


def in_roots(rel: str, roots: tuple[str, ...]) -> bool:
    return any(rel == r or rel.startswith(r + "/") for r in roots)


def is_test_or_vendored(rel: str) -> bool:
    *dirs, name = rel.split("/")
    return (any(d in SKIP_DIRS for d in dirs) or name.startswith("test_") or name.endswith("_test.py")
            or name == "conftest.py")


def select(pin: Pin, files: dict[str, bytes]) -> tuple[list[tuple[str, str]], dict]:
    """``([(path inside the sdist, text)], report)`` for one project, sorted by path."""
    py = sorted(rel for rel in files if rel.endswith(".py") and in_roots(rel, pin.roots))
    if not py:
        raise SystemExit(f"{pin.project}: no .py files under {pin.roots}")
    kept, excluded = [], []
    report = {"package_files": len(py), "test_or_vendored_files": 0, "short_files": 0, "short_bytes": 0}
    for rel in py:
        if is_test_or_vendored(rel):
            report["test_or_vendored_files"] += 1
            continue
        try:
            text = normalise(files[rel])
        except UnicodeDecodeError as e:
            raise SystemExit(f"{pin.project}/{rel}: not UTF-8 ({e})") from None
        size = len(text.encode("utf-8"))
        if size < MIN_BYTES:
            report["short_files"] += 1
            report["short_bytes"] += size
            continue
        head = "\n".join(text.split("\n", 30)[:30])
        marker = GENERATED.search(head)
        if marker:
            excluded.append({"source_file": rel, "bytes": size,
                             "reason": f"generated (header says {marker.group(0)!r})"})
            continue
        frac = data_fraction(text, f"{pin.project}/{rel}")
        if frac >= DATA_TABLE:
            excluded.append({"source_file": rel, "bytes": size,
                             "reason": f"data table ({frac:.0%} of non-blank lines are literal assignments)"})
            continue
        copyleft = COPYLEFT.search(" ".join(text.split()))
        if copyleft:   # a file under its own licence, e.g. lark's MPL-2.0 standalone generator
            excluded.append({"source_file": rel, "bytes": size,
                             "reason": f"own copyleft licence (text says {copyleft.group(0)!r})"})
            continue
        kept.append((rel, text))
    report["excluded"] = excluded
    return kept, report


# --- the build -------------------------------------------------------------------------------------

def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def build(sdists: Path, out: Path, *, download: bool = False, seed: int = DEFAULT_SPLIT_SEED,
          validation: float = DEFAULT_VALIDATION, test: float = DEFAULT_TEST) -> dict:
    for pin in PINS:
        if canonical_id(pin.project) != pin.project:   # split_documents groups by canonical_id(work)
            raise SystemExit(f"{pin.project}: canonical_id gives {canonical_id(pin.project)!r}")
    split_of = assign_splits([p.project for p in PINS], seed=seed, validation=validation, test=test)
    read = []   # every sdist checked and read before anything in ``out`` is touched
    for pin in PINS:
        files = read_sdist(fetch(pin, sdists, download))
        read.append((pin, check_licences(pin, files), *select(pin, files)))
    out.mkdir(parents=True, exist_ok=True)
    (out / "licenses").mkdir(exist_ok=True)
    for old in [*out.glob("*.jsonl.gz"), *(out / "licenses").iterdir()]:
        old.unlink()

    projects, docs, seen = [], [], {}
    for pin, licence_texts, kept, report in read:
        fname = f"{pin.project}.jsonl.gz"
        records = []
        for rel, text in kept:
            data = text.encode("utf-8")
            digest = hashlib.sha256(data).hexdigest()
            doc_id = f"{pin.project}/{rel}"
            if digest in seen:
                raise SystemExit(f"{doc_id}: same text as {seen[digest]}")
            seen[digest] = doc_id
            records.append(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False))
            docs.append({
                "id": doc_id, "title": doc_id, "split": split_of[pin.project], "file": fname,
                "work": pin.project, "project": pin.project, "version": pin.version,
                "licence": pin.licence, "source_file": rel,
                "chars": len(text), "bytes": len(data), "lines": text.count("\n"), "sha256": digest,
            })
        (out / fname).write_bytes(gz(("\n".join(records) + "\n").encode("utf-8")))
        shipped = []
        for name, raw in licence_texts.items():
            target = f"licenses/{pin.project}-{name}"
            (out / target).write_bytes(raw)
            shipped.append({"source_file": name, "file": target})
        projects.append({
            "project": pin.project, "version": pin.version, "split": split_of[pin.project],
            "sdist": pin.filename, "sdist_url": pin.url, "sdist_sha256": pin.sha256,
            "pypi": f"https://pypi.org/project/{pin.project}/{pin.version}/",
            "licence": pin.licence, "licence_files": shipped, "roots": list(pin.roots), "file": fname,
            "documents": len(kept), "bytes": sum(len(t.encode("utf-8")) for _, t in kept), **report,
        })

    missing = sorted(set(FILE_NOTICES) - {d["id"] for d in docs})
    if missing:
        raise SystemExit(f"FILE_NOTICES names files that are not documents: {missing}")
    manifest = {
        "name": "code",
        "format": CORPUS_FORMAT,
        "description": f"Python source files of {len(PINS)} well-known pure-Python projects under "
                       "permissive licences, from their PyPI sdists; one document per file, split by project.",
        "selection": {
            "suffix": ".py", "min_bytes": MIN_BYTES, "data_table_fraction": DATA_TABLE,
            "skip_dirs": sorted(SKIP_DIRS), "skip_files": ["test_*.py", "*_test.py", "conftest.py"],
            "generated_marker": GENERATED.pattern, "allowed_licences": list(ALLOWED_LICENCES),
        },
        "split": {"seed": seed, "validation": validation, "test": test, "unit": "project",
                  "method": "hopekit.data.splits.assign_splits"},
        "processing": [
            "take the .py files under the project's package root(s), outside test, benchmark and vendored "
            "folders, and not test modules (test_*.py, *_test.py, conftest.py)",
            "decode UTF-8 (strict; a leading BOM dropped); CRLF/CR -> LF; nothing else changed "
            "(licence headers, comments and whitespace kept)",
            f"keep files of at least {MIN_BYTES:,} bytes; drop generated files (a 'do not edit' / "
            "'automatically generated' marker in the first 30 lines), data tables "
            f"(>= {DATA_TABLE:.0%} of non-blank lines inside literal-valued assignments) and files whose "
            "text grants a copyleft licence of their own",
        ],
        "projects": projects,
        "documents": docs,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(manifest), encoding="utf-8")
    return manifest


def split_table(m: dict) -> list[tuple[str, int, int, int]]:
    """``(split, projects, files, bytes)`` rows, then the total."""
    rows = []
    for s in (*SPLITS, None):
        ps = [p for p in m["projects"] if s is None or p["split"] == s]
        rows.append((s or "total", len(ps), sum(p["documents"] for p in ps), sum(p["bytes"] for p in ps)))
    return rows


def readme(m: dict) -> str:
    sel = m["selection"]
    summary = "\n".join(f"| {s} | {n} | {f} | {b:,} |" for s, n, f, b in split_table(m))
    projects = "\n".join(
        f"| [{p['project']}]({p['pypi']}) | {p['version']} | {p['licence']} | {p['split']} | {p['documents']} | "
        f"{p['bytes']:,} | {', '.join('`' + r + '`' for r in p['roots'])} | "
        f"{', '.join('`' + f['file'] + '`' for f in p['licence_files'])} |" for p in m["projects"])
    excluded = "\n".join(f"* `{p['project']}/{e['source_file']}` ({e['bytes']:,} bytes): {e['reason']}"
                         for p in m["projects"] for e in p["excluded"]) or "* none"
    split_lists = "\n".join(
        f"* {s}: {', '.join(p['project'] for p in m['projects'] if p['split'] == s)}" for s in SPLITS)
    sdists = "\n".join(f"| `{p['sdist']}` | `{p['sdist_sha256']}` |" for p in m["projects"])
    notices = "\n".join(f"* `{k}`: {v}" for k, v in FILE_NOTICES.items())
    n_docs = len(m["documents"])
    short = sum(p["short_files"] for p in m["projects"])
    skipped = sum(p["test_or_vendored_files"] for p in m["projects"])
    return f"""# Embedded corpus: `code`

{m['description']} Generated by `scripts/build_code_corpus.py` from sdists pinned by version and
SHA-256; do not edit by hand. Load with `hopekit.data.load_corpus("code", split)`; bench preset
`hopekit bench --preset code`.

* One gzip'd JSON-lines file per project (`<project>.jsonl.gz`, one `{{"id", "text"}}` record per
  source file). A document is one whole file; its id and title are `<project>/<path inside the
  sdist>`. `manifest.json` has project, version, licence, path, split, size and SHA-256 of every
  text, and each project's sdist URL and SHA-256.
* Licences: every project's licence files, copied verbatim from its sdist, are in `licenses/`
  (`<project>-<file name>`). Every file keeps its own header comments, licence notices included.

## Why source code

Code has long-range structure a byte-level model can use: names defined at the top of a file
(imports, classes, helpers) are used hundreds or thousands of bytes later. A file is kept only if
it has at least {sel['min_bytes']:,} bytes: the default bench evaluates windows of up to 2,048
byte tokens (16 x 128), and a file of 4 KB or more holds two of them, so a window at the longest
length can lie inside one file.

## Processing

{chr(10).join('1. ' + p for p in m['processing'])}

{n_docs} files kept; {short} package files shorter than {sel['min_bytes']:,} bytes and {skipped} test,
benchmark or vendored files left out. Dropped as generated or data:

{excluded}

## Split (by project; seed {m['split']['seed']}, validation {m['split']['validation']}, test {m['split']['test']})

No project is on two sides of a split (`hopekit.data.splits.assign_splits` on the project names).

| split | projects | files | bytes (= byte-tokenizer tokens, without separators) |
|---|---:|---:|---:|
{summary}

{split_lists}

## Projects

| project | version | licence | split | files | bytes | package root(s) | licence files |
|---|---|---|---|---:|---:|---|---|
{projects}

## Sources

Every sdist is checked against its SHA-256 before use; `--download` fetches it from the URL in
`manifest.json` (files.pythonhosted.org).

| sdist | SHA-256 |
|---|---|
{sdists}

## Licence notes

All {len(m['projects'])} projects are under permissive licences ({', '.join(sel['allowed_licences'])});
the build reads each project's licence files and refuses a pin whose files do not grant the pinned
licence or that grant a copyleft one. `python-dateutil` is Apache-2.0 for contributions after
2017-12-01 and BSD-3-Clause for all code; `packaging` is Apache-2.0 or BSD-2-Clause at the user's
choice; `typing-extensions` is under the PSF licence (its LICENSE carries Python's licence
history); `marshmallow`'s NOTICE records code adapted from Django (BSD-3-Clause); `requests`' NOTICE
is shipped as its Apache-2.0 licence asks. A few files carry code from elsewhere, with its
permissive notice in the file itself (kept as it is):

{notices}

Redistributing these texts means keeping these notices
with them: keep `licenses/` next to the `.jsonl.gz` files.
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdists", type=Path, default=os.environ.get("HOPEKIT_CODE_SDISTS"),
                   help="folder of the pinned sdists (env HOPEKIT_CODE_SDISTS)")
    p.add_argument("--download", action="store_true", help="fetch missing sdists from their pinned URLs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED)
    a = p.parse_args(argv)
    if a.sdists is None:
        p.error("--sdists DIR is required (add --download to fetch the pinned sdists into it)")
    m = build(Path(a.sdists), a.out, download=a.download, seed=a.seed)
    for s, n, f, b in split_table(m):
        names = ", ".join(p["project"] for p in m["projects"] if p["split"] == s)
        print(f"{s:>10}: {n:2d} projects, {f:3d} files, {b:>9,} bytes  {names if s in ('validation', 'test') else ''}")
    size = sum(f.stat().st_size for f in a.out.rglob("*") if f.is_file())
    print(f"wrote {len(m['documents'])} files to {a.out} ({size:,} bytes on disk)")


if __name__ == "__main__":
    main()
