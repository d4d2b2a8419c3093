"""Perplexity vs evaluation length under the field's three protocols, with per-position loss curves.

::

    from hopekit.eval.perplexity import perplexity
    from hopekit.eval.records import append_records, model_descriptor, ppl_records

    res = perplexity(model, test_docs, eval_len=2048, protocol="nonoverlapping", max_tokens=65536)
    res.nll, res.ppl, res.tokens, res.windows, res.documents
    res.loss_by_position()            # (eval_len,) mean loss at each position inside the window
    rows = ppl_records(res, method="rope", params={"kind": "rope"}, train_len=128, seed=0,
                       model=model_descriptor(model), corpus="shakespeare/test")
    append_records(run_dir / "records.jsonl", rows)

**Windows.** A window is ``eval_len + 1`` consecutive tokens: the model is run on the first
``eval_len`` (so the forward is exactly ``eval_len`` long — the length under test) and predicts the
last ``eval_len``; the first token is context only. Position ``j`` of the per-position curve is the
loss of predicting window token ``j + 1`` from the ``j + 1`` tokens before it. The windows come from
:func:`hopekit.data.eval_windows`:

* ``"nonoverlapping"`` (our default; the HoPE-hyperbolic paper's, ALiBi's "chunked"): windows at
  offsets 0, L, 2L, …; every target in a window is scored, so every stream token after the first is
  scored exactly once; a tail that does not fill a window is dropped.
* ``"sliding"`` (PI / YaRN / LongRoPE), stride S ≤ L: windows every S tokens; the first window scores
  all L targets, each later one only the S targets no earlier window scored; the last window is
  moved back to end at the stream's end, so the tail is scored too. With S = L it scores exactly
  what ``"nonoverlapping"`` scores, window for window, **plus** that final tail window (which
  re-reads already-scored context and scores only the tail) — nonoverlapping drops the tail.
* ``"truncate"`` (YaRN ``--truncate``, LongRoPE's search fitness, NoPE-2024): each document with at
  least ``eval_len + 1`` tokens is cut to its first ``eval_len + 1`` and scored whole (one window per
  document); shorter documents are skipped and counted in ``skipped_documents``. PPL =
  exp(mean over documents of the per-document mean NLL). ``bos=<id>`` prepends a BOS token to each
  document first (the LongRoPE / YaRN recipe), so the window is BOS + the first ``eval_len`` document
  tokens and the first document token is scored too.

The stream protocols score a token-weighted mean NLL (HF's guide, PI); YaRN's averaging of
per-window means differs only through the partially scored first/last windows.

**Which windows** (``sampling``; ``max_tokens`` bounds the work):

* ``"spread"`` (the default): every document is windowed on its own (no context crosses a document
  boundary; ``separator`` is unused), and when those windows hold more than ``max_tokens`` targets,
  ``k`` of them are taken at evenly spaced indices of the list of all windows in document order (``k``:
  enough windows for ``max_tokens`` targets at the mean window's count). The windows are spread over
  the whole split, from the first document's start to the last one's end, each document getting about
  its share by length instead of the first document's opening; a document shorter than the spacing
  between chosen windows may get none, so the set of documents reached can differ between lengths
  (``documents`` in the result says how many). A 1-D stream is one document.
* ``"prefix"``: windows in order from the start of the joined stream (or of each document with
  ``per_document``) while fewer than ``max_tokens`` targets have been scored (the last window is kept
  whole, so up to ``max_tokens + eval_len − 1`` are scored). At every ``eval_len`` the scored text is
  the same prefix of the stream, so lengths are compared on the same tokens, but a small budget sees
  only the first document.

``budget_reached`` says whether windows were left. The result keeps each window's summed NLL and
scored count (``window_nll``, ``window_tokens``), so :meth:`PerplexityResult.bootstrap_ppl` gives a
percentile-bootstrap interval over windows: how much the number would move with other windows of the
same model, treating windows as independent (windows of one document are correlated, so it understates
the spread across documents; seed-to-seed variation is a separate effect).

**Memory is linear in length.** Nothing here is T×T: attention runs in the model (SDPA, or the
``attn_chunk``-query-row blocks of the bias / scores paths). The batch shrinks automatically so that
``batch · eval_len ≤ max_batch_tokens`` and ``batch · eval_len · vocab`` logits stay under
:data:`MAX_LOGITS` elements (batch 1 for long windows), and the loss is taken from the logits in
row chunks (no full-size float32 / log-softmax copy). Evaluation runs under ``torch.no_grad()`` —
deliberately not ``inference_mode``: encodings cache derived tables, and inference tensors cached
during a mid-training evaluation would break the next backward.

**Learned absolute positions** cannot represent a position past their table: :func:`perplexity`
refuses with :class:`LengthLimitError` before scoring anything (a probe of the encoding at the
largest position). A length sweep records that as a skip with
:func:`hopekit.eval.records.skipped_records` (value None, ``skipped`` = the reason), so the report
shows a gap instead of a crash.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import data as data_lib
from ..config import EvalConfig

__all__ = [
    "PROTOCOLS", "PerplexityResult", "LengthLimitError", "perplexity", "has_window", "canonical_protocol",
    "bin_curve", "eval_kwargs", "MAX_LOGITS", "SAMPLINGS",
]

#: protocol names as records, ``EvalConfig.protocol`` and :mod:`hopekit.data` spell them
PROTOCOLS = (data_lib.NONOVERLAP, data_lib.SLIDING, data_lib.TRUNCATE)

#: how windows are chosen (module docstring): evenly across every document, or in order from the start
SAMPLINGS = ("spread", "prefix")

#: upper bound on batch · eval_len · vocab logit elements per forward (2^27 fp32 = 512 MiB)
MAX_LOGITS = 1 << 27
#: logit elements per loss chunk (2^22 fp32 = 16 MiB)
_LOSS_CHUNK = 1 << 22


class LengthLimitError(ValueError):
    """The model's positional encoding cannot represent positions up to ``eval_len`` (learned absolute)."""


