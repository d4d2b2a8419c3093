"""The unit of every corpus: one document (a play, a book, a paper), never a fragment of one.

Also the conversion every record-based source shares (local JSON lines, Hugging Face datasets):
:func:`records_to_documents`. It lives here, below both loaders, so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .gutenberg import strip_gutenberg as _strip_gutenberg

#: field names tried, in order, when a record's title / id field is not given
TITLE_FIELDS = ("title", "short_book_title", "book_title", "name")
ID_FIELDS = ("id", "doc_id", "book_id", "url")


@dataclass(frozen=True)
class Document:
    """One whole document.

    ``id`` is unique inside its corpus; for the shipped corpus it is also the canonical work id
    (``canonical_id(title)``), so two editions of one play can never be two documents.
    ``meta`` carries provenance (source file, edition, url, split...) and takes no part in equality.
    """

    id: str
    title: str
    text: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __repr__(self) -> str:  # the text can be megabytes: never print it
        return f"Document(id={self.id!r}, title={self.title!r}, chars={len(self.text)})"


def _pick(record: dict, explicit: str | None, candidates: Sequence[str]) -> Any:
    if explicit is not None:
        return record.get(explicit)
    for f in candidates:
        if record.get(f) not in (None, ""):
            return record[f]
    return None


def records_to_documents(
    records: Iterable[dict], *, text_field: str = "text", title_field: str | None = None,
    id_field: str | None = None, id_prefix: str = "doc", strip_gutenberg: bool = False,
    limit: int | None = None, source: str | None = None,
) -> list[Document]:
    """Records (dicts) to documents. Missing ids become ``"<id_prefix>:<index>"``; missing titles
    become the id. Records without a string ``text_field`` raise, naming the field and record."""
    docs = []
    for i, rec in enumerate(records):
        if limit is not None and i >= limit:
            break
        text = rec.get(text_field)
        if not isinstance(text, str):
            keys = sorted(rec)[:12]
            raise KeyError(f"record {i} has no string field text_field={text_field!r} "
                           f"(fields: {keys})")
        if strip_gutenberg:
            text = _strip_gutenberg(text)
        rid = _pick(rec, id_field, ID_FIELDS)
        rid = f"{id_prefix}:{i}" if rid in (None, "") else str(rid)
        title = _pick(rec, title_field, TITLE_FIELDS)
        meta = {k: v for k, v in rec.items() if k != text_field and isinstance(v, (str, int, float, bool))}
        if source:
            meta["source"] = source
        docs.append(Document(rid, str(title) if title not in (None, "") else rid, text, meta))
    return docs
