"""Perplexity vs length of a pretrained Hugging Face model, with any hopekit encoding patched in — the
measurement behind ``hopekit eval --hf`` (published: docs/results/pretrained.md).

::

    from hopekit.integrations import hf
    from hopekit.eval.pretrained import evaluate_pretrained, pretrained_text

    lm = hf.load_pretrained("smollm2")
    text = pretrained_text(lm.tokenizer)                       # the embedded corpus' test split
    rows = evaluate_pretrained(lm, text, "records.jsonl", lengths=[2048, 16384],
                               pe={"kind": "yarn", "factor": 2})

The scoring is :func:`hopekit.eval.perplexity.perplexity` — the same protocols, windows, budget and
per-position loss as for hopekit's own decoders — run on :class:`HFLogits`, a wrapper that turns a
transformers causal LM into ``forward(x) -> logits``:

* **Memory linear in length.** The wrapper runs the decoder (``use_cache=False``) and returns the
  logits *lazily* (:class:`RowChunkedLogits`): :func:`perplexity` reads them in row chunks, and each
  chunk is the LM head applied to those rows of the final hidden states. A 16k window therefore never
  holds its 16384 × 49152 float32 logits (3.2 GB for SmolLM2), only one chunk of them (16 MiB).
  Attention is SDPA for the rotary methods and hopekit's query-row blocks for bias / score methods
  (:mod:`hopekit.integrations.hf.patch`).
* **The encoding.** ``pe=None`` measures the model as it is: as transformers built it (its own rotary
  embedding; recorded with ``pe_impl="transformers"`` and the parameters its config describes), or
  the encoding a previous :func:`~hopekit.integrations.hf.patch_model` put in. ``pe={...}`` patches
  the model (in place) with that encoding; the model's ``base`` and ``rotary_fraction`` are kept unless
  the config sets them (as :mod:`hopekit.eval.extensions` keeps the trained model's), and methods with
  a ``train_len`` take the model's window (``patch_model``'s rule). Length-dependent methods (dynamic
  NTK) follow HF's rule: the spectrum of a window of ``eval_len`` tokens is the one for ``eval_len``.
* **The text.** :func:`pretrained_text`: the embedded corpus' test split, or a local file / directory
  (any source :func:`hopekit.data.load_corpus` reads), tokenized with the model's own tokenizer. The
  stream protocols join documents with the tokenizer's document separator (``<|endoftext|>`` for
  SmolLM2). ``bos=True`` starts every document with the BOS token (truncate: each scored window
  begins with it); when BOS is the separator itself (SmolLM2) the stream is ``BOS doc0 BOS doc1 …``.

**Long-context tasks.** :func:`evaluate_pretrained_tasks` measures the tasks of
:mod:`hopekit.eval.tasks` (pass key, copy, needle, kv) on a pretrained model the same way — the same
patching and method names, instances in the model's own tokenizer, likelihood scoring on the answer's
rows of the lazy logits alone — through :func:`hopekit.eval.tasks.evaluate_task_jobs` (its records and
resume); ``hopekit eval --hf NAME --task passkey``.

Records (:func:`hopekit.eval.records.ppl_records`) carry, besides the required fields: ``hf`` (the
name asked for), ``hf_source``, ``dtype``, ``bos``, ``pe_impl``, ``seconds`` (wall time of the
measurement), ``model_digest`` (the weights), ``tokens_digest`` (the scored text), ``split``,
``tokenizer`` and ``max_tokens``. A measurement already in the records file — the same
:data:`KEY_FIELDS` — is skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .. import pe as pe_lib
from ..config import EvalConfig
from .lengths import KEY_FIELDS as _DECODER_KEY_FIELDS
from .lengths import _check_writable
from .perplexity import eval_kwargs, has_window, perplexity
from .records import append_records, model_descriptor, model_digest, ppl_records, read_records, record_key
from .tasks import evaluate_task_jobs

__all__ = ["KEY_FIELDS", "HFLogits", "RowChunkedLogits", "PretrainedText", "pretrained_text",
           "method_name", "default_lengths", "evaluate_pretrained", "evaluate_pretrained_tasks"]

#: the record fields that decide a pretrained model's perplexity number (resume skips a "ppl" row
#: with the same values): those of :data:`hopekit.eval.lengths.KEY_FIELDS` plus the dtype, the BOS
#: choice, the scored text and whether transformers or hopekit computed the encoding
KEY_FIELDS = (*_DECODER_KEY_FIELDS, "dtype", "bos", "tokens_digest", "pe_impl")


class RowChunkedLogits:
    """The ``(B, T, V)`` logits of a causal LM, computed on demand from its final hidden states.

    Supports what :func:`hopekit.eval.perplexity.perplexity` reads — ``.shape``, ``.device``,
    ``.dtype`` and row slices ``logits[:, a:b]`` (each one LM-head matmul on those rows) — and
    ``materialize()``. Anything else raises ``TypeError`` (never a silently wrong number).
    """

    def __init__(self, hidden: torch.Tensor, head: nn.Module, vocab_size: int) -> None:
        self.hidden = hidden            # (B, T, d)
        self.head = head
        self.shape = torch.Size((*hidden.shape[:2], vocab_size))
        self.device = hidden.device
        self.dtype = hidden.dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        if (isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None)
                and isinstance(index[1], slice) and index[1].step in (None, 1)):
            return self.head(self.hidden[:, index[1]])
        raise TypeError(f"RowChunkedLogits[{index!r}]: only row slices [:, a:b] are computed; "
                        f"call materialize() for the full tensor")

    def materialize(self) -> torch.Tensor:
        """All ``(B, T, V)`` logits at once (B·T·V elements: what the chunking avoids)."""
        return self.head(self.hidden)


class HFLogits(nn.Module):
    """A transformers causal LM as ``forward(x) -> logits`` for :func:`perplexity`.

    ``x`` ``(B, T)`` token ids, positions ``0 … T − 1``, no cache; returns :class:`RowChunkedLogits`.
    ``.config.vocab_size`` is the model's (perplexity sizes its batches by it). ``seq_len`` (a fixed
    spectrum for length-dependent methods) is refused: a transformers model takes the length from
    the positions (HF's rule, max position + 1).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, x: torch.Tensor, seq_len: int | None = None) -> RowChunkedLogits:
        if seq_len is not None:
            raise ValueError(f"seq_len={seq_len!r}: a transformers model derives the length from its positions "
                             f"(max position + 1); evaluate without seq_len")
        from ..integrations.hf.patch import full_attention_mask

        hidden = self.model.get_decoder()(input_ids=x, attention_mask=full_attention_mask(x),
                                          use_cache=False).last_hidden_state
        return RowChunkedLogits(hidden, self.model.get_output_embeddings(), int(self.config.vocab_size))

    def generate(self, ids: torch.Tensor, n: int, temperature: float = 0.0) -> torch.Tensor:
        """Greedy continuation of ``ids`` ``(B, T)`` by ``n`` tokens through the model's KV cache
        (:func:`hopekit.integrations.hf.generate`): ``(B, T + n)``, the contract of
        :meth:`hopekit.model.Decoder.generate` that :func:`hopekit.eval.tasks.score_generation` calls."""
        from ..integrations.hf import generate

        if temperature != 0:
            raise ValueError(f"temperature={temperature!r}: a pretrained model is decoded greedily here (0)")
        return generate(self.model, ids, n)


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedText:
    """The text a pretrained model is scored on: per-document token tensors in the model's tokenizer."""

    corpus: str                         # "shakespeare", or "file:<path>"
    split: str | None                   # the corpus split; None for a local file taken whole
    tokenizer: str                      # the tokenizer's name ("hf:smollm2")
    documents: list[torch.Tensor]
    separator: int | None               # joins documents in the stream protocols
    bos_id: int | None
    digest: str                         # of the token ids (and the separator)

    @property
    def tokens(self) -> int:
        return sum(d.numel() for d in self.documents)


def pretrained_text(tokenizer: Any, *, text: str | Path | None = None, corpus: str = "shakespeare",
                    split: str = "test", data: Any = None) -> PretrainedText:
    """``text`` (a local ``.txt`` / ``.jsonl`` file or a directory of them, taken whole), else the
    ``split`` of ``corpus`` (default: the embedded corpus' test split) — or of ``data`` (a
    :class:`hopekit.config.DataConfig`, with its text column and ``hf:`` settings) when given — tokenized
    with ``tokenizer`` (hopekit's protocol: :class:`hopekit.data.tokenizer.HFTokenizer`, as
    ``load_pretrained`` gives)."""
    from ..data import encode_documents, load_corpus, load_corpus_from_config
    from ..hashing import digest

    if text is not None:
        path = Path(text).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"text={str(text)!r}: no such file or directory")
        documents = load_corpus(path, "all")
        name, split = f"file:{path.resolve()}", None
    elif data is not None:
        documents = load_corpus_from_config(data, split)
        name = data.corpus
    else:
        documents = load_corpus(corpus, split)
        name = corpus
    docs = encode_documents(documents, tokenizer)
    return PretrainedText(corpus=name, split=split, tokenizer=tokenizer.name, documents=docs,
                          separator=tokenizer.eos_id, bos_id=tokenizer.bos_id,
                          digest=digest([tokenizer.eos_id, docs]))


