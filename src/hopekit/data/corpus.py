"""Corpora: the embedded default (shipped inside the package), local files, Hugging Face datasets.

One entry point, :func:`load_corpus`, takes a *source* and a *split* and returns whole
:class:`~hopekit.data.documents.Document` objects:

* ``"shakespeare"`` — the embedded default, offline: the works of Shakespeare from Project
  Gutenberg, one edition per work, split by work. Its counts, sizes and provenance are in
  ``corpus/shakespeare/README.md`` and :func:`embedded_manifest` (generated with the corpus).
* ``"code"`` — embedded too: Python source files (one document per file) of 27 permissively
  licensed PyPI projects, split by project; ``corpus/code/README.md`` has sources and licences.
* a path — a ``.txt`` / ``.txt.gz`` file (one document), a ``.jsonl`` / ``.jsonl.gz`` / ``.json``
  file (one document per record, ``text_field``), or a directory of them (recursively). A
  directory with ``train/``, ``validation/``, ``test/`` sub-folders or ``train.jsonl``-style
  files uses those splits as given; otherwise documents are split by work with
  :func:`~hopekit.data.splits.split_documents`.
* ``"hf:<path>[:<config>]"`` — a Hugging Face dataset through ``datasets.load_dataset``
  (PG-19 is ``"hf:deepmind/pg19"``); see :mod:`hopekit.data.hf_datasets`.

Project Gutenberg header and licence footer are stripped from local text files by default
(``strip_gutenberg=True``; a text without the markers is untouched).
"""

from __future__ import annotations

import codecs
import functools
import gzip
import json
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from .documents import Document, records_to_documents
from .gutenberg import strip_gutenberg as _strip_gutenberg
from .hf_datasets import load_hf_documents, parse_hf_source
from .splits import (
    ALL,
    DEFAULT_SPLIT_SEED,
    DEFAULT_TEST,
    DEFAULT_VALIDATION,
    check_split,
    split_documents,
)

#: corpora shipped inside the package (``hopekit/data/corpus/<name>/``)
EMBEDDED = ("shakespeare", "code")
DEFAULT_CORPUS = "shakespeare"

_TEXT_SUFFIXES = (".txt", ".txt.gz", ".md")
_JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz")


# --- embedded corpus -----------------------------------------------------------------------------

def embedded_dir(name: str = DEFAULT_CORPUS):
    """The package-data folder of an embedded corpus (an ``importlib.resources`` Traversable)."""
    if name not in EMBEDDED:
        raise ValueError(f"no embedded corpus {name!r}; embedded: {EMBEDDED}")
    return resources.files("hopekit.data") / "corpus" / name


@functools.cache
def embedded_manifest(name: str = DEFAULT_CORPUS) -> dict:
    """The manifest of an embedded corpus: provenance, processing, split and checksum per work."""
    return json.loads((embedded_dir(name) / "manifest.json").read_text(encoding="utf-8"))


def _embedded_file(folder, file: str) -> str | dict[str, str]:
    """One shipped file: a ``.txt.gz`` is one document's text; a ``.jsonl.gz`` holds several, one
    ``{"id", "text"}`` record per line (returned as id -> text)."""
    text = gzip.decompress((folder / file).read_bytes()).decode("utf-8")
    if not file.endswith(".jsonl.gz"):
        return text
    records = (json.loads(line) for line in text.split("\n") if line)   # JSON escapes newlines
    return {r["id"]: r["text"] for r in records}


@functools.cache
def _embedded_documents(name: str) -> tuple[Document, ...]:
    folder = embedded_dir(name)
    files: dict[str, str | dict[str, str]] = {}
    docs = []
    for entry in embedded_manifest(name)["documents"]:
        if entry["file"] not in files:
            files[entry["file"]] = _embedded_file(folder, entry["file"])
        held = files[entry["file"]]
        text = held[entry["id"]] if isinstance(held, dict) else held
        meta = {k: v for k, v in entry.items() if k not in ("id", "title")}
        meta["corpus"] = name
        docs.append(Document(entry["id"], entry["title"], text, meta))
    return tuple(docs)


