"""Document-level train / validation / test splits, deterministic and edition-proof.

Two rules keep evaluation honest:

1. Split **by work**, never by window: every document of a work lands in the same split.
2. Two editions of one work are one work. :func:`canonical_id` maps titles to a work id
   ("The Tragedie of Anthonie, and Cleopatra" and "Antony and Cleopatra" both give
   ``antony-and-cleopatra``), and :func:`split_documents` groups by that id before assigning.

Assignment ranks the work ids by a keyed hash (BLAKE2b of ``"<seed>:<id>"``) and cuts the
ranking at exact counts (``round(fraction * n_works)``, at least one work per non-empty split),
so the sizes are predictable even on a corpus of a few dozen works, and the result depends on
nothing but the set of ids and the seed: not on file order, Python's hash seed, or the platform.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence

from .documents import Document

SPLITS = ("train", "validation", "test")
#: the pseudo-split every loader accepts besides :data:`SPLITS`: all documents, unsplit
ALL = "all"
#: the seed and fractions the shipped corpus was split with (scripts/build_corpus.py)
DEFAULT_SPLIT_SEED = 0
DEFAULT_VALIDATION = 0.1
DEFAULT_TEST = 0.1


def check_split(split: str) -> None:
    """Refuse a split name that is neither one of :data:`SPLITS` nor :data:`ALL`."""
    if split not in (*SPLITS, ALL):
        raise ValueError(f"split must be one of {(*SPLITS, ALL)}, got {split!r}")


# --- canonical work ids --------------------------------------------------------------------------

#: historical / folio spellings -> modern, token by token (applied after lower-casing and
#: dropping apostrophes, so "Love's Labour's" arrives here as "loves labours")
_SPELLING = {
    "adoe": "ado",
    "alls": "all is",
    "anthonie": "antony",
    "comedie": "comedy",
    "dreame": "dream",
    "errours": "errors",
    "historie": "history",
    "iuliet": "juliet",
    "iulius": "julius",
    "labours": "labour",
    "loues": "loves",
    "measvre": "measure",
    "midsommer": "midsummer",
    "moore": "moor",
    "tragedie": "tragedy",
    "twelfe": "twelfth",
    "wiues": "wives",
}

#: ordinal words (with folio spellings) -> regnal numeral, for "<name> the <ordinal>"
_REGNAL = {
    "first": "i", "second": "ii", "third": "iii", "fourth": "iv", "fift": "v", "fifth": "v",
    "sixt": "vi", "sixth": "vi", "seventh": "vii", "eight": "viii", "eighth": "viii",
}
#: part numbers as they are written: "Part 2", "Part II", "Second Part", "The first Part of"
_PART = {"1": 1, "2": 2, "3": 3, "i": 1, "ii": 2, "iii": 3, "first": 1, "second": 2, "third": 3}

#: leading phrases that are not part of a work's identity ("The Tragedie of Macbeth" is Macbeth)
_PREFIXES = (
    ("the",), ("a",), ("an",), ("king",),
    ("tragedy", "of"), ("history", "of"), ("famous", "history", "of"),
    ("life", "of"), ("life", "and", "death", "of"),
)
#: a comma-separated tail that starts with one of these words is a subtitle:
#: "Twelfe Night, Or what you will", "Othello, the Moore of Venice"
_SUBTITLE_STARTS = ("or", "the", "with", "containing", "being")
#: whole-id aliases for subtitles the rules above cannot see
_ALIASES = {
    "hamlet-prince-of-denmark": "hamlet",
    "pericles-prince-of-tyre": "pericles",
}


def canonical_id(title: str) -> str:
    """A lower-case, hyphenated work id that two editions of one work share.

    >>> canonical_id("King Henry IV, Part 1") == canonical_id("The First Part of Henry the Fourth")
    True
    >>> canonical_id("Loues Labour's lost")
    'loves-labour-lost'
    """
    s = unicodedata.normalize("NFKD", title).encode("ascii", "ignore").decode("ascii").lower()
    s = s.replace("&", " and ")
    pieces = re.split(r"[,;:]", s)
    kept = [pieces[0]]
    for piece in pieces[1:]:
        words = re.sub(r"[^a-z0-9' ]+", " ", piece).split()
        if words and words[0] in _SUBTITLE_STARTS and "part" not in words:
            break
        kept.append(piece)
    s = " ".join(kept)
    s = re.sub(r"['`]", "", s)
    s = re.sub(r"[^a-z0-9]+", " ", s)
    toks = [t for w in s.split() for t in _SPELLING.get(w, w).split()]
    # "<main title> or <alternative title>": keep the main title
    if "or" in toks[1:]:
        toks = toks[: toks.index("or", 1)]

    part = None
    for i, t in enumerate(toks):
        if t == "part" and i + 1 < len(toks) and toks[i + 1] in _PART:   # "part 2", "part ii"
            part, lo, hi = _PART[toks[i + 1]], i, i + 2
            break
        if t == "part" and i > 0 and toks[i - 1] in _PART:               # "second part (of)"
            part, lo, hi = _PART[toks[i - 1]], i - 1, i + 1
            if lo > 0 and toks[lo - 1] == "the":
                lo -= 1
            if hi < len(toks) and toks[hi] == "of":
                hi += 1
            break
    if part is not None:
        toks = toks[:lo] + toks[hi:]

    out: list[str] = []
    i = 0
    while i < len(toks):   # "<name> the <ordinal>" -> "<name> <numeral>"
        if (toks[i] == "the" and out and out[-1] not in ("the", "of", "and")
                and i + 1 < len(toks) and toks[i + 1] in _REGNAL):
            out.append(_REGNAL[toks[i + 1]])
            i += 2
            continue
        out.append(toks[i])
        i += 1
    toks = out

    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if len(toks) > len(p) and tuple(toks[: len(p)]) == p:
                toks = toks[len(p):]
                changed = True
    if part is not None:
        toks += ["part", str(part)]
    cid = "-".join(toks) or "untitled"
    return _ALIASES.get(cid, cid)


# --- assignment ----------------------------------------------------------------------------------

def _rank_key(seed: int, work_id: str) -> bytes:
    return hashlib.blake2b(f"{seed}:{work_id}".encode(), digest_size=16).digest()


def _count(fraction: float, n: int) -> int:
    return 0 if fraction <= 0 else max(1, int(fraction * n + 0.5))


def assign_splits(
    work_ids: Iterable[str],
    *,
    seed: int = DEFAULT_SPLIT_SEED,
    validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
) -> dict[str, str]:
    """Map each distinct work id to ``"train"``, ``"validation"`` or ``"test"``.

    The first ``round(test * n)`` ids of the hash ranking go to test, the next
    ``round(validation * n)`` to validation, the rest to train (each non-zero fraction gets at
    least one work). Fewer than three works: everything is train.
    """
    for name, f in (("validation", validation), ("test", test)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name} fraction must be in [0, 1), got {f!r}")
    if validation + test >= 1.0:
        raise ValueError(f"validation + test must be < 1, got {validation} + {test}")
    ids = sorted(set(work_ids))
    n = len(ids)
    if n < 3:
        n_test = n_val = 0
    else:   # rounding up may not leave train empty
        n_test = min(_count(test, n), n - 1)
        n_val = min(_count(validation, n), n - 1 - n_test)
    ranked = sorted(ids, key=lambda w: _rank_key(seed, w))
    out = {}
    for r, w in enumerate(ranked):
        out[w] = "test" if r < n_test else "validation" if r < n_test + n_val else "train"
    return out


def split_documents(
    documents: Sequence[Document],
    *,
    seed: int = DEFAULT_SPLIT_SEED,
    validation: float = DEFAULT_VALIDATION,
    test: float = DEFAULT_TEST,
    key: Callable[[Document], str] | None = None,
) -> dict[str, list[Document]]:
    """Split documents by work: ``{"train": [...], "validation": [...], "test": [...]}``.

    ``key`` gives a document's work id; the default is ``canonical_id(doc.meta["work"])`` when a
    loader recorded one, else ``canonical_id(doc.title or doc.id)``. Documents keep their order.
    """
    key = key or work_id
    keys = [key(d) for d in documents]
    where = assign_splits(keys, seed=seed, validation=validation, test=test)
    out: dict[str, list[Document]] = {s: [] for s in SPLITS}
    for d, k in zip(documents, keys, strict=True):
        out[where[k]].append(d)
    return out


def work_id(doc: Document) -> str:
    """The work a document belongs to (the default grouping key of :func:`split_documents`)."""
    work = doc.meta.get("work") if doc.meta else None
    return canonical_id(work or doc.title or doc.id)