def method_name(native: pe_lib.Params, params: pe_lib.Params) -> str:
    """How records name an encoding in a pretrained model: the model's own method (``"rope"``) when
    the parameters are its own, else ``"<own>+<kind>"`` with ``×factor`` when the method has one
    (``"rope+yarn×2"``), as :mod:`hopekit.eval.extensions` names eval-time swaps."""
    own = pe_lib.name_of(native)
    if pe_lib.to_config(params) == pe_lib.to_config(native):
        return own
    factor = getattr(params, "factor", None)
    suffix = f"×{factor:g}" if isinstance(factor, (int, float)) and not isinstance(factor, bool) else ""
    return f"{own}+{pe_lib.name_of(params)}{suffix}"


def default_lengths(model: nn.Module) -> list[int]:
    """A quarter, half, one and two times the model's window (``max_position_embeddings``)."""
    window = int(model.config.max_position_embeddings)
    return sorted({max(1, window // 4), max(1, window // 2), window, 2 * window})


def _check_lengths(lengths: Sequence[int]) -> list[int]:
    if isinstance(lengths, (str, bytes)) or not lengths:
        raise ValueError(f"lengths={lengths!r}: expected a non-empty list of ints >= 1")
    bad = [L for L in lengths if isinstance(L, bool) or not isinstance(L, int) or L < 1]
    if bad:
        raise ValueError(f"lengths: {bad[0]!r} is not an int >= 1 (got {list(lengths)})")
    return list(dict.fromkeys(lengths))


def _check_scorable(text: PretrainedText, eval_len: int, kwargs: Mapping[str, Any], separator: int | None,
                    bos: int | None) -> None:
    """Refuse a text that gives no window at the longest length, saying how many tokens it has."""
    if has_window(text.documents, eval_len, kwargs["protocol"], stride=kwargs.get("stride"), separator=separator,
                  bos=bos, sampling=kwargs["sampling"]):
        return
    where = text.corpus + (f" ({text.split} split)" if text.split else "")
    longest = max((d.numel() for d in text.documents), default=0)
    joined = kwargs["protocol"] != "truncate" and kwargs["sampling"] == "prefix"
    need = (f"{eval_len + 1} tokens in the joined stream" if joined
            else f"a document of {eval_len + 1} tokens (the longest has {longest})")
    raise ValueError(f"{where}: {text.tokens} tokens in {len(text.documents)} document(s) with {text.tokenizer}; "
                     f"eval_len={eval_len} under protocol {kwargs['protocol']!r} needs {need}")


def _key(fields: Mapping[str, Any]) -> str:
    """The :data:`KEY_FIELDS` of a record (or of a planned one) as one comparable string."""
    return record_key(fields, KEY_FIELDS)


def _patch(lm: Any, params: pe_lib.Params | None, method: str | None, train_len: int | None) -> dict[str, Any]:
    """Patch ``lm.model`` with ``params`` (None: leave it as it is) and return the record fields that
    name the model and its encoding: ``method`` (``method``, else :func:`method_name`), ``params``,
    ``train_len`` (given, else the encoding's, else the model's window), ``seed`` (None), ``model``,
    ``model_digest`` (the weights, taken before patching), ``hf``, ``hf_source``, ``dtype`` and
    ``pe_impl`` (``"transformers"``: the model's own rotary module; ``"hopekit"``: a patched encoding)."""
    from ..integrations.hf import encoding_of, native_params, patch_model

    model = lm.model
    native = native_params(model)
    digest = model_digest(model)                      # the pretrained weights, before any patching
    if params is not None:
        patch_model(model, params)                    # refuses an encoding it cannot put in, saying why
    enc = encoding_of(model)
    used = enc.params if enc is not None else native
    if train_len is None:
        train_len = getattr(used, "train_len", None)
        if not isinstance(train_len, int) or isinstance(train_len, bool):
            train_len = int(model.config.max_position_embeddings)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return dict(method=method or method_name(native, used), params=pe_lib.to_config(used), train_len=int(train_len),
                seed=None, model=model_descriptor(model), model_digest=digest, hf=lm.name, hf_source=lm.source,
                dtype=dtype, pe_impl="transformers" if enc is None else "hopekit")


def evaluate_pretrained(lm: Any, text: PretrainedText, records_path: str | Path, *, lengths: Sequence[int],
                        pe: Mapping[str, Any] | pe_lib.Params | None = None, method: str | None = None,
                        eval_config: EvalConfig = EvalConfig(), bos: bool = False, progress: bool = True,
                        train_len: int | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Perplexity of ``lm`` (a :class:`hopekit.integrations.hf.PretrainedLM`) on ``text`` at each of
    ``lengths``, appended to ``records_path``; returns this evaluation's rows (recorded ones for a
    measurement already there, see :data:`KEY_FIELDS`).

    ``pe``: an encoding to patch in (see the module docstring; the model is modified in place), None
    for the model as it is. ``method``: the name in records (default :func:`method_name`).
    ``eval_config``: protocol, stride (0: the model's window), ``max_tokens`` (scored tokens per
    length: the same prefix of the stream at every length), batch size. ``bos``: start each document
    with the tokenizer's BOS token. ``train_len``: the length the records and the report measure
    multiples of (default: the encoding's ``train_len``, else the model's window; a fine-tuned model:
    its fine-tuning length). Refused before anything is measured: bad lengths, a bad encoding,
    a text too short for the longest length, an unwritable records file.
    """
    from ..integrations.hf import resolve_pe

    lengths = _check_lengths(lengths)
    model = lm.model
    params = resolve_pe(pe, model) if pe is not None else None
    bos_id = None
    if bos:
        if text.bos_id is None:
            raise ValueError(f"bos=True: the tokenizer {text.tokenizer} has no BOS token")
        bos_id = text.bos_id
    separator = None if bos_id is not None and bos_id == text.separator else text.separator  # BOS doc0 BOS doc1
    window = int(train_len or model.config.max_position_embeddings)
    kwargs_at = {L: eval_kwargs(eval_config, window, L) for L in lengths}
    _check_scorable(text, max(lengths), kwargs_at[max(lengths)], separator, bos_id)
    common = dict(_patch(lm, params, method, train_len), corpus=text.corpus, split=text.split,
                  tokenizer=text.tokenizer, max_tokens=eval_config.max_tokens, bos=bos_id is not None,
                  tokens_digest=text.digest)
    records_path = Path(records_path)
    _check_writable(records_path)
    name = common["method"]
    recorded: dict[str, list[dict[str, Any]]] = {}
    for row in read_records(records_path) if records_path.exists() else []:
        recorded.setdefault(_key(row), []).append(row)

    wrapped = HFLogits(model)
    out: list[dict[str, Any]] = []
    for i, L in enumerate(lengths, 1):
        counter = f"  [{i}/{len(lengths)}] "
        kwargs = kwargs_at[L]
        key = _key(dict(common, eval_len=L, protocol=kwargs["protocol"], stride=kwargs.get("stride"),
                        sampling=kwargs["sampling"]))
        if any(r["metric"] == "ppl" for r in recorded.get(key, ())):
            log(f"{counter}{name:<20} eval_len {L:>6}: already recorded")
            out.extend(recorded[key])
            continue
        res = perplexity(wrapped, text.documents, L, separator=separator, bos=bos_id,
                         progress=f"{name} @ {L}" if progress else None, **kwargs)
        rows = ppl_records(res, seconds=res.seconds, **common)
        append_records(records_path, rows)
        recorded[key] = rows
        out.extend(rows)
        log(f"{counter}{name:<20} eval_len {L:>6}: ppl {res.ppl:10.3f}  ({res.tokens} tokens, {res.windows} "
            f"windows, {res.seconds:.1f}s)")
    return out


def evaluate_pretrained_tasks(lm: Any, records_path: str | Path, *, lengths: Sequence[int],
                              pe: Mapping[str, Any] | pe_lib.Params | None = None, method: str | None = None,
                              eval_config: EvalConfig = EvalConfig(), style: str = "standard", filler: str = "auto",
                              corpus: str = "shakespeare", train_len: int | None = None, progress: bool = True,
                              log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The long-context tasks (:mod:`hopekit.eval.tasks`) on ``lm`` (a
    :class:`hopekit.integrations.hf.PretrainedLM`): every ``eval_config.tasks`` ×
    ``eval_config.task_depths`` cell at each of ``lengths``, ``eval_config.task_instances`` instances
    per cell in ``style`` (``"standard"``: the published formats), filler from ``eval_config.split`` of
    the embedded ``corpus``, scored by ``eval_config.task_scoring``, appended to ``records_path`` by
    :func:`hopekit.eval.tasks.evaluate_task_jobs` (a cell already recorded is skipped). Returns this
    evaluation's rows.

    * **Tokens.** Instances are tokenised with the model's own tokenizer (``lm.tokenizer``), without
      special tokens: no BOS (``bos: False`` in the records), as :func:`evaluate_pretrained` scores text
      by default. SmolLM2 separates its pre-training documents with ``<|endoftext|>`` and has no BOS
      of its own (the ``<|im_start|>`` its GGUF tokenizer would prepend is a chat marker). An instance
      of ``length`` tokens is exactly ``length`` tokens.
    * **Memory.** The model runs as :class:`HFLogits`: likelihood scoring reads only the answer's rows
      of the lazy logits, so one LM-head matmul of ``len(answer)`` rows per instance (a 16k SmolLM2
      instance never holds its 3.2 GB of float32 logits). Generation scoring decodes greedily through
      the KV cache (:func:`hopekit.integrations.hf.generate`).
    * **The encoding.** ``pe``, ``method`` and ``train_len`` as for :func:`evaluate_pretrained` (the
      model is patched in place; dynamic NTK's spectrum follows the forward's length, ``length − 1``
      positions for likelihood scoring). Records carry ``hf``, ``hf_source``, ``dtype``, ``pe_impl``
      and ``bos`` besides the task fields.

    Refused before anything is measured: bad lengths, style or encoding, a length too short for a task
    (these before the model is patched), an unwritable records file.
    """
    from ..integrations.hf import resolve_pe
    from .lengths import Job
    from .tasks import STYLES, check_fits

    lengths = _check_lengths(lengths)
    if style not in STYLES:
        raise ValueError(f"style={style!r}: expected one of {STYLES}")
    params = resolve_pe(pe, lm.model) if pe is not None else None
    check_fits(eval_config.tasks, lm.tokenizer, min(lengths), style=style, where="--lengths")  # before patching
    common = dict(_patch(lm, params, method, train_len), bos=False)
    records_path = Path(records_path)
    _check_writable(records_path)
    name, used = common.pop("method"), common.pop("params")
    wrapped = HFLogits(lm.model)
    jobs = [Job(model=wrapped, method=name, params=used, eval_len=L) for L in lengths]
    return evaluate_task_jobs(jobs, lm.tokenizer, records_path, eval_config=eval_config, corpus=corpus, style=style,
                              filler=filler, common=common, progress=progress, log=log)
