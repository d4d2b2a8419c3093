"""Hugging Face ``datasets`` as a document source (PG-19, proof-pile, any dataset with a text column).

``datasets`` is imported inside the function, never at module import. The call is the real one,
``datasets.load_dataset(path, name, split=..., ...)``; only the source differs between the hub
(``"deepmind/pg19"``, needs network) and a local file in the same format (``"json"`` or
``"parquet"`` with ``data_files=...``), which is how the tests exercise it.

Splits: by default our split name is the dataset's split name (``"validation"`` may be spelled
differently: pass ``hf_split``). A dataset with a single split can be re-split by work with
``resplit=True`` (loads ``hf_split`` or ``"train"`` and applies
:func:`~hopekit.data.splits.split_documents`).
"""

from __future__ import annotations

from itertools import islice
from typing import Any

from .documents import Document, records_to_documents
from .splits import ALL, DEFAULT_SPLIT_SEED, DEFAULT_TEST, DEFAULT_VALIDATION, check_split, split_documents

#: known long-document datasets and their text / title columns (documentation, and defaults)
KNOWN = {
    "deepmind/pg19": {"text_field": "text", "title_field": "short_book_title"},
    "hoskinson-center/proof-pile": {"text_field": "text"},
    "EleutherAI/proof-pile-2": {"text_field": "text"},
}


def parse_hf_source(source: str) -> tuple[str, str | None]:
    """``"hf:<path>[:<config>]"`` -> ``(path, config)``."""
    if not source.startswith("hf:"):
        raise ValueError(f"not an hf source: {source!r}")
    rest = source[3:]
    path, _, config = rest.partition(":")
    if not path:
        raise ValueError(f"empty dataset path in {source!r}")
    return path, config or None


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

    ``limit`` takes the first ``limit`` records (with ``streaming=True`` nothing else is read).
    ``load_kwargs`` pass through (``data_files``, ``revision``, ``cache_dir``, ...).
    """
    check_split(split)
    try:
        import datasets
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("loading 'hf:' corpora needs the `datasets` package: "
                          "pip install 'hopekit[data]'") from e

    known = KNOWN.get(path, {})
    text_field = text_field or known.get("text_field", "text")
    title_field = title_field or known.get("title_field")
    if resplit or split == ALL:
        source_split = hf_split or "train"
    else:
        source_split = hf_split or split
    ds = datasets.load_dataset(path, name, split=source_split, streaming=streaming, **load_kwargs)
    if text_field not in (ds.column_names or [text_field]):
        raise KeyError(f"{path}: no column text_field={text_field!r} (columns: {ds.column_names})")
    records = islice(iter(ds), limit) if limit is not None else iter(ds)
    docs = records_to_documents(
        records, text_field=text_field, title_field=title_field, id_field=id_field,
        id_prefix=f"{path}/{source_split}", strip_gutenberg=strip_gutenberg,
        source=f"hf:{path}" + (f":{name}" if name else ""))
    if resplit and split != ALL:
        return split_documents(docs, seed=seed, validation=validation, test=test)[split]
    return docs
