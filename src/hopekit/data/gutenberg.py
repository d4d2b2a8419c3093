"""Separate a Project Gutenberg eBook's body from its header and licence footer.

The body is what a model should train on; the header and footer carry the licence and the
attribution, which a corpus must keep *beside* the text (see ``corpus/shakespeare/``), never
silently drop. Markers recognised (case-insensitive, at the start of a line):

* start of body: ``*** START OF THE PROJECT GUTENBERG EBOOK ...`` (also ``THIS``, ``ETEXT``),
  or the end of the 1990s "small print": ``*END*THE SMALL PRINT! ...``;
* end of body: ``*** END OF THE PROJECT GUTENBERG EBOOK ...`` or the older
  ``End of (the) Project Gutenberg('s) EBook/Etext ...`` line that precedes it.

A text with no marker is returned whole as the body.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?(?:BOOK|TEXT)"
    r"|\*END\*[ \t]*THE SMALL PRINT!)[^\n]*(?:\n|$)",
    re.IGNORECASE | re.MULTILINE,
)
_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG"
    r"|END OF (?:THE )?PROJECT GUTENBERG(?:'S)? (?:E-?BOOK|E-?TEXT))",
    re.IGNORECASE | re.MULTILINE,
)


class GutenbergParts(NamedTuple):
    header: str
    body: str
    footer: str

    @property
    def has_boilerplate(self) -> bool:
        return bool(self.header or self.footer)


def split_gutenberg(text: str) -> GutenbergParts:
    """``(header, body, footer)`` with ``header + body + footer == text`` (line endings kept).

    The body starts after the last start marker that precedes the first end marker (a 1990s
    "small print" placed after the text is footer, not header) and ends at the first end marker.
    """
    first_end = _END.search(text)
    limit = first_end.start() if first_end else len(text)
    start = 0
    for m in _START.finditer(text, 0, limit):
        start = m.end()
    e = _END.search(text, start)
    end = e.start() if e else len(text)
    return GutenbergParts(text[:start], text[start:end], text[end:])


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg text without its boilerplate; unmarked text unchanged."""
    parts = split_gutenberg(text)
    if not parts.has_boilerplate:
        return text
    body = parts.body.strip("\r\n")
    return body + "\n" if body else ""
