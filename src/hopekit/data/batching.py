"""Documents -> token streams -> training batches and evaluation windows.

Training (:class:`TrainBatches`): random windows of ``train_len + 1`` tokens from the train
stream (documents joined by a separator). The batch at ``step`` is a pure function of
``(stream, batch_size, train_len, seed, step, rank)``: each step seeds its own
``torch.Generator`` from a hash of ``(seed, step, rank)``. There is no sampler state to save;
resuming at step ``k`` replays exactly the batches an uninterrupted run would have seen.
:class:`TaskMixture` replaces a fraction of those rows by task instances, the same way.

Evaluation: the three perplexity protocols of the field (DESIGN §5), each named by a string
constant that every record carries. A window is ``(input_ids, target_ids, loss_mask)``, three
1-D tensors of length ``eval_len``; ``target_ids[j]`` is the token after ``input_ids[j]`` and
only targets with ``loss_mask[j]`` count.

* :data:`NONOVERLAP` — consecutive, non-overlapping windows of exactly ``eval_len`` inputs;
  every target scored once; the tail that does not fill a window is dropped. Our default, and
  the HoPE-hyperbolic paper's.
* :data:`SLIDING` — windows of ``eval_len`` every ``stride`` tokens, scoring only targets no
  earlier window scored (PI / YaRN / LongRoPE); the last window is moved back to end at the
  stream's end, so all windows have exactly ``eval_len`` inputs and every target from 1 to
  ``n - 1`` is scored exactly once.
* :data:`TRUNCATE` — each document truncated to its first ``eval_len + 1`` tokens, all
  ``eval_len`` targets scored; documents too short are dropped (or padded and masked).

Stream protocols run over one stream (documents joined by ``separator``) or, with
``per_document=True``, over each document separately so no context crosses a document boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .documents import Document
from .tokenizer import ByteTokenizer, Tokenizer

NONOVERLAP = "nonoverlapping"
SLIDING = "sliding"
TRUNCATE = "truncate"
PROTOCOLS = (NONOVERLAP, SLIDING, TRUNCATE)
#: the protocol used when a record does not name one
DEFAULT_PROTOCOL = NONOVERLAP

_EOS = "eos"


# --- token streams -------------------------------------------------------------------------------

def check_token_ids(ids: torch.Tensor, vocab_size: int, what: str = "stream") -> None:
    """Refuse any id of ``ids`` outside ``[0, vocab_size)``, naming the first one and its position:
    such an id would index past a model's embedding table."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    if ids.numel() == 0:
        return
    flat = ids.reshape(-1)
    lo, hi = torch.aminmax(flat)
    if int(lo) >= 0 and int(hi) < vocab_size:
        return
    pos = int(((flat < 0) | (flat >= vocab_size)).nonzero()[0, 0])
    raise ValueError(f"{what} holds token id {int(flat[pos])} at position {pos}, outside the "
                     f"vocabulary [0, {vocab_size})")


def encode_document(text: str, tokenizer: Tokenizer) -> torch.Tensor:
    """One document as a 1-D int64 tensor (bytes take a zero-copy fast path). An id outside the
    tokenizer's ``[0, vocab_size)`` raises ValueError (never reaches a model)."""
    if isinstance(tokenizer, ByteTokenizer):   # bytes are 0..255 < vocab_size: nothing to check
        data = text.encode("utf-8")
        if not data:
            return torch.empty(0, dtype=torch.long)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
    check_token_ids(ids, tokenizer.vocab_size, f"{tokenizer.name}.encode(...)")
    return ids


def encode_documents(documents: Iterable[Document | str], tokenizer: Tokenizer) -> list[torch.Tensor]:
    """Each document (or plain string) as a 1-D int64 tensor."""
    return [encode_document(d if isinstance(d, str) else d.text, tokenizer) for d in documents]


def _resolve_separator(separator: int | str | None, tokenizer: Tokenizer) -> int | None:
    if separator == _EOS:
        if tokenizer.eos_id is None:
            raise ValueError("separator='eos' needs a tokenizer with an eos_id; pass separator=<id> "
                             "or separator=None to join documents without one")
        return tokenizer.eos_id
    if separator is not None and (isinstance(separator, bool) or not isinstance(separator, int)
                                  or not 0 <= separator < tokenizer.vocab_size):
        raise ValueError(f"separator={separator!r}: expected 'eos', None or a token id in "
                         f"[0, {tokenizer.vocab_size}) (the vocabulary of {tokenizer.name})")
    return separator