def canonical_protocol(protocol: str) -> str:
    """``"nonoverlapping"``, ``"sliding"`` or ``"truncate"`` (checked)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}: expected one of {PROTOCOLS}")
    return protocol


@dataclasses.dataclass(frozen=True, eq=False)
class PerplexityResult:
    """One perplexity measurement.

    ``nll``/``ppl``: nan when nothing was scored (stream shorter than a window, or every document
    shorter than ``eval_len + 1`` under truncate). ``tokens``: scored targets; ``windows``: forwards
    of ``eval_len`` tokens; ``documents``: documents scored (truncate) or reached by the scored
    targets (stream protocols; a bare 1-D stream counts as one); ``skipped_documents``: truncate's
    too-short documents. ``loss_sum`` / ``loss_count`` ``(eval_len,)``: summed loss and number of
    scored targets at each position inside the window.
    """

    protocol: str
    eval_len: int
    stride: int | None
    nll: float
    ppl: float
    tokens: int
    windows: int
    documents: int
    skipped_documents: int
    loss_sum: torch.Tensor      # (eval_len,) float64
    loss_count: torch.Tensor    # (eval_len,) int64
    budget_reached: bool
    batch_size: int             # windows per forward actually used
    seconds: float
    sampling: str = "spread"
    window_nll: tuple[float, ...] = ()      # summed NLL of each scored window, in scoring order
    window_tokens: tuple[int, ...] = ()     # scored targets of each window

    def loss_by_position(self) -> torch.Tensor:
        """``(eval_len,)`` float64 mean loss at each position inside the window (nan where unscored)."""
        return self.loss_sum / self.loss_count.double()

    def binned(self, bins: int = 32) -> dict[str, list]:
        """The per-position curve in ``bins`` equal-width bins (see :func:`bin_curve`)."""
        return bin_curve(self.loss_sum, self.loss_count, bins)

    def summary(self) -> dict[str, Any]:
        """Scalar fields as a plain dict (no tensors, no per-window lists)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("loss_sum", "loss_count", "window_nll", "window_tokens")}

    def bootstrap_ppl(self, confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
        """Percentile-bootstrap interval of the token-weighted perplexity over this result's windows
        (:func:`hopekit.eval.stats.bootstrap_ppl`); ``(nan, nan)`` when nothing was scored. Under
        ``truncate`` the resampled statistic is the same token-weighted one (every window scores
        ``eval_len`` targets, so it equals the per-document mean)."""
        from .stats import bootstrap_ppl

        return bootstrap_ppl(self.window_nll, self.window_tokens, confidence=confidence, resamples=resamples,
                             seed=seed)


def bin_curve(loss_sum: torch.Tensor, loss_count: torch.Tensor, bins: int = 32) -> dict[str, list]:
    """Bin a per-position curve into ``min(bins, T)`` contiguous bins of (nearly) equal width.

    Returns ``{"start": [first position of each bin], "end": [one past its last], "loss": [count-weighted
    mean loss, None if the bin has no scored target], "count": [scored targets]}``.
    """
    if bins < 1:
        raise ValueError(f"bins={bins}: must be >= 1")
    T = loss_sum.numel()
    n = min(bins, T)
    edges = [(i * T) // n for i in range(n + 1)]
    out: dict[str, list] = {"start": edges[:-1], "end": edges[1:], "loss": [], "count": []}
    for a, b in zip(edges[:-1], edges[1:]):
        c = int(loss_count[a:b].sum())
        out["count"].append(c)
        out["loss"].append(float(loss_sum[a:b].sum()) / c if c else None)
    return out


def _exp(nll: float) -> float:
    if math.isnan(nll):
        return nll
    try:
        return math.exp(nll)
    except OverflowError:
        return math.inf


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_positions_fit(model: nn.Module, eval_len: int, device: torch.device) -> None:
    """Probe an input-level (absolute) encoding at the largest position; refuse if it cannot embed it."""
    enc = getattr(model, "pe", None)
    if enc is None or not getattr(enc, "uses_embed", False) or getattr(enc, "uses_tokens", False):
        return
    x = torch.zeros(1, 1, enc.d_model, device=device)
    try:
        enc.embed(x, torch.tensor([eval_len - 1], device=device))
    except (ValueError, IndexError) as err:
        raise LengthLimitError(f"eval_len={eval_len}: {err}") from err


def _tagged_windows(protocol: str, tokens: torch.Tensor | Sequence[torch.Tensor], eval_len: int,
                    stride: int | None, separator: int | None, per_document: bool,
                    ) -> Iterator[tuple[int | None, data_lib.EvalWindow]]:
    """Windows of hopekit.data, each tagged with its document index (None inside a joined stream)."""
    if isinstance(tokens, torch.Tensor):
        yield from ((0, w) for w in data_lib.eval_windows(protocol, tokens, eval_len, stride=stride))
        return
    if protocol == "truncate" or per_document:
        for i, doc in enumerate(tokens):
            for w in data_lib.eval_windows(protocol, [doc], eval_len, stride=stride, per_document=True):
                yield i, w
        return
    for w in data_lib.eval_windows(protocol, list(tokens), eval_len, stride=stride, separator=separator):
        yield None, w


def _token_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seq_len: int | None,
               amp_dtype: torch.dtype | None) -> torch.Tensor:
    """``(B, T)`` float32 next-token NLL of targets ``y``; the loss is taken from the logits in row chunks."""
    kwargs = {} if seq_len is None else {"seq_len": seq_len}
    if amp_dtype is not None:
        with torch.autocast(x.device.type, dtype=amp_dtype):
            out = model(x, **kwargs)
    else:
        out = model(x, **kwargs)
    logits = out[0] if isinstance(out, tuple) else out                      # (B, T, V)
    B, T, V = logits.shape
    rows = max(1, _LOSS_CHUNK // max(1, B * V))
    nll = torch.empty(B, T, dtype=torch.float32, device=logits.device)
    for s in range(0, T, rows):
        e = min(s + rows, T)
        chunk = logits[:, s:e].float()                                      # (B, e−s, V)
        nll[:, s:e] = F.cross_entropy(chunk.reshape(-1, V), y[:, s:e].reshape(-1),
                                      reduction="none").view(B, e - s)
    return nll


def perplexity(
    model: nn.Module,
    tokens: torch.Tensor | Sequence[torch.Tensor],
    eval_len: int,
    protocol: str = "nonoverlapping",
    *,
    stride: int | None = None,
    max_tokens: int | None = EvalConfig.max_tokens,
    batch_size: int = EvalConfig.batch_size,
    max_batch_tokens: int = 16384,
    seq_len: int | None = None,
    device: torch.device | str | None = None,
    separator: int | None = None,
    per_document: bool = False,
    bos: int | None = None,
    amp_dtype: torch.dtype | None = None,
    sampling: str = "spread",
    progress: str | None = None,
) -> PerplexityResult:
    """Mean next-token NLL / perplexity of ``model`` on ``tokens`` with windows of ``eval_len``.

    ``tokens``: one 1-D int64 test stream, or a list of per-document 1-D tensors (joined with
    ``separator`` — None: no separator — for the stream protocols unless ``per_document``, in which
    case windows never cross a document boundary; ``sampling="spread"`` always windows each document on
    its own). ``protocol``: ``"nonoverlapping"``, ``"sliding"``
    (needs ``stride`` in [1, eval_len]) or ``"truncate"`` (needs a document list; see the module
    docstring). ``max_tokens``: the number of targets to score (None: all); ``sampling``: which windows
    (``"spread"``: evenly across every document; ``"prefix"``: in order from the start; module docstring).
    ``batch_size`` windows per forward, reduced to keep ``batch · eval_len ≤ max_batch_tokens`` and
    the logits under :data:`MAX_LOGITS`. ``seq_len`` fixes the spectrum of length-dependent rotary
    methods (default: the model's rule, max position + 1 = ``eval_len``). ``bos``: a token id
    prepended to each document. ``amp_dtype``: run the forward under autocast (e.g. bf16 on GPU).
    ``progress``: a label; show a progress bar over the windows under it (only when stderr is a
    terminal). The model is put in eval mode for the call and restored.
    """
    protocol = canonical_protocol(protocol)
    _check_arguments(protocol, eval_len, stride, max_tokens, batch_size, max_batch_tokens, sampling)
    docs = _as_documents(tokens, protocol, bos)
    device = torch.device(device) if device is not None else _model_device(model)
    batch = _batch_size(model, eval_len, batch_size, max_batch_tokens)
    _check_positions_fit(model, eval_len, device)

    spread = sampling == "spread"
    per_document = per_document or spread
    windows = functools.partial(_tagged_windows, protocol, docs, eval_len, stride, separator, per_document)
    if spread:
        windows = _spread(windows, max_tokens)
    tally = _Tally.zeros(eval_len, device)
    budget = None if spread else max_tokens           # spread: the selection is the budget
    bar = _progress_bar(progress, windows, budget)
    t0 = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for buf in _window_batches(windows(), batch, budget, tally):
                _score_batch(model, buf, tally, device, seq_len, amp_dtype, per_document_mean=protocol == "truncate")
                bar.update(len(buf))
    finally:
        model.train(was_training)
        bar.close()
    if spread:
        tally.budget_reached = windows.left > 0
    return _result(tally, docs, protocol=protocol, eval_len=eval_len, stride=stride, separator=separator,
                   per_document=per_document, batch=batch, seconds=time.perf_counter() - t0, sampling=sampling)


class _spread:
    """The windows of ``windows()`` thinned to about ``max_tokens`` scored targets, at evenly spaced
    indices of the whole list (module docstring). Two passes over the generator (slicing only, no
    forward): one counts windows and targets, the second yields the chosen ones. ``left``: windows not
    taken."""

    def __init__(self, windows: Callable[[], Iterator[tuple[int | None, data_lib.EvalWindow]]],
                 max_tokens: int | None) -> None:
        self.windows = windows
        n = targets = 0
        for _, w in windows():
            n += 1
            targets += int(w.loss_mask.sum())
        if max_tokens is None or targets <= max_tokens:
            self.chosen = None
            self.left = 0
        else:
            k = min(n, math.ceil(max_tokens * n / targets))           # windows for max_tokens at the mean count
            self.chosen = {((2 * j + 1) * n) // (2 * k) for j in range(k)}  # floor((j + ½) · n / k)
            self.left = n - len(self.chosen)

    def __call__(self) -> Iterator[tuple[int | None, data_lib.EvalWindow]]:
        for i, tagged in enumerate(self.windows()):
            if self.chosen is None or i in self.chosen:
                yield tagged


def has_window(tokens: torch.Tensor | Sequence[torch.Tensor], eval_len: int, protocol: str = "nonoverlapping", *,
               stride: int | None = None, separator: int | None = None, per_document: bool = False,
               bos: int | None = None, sampling: str = "spread") -> bool:
    """Whether :func:`perplexity` with these arguments would score anything: at least one window of
    ``eval_len`` fits (the stream, or with ``sampling="spread"``, ``per_document`` or under truncate some
    document, holds ``eval_len + 1`` tokens)."""
    protocol = canonical_protocol(protocol)
    _check_arguments(protocol, eval_len, stride, None, 1, 1, sampling)
    docs = _as_documents(tokens, protocol, bos)
    per_document = per_document or sampling == "spread"
    return next(_tagged_windows(protocol, docs, eval_len, stride, separator, per_document), None) is not None


def _check_arguments(protocol: str, eval_len: int, stride: int | None, max_tokens: int | None,
                     batch_size: int, max_batch_tokens: int, sampling: str) -> None:
    """Refuse bad scalar arguments of :func:`perplexity`, naming the argument and its value."""
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling={sampling!r}: expected one of {SAMPLINGS}")
    if isinstance(eval_len, bool) or not isinstance(eval_len, int) or eval_len < 1:
        raise ValueError(f"eval_len={eval_len!r}: expected an int >= 1")
    if protocol == "sliding":
        if stride is None or not 1 <= stride <= eval_len:
            raise ValueError(f"stride={stride!r}: the sliding protocol needs 1 <= stride <= eval_len={eval_len}")
    elif stride is not None:
        raise ValueError(f"stride={stride!r}: only the sliding protocol takes a stride (protocol={protocol!r})")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens!r}: expected None or an int >= 1")
    if batch_size < 1 or max_batch_tokens < 1:
        raise ValueError(f"batch_size={batch_size}, max_batch_tokens={max_batch_tokens}: must be >= 1")


def _as_documents(tokens: torch.Tensor | Sequence[torch.Tensor], protocol: str,
                  bos: int | None) -> torch.Tensor | list[torch.Tensor]:
    """A checked int64 stream, or a list of int64 documents with ``bos`` prepended."""
    if not isinstance(tokens, torch.Tensor):
        docs = [torch.as_tensor(d).long().reshape(-1) for d in tokens]
        if bos is not None:
            docs = [torch.cat([torch.tensor([bos], dtype=torch.long), d]) for d in docs]
        return docs
    if tokens.dim() != 1:
        raise ValueError(f"tokens: expected a 1-D stream or a list of 1-D documents, got shape {tuple(tokens.shape)}")
    if protocol == "truncate":
        raise ValueError("protocol='truncate' scores each document's prefix: pass a list of documents, "
                         "not one joined stream")
    if bos is not None:
        raise ValueError("bos= is prepended to each document: pass a list of documents")
    return tokens.long()


def _batch_size(model: nn.Module, eval_len: int, batch_size: int, max_batch_tokens: int) -> int:
    """Windows per forward: ``batch_size`` capped by ``max_batch_tokens`` and :data:`MAX_LOGITS`."""
    batch = min(batch_size, max(1, max_batch_tokens // eval_len))
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab:
        batch = min(batch, max(1, MAX_LOGITS // (eval_len * vocab)))
    return batch


@dataclasses.dataclass
class _Tally:
    """The running sums of one :func:`perplexity` call."""

    loss_sum: torch.Tensor                   # (eval_len,) float64
    loss_count: torch.Tensor                 # (eval_len,) int64
    doc_mean_sum: float = 0.0                # truncate: sum over documents of the per-document mean NLL
    windows: int = 0
    scored: int = 0
    docs_seen: set[int] = dataclasses.field(default_factory=set)
    budget_reached: bool = False
    stopped_at: int | None = None            # document index of the first window left unscored
    window_nll: list[float] = dataclasses.field(default_factory=list)    # summed NLL per window
    window_tokens: list[int] = dataclasses.field(default_factory=list)   # scored targets per window

    @classmethod
    def zeros(cls, eval_len: int, device: torch.device) -> _Tally:
        return cls(torch.zeros(eval_len, dtype=torch.float64, device=device),
                   torch.zeros(eval_len, dtype=torch.int64, device=device))


def _window_batches(windows: Iterator[tuple[int | None, data_lib.EvalWindow]], batch: int, max_tokens: int | None,
                    tally: _Tally) -> Iterator[list[data_lib.EvalWindow]]:
    """Lists of up to ``batch`` windows, taken in order while fewer than ``max_tokens`` targets are
    counted (the window that crosses the budget is kept whole); counts windows, targets and documents
    into ``tally``."""
    buf: list[data_lib.EvalWindow] = []
    for tag, w in windows:
        if max_tokens is not None and tally.scored >= max_tokens:
            tally.budget_reached, tally.stopped_at = True, tag
            break
        buf.append(w)
        tally.windows += 1
        tally.scored += int(w.loss_mask.sum())
        if tag is not None:
            tally.docs_seen.add(tag)
        if len(buf) == batch:
            yield buf
            buf = []
    if buf:
        yield buf


def _score_batch(model: nn.Module, buf: list[data_lib.EvalWindow], tally: _Tally, device: torch.device,
                 seq_len: int | None, amp_dtype: torch.dtype | None, *, per_document_mean: bool) -> None:
    """Run one batch of windows and add its scored losses to ``tally``."""
    x = torch.stack([w.input_ids for w in buf]).to(device)                  # (B, T)
    y = torch.stack([w.target_ids for w in buf]).to(device)                 # (B, T)
    m = torch.stack([w.loss_mask for w in buf]).to(device)                  # (B, T) bool
    nll = torch.where(m, _token_nll(model, x, y, seq_len, amp_dtype).double(), 0.0)  # (B, T), 0 unscored
    tally.loss_sum.add_(nll.sum(0))
    tally.loss_count.add_(m.sum(0))
    tally.window_nll.extend(nll.sum(1).tolist())
    tally.window_tokens.extend(m.sum(1).tolist())
    if per_document_mean:
        tally.doc_mean_sum += float((nll.sum(1) / m.sum(1).clamp_min(1)).sum())


def _progress_bar(label: str | None, windows: Callable[[], Iterator[tuple[int | None, data_lib.EvalWindow]]],
                  max_tokens: int | None):
    """A tqdm bar over the windows the budget admits when ``label`` is given and stderr is a
    terminal (the windows are then counted first: slicing only, no forward), else a no-op bar."""
    from tqdm.auto import tqdm

    if label is None or not getattr(sys.stderr, "isatty", lambda: False)():
        return tqdm(disable=True)
    count = _Tally.zeros(1, torch.device("cpu"))
    for _ in _window_batches(windows(), 1, max_tokens, count):
        pass
    return tqdm(total=count.windows, desc=label, unit="win", leave=False, dynamic_ncols=True)


def _result(tally: _Tally, docs: torch.Tensor | list[torch.Tensor], *, protocol: str, eval_len: int,
            stride: int | None, separator: int | None, per_document: bool, batch: int,
            seconds: float, sampling: str) -> PerplexityResult:
    """The :class:`PerplexityResult` of a finished tally (see its docstring for each field)."""
    skipped = 0
    if protocol == "truncate":
        documents = len(tally.docs_seen)
        examined = docs if tally.stopped_at is None else docs[:tally.stopped_at]  # before the budget stopped us
        skipped = sum(1 for d in examined if d.numel() < eval_len + 1)
        nll = tally.doc_mean_sum / documents if documents else math.nan
    else:
        whole = isinstance(docs, torch.Tensor) or per_document
        documents = len(tally.docs_seen) if whole else _documents_reached(docs, separator, tally.scored)
        nll = float(tally.loss_sum.sum()) / tally.scored if tally.scored else math.nan
    return PerplexityResult(
        protocol=protocol, eval_len=eval_len, stride=stride, nll=nll, ppl=_exp(nll),
        tokens=tally.scored, windows=tally.windows, documents=documents, skipped_documents=skipped,
        loss_sum=tally.loss_sum.cpu(), loss_count=tally.loss_count.cpu(), budget_reached=tally.budget_reached,
        batch_size=batch, seconds=seconds, sampling=sampling, window_nll=tuple(tally.window_nll),
        window_tokens=tuple(tally.window_tokens))


def _documents_reached(docs: Sequence[torch.Tensor], separator: int | None, scored: int) -> int:
    """Documents of a joined stream that the scored targets reach: both stream protocols score a
    contiguous prefix of targets (stream positions 1 … scored), i.e. the first ``scored + 1`` tokens."""
    if not scored:
        return 0
    end, start, n = scored + 1, 0, 0
    for d in docs:
        if start >= end:
            break
        if d.numel():
            n += 1
        start += d.numel() + (separator is not None)
    return n


def eval_kwargs(cfg: EvalConfig, train_len: int, eval_len: int) -> dict[str, Any]:
    """:func:`perplexity` keyword arguments from an :class:`EvalConfig` at one ``eval_len``: protocol,
    sampling, max_tokens, batch_size and, for sliding, ``stride`` (``cfg.stride``; 0 means ``train_len``;
    capped at ``eval_len``)."""
    out: dict[str, Any] = {"protocol": cfg.protocol, "sampling": cfg.sampling, "max_tokens": cfg.max_tokens,
                           "batch_size": cfg.batch_size}
    if cfg.protocol == "sliding":
        out["stride"] = min(cfg.stride or train_len, eval_len)
    return out
