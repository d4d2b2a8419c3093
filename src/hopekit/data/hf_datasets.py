"""Hugging Face ``datasets`` as a document source (PG-19, proof-pile, any dataset with a text column).

``datasets`` is imported inside the functions, never at module import. The call is the real one,
``datasets.load_dataset(path, name, split=..., ...)``; only the source differs between the hub
(``"emozilla/pg19"``, needs the network once, then its cache) and local files in a hub format
(``"parquet"`` or ``"json"`` with ``data_files=...``), which is how the tests exercise it.

``datasets`` 4 no longer runs loading scripts, so a hub source must be a repository of data files
(parquet, JSON lines...). ``deepmind/pg19`` is a script; ``emozilla/pg19`` holds the same books,
splits and columns as parquet files. A script repository is refused in one line naming that cure.

Splits: by default our split name is the dataset's split name (``"validation"`` may be spelled
differently: pass ``hf_split``). A dataset with a single split is re-split by work with
``resplit=True`` (reads ``hf_split`` or ``"train"``; the assignment is
:func:`~hopekit.data.splits.split_documents`' on the titles and ids alone, so only the texts of the
requested split are read). ``limit`` takes the first ``limit`` records of the dataset split read,
before a re-split.

A hub dataset with no network and no local copy fails at once, in one line
(:func:`check_dataset_access`), instead of ``datasets``' ~30 s of retries and a traceback.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any

from .documents import Document, records_to_documents
from .gutenberg import strip_gutenberg as _strip_gutenberg
from .splits import ALL, DEFAULT_SPLIT_SEED, DEFAULT_TEST, DEFAULT_VALIDATION, assign_splits, check_split, work_id

#: known long-document datasets and their text / title columns (documentation, and defaults)
KNOWN = {
    "emozilla/pg19": {"text_field": "text", "title_field": "short_book_title"},  # parquet: train/validation/test
    "deepmind/pg19": {"text_field": "text", "title_field": "short_book_title"},  # a loading script (datasets < 4)
    "hoskinson-center/proof-pile": {"text_field": "text"},
    "EleutherAI/proof-pile-2": {"text_field": "text"},
}
#: parquet-backed copies of script datasets, named when the script is refused
PARQUET_COPIES = {"deepmind/pg19": "emozilla/pg19", "pg19": "emozilla/pg19"}


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """``"hf:<path>[:<config>]"`` -> ``(path, config)``."""
    if not source.startswith("hf:"):
        raise ValueError(f"not an hf source: {source!r}")
    rest = source[3:]
    path, _, config = rest.partition(":")
    if not path:
        raise ValueError(f"empty dataset path in {source!r}")
    return path, config or None


def source_split(split: str, *, hf_split: str | None = None, resplit: bool = False) -> str:
    """The dataset split read for our ``split``: ``hf_split`` if given, else ours (``"train"`` for
    a re-split or for ``"all"``)."""
    check_split(split)
    if resplit or split == ALL:
        return hf_split or "train"
    return hf_split or split


# --- fail fast -----------------------------------------------------------------------------------

def _packaged_builders() -> frozenset[str]:
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:  # pragma: no cover - a datasets release without that table
        return frozenset({"arrow", "csv", "json", "pandas", "parquet", "text", "webdataset", "xml"})
    return frozenset(_PACKAGED_DATASETS_MODULES)


def is_hub_dataset(path: str) -> bool:
    """Whether ``load_dataset(path)`` goes to the hub: not a packaged builder (``parquet``, ``json``...)
    and not a local folder or file."""
    return path not in _packaged_builders() and not Path(path).expanduser().exists()


def dataset_cached(path: str, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether ``datasets`` holds a prepared copy of hub dataset ``path`` (what it loads offline):
    ``<cache_dir or HF_DATASETS_CACHE>/<namespace>___<name>/<config>/<version>/<hash>/``."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    root = Path(os.path.expanduser(str(cache_dir or config.HF_DATASETS_CACHE)))
    parts = path.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    return any(os.path.isdir(p) for p in glob.glob(str(root / "___".join(parts) / "*" / "*" / "*")))


def check_dataset_access(path: str, *, streaming: bool = False, cache_dir: str | os.PathLike | None = None,
                         label: str | None = None) -> None:
    """For a hub dataset: return if ``datasets`` has it cached (not when ``streaming``: a stream
    always reads the hub) or the hub answers; else a one-line ``ValueError`` at once
    (``HF_DATASETS_OFFLINE`` / ``HF_HUB_OFFLINE`` set, or the endpoint unreachable in 3 s)."""
    if not is_hub_dataset(path):
        return
    from ..hub import check_hub_access

    check_hub_access(label or f"data.corpus='hf:{path}'",
                     cached=not streaming and dataset_cached(path, cache_dir),
                     what="a hub dataset (streamed)" if streaming else "a hub dataset",
                     offline_vars=("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"),
                     advice="load it once online (datasets then caches it), or give local files: "
                            "data.corpus=hf:parquet with data.data_files")


# --- loading -------------------------------------------------------------------------------------

def open_dataset(path: str, name: str | None, split: str, *, streaming: bool = False, limit: int | None = None,
                 **load_kwargs: Any):
    """``datasets.load_dataset(path, name, split=split, streaming=streaming, **load_kwargs)``, its first
    ``limit`` records (all for None or 0), after the fail-fast check; a loading-script repository is
    refused in one line."""
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("loading 'hf:' corpora needs the `datasets` package: "
                          "pip install 'hopekit[data]'") from e
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit={limit!r}: expected a number of records >= 0 (0 or None: all)")
    label = f"data.corpus='hf:{path}" + (f":{name}'" if name else "'")
    check_dataset_access(path, streaming=streaming, cache_dir=load_kwargs.get("cache_dir"), label=label)
    try:
        ds = datasets.load_dataset(path, name, split=split, streaming=streaming, **load_kwargs)
    except RuntimeError as e:
        if "scripts are no longer supported" not in str(e):
            raise
        copy = PARQUET_COPIES.get(path)
        hint = f"use hf:{copy}, the same data as parquet" if copy else \
            "use a parquet copy of it (or its refs/convert/parquet revision through data_files)"
        raise ValueError(f"{label}: a loading-script dataset, which datasets {datasets.__version__} no longer "
                         f"runs; {hint}") from None
    if limit:
        ds = ds.take(limit) if streaming else ds.select(range(min(limit, len(ds))))
    return ds


def _check_text_column(ds, path: str, text_field: str) -> None:
    if text_field not in (ds.column_names or [text_field]):
        raise KeyError(f"{path}: no column text_field={text_field!r} (columns: {ds.column_names})")


def _metadata_documents(ds, *, text_field: str, title_field: str | None, id_field: str | None,
                        id_prefix: str, source: str) -> list[Document]:
    """Every record of ``ds`` as a Document with an empty text: the ids, titles and metadata
    :func:`~hopekit.data.documents.records_to_documents` gives, read without the text column."""
    if ds.column_names is not None and text_field in ds.column_names:
        ds = ds.remove_columns([text_field])
    return records_to_documents(({**rec, text_field: ""} for rec in ds), text_field=text_field,
                                title_field=title_field, id_field=id_field, id_prefix=id_prefix, source=source)


def select_split(
    path: str,
    split: str = "train",
    *,
    name: str | None = None,
    hf_split: str | None = None,
    resplit: bool = False,
    text_field: str | None = None,
    title_field: str | None = None,
    id_field: str | None = None,
    streaming: bool = False,
    limit: int | None = None,
    seed: int = DEFAULT_SPLIT_SEED,
    validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
    **load_kwargs: Any,
) -> tuple[Any, list[Document] | None, dict[str, Any]]:
    """The records of our ``split``: ``(dataset, metadata, info)``.

    ``dataset``: a ``datasets.Dataset`` (or ``IterableDataset`` when ``streaming``) of exactly those
    records, in dataset order. ``metadata``: for a re-split, their documents without text (ids,
    titles, metadata; parallel to ``dataset``), else None. ``info``: ``text_field``,
    ``title_field``, ``id_prefix``, ``source`` as resolved. Only the titles and ids of the other
    splits are read.
    """
    known = KNOWN.get(path, {})
    text_field = text_field or known.get("text_field", "text")
    title_field = title_field or known.get("title_field")
    read = source_split(split, hf_split=hf_split, resplit=resplit)
    ds = open_dataset(path, name, read, streaming=streaming, limit=limit, **load_kwargs)
    _check_text_column(ds, path, text_field)
    info = {"text_field": text_field, "title_field": title_field, "id_field": id_field,
            "id_prefix": f"{path}/{read}", "source": f"hf:{path}" + (f":{name}" if name else "")}
    if not resplit or split == ALL:
        return ds, None, info
    meta = _metadata_documents(ds, text_field=text_field, title_field=title_field, id_field=id_field,
                               id_prefix=info["id_prefix"], source=info["source"])
    keys = [work_id(d) for d in meta]
    where = assign_splits(keys, seed=seed, validation=validation, test=test)
    keep = [i for i, k in enumerate(keys) if where[k] == split]
    if streaming:
        wanted = set(keep)
        ds = ds.filter(lambda _, i: i in wanted, with_indices=True)
    else:
        ds = ds.select(keep)
    return ds, [meta[i] for i in keep], info


def load_hf_documents(
    path: str,
    split: str = "train",
    *,
    name: str | None = None,
    hf_split: str | None = None,
    resplit: bool = False,
    text_field: str | None = None,
    title_field: str | None = None,
    id_field: str | None = None,
    streaming: bool = False,
    limit: int | None = None,
    strip_gutenberg: bool = False,
    seed: int = DEFAULT_SPLIT_SEED,
    validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
    **load_kwargs: Any,
) -> list[Document]:
    """Documents from ``datasets.load_dataset(path, name, split=..., streaming=..., **load_kwargs)``.

    ``limit`` takes the first ``limit`` records of the dataset split read (with ``streaming=True``
    nothing else is read, except by a re-split, which reads the titles of all of them).
    ``load_kwargs`` pass through (``data_files``, ``revision``, ``cache_dir``, ...).
    """
    ds, meta, info = select_split(path, split, name=name, hf_split=hf_split, resplit=resplit,
                                  text_field=text_field, title_field=title_field, id_field=id_field,
                                  streaming=streaming, limit=limit, seed=seed, validation=validation, test=test,
                                  **load_kwargs)
    text_field = info["text_field"]
    if meta is None:
        return records_to_documents(
            iter(ds), text_field=text_field, title_field=info["title_field"], id_field=id_field,
            id_prefix=info["id_prefix"], strip_gutenberg=strip_gutenberg, source=info["source"])
    docs = []
    for i, (m, rec) in enumerate(zip(meta, ds, strict=True)):
        text = rec.get(text_field)
        if not isinstance(text, str):
            raise KeyError(f"record {m.id!r} ({i} of split {split!r}) has no string field text_field={text_field!r}")
        docs.append(Document(m.id, m.title, _strip_gutenberg(text) if strip_gutenberg else text, m.meta))
    return docs