def load_embedded(
    name: str = DEFAULT_CORPUS, split: str = "train", *, seed: int | None = None,
    validation: float = DEFAULT_VALIDATION, test: float = DEFAULT_TEST,
) -> list[Document]:
    """Documents of an embedded corpus. With ``seed=None`` the split is the one recorded in the
    manifest (what every published number used); a seed re-splits by work with that seed (for
    ``code`` a work is a project: ``meta["work"]``)."""
    check_split(split)
    docs = _embedded_documents(name)
    if split == ALL:
        return list(docs)
    if seed is None:
        return [d for d in docs if d.meta["split"] == split]
    return split_documents(docs, seed=seed, validation=validation, test=test)[split]


# --- local files ---------------------------------------------------------------------------------

def _read_text(path: Path) -> str:
    """UTF-8 text (an optional BOM dropped, line endings normalised); a file that is not valid
    UTF-8 (or not valid gzip) raises ValueError naming the path and the byte offset."""
    raw = path.read_bytes()
    where = ""
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: not a valid gzip file ({e})") from None
        where = " of the decompressed text"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        offset = e.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
        raise ValueError(f"{path}: not valid UTF-8 at byte offset {offset}{where} "
                         f"(byte 0x{raw[offset]:02x}: {e.reason})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in (*_TEXT_SUFFIXES, *_JSON_SUFFIXES):
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _stem(path: Path) -> str:
    name = path.name
    s = _suffix(path)
    return name[: -len(s)] if s and name.lower().endswith(s) else path.stem


def load_text_file(
    path: str | Path, *, title: str | None = None, doc_id: str | None = None,
    strip_gutenberg: bool = True,
) -> Document:
    """One plain-text file (optionally ``.gz``) as one document; title defaults to the file stem."""
    path = Path(path)
    text = _read_text(path)
    if strip_gutenberg:
        text = _strip_gutenberg(text)
    stem = _stem(path)
    return Document(doc_id or stem, title or stem.replace("_", " "), text, {"source": str(path)})


def _iter_json_records(path: Path) -> Iterator[dict]:
    text = _read_text(path)
    stripped = text.lstrip()
    if path.name.lower().endswith((".json", ".json.gz")) and stripped.startswith("["):
        yield from json.loads(text)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not a JSON object per line ({e})") from None


def load_jsonl(
    path: str | Path, *, text_field: str = "text", title_field: str | None = None,
    id_field: str | None = None, strip_gutenberg: bool = False, limit: int | None = None,
) -> list[Document]:
    """A JSON-lines file (or a ``.json`` array of records), one document per record."""
    path = Path(path)
    return records_to_documents(
        _iter_json_records(path), text_field=text_field, title_field=title_field,
        id_field=id_field, id_prefix=_stem(path), strip_gutenberg=strip_gutenberg, limit=limit,
        source=str(path))


def _load_file(path: Path, *, text_field, title_field, id_field, strip_gutenberg) -> list[Document]:
    s = _suffix(path)
    if s in _JSON_SUFFIXES:
        return load_jsonl(path, text_field=text_field, title_field=title_field, id_field=id_field,
                          strip_gutenberg=strip_gutenberg)
    if s in _TEXT_SUFFIXES:
        return [load_text_file(path, strip_gutenberg=strip_gutenberg)]
    raise ValueError(f"{path}: unsupported file type (text: {_TEXT_SUFFIXES}, json: {_JSON_SUFFIXES})")


def load_directory(
    path: str | Path, *, text_field: str = "text", title_field: str | None = None,
    id_field: str | None = None, strip_gutenberg: bool = True,
) -> list[Document]:
    """Every supported file under ``path`` (recursively, sorted by relative path). Text-file ids
    are their relative paths without suffix, so two ``hamlet.txt`` in different folders differ."""
    root = Path(path)
    docs: list[Document] = []
    files = sorted(p for p in root.rglob("*") if p.is_file() and _suffix(p) in (*_TEXT_SUFFIXES, *_JSON_SUFFIXES))
    for f in files:
        loaded = _load_file(f, text_field=text_field, title_field=title_field, id_field=id_field,
                            strip_gutenberg=strip_gutenberg)
        if _suffix(f) in _TEXT_SUFFIXES:
            rel = f.relative_to(root)
            rel_id = str(rel.parent / _stem(rel)) if rel.parent != Path(".") else _stem(rel)
            loaded = [Document(rel_id, d.title, d.text, d.meta) for d in loaded]
        docs.extend(loaded)
    if not docs:
        raise FileNotFoundError(f"{root}: no {(*_TEXT_SUFFIXES, *_JSON_SUFFIXES)} files found")
    return docs


_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"),
                  "test": ("test",)}


