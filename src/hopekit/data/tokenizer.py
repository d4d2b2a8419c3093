"""Tokenizers behind one small protocol: ``encode``, ``decode``, ``vocab_size``, ``bos_id``,
``eos_id``, ``name``.

* :class:`ByteTokenizer` — UTF-8 bytes, ids 0..255, plus optional specials after them
  (default: ``<|endoftext|>`` = 256, the document separator). Exact round trip. The tiny presets.
* :func:`train_bpe` — a byte-level BPE trained with the ``tokenizers`` library on a corpus'
  train split; deterministic, cached on disk (:func:`cache_dir`), keyed by corpus, vocabulary
  size and a hash of the training text. Larger presets.
* :meth:`HFTokenizer.from_file` — a pretrained model's ``tokenizer.json`` through
  ``tokenizers.Tokenizer.from_file`` (no ``transformers`` here).

``encode`` never adds special tokens: document separators are the batching code's job
(:func:`hopekit.data.batching.token_stream`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

ENDOFTEXT = "<|endoftext|>"
#: bump when the BPE recipe below changes, so stale cache entries are not reused
BPE_RECIPE_VERSION = 1


@runtime_checkable
class Tokenizer(Protocol):
    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


def cache_dir() -> Path:
    """``$HOPEKIT_CACHE``, else ``$XDG_CACHE_HOME/hopekit``, else ``~/.cache/hopekit``."""
    env = os.environ.get("HOPEKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "hopekit"


# --- bytes ---------------------------------------------------------------------------------------

class ByteTokenizer:
    """UTF-8 bytes as ids 0..255; ``specials`` get ids 256, 257, ... in order.

    ``eos_id`` is the id of ``<|endoftext|>`` when it is among the specials, ``bos_id`` that of
    ``<|bos|>``. ``ByteTokenizer(specials=())`` is the pure 256-symbol vocabulary.
    """

    def __init__(self, specials: Sequence[str] = (ENDOFTEXT,)):
        if len(set(specials)) != len(specials):
            raise ValueError(f"duplicate special tokens: {list(specials)}")
        self.specials = tuple(specials)
        self.vocab_size = 256 + len(self.specials)
        self.special_ids = {s: 256 + i for i, s in enumerate(self.specials)}
        self.eos_id = self.special_ids.get(ENDOFTEXT)
        self.bos_id = self.special_ids.get("<|bos|>")
        self.name = f"byte{self.vocab_size}"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        """Bytes back to text; a special renders as its string; invalid UTF-8 (possible in
        sampled ids) becomes U+FFFD. ``decode(encode(s)) == s`` for every string ``s``."""
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < 256:
                buf.append(i)
            elif 256 <= i < self.vocab_size:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(self.specials[i - 256])
            else:
                raise ValueError(f"id {i} outside the vocabulary [0, {self.vocab_size})")
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def __repr__(self) -> str:
        return f"ByteTokenizer(specials={self.specials!r})"


# --- tokenizers-library tokenizers ---------------------------------------------------------------

_EOS_GUESSES = (ENDOFTEXT, "</s>", "<eos>", "<|end_of_text|>", "<|eot_id|>", "<|im_end|>")
_BOS_GUESSES = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>")


def _token_content(tok) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


class HFTokenizer:
    """A ``tokenizers.Tokenizer`` behind our protocol (trained BPE or a pretrained file)."""

    def __init__(self, tokenizer, *, name: str, bos_token: str | None = None,
                 eos_token: str | None = None):
        self.tokenizer = tokenizer
        self.name = name
        # one past the largest id, not the number of entries: a tokenizer.json may leave holes
        # in its ids, and encode must never give an id >= vocab_size (a model's embedding size)
        ids = tokenizer.get_vocab(with_added_tokens=True).values()
        self.vocab_size = max(tokenizer.get_vocab_size(with_added_tokens=True), max(ids, default=-1) + 1)
        self.bos_id = self._id(bos_token, "bos_token")
        self.eos_id = self._id(eos_token, "eos_token")

    def _id(self, token: str | None, what: str) -> int | None:
        if token is None:
            return None
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise ValueError(f"{what}={token!r} is not in the vocabulary of {self.name}")
        return i

    @classmethod
    def from_file(cls, path: str | Path, *, name: str | None = None, bos_token: str | None = None,
                  eos_token: str | None = None) -> HFTokenizer:
        """Load ``tokenizer.json`` (or a folder holding one). BOS/EOS: the arguments, else a
        neighbouring ``tokenizer_config.json``'s ``bos_token``/``eos_token``, else a common
        special token present in the vocabulary (``<|endoftext|>``, ``</s>``, ``<s>``...)."""
        from tokenizers import Tokenizer as _Tk

        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        tk = _Tk.from_file(str(path))
        cfg_path = path.parent / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
        bos_token = bos_token or _token_content(cfg.get("bos_token"))
        eos_token = eos_token or _token_content(cfg.get("eos_token"))
        if bos_token is None:
            bos_token = next((t for t in _BOS_GUESSES if tk.token_to_id(t) is not None), None)
        if eos_token is None:
            eos_token = next((t for t in _EOS_GUESSES if tk.token_to_id(t) is not None), None)
        return cls(tk, name=name or f"file:{path.parent.name or path.name}",
                   bos_token=bos_token, eos_token=eos_token)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HFTokenizer(name={self.name!r}, vocab_size={self.vocab_size})"


def _bpe_key(texts: Sequence[str], vocab_size: int, specials: Sequence[str], min_frequency: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps([BPE_RECIPE_VERSION, vocab_size, list(specials), min_frequency]).encode())
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    corpus: str = "custom",
    specials: Sequence[str] = (ENDOFTEXT,),
    min_frequency: int = 2,
    cache: bool = True,
    directory: str | Path | None = None,
) -> HFTokenizer:
    """Train (or load from cache) a byte-level BPE on ``texts`` (whole documents, in order).

    Byte-level: GPT-2 pre-tokenisation and the 256-byte initial alphabet, so every string
    encodes and decodes exactly; no normaliser. The cache file is
    ``<directory or cache_dir()/tokenizers>/bpe-<corpus>-<vocab_size>-<hash>.json`` where the
    hash covers the texts, the vocabulary size, the specials and the recipe version.
    """
    from tokenizers import Tokenizer as _Tk
    from tokenizers import decoders, models, pre_tokenizers, trainers

    texts = [t for t in texts]
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size={vocab_size} must be at least 256 + {len(specials)} specials")
    eos = ENDOFTEXT if ENDOFTEXT in specials else None
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", corpus)
    key = _bpe_key(texts, vocab_size, specials, min_frequency)
    name = f"bpe-{slug}-{vocab_size}"
    folder = Path(directory) if directory is not None else cache_dir() / "tokenizers"
    path = folder / f"{name}-{key[:16]}.json"
    if cache and path.exists():
        return HFTokenizer(_Tk.from_file(str(path)), name=name, eos_token=eos)

    tk = _Tk(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tk.train_from_iterator(texts, trainer=trainer, length=len(texts))
    if cache:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tk.save(str(tmp))
        os.replace(tmp, path)
    return HFTokenizer(tk, name=name, eos_token=eos)


# --- by name -------------------------------------------------------------------------------------

def load_tokenizer(spec: str = "byte", *, corpus: str = "shakespeare") -> Tokenizer:
    """A tokenizer from a config string.

    * ``"byte"`` — bytes + ``<|endoftext|>`` (257); ``"byte256"`` — bytes only.
    * ``"bpe:<vocab_size>"`` — byte-level BPE trained on ``corpus``'s train split (cached).
    * a path to ``tokenizer.json`` or to a folder holding one — a pretrained tokenizer.
    """
    if spec == "byte":
        return ByteTokenizer()
    if spec == "byte256":
        return ByteTokenizer(specials=())
    m = re.fullmatch(r"bpe[:-](\d+)", spec)
    if m:
        from .corpus import load_corpus

        docs = load_corpus(corpus, "train")
        return train_bpe([d.text for d in docs], int(m.group(1)), corpus=corpus)
    p = Path(spec).expanduser()
    if p.is_file() or (p.is_dir() and (p / "tokenizer.json").is_file()):
        return HFTokenizer.from_file(p)
    raise ValueError(f"unknown tokenizer {spec!r}: expected 'byte', 'byte256', 'bpe:<vocab_size>' "
                     f"or a path to tokenizer.json")