def join_tokens(pieces: Sequence[torch.Tensor], separator: int | None) -> torch.Tensor:
    """Concatenate per-document token tensors, a ``separator`` after each (if not None)."""
    if separator is None:
        return torch.cat(list(pieces)) if pieces else torch.empty(0, dtype=torch.long)
    sep = torch.tensor([separator], dtype=torch.long)
    parts = [t for p in pieces for t in (p.long(), sep)]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


def token_stream(
    documents: Iterable[Document | str], tokenizer: Tokenizer, *, separator: int | str | None = _EOS,
) -> torch.Tensor:
    """All documents as one 1-D int64 stream: ``doc0 SEP doc1 SEP ... docN SEP``.

    ``separator="eos"`` (default) uses ``tokenizer.eos_id``; an int uses that id; ``None``
    joins documents directly. Every id is in ``[0, tokenizer.vocab_size)`` (else ValueError).
    """
    return join_tokens(encode_documents(documents, tokenizer), _resolve_separator(separator, tokenizer))


# --- training batches ----------------------------------------------------------------------------

def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """A 63-bit generator seed for one (seed, step, rank): BLAKE2b, so neighbouring steps get
    unrelated streams and nothing depends on Python's hash randomisation."""
    h = hashlib.blake2b(f"hopekit-train:{seed}:{step}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


@dataclass(frozen=True, eq=False)
class TrainBatches:
    """Random ``train_len + 1`` windows of a token stream, a pure function of ``(seed, step)``.

    ``batch(step)`` -> ``(inputs, targets)``, each ``(batch_size, train_len)`` int64, with
    ``targets[:, t] == inputs[:, t + 1]`` inside a window. Window starts are uniform over every
    offset that fits. ``rank`` (torchrun) gives each process its own windows for the same step.
    There is no sampler state: a checkpoint needs only ``seed`` and the next ``step``.
    With ``vocab_size``, a stream holding an id outside ``[0, vocab_size)`` is refused up front.

    ``stream``: a 1-D integer tensor, int64 in memory or a memory-mapped ``uint16`` / ``uint32``
    token file (:func:`hopekit.data.prepare.open_token_file`; a numpy memmap is taken as it is).
    A memory-mapped stream is never copied: each batch gathers its windows from the map and only
    they become int64, so the same seed gives the same batches whichever form the stream takes.
    """

    stream: torch.Tensor
    batch_size: int
    train_len: int
    seed: int = 0
    vocab_size: int | None = None

    def __post_init__(self):
        if not isinstance(self.stream, torch.Tensor):
            import numpy as np

            if not isinstance(self.stream, np.ndarray):
                raise TypeError(f"stream must be a 1-D integer tensor or numpy array, got {type(self.stream).__name__}")
            import warnings

            with warnings.catch_warnings():  # a read-only memmap: nothing here writes to the stream
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                object.__setattr__(self, "stream", torch.from_numpy(self.stream))
        if self.stream.dtype.is_floating_point or self.stream.dtype.is_complex or self.stream.dtype == torch.bool:
            raise TypeError(f"stream must hold integer token ids, got dtype {self.stream.dtype}")
        if self.stream.dim() != 1:
            raise ValueError(f"stream must be 1-D, got shape {tuple(self.stream.shape)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.train_len < 1:
            raise ValueError(f"train_len must be >= 1, got {self.train_len}")
        if self.stream.numel() < self.train_len + 1:
            raise ValueError(f"stream has {self.stream.numel()} tokens, fewer than "
                             f"train_len + 1 = {self.train_len + 1}")
        if self.vocab_size is not None:
            if self.stream.dtype == torch.long:
                check_token_ids(self.stream, self.vocab_size, "TrainBatches.stream")
            else:
                self._check_ids_in_chunks()

    def _check_ids_in_chunks(self, chunk: int = 1 << 22) -> None:
        """:func:`check_token_ids` (same message) over a stream too large to widen to int64 at once."""
        check_token_ids(self.stream[:0].long(), self.vocab_size)   # the vocab_size itself
        for lo in range(0, self.stream.numel(), chunk):
            part = self.stream[lo: lo + chunk].long()
            bad = (part < 0) | (part >= self.vocab_size)
            if bool(bad.any()):
                pos = lo + int(bad.nonzero()[0, 0])
                raise ValueError(f"TrainBatches.stream holds token id {int(self.stream[pos])} at position {pos}, "
                                 f"outside the vocabulary [0, {self.vocab_size})")

    @property
    def num_starts(self) -> int:
        return self.stream.numel() - self.train_len

    @property
    def num_tokens(self) -> int:
        """Tokens in the stream (separators included)."""
        return self.stream.numel()

    def epochs(self, steps: int) -> float:
        """How many times ``steps`` batches go over the stream: ``steps * batch_size * train_len /
        num_tokens`` (tokens trained on, targets counted once per window, over the stream's size)."""
        return steps * self.batch_size * self.train_len / self.num_tokens

    def starts(self, step: int, *, rank: int = 0) -> torch.Tensor:
        """The ``batch_size`` window start offsets of ``step`` (int64)."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        g = torch.Generator(device="cpu")
        g.manual_seed(step_seed(self.seed, step, rank))
        return torch.randint(0, self.num_starts, (self.batch_size,), generator=g, dtype=torch.long)

    def windows(self, step: int, *, rank: int = 0) -> torch.Tensor:
        """``(batch_size, train_len + 1)`` int64 windows of the stream (gathered, then widened)."""
        idx = self.starts(step, rank=rank)[:, None] + torch.arange(self.train_len + 1)
        return self.stream[idx].long()

    def batch(self, step: int, *, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows(step, rank=rank)
        return w[:, :-1], w[:, 1:]



@dataclass(frozen=True, eq=False)
class TaskMixture:
    """:class:`TrainBatches` with a ``fraction`` of its rows replaced by task instances (e.g. pass-key
    retrieval, :func:`hopekit.eval.tasks.training_instance`), still a pure function of ``(seed, step,
    rank)``.

    Each row of a step is a task row with probability ``fraction``, drawn with the row's instance
    seed from a generator of its own (keyed by ``(seed, step, rank)``, apart from the window
    starts', which stay those of ``base``): ``instance(seed)`` gives its ``train_len + 1`` token ids.
    The other rows are ``base``'s windows, unchanged, so ``fraction=0`` gives ``base``'s batches.
    """

    base: TrainBatches
    fraction: float
    instance: Callable[[int], Sequence[int]]

    def __post_init__(self):
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, (int, float)) \
                or not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"fraction={self.fraction!r}: expected a number in [0, 1)")

    @property
    def stream(self) -> torch.Tensor:
        """The corpus stream of ``base`` (what a resume checks is unchanged)."""
        return self.base.stream

    @property
    def num_tokens(self) -> int:
        return self.base.num_tokens

    def epochs(self, steps: int) -> float:
        """Passes over the corpus stream: the expected share of corpus rows of :meth:`TrainBatches.epochs`."""
        return self.base.epochs(steps) * (1.0 - self.fraction)

    def task_rows(self, step: int, *, rank: int = 0) -> dict[int, int]:
        """``{row: instance seed}`` of the task rows of ``step``."""
        g = torch.Generator(device="cpu")
        g.manual_seed(step_seed(self.base.seed, step, rank) ^ _TASK_STREAM)
        picked = torch.rand(self.base.batch_size, generator=g) < self.fraction
        seeds = torch.randint(0, 1 << 62, (self.base.batch_size,), generator=g, dtype=torch.long)
        return {int(i): int(seeds[i]) for i in picked.nonzero()[:, 0]}

    def windows(self, step: int, *, rank: int = 0) -> torch.Tensor:
        w = self.base.windows(step, rank=rank)
        for row, seed in self.task_rows(step, rank=rank).items():
            ids = torch.as_tensor(list(self.instance(seed)), dtype=torch.long)
            if ids.numel() != w.shape[1]:
                raise ValueError(f"task instance of seed {seed}: {ids.numel()} tokens, expected train_len + 1 = "
                                 f"{w.shape[1]}")
            w[row] = ids
        return w

    def batch(self, step: int, *, rank: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.windows(step, rank=rank)
        return w[:, :-1], w[:, 1:]


#: xor-ed into a step's seed for the task rows' generator, so it is not the window starts' stream
_TASK_STREAM = 0x5DEECE66D


# --- evaluation windows --------------------------------------------------------------------------

class EvalWindow(NamedTuple):
    input_ids: torch.Tensor   # (eval_len,) int64
    target_ids: torch.Tensor  # (eval_len,) int64
    loss_mask: torch.Tensor   # (eval_len,) bool — which targets count


def _check_len(eval_len: int) -> None:
    if eval_len < 1:
        raise ValueError(f"eval_len must be >= 1, got {eval_len}")


def nonoverlap_windows(stream: torch.Tensor, eval_len: int) -> Iterator[EvalWindow]:
    """Windows at offsets 0, eval_len, 2·eval_len, ... while a full window (``eval_len`` inputs
    plus the next target) fits; every target in it is scored."""
    _check_len(eval_len)
    n = stream.numel()
    ones = torch.ones(eval_len, dtype=torch.bool)
    for b in range(0, n - eval_len, eval_len):
        w = stream[b: b + eval_len + 1].long()
        yield EvalWindow(w[:-1], w[1:], ones.clone())


def sliding_windows(stream: torch.Tensor, eval_len: int, stride: int) -> Iterator[EvalWindow]:
    """Windows of exactly ``eval_len`` inputs every ``stride`` tokens; each scores only the targets
    no earlier window scored. The first window scores all ``eval_len`` targets, later ones the
    last ``stride`` (the final one: what is left). Needs ``1 <= stride <= eval_len``."""
    _check_len(eval_len)
    if not 1 <= stride <= eval_len:
        raise ValueError(f"stride must be in [1, eval_len={eval_len}], got {stride}")
    n = stream.numel()
    last = n - 1 - eval_len           # the last start whose window fits
    if last < 0:
        return
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    scored_to = 0                     # stream position of the last scored target
    pos = torch.arange(eval_len)
    for b in starts:
        w = stream[b: b + eval_len + 1].long()
        mask = (b + 1 + pos) > scored_to
        scored_to = b + eval_len
        yield EvalWindow(w[:-1], w[1:], mask)


def truncate_windows(
    documents: Sequence[torch.Tensor], eval_len: int, *, drop_short: bool = True, pad_id: int = 0,
) -> Iterator[EvalWindow]:
    """One window per document: its first ``eval_len`` tokens as inputs, all targets scored.

    A document with fewer than ``eval_len + 1`` tokens is skipped (``drop_short=True``, so every
    window has exactly ``eval_len`` of context to spend) or padded with ``pad_id`` and masked.
    """
    _check_len(eval_len)
    for doc in documents:
        n = doc.numel()
        if n >= eval_len + 1:
            w = doc[: eval_len + 1].long()
            yield EvalWindow(w[:-1], w[1:], torch.ones(eval_len, dtype=torch.bool))
        elif not drop_short and n >= 2:
            x = torch.full((eval_len,), pad_id, dtype=torch.long)
            y = torch.full((eval_len,), pad_id, dtype=torch.long)
            x[: n - 1] = doc[:-1]
            y[: n - 1] = doc[1:]
            mask = torch.zeros(eval_len, dtype=torch.bool)
            mask[: n - 1] = True
            yield EvalWindow(x, y, mask)


def eval_windows(
    protocol: str,
    documents: Sequence[torch.Tensor] | torch.Tensor,
    eval_len: int,
    *,
    stride: int | None = None,
    separator: int | None = None,
    per_document: bool = False,
    drop_short: bool = True,
    pad_id: int = 0,
) -> Iterator[EvalWindow]:
    """Windows for ``protocol`` (:data:`NONOVERLAP`, :data:`SLIDING` or :data:`TRUNCATE`).

    ``documents``: per-document token tensors (or, for the stream protocols, one 1-D stream).
    Stream protocols join documents with ``separator`` (``None``: no separator) unless
    ``per_document``. ``stride`` is required by :data:`SLIDING` and refused by the others.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if (stride is not None) != (protocol == SLIDING):
        raise ValueError(f"stride is required by {SLIDING!r} and meaningless for {protocol!r}")
    docs = [documents] if isinstance(documents, torch.Tensor) else list(documents)
    if protocol == TRUNCATE:
        return truncate_windows(docs, eval_len, drop_short=drop_short, pad_id=pad_id)
    streams = docs if per_document else [join_tokens(docs, separator)]
    if protocol == NONOVERLAP:
        return (w for s in streams for w in nonoverlap_windows(s, eval_len))
    return (w for s in streams for w in sliding_windows(s, eval_len, stride))  # type: ignore[arg-type]