def _predefined_split(root: Path, split: str) -> Path | None:
    """``root/<split>/`` or ``root/<split>.jsonl`` (with the usual aliases), if the folder has any."""
    found = {}
    for s, names in _SPLIT_ALIASES.items():
        for n in names:
            cands = [root / n] + [root / (n + suf) for suf in _JSON_SUFFIXES]
            hit = next((c for c in cands if c.exists()), None)
            if hit is not None:
                found[s] = hit
                break
    if not found:
        return None
    if split not in found:
        raise FileNotFoundError(f"{root} has predefined splits {sorted(found)} but not {split!r}")
    return found[split]


def load_local(
    path: str | Path, split: str = "train", *, text_field: str = "text",
    title_field: str | None = None, id_field: str | None = None, strip_gutenberg: bool = True,
    seed: int = DEFAULT_SPLIT_SEED, validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
) -> list[Document]:
    """A file or folder, split by work unless the folder carries its own splits."""
    check_split(split)
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such file or directory")
    kw = dict(text_field=text_field, title_field=title_field, id_field=id_field,
              strip_gutenberg=strip_gutenberg)
    if root.is_dir() and split != ALL:
        pre = _predefined_split(root, split)
        if pre is not None:
            return load_directory(pre, **kw) if pre.is_dir() else _load_file(pre, **kw)
    docs = load_directory(root, **kw) if root.is_dir() else _load_file(root, **kw)
    if split == ALL:
        return docs
    return split_documents(docs, seed=seed, validation=validation, test=test)[split]


# --- the one entry point -------------------------------------------------------------------------

def load_corpus(
    source: str | Path = DEFAULT_CORPUS,
    split: str = "train",
    *,
    text_field: str = "text",
    title_field: str | None = None,
    id_field: str | None = None,
    strip_gutenberg: bool = True,
    seed: int | None = None,
    validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
    **hf_kwargs: Any,
) -> list[Document]:
    """Whole documents of one split (``"train"``, ``"validation"``, ``"test"`` or ``"all"``).

    ``source``: an embedded corpus name (``"shakespeare"``, ``"code"``), a local path, or
    ``"hf:<path>[:<config>]"``. ``seed`` re-splits by work (default: the embedded manifest's
    split, or :data:`~hopekit.data.splits.DEFAULT_SPLIT_SEED` for local data). Extra keyword
    arguments go to :func:`hopekit.data.hf_datasets.load_hf_documents` (``streaming``,
    ``limit``, ``data_files``, ``hf_split``, ``resplit``, ``cache_dir``, ...).
    """
    if isinstance(source, str) and source.startswith("hf:"):
        path, config = parse_hf_source(source)
        return load_hf_documents(
            path, split, name=config, text_field=text_field, title_field=title_field,
            id_field=id_field, strip_gutenberg=strip_gutenberg,
            seed=DEFAULT_SPLIT_SEED if seed is None else seed, validation=validation, test=test,
            **hf_kwargs)
    if hf_kwargs:
        raise TypeError(f"unexpected arguments for a non-hf source: {sorted(hf_kwargs)}")
    if isinstance(source, str) and source in EMBEDDED:
        return load_embedded(source, split, seed=seed, validation=validation, test=test)
    if isinstance(source, str) and not Path(source).exists() and "/" not in source and "." not in source:
        raise ValueError(f"unknown corpus {source!r}: not an embedded corpus {EMBEDDED}, "
                         f"an existing path, or 'hf:<dataset>'")
    return load_local(source, split, text_field=text_field, title_field=title_field,
                      id_field=id_field, strip_gutenberg=strip_gutenberg,
                      seed=DEFAULT_SPLIT_SEED if seed is None else seed,
                      validation=validation, test=test)


def corpus_stats(documents: Sequence[Document]) -> dict[str, int]:
    """Counts worth printing at start-up: documents, characters, UTF-8 bytes (= byte tokens)."""
    return {
        "documents": len(documents),
        "chars": sum(len(d.text) for d in documents),
        "bytes": sum(len(d.text.encode("utf-8")) for d in documents),
    }
