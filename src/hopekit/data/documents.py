"""The unit of every corpus: one document (a play, a book, a paper), never a fragment of one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


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
