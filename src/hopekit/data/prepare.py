"""A data configuration's documents, tokenizer and token files (nanoGPT's ``prepare.py``, cached).

Three entry points take a ``DataConfig`` (:class:`hopekit.config.DataConfig`; any object with its
fields will do):

* :func:`load_corpus_from_config` ``(data, split)`` — the documents of one split, as
  :func:`~hopekit.data.corpus.load_corpus` reads them with the config's ``hf:`` settings
  (``streaming``, ``limit``, ``split``, ``data_files``).
* :func:`tokenizer_from_config` ``(data)`` — the tokenizer ``data.tokenizer`` names. A BPE of an
  ``hf:`` corpus is trained on the first :data:`BPE_SAMPLE_CHARS` characters of its train split
  (whole documents) and cached under a key of the data settings, so a later run (or one offline)
  reads it back without touching the dataset.
* :func:`prepare_tokens` ``(data, split, tokenizer)`` — a split of an ``hf:`` corpus tokenised once
  into a **memory-mapped** token file: ``doc SEP doc SEP ...`` exactly as
  :func:`~hopekit.data.batching.token_stream` joins the same documents, stored as ``uint16`` when the
  vocabulary fits (<= 65536 ids), else ``uint32``. Tokenising runs through
  ``datasets.Dataset.map(batched=True, num_proc=...)`` (a streamed dataset: in this process, as it
  arrives). The file lives in ``<cache_dir()>/tokens/`` and is named by a hash of everything that
  decides its content — source, split and its mapping, limit, data files (local ones by path, size
  and modification time), text column, tokenizer (its full definition, not only its name), separator —
  so a change to any of them makes a new file and a stale one is never read. It is written to a
  temporary name and renamed (a crash leaves no half file), under a file lock (processes of one
  ``torchrun`` wait for the first). :class:`~hopekit.data.batching.TrainBatches` samples it in
  place: a corpus larger than memory trains.

A hub dataset that changes upstream under the same name is not detected: delete its token file
(or the ``tokens`` folder) to rebuild. ``streaming`` does not change a file's content, so it is
not part of the key.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .batching import _resolve_separator, token_stream
from .corpus import load_corpus
from .documents import Document
from .gutenberg import strip_gutenberg
from .hf_datasets import KNOWN, parse_hf_source, select_split
from .splits import ALL, DEFAULT_SPLIT_SEED, DEFAULT_TEST, DEFAULT_VALIDATION, check_split
from .tokenizer import (
    BPE_RECIPE_VERSION,
    ENDOFTEXT,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    cache_dir,
    load_tokenizer,
    train_bpe,
)

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = [
    "BPE_SAMPLE_CHARS", "TOKEN_FILE_VERSION", "is_hf_corpus", "hf_arguments", "load_corpus_from_config",
    "tokenizer_from_config", "token_dtype", "tokenizer_identity", "token_file_key", "token_file_path",
    "prepare_tokens", "open_token_file", "corpus_tokens",
]

#: bump when the token-file recipe changes, so older files are not reused
TOKEN_FILE_VERSION = 1
#: characters of an hf: corpus' train split a BPE is trained on (whole documents, in order)
BPE_SAMPLE_CHARS = 100_000_000
#: records per ``datasets.map`` batch: books are long, so small batches keep memory flat
MAP_BATCH = 32
#: the model's own tokenizer (``DataConfig.tokenizer`` of a fine-tuning run)
_PRETRAINED = "model"


def is_hf_corpus(corpus: str) -> bool:
    return isinstance(corpus, str) and corpus.startswith("hf:")


def hf_arguments(data: DataConfig, split: str) -> dict[str, Any]:
    """The ``load_corpus`` / ``load_hf_documents`` keyword arguments of ``data``'s ``hf:`` settings for
    our ``split`` (``{}`` for another corpus). ``data.split``: None (same names), a mapping (renames),
    or a string (that dataset split, re-split by work)."""
    if not is_hf_corpus(data.corpus):
        return {}
    out: dict[str, Any] = {}
    if data.streaming:
        out["streaming"] = True
    if data.limit:
        out["limit"] = data.limit
    if data.data_files is not None:
        out["data_files"] = data.data_files
    if isinstance(data.split, str):
        out.update(hf_split=data.split, resplit=True)
    elif data.split is not None and split in data.split:
        out["hf_split"] = data.split[split]
    return out


def load_corpus_from_config(data: DataConfig, split: str) -> list[Document]:
    """The documents of ``split`` (``"train"``, ``"validation"``, ``"test"`` or ``"all"``) of
    ``data.corpus``, read with ``data.text_column`` and its ``hf:`` settings."""
    return load_corpus(data.corpus, split, text_field=data.text_column, **hf_arguments(data, split))


# --- tokenizers ----------------------------------------------------------------------------------

def _local_identity(value: Any) -> Any:
    """A data_files value (or a source path) with every local file replaced by ``[path, size,
    mtime_ns]`` (globs and folders expanded), so an edited file changes a cache key."""
    if isinstance(value, dict):
        return {k: _local_identity(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_local_identity(v) for v in value]
    if not isinstance(value, str):
        return value
    path = Path(value).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        return value  # a hub-relative path or pattern: the name is all there is
    return [value, [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]]


def _source_identity(data: DataConfig) -> dict[str, Any]:
    """What decides which records a split of ``data`` holds and which text they carry."""
    path, _ = parse_hf_source(data.corpus)
    return {"corpus": data.corpus, "local": _local_identity(path) if Path(path).expanduser().exists() else None,
            "split": data.split, "limit": data.limit, "data_files": _local_identity(data.data_files),
            "text_column": data.text_column, "known": KNOWN.get(path),
            "resplit": [DEFAULT_SPLIT_SEED, DEFAULT_VALIDATION, DEFAULT_TEST], "strip_gutenberg": True}


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=list).encode()).hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _open_split(data: DataConfig, split: str, *, streaming: bool | None = None):
    """``select_split`` of ``data``'s hf: corpus: ``(dataset, info)`` of exactly our split's records."""
    path, name = parse_hf_source(data.corpus)
    kw = hf_arguments(data, split)
    if streaming is not None:
        kw["streaming"] = streaming
    ds, _, info = select_split(path, split, name=name, text_field=data.text_column, **kw)
    return ds, info


def _texts(ds, text_field: str) -> Iterator[str]:
    """The (Gutenberg-stripped, as ``load_corpus`` reads them) texts of ``ds``, in order."""
    for i, rec in enumerate(ds.select_columns([text_field]) if ds.column_names else ds):
        text = rec.get(text_field)
        if not isinstance(text, str):
            raise KeyError(f"record {i} has no string field text_field={text_field!r}")
        yield strip_gutenberg(text)


def _hf_bpe(data: DataConfig, vocab_size: int) -> HFTokenizer:
    from tokenizers import Tokenizer as _Tk

    key = _key({"recipe": BPE_RECIPE_VERSION, "source": _source_identity(data), "vocab_size": vocab_size,
                "sample_chars": BPE_SAMPLE_CHARS})
    name = f"bpe-{_slug(data.corpus)}-{vocab_size}"
    path = cache_dir() / "tokenizers" / f"{name}-src{key[:16]}.json"
    if not path.exists():
        with _locked(path):   # processes of one torchrun wait for the first
            if not path.exists():
                ds, info = _open_split(data, "train")
                texts, chars = [], 0
                for text in _texts(ds, info["text_field"]):
                    texts.append(text)
                    chars += len(text)
                    if chars >= BPE_SAMPLE_CHARS:
                        break
                tokenizer = train_bpe(texts, vocab_size, corpus=data.corpus, cache=False)
                tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
                tokenizer.tokenizer.save(str(tmp))
                os.replace(tmp, path)
    return HFTokenizer(_Tk.from_file(str(path)), name=name, eos_token=ENDOFTEXT)


def tokenizer_from_config(data: DataConfig) -> Tokenizer:
    """The tokenizer of ``data``: ``"byte"``, ``"bpe"`` (``data.vocab_size``; trained on the corpus'
    train split, see the module docstring for an ``hf:`` corpus), ``"bpe:<n>"`` or a tokenizer.json.
    ``"model"`` (a pretrained model's own) is refused: it comes with the model."""
    if data.tokenizer == _PRETRAINED:
        raise ValueError(f"data.tokenizer={_PRETRAINED!r}: the pretrained model's own tokenizer; it is loaded "
                         "with the model (hopekit.integrations.hf.load_tokenizer)")
    spec = f"bpe:{data.vocab_size}" if data.tokenizer == "bpe" else data.tokenizer
    m = re.fullmatch(r"bpe[:-](\d+)", spec)
    if m and is_hf_corpus(data.corpus):
        return _hf_bpe(data, int(m.group(1)))
    return load_tokenizer(spec, corpus=data.corpus)


# --- token files ---------------------------------------------------------------------------------

def token_dtype(vocab_size: int) -> np.dtype:
    """``uint16`` for a vocabulary of at most 65536 ids, else ``uint32``."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 32:
        return np.dtype(np.uint32)
    raise ValueError(f"vocab_size={vocab_size}: too large for a uint32 token file")


def tokenizer_identity(tokenizer: Tokenizer) -> dict[str, Any]:
    """What decides a tokenizer's ids: its class, name, sizes, special ids and a digest of its full
    definition (a ``tokenizers`` JSON, a byte tokenizer's specials, else the ids of a probe text)."""
    inner = getattr(tokenizer, "tokenizer", None)
    if inner is not None and hasattr(inner, "to_str"):
        definition = inner.to_str()
    elif hasattr(tokenizer, "specials"):
        definition = repr(tuple(tokenizer.specials))
    else:
        probe = "The quick brown fox — 1,234 ünïcödé\n\tdef f(x): return x ** 2  # 字"
        definition = repr(list(tokenizer.encode(probe)))
    return {"class": type(tokenizer).__name__, "name": tokenizer.name, "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id,
            "definition": hashlib.sha256(definition.encode()).hexdigest()}


def token_file_key(data: DataConfig, split: str, tokenizer: Tokenizer, separator: int | str | None = "eos") -> dict:
    """Everything that decides the content of a token file (see the module docstring)."""
    check_split(split)
    return {"version": TOKEN_FILE_VERSION, "source": _source_identity(data), "our_split": split,
            "tokenizer": tokenizer_identity(tokenizer), "separator": _resolve_separator(separator, tokenizer),
            "dtype": token_dtype(tokenizer.vocab_size).name}


def token_file_path(data: DataConfig, split: str, tokenizer: Tokenizer, *, separator: int | str | None = "eos",
                    directory: str | Path | None = None) -> Path:
    """``<directory or cache_dir()/tokens>/<corpus>-<split>-<key>.bin`` (its metadata: ``.json`` beside)."""
    key = _key(token_file_key(data, split, tokenizer, separator))
    folder = Path(directory) if directory is not None else cache_dir() / "tokens"
    return folder / f"{_slug(data.corpus[3:] if is_hf_corpus(data.corpus) else data.corpus)}-{split}-{key[:20]}.bin"


def open_token_file(path: str | Path) -> torch.Tensor:
    """A token file as a read-only 1-D tensor over the memory map (nothing is read until indexed).
    The metadata beside it gives the dtype and length; a file of another length is refused."""
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    dtype = np.dtype(meta["dtype"])
    if path.stat().st_size != meta["num_tokens"] * dtype.itemsize:
        raise ValueError(f"{path}: {path.stat().st_size} bytes, its metadata says {meta['num_tokens']} "
                         f"{dtype.name} tokens; delete it to rebuild")
    array = np.memmap(path, dtype=dtype, mode="r", shape=(meta["num_tokens"],))
    with warnings.catch_warnings():  # read-only by design: nothing writes to a training stream
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _valid(path: Path, key: dict) -> bool:
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
        return (meta.get("key") == json.loads(json.dumps(key, default=list))
                and path.stat().st_size == meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize)
    except (ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _encode_batch(batch: dict[str, list], *, tokenizer: Tokenizer, text_field: str, separator: int | None,
                  dtype: np.dtype) -> dict[str, list]:
    """``datasets.map`` function: each text (Gutenberg-stripped) as ``dtype`` ids, ``separator`` after it."""
    out = []
    fast = isinstance(tokenizer, ByteTokenizer)   # bytes: always inside the vocabulary
    for text in batch[text_field]:
        if not isinstance(text, str):
            raise KeyError(f"a record has no string field text_field={text_field!r} (got {type(text).__name__})")
        text = strip_gutenberg(text)
        if fast:
            ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        else:
            ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= tokenizer.vocab_size):
                bad = int(ids[(ids < 0) | (ids >= tokenizer.vocab_size)][0])
                raise ValueError(f"{tokenizer.name}.encode(...) gave token id {bad}, outside the vocabulary "
                                 f"[0, {tokenizer.vocab_size})")
        row = np.empty(ids.size + (separator is not None), dtype=dtype)
        row[: ids.size] = ids
        if separator is not None:
            row[-1] = separator
        out.append(row)
    return {"ids": out}


@contextlib.contextmanager
def _same_environ():
    """Keep ``os.environ`` the same object: ``Dataset.map(num_proc=...)`` (datasets 2-4) rebinds it to a
    deep copy, which silently detaches every holder of the original (``monkeypatch``, libraries that
    cached it). Afterwards the original gets the copy's content and is put back."""
    original = os.environ
    try:
        yield
    finally:
        if os.environ is not original:
            now = dict(os.environ)
            for name in [k for k in original if k not in now]:
                del original[name]
            original.update(now)
            os.environ = original


def _auto_num_proc(records: int) -> int:
    return max(1, min(os.cpu_count() or 1, records // (4 * MAP_BATCH), 32))


def _write_tokens(data: DataConfig, split: str, tokenizer: Tokenizer, separator: int | None, dtype: np.dtype,
                  out, workdir: Path, num_proc: int | None, fingerprint: str) -> tuple[int, int]:
    """Tokenise the split into the open binary file ``out``; ``(tokens, documents)``."""
    import datasets

    ds, info = _open_split(data, split)
    text_field = info["text_field"]
    encode = dict(tokenizer=tokenizer, text_field=text_field, separator=separator, dtype=dtype)
    tokens = documents = 0
    if isinstance(ds, datasets.IterableDataset):  # streamed: tokenised here, as it arrives
        for batch in ds.iter(batch_size=MAP_BATCH):
            for row in _encode_batch(batch, **encode)["ids"]:
                out.write(memoryview(row))
                tokens += row.size
                documents += 1
        return tokens, documents
    if len(ds) == 0:
        return 0, 0
    procs = min(num_proc or _auto_num_proc(len(ds)), len(ds))
    list_of = getattr(datasets, "List", None) or datasets.Sequence
    with _same_environ():
        tokenized = ds.map(
            _encode_batch, fn_kwargs=encode, batched=True, batch_size=MAP_BATCH, writer_batch_size=MAP_BATCH,
            remove_columns=ds.column_names, num_proc=procs if procs > 1 else None,
            features=datasets.Features({"ids": list_of(datasets.Value(dtype.name))}),
            cache_file_name=str(workdir / "ids.arrow"), load_from_cache_file=False, new_fingerprint=fingerprint,
            desc=f"tokenizing {data.corpus} {split}")
    for chunk in tokenized.data.column("ids").chunks:   # the arrow table on disk, chunk by chunk
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        out.write(memoryview(np.ascontiguousarray(values, dtype=dtype)))
        tokens += values.size
        documents += len(chunk)
    del tokenized
    return tokens, documents


def prepare_tokens(data: DataConfig, split: str, tokenizer: Tokenizer, *, separator: int | str | None = "eos",
                   directory: str | Path | None = None, num_proc: int | None = None) -> torch.Tensor:
    """The token file of ``split`` of ``data``'s ``hf:`` corpus (built on first use, then reused) as
    a memory-mapped read-only 1-D tensor: the same ids as
    ``token_stream(load_corpus_from_config(data, split), tokenizer, separator=separator)``.
    ``num_proc``: tokenising processes (default ``data.num_proc``; 0 or None: as many as useful)."""
    if not is_hf_corpus(data.corpus):
        raise ValueError(f"data.corpus={data.corpus!r}: token files are made for hf: corpora; "
                         "use token_stream(load_corpus_from_config(...)) for the others")
    if split == ALL:
        raise ValueError(f"split={split!r}: a token file holds one of train / validation / test")
    key = token_file_key(data, split, tokenizer, separator)
    path = token_file_path(data, split, tokenizer, separator=separator, directory=directory)
    if _valid(path, key):
        return open_token_file(path)
    with _locked(path):
        if not _valid(path, key):   # another process may have built it while this one waited
            _build(path, key, data, split, tokenizer, num_proc or data.num_proc or None)
    return open_token_file(path)


def _build(path: Path, key: dict, data: DataConfig, split: str, tokenizer: Tokenizer, num_proc: int | None) -> None:
    import shutil
    import tempfile

    dtype = token_dtype(tokenizer.vocab_size)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", dir=path.parent))
    try:
        with open(tmp, "wb") as out:
            tokens, documents = _write_tokens(data, split, tokenizer, key["separator"], dtype, out, workdir, num_proc,
                                              fingerprint=_key(key)[:32])
            out.flush()
            os.fsync(out.fileno())
        if tokens == 0:
            raise ValueError(f"data.corpus={data.corpus!r}: split {split!r} holds no tokens")
        os.replace(tmp, path)
        meta = {"key": key, "dtype": dtype.name, "num_tokens": tokens, "documents": documents,
                "tokenizer": tokenizer.name, "corpus": data.corpus, "split": split}
        meta_tmp = path.with_name(f"{path.stem}.json.tmp{os.getpid()}")
        meta_tmp.write_text(json.dumps(meta, indent=1, default=list) + "\n")
        os.replace(meta_tmp, path.with_suffix(".json"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if tmp.exists():
            tmp.unlink()


def corpus_tokens(data: DataConfig, split: str, tokenizer: Tokenizer) -> torch.Tensor:
    """The token stream of ``split``: a memory-mapped token file for an ``hf:`` corpus
    (:func:`prepare_tokens`), else ``token_stream`` of the documents in memory (int64)."""
    if is_hf_corpus(data.corpus):
        return prepare_tokens(data, split, tokenizer)
    return token_stream(load_corpus_from_config(data, split), tokenizer)
