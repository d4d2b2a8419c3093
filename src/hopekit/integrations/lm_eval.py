"""lm-evaluation-harness on hopekit models: the model type ``hopekit``.

Any lm-eval task runs on a hopekit checkpoint (the reference decoder and its tokenizer, or a fine-tuned
pretrained model) or on a Hugging Face model with a hopekit encoding patched in.
``pip install 'hopekit[lm_eval]'`` (lm-eval 0.4.9 or later 0.4).

**Command line.** lm-eval 0.4 finds a model type only once the module that registers it has been
imported, so this module registers ``hopekit`` and then runs lm-eval's own command line; every lm-eval
option works as usual::

    python -m hopekit.integrations.lm_eval --model hopekit \\
        --model_args checkpoint=runs/tiny/checkpoint.pt --tasks lambada_openai --device cpu

    # SmolLM2 with YaRN ×2, perplexity windows of twice its pre-training length
    python -m hopekit.integrations.lm_eval --model hopekit \\
        --model_args hf=smollm2,pe=yarn,factor=2,max_length=16384 --tasks wikitext --device cpu

(The package also declares the entry point ``lm_eval.models: hopekit``, the plugin mechanism of later
lm-eval releases, where plain ``lm_eval --model hopekit ...`` finds it without this wrapper.)

**Python**::

    import lm_eval
    import hopekit.integrations.lm_eval                       # registers the model type "hopekit"
    from hopekit.integrations.lm_eval import HopekitLM

    results = lm_eval.simple_evaluate(model="hopekit", model_args="checkpoint=runs/tiny/checkpoint.pt",
                                      tasks=["lambada_openai"], device="cpu")
    lm = HopekitLM(hf="smollm2", pe="yarn", factor=2, max_length=16384)      # or an instance
    results = lm_eval.simple_evaluate(model=lm, tasks=["wikitext"])
    lm = HopekitLM.from_model(decoder, tokenizer, max_length=512)          # a model already in memory

**Model arguments** (``--model_args key=value,...``; a missing, unknown or ill-typed one is refused in
one line naming it):

================ =================================================================================
``checkpoint``   a hopekit checkpoint (``hopekit train`` / ``bench``): the reference decoder with its
                 tokenizer (``data.tokenizer``), or a fine-tuned pretrained model with its base
                 model's tokenizer
``hf``           a pretrained model instead: ``smollm2``, a model directory, a ``.gguf`` file or a
                 hub id (:func:`hopekit.integrations.hf.load_pretrained`). Give one of the two.
``pe``           an encoding to run with, by kind; its fields as further arguments (``factor=2``, or
                 ``pe.factor=2`` as on hopekit's command line). With ``hf``: patched into the model
                 (:func:`~hopekit.integrations.hf.patch_model`: ``base`` and ``train_len`` default to
                 the model's). With ``checkpoint``: an eval-time swap of the decoder's encoding
                 (:func:`hopekit.eval.extensions.with_pe`: ``base`` and ``rotary_fraction`` kept,
                 ``train_len`` = the checkpoint's ``train.train_len``), e.g. ``pe=yarn,factor=4``.
``pe_file``      the encoding from a JSON / YAML file (``hopekit longrope``'s ``longrope.json``);
                 field arguments override it
``max_length``   the window: ``loglikelihood_rolling`` scores windows of this many tokens, longer
                 contexts are cut on the left to it. Default: the training length (a checkpoint's
                 ``train.train_len``; a pretrained model's pre-training window, the ``train_len`` of
                 its encoding or else ``max_position_embeddings``). Set it higher to measure
                 extrapolation.
``max_gen_toks`` ``generate_until``'s budget when a task sets none (256)
``batch_size``   sequences per forward for the log-likelihoods (lm-eval's ``--batch_size``; 1)
``device``       ``cpu``, ``cuda``, ``cuda:1`` … (lm-eval's ``--device``, whose default is
                 ``cuda:0``: on a machine without CUDA pass ``--device cpu``; in Python, unset means
                 cuda if available)
``dtype``        ``float32`` (default), ``bfloat16`` or ``float16``
================ =================================================================================

``trust_remote_code``, which lm-eval's ``--trust_remote_code`` adds for the datasets, is accepted and
unused (hopekit loads only architectures that transformers ships).

**What is computed.**

* ``loglikelihood``: one forward of context + continuation (without its last token), cut on the left
  to ``max_length`` + 1 tokens; the continuation's log-probabilities from a float64 log-softmax of its
  rows, summed; ``is_greedy``: every continuation token is its row's argmax. An empty context is the
  prefix token: BOS where the tokenizer has one, else the document separator (``<|endoftext|>``).
* ``loglikelihood_rolling``: lm-eval's disjoint windows of ``max_length`` tokens (the first after the
  prefix token, the last given a full window of context), each token scored once, summed.
* ``generate_until``: greedy decoding through the model's KV cache (:meth:`hopekit.model.Decoder.generate`,
  :func:`hopekit.integrations.hf.generate`: exact also for length-dependent spectra), at most
  ``max_gen_toks`` tokens, stopping at the document separator and cut at the first ``until`` string;
  a context longer than ``max_length − max_gen_toks`` is cut on the left (lm-eval's rule). Sampling
  (``do_sample=True``) is refused.

Log-likelihood requests are sorted by length and right-padded into batches: the padding comes after
every real token, so causal attention and positions ``0, 1, …`` make a batched row equal the row alone.
With a length-dependent spectrum (dynamic NTK, LongRoPE) the spectrum would follow the padded length,
so there only sequences of equal length share a forward. Generation runs one request at a time.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Iterator, Sequence

import torch
from torch import nn
from tqdm import tqdm

try:
    from lm_eval import utils as lm_utils
    from lm_eval.api.model import TemplateLM
except ImportError as e:  # pragma: no cover - exercised only without lm-eval
    raise ImportError(f"hopekit.integrations.lm_eval needs lm-evaluation-harness: pip install 'hopekit[lm_eval]' "
                      f"({e})") from None

from .. import pe as pe_lib

__all__ = ["MODEL_NAME", "HopekitLM", "register", "main"]

#: the lm-eval model type this module registers
MODEL_NAME = "hopekit"

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: the adapter's own arguments; any other model argument is a field of the encoding ``pe`` names
_ARGUMENTS = ("checkpoint", "hf", "pe", "pe_file", "max_length", "max_gen_toks", "batch_size", "device", "dtype")
#: generation settings that only matter when sampling: ignored, as transformers ignores them, by greedy decoding
_SAMPLING_ONLY = ("temperature", "top_p", "top_k")
#: the first generation chunk; each later one is twice as long (see ``_greedy_until``)
_FIRST_CHUNK = 16
#: a scored sequence: (request index, input token ids, continuation ids: the last rows' targets)
_Item = tuple[int, list[int], list[int]]


# --- the two kinds of model ----------------------------------------------------------------------

def _length_dependent(params: Any) -> bool:
    """Whether the spectrum follows the sequence length (also for a method nested in another: BiPE)."""
    if getattr(params, "length_dependent", False):
        return True
    if dataclasses.is_dataclass(params):
        return any(_length_dependent(getattr(params, f.name)) for f in dataclasses.fields(params)
                   if isinstance(getattr(params, f.name), pe_lib.Params))
    return False


class _Decoder:
    """The reference decoder: logits of a batch, greedy continuation through its KV cache."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()
        self.length_dependent = _length_dependent(model.config.pe)

    def rows(self, ids: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        logits, _ = self.model(ids)                                                  # (B, T, vocab)
        return [logits[b, start:stop] for b, (start, stop) in enumerate(spans)]

    def greedy(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        return self.model.generate(ids, n, temperature=0)


class _Pretrained:
    """A transformers causal LM: the LM head only on the rows asked for (a long window never holds
    all its logits), greedy continuation with :func:`hopekit.integrations.hf.generate`."""

    def __init__(self, model: nn.Module) -> None:
        from .hf import encoding_of, native_params

        self.model = model.eval()
        enc = encoding_of(model)
        try:
            self.length_dependent = _length_dependent(enc.params if enc is not None else native_params(model))
        except ValueError:  # a rope type hopekit cannot express: assume the worst (equal-length batches)
            self.length_dependent = True

    def rows(self, ids: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        from ..eval.pretrained import HFLogits

        out = HFLogits(self.model)(ids)                                              # hidden states, lazy head
        return [out.head(out.hidden[b, start:stop]) for b, (start, stop) in enumerate(spans)]

    def greedy(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        from .hf import generate

        return generate(self.model, ids, n)


def _pretrained_window(model: nn.Module) -> int:
    """A transformers model's pre-training window: its encoding's ``train_len`` (an already-scaled
    model's original length, or the one a patched encoding extends), else ``max_position_embeddings``."""
    from .hf import resolve_pe

    try:
        train_len = getattr(resolve_pe(None, model), "train_len", None)
    except ValueError:
        train_len = None
    if isinstance(train_len, int) and not isinstance(train_len, bool):
        return train_len
    return int(model.config.max_position_embeddings)


# --- argument checks -----------------------------------------------------------------------------

def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        hint = " (automatic batch sizes are not supported: give a number)" if name == "batch_size" else ""
        raise ValueError(f"{name}={value!r}: expected an int >= 1{hint}")
    return value


def _device(device: Any) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r}: expected cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available here (lm-eval's --device defaults to "
                         f"cuda:0); pass --device cpu")
    return dev


def _pe_spec(pe: Any, pe_file: Any, fields: dict[str, Any]) -> dict[str, Any] | None:
    """``{"kind": ..., field: value}`` from ``pe`` / ``pe_file`` and the field arguments, or None."""
    fields = {(k[3:] if k.startswith("pe.") else k): v for k, v in fields.items()}
    if pe is not None and pe_file is not None:
        raise ValueError(f"pe={pe!r} and pe_file={pe_file!r}: give one")
    if pe_file is None and pe is None:
        if fields:
            name = next(iter(fields))
            raise ValueError(f"{name}: not an argument of the hopekit model ({', '.join(_ARGUMENTS)}); encoding "
                             f"fields such as factor=2 go with pe=KIND")
        return None
    if pe_file is not None:
        from ..config import load_pe_file

        spec = {**load_pe_file(pe_file), **fields}
        where = f"pe_file={pe_file!r}"
    else:
        spec = {"kind": pe, **fields}
        where = f"pe={pe!r}"
    if not isinstance(spec["kind"], str) or spec["kind"] not in pe_lib.REGISTRY:
        raise ValueError(f"{where}: not an encoding; registered: {', '.join(pe_lib.REGISTRY)}")
    accepted = {f.name for f in dataclasses.fields(pe_lib.method_of(spec["kind"]).params)}
    unknown = [k for k in spec if k != "kind" and k not in accepted]
    if unknown:  # checked before any model is loaded
        raise ValueError(f"{unknown[0]}: not an argument of the hopekit model ({', '.join(_ARGUMENTS)}) nor a "
                         f"field of {spec['kind']} ({', '.join(sorted(accepted))})")
    return spec


def _swap_encoding(model: nn.Module, spec: dict[str, Any], train_len: int) -> nn.Module:
    """The decoder with its encoding swapped for ``spec`` (base and rotary_fraction kept from the
    trained encoding unless given; ``train_len`` filled in), sharing every weight."""
    from ..eval.extensions import with_pe

    trained = model.config.pe
    accepted = {f.name for f in dataclasses.fields(pe_lib.method_of(spec["kind"]).params)}
    kept = {k: getattr(trained, k) for k in ("base", "rotary_fraction")
            if k in accepted and k not in spec and hasattr(trained, k)}
    params = pe_lib.parse({**kept, **spec}, train_len=train_len)
    return with_pe(model, pe_lib.to_config(params))


# --- the model type ------------------------------------------------------------------------------

class HopekitLM(TemplateLM):
    """lm-eval's ``LM`` interface on a hopekit model; see the module docstring for the arguments."""

    backend = "causal"

    def __init__(self, checkpoint: str | None = None, hf: str | None = None, pe: str | None = None,
                 pe_file: str | None = None, max_length: int | None = None, max_gen_toks: int = 256,
                 batch_size: int | str = 1, device: str | None = None, dtype: str = "float32",
                 max_batch_size: int | None = None, trust_remote_code: bool | None = None,
                 **pe_fields: Any) -> None:
        super().__init__()
        # max_batch_size: lm-eval's cap for batch_size=auto, which is refused; trust_remote_code: what
        # --trust_remote_code adds for the datasets (hopekit loads only architectures transformers ships)
        if max_batch_size is not None:
            raise ValueError(f"max_batch_size={max_batch_size!r}: only for automatic batch sizes, which the "
                             f"hopekit model does not support; give batch_size")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(_DTYPES)}")
        if (checkpoint is None) == (hf is None):
            raise ValueError("checkpoint / hf: give one, checkpoint=PATH (a hopekit checkpoint) or hf=NAME "
                             f"(a pretrained model), got {'both' if checkpoint is not None else 'neither'}")
        spec = _pe_spec(pe, pe_file, pe_fields)
        dev = _device(device)
        if max_length is not None:
            max_length = _positive_int("max_length", max_length)
        max_gen_toks, batch_size = _positive_int("max_gen_toks", max_gen_toks), _positive_int("batch_size", batch_size)
        if checkpoint is not None:
            model, tokenizer, train_len = self._load_checkpoint(checkpoint, spec, dev)
            model = model.to(_DTYPES[dtype])
        else:
            model, tokenizer, train_len = self._load_pretrained(hf, spec, dev, _DTYPES[dtype])
        self._attach(model, tokenizer, max_length or train_len, max_gen_toks, batch_size)

    @staticmethod
    def _load_checkpoint(path: str, spec: dict[str, Any] | None, device: torch.device):
        from ..checkpoint import load_checkpoint

        model, config, ckpt = load_checkpoint(path, device)
        train_len = config.train.train_len
        base = ckpt.get("pretrained")
        if base is not None:  # a fine-tuned pretrained model: the base model's tokenizer
            if spec is not None:
                raise ValueError(f"pe={spec['kind']!r}: checkpoint {path} is a fine-tuned {base['name']!r}, "
                                 f"evaluated with the encoding it was trained with (another one: hf=NAME,pe=KIND)")
            from .hf import load_tokenizer

            return model, load_tokenizer(base["name"], base["source"]), train_len
        from ..data import tokenizer_from_config

        if spec is not None:
            model = _swap_encoding(model, spec, train_len)
        return model, tokenizer_from_config(config.data), train_len

    @staticmethod
    def _load_pretrained(name: str, spec: dict[str, Any] | None, device: torch.device, dtype: torch.dtype):
        from .hf import load_pretrained

        try:
            lm = load_pretrained(name, dtype=dtype, device=device, pe_config=spec)
        except OSError as e:  # a hub id that cannot be fetched (offline, no such repository)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"hf={name!r}: not a short name, model directory, .gguf file or reachable hub id "
                             f"({first})") from None
        return lm.model, lm.tokenizer, _pretrained_window(lm.model)

    @classmethod
    def from_model(cls, model: nn.Module, tokenizer: Any, *, max_length: int | None = None,
                   max_gen_toks: int = 256, batch_size: int = 1) -> "HopekitLM":
        """Wrap a model already in memory: a :class:`hopekit.model.Decoder` or a transformers causal
        LM (e.g. ``load_pretrained(...).model``), with a tokenizer of hopekit's protocol (``encode``,
        ``decode``, ``bos_id``, ``eos_id``: ``load_pretrained(...).tokenizer``,
        :func:`hopekit.data.tokenizer_from_config`). ``max_length``: required for a decoder (its
        training length lives in the checkpoint's config); a transformers model's window by default."""
        self = cls.__new__(cls)
        TemplateLM.__init__(self)
        if max_length is None and not hasattr(model, "get_decoder"):
            raise ValueError("max_length: required for a decoder in memory (its training length is in the "
                             "checkpoint's config, not in the model)")
        self._attach(model, tokenizer, max_length or _pretrained_window(model), max_gen_toks, batch_size)
        return self

    def _attach(self, model: nn.Module, tokenizer: Any, max_length: int, max_gen_toks: Any, batch_size: Any) -> None:
        from ..model import Decoder

        if isinstance(model, Decoder):
            self._model: _Decoder | _Pretrained = _Decoder(model)
        elif hasattr(model, "get_decoder") and hasattr(model, "get_output_embeddings"):
            self._model = _Pretrained(model)
        else:
            raise TypeError(f"model: expected a hopekit Decoder or a transformers causal LM, "
                            f"got {type(model).__name__}")
        for attr in ("encode", "decode", "eos_id", "bos_id"):
            if not hasattr(tokenizer, attr):
                raise TypeError(f"tokenizer: {type(tokenizer).__name__} has no {attr!r}; expected hopekit's "
                                f"tokenizer protocol (hopekit.data.tokenizer)")
        self.tokenizer = tokenizer
        self._max_length = _positive_int("max_length", max_length)
        self.max_gen_toks = _positive_int("max_gen_toks", max_gen_toks)
        self.batch_size = _positive_int("batch_size", batch_size)
        self._device = next(model.parameters()).device

    # --- what lm-eval reads ----------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        return self._model.model

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self) -> int:
        if self.tokenizer.eos_id is None:
            raise ValueError(f"tokenizer {self.tokenizer.name}: no end-of-text token (eos_id is None)")
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What an empty context is: BOS where the tokenizer has one, else the document separator."""
        bos = self.tokenizer.bos_id
        return self.eot_token_id if bos is None else bos

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return list(self.tokenizer.encode(string))  # hopekit's encode never adds special tokens

    def tok_decode(self, tokens: Sequence[int]) -> str:
        return self.tokenizer.decode(tokens)

    # --- log-likelihoods -------------------------------------------------------------------------

    def _batches(self, items: list[_Item]) -> Iterator[list[_Item]]:
        """Consecutive groups of at most ``batch_size`` (``items`` sorted by input length); for a
        length-dependent spectrum, of equal input length only."""
        batch: list[_Item] = []
        for item in items:
            if batch and (len(batch) == self.batch_size
                          or (self._model.length_dependent and len(item[1]) != len(batch[0][1]))):
                yield batch
                batch = []
            batch.append(item)
        if batch:
            yield batch

    @torch.no_grad()
    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        items = []
        for i, (_, context, continuation) in enumerate(requests):
            if not continuation:
                results[i] = (0.0, True)
                continue
            if len(continuation) > self.max_length:
                raise ValueError(f"loglikelihood: a continuation of {len(continuation)} tokens is longer than "
                                 f"max_length={self.max_length}")
            tokens = (list(context) + list(continuation))[-(self.max_length + 1):]
            items.append((i, tokens[:-1], list(continuation)))
        items.sort(key=lambda item: -len(item[1]))
        bar = tqdm(total=len(items), desc="hopekit loglikelihood", disable=disable_tqdm or len(items) < 2)
        for batch in self._batches(items):
            width = len(batch[0][1])
            ids = torch.zeros(len(batch), width, dtype=torch.long)                   # right padding: any id
            for b, (_, inp, _) in enumerate(batch):
                ids[b, :len(inp)] = torch.tensor(inp)
            spans = [(len(inp) - len(cont), len(inp)) for _, inp, cont in batch]
            for (i, _, cont), logits in zip(batch, self._model.rows(ids.to(self._device), spans)):
                logprobs = logits.double().log_softmax(-1)                           # (len(cont), vocab)
                target = torch.tensor(cont, device=logprobs.device)
                results[i] = (float(logprobs.gather(-1, target[:, None]).sum()),
                              bool((logprobs.argmax(-1) == target).all()))
            bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for r, (string,) in enumerate(req.args for req in requests):
            for context, continuation in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[r] += logprob
        return totals

    # --- generation ------------------------------------------------------------------------------

    def _generation_settings(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None)
        until = [] if until is None else [until] if isinstance(until, str) else list(until)
        if not all(isinstance(s, str) for s in until):
            raise ValueError(f"until={until!r}: expected a string or a list of strings")
        max_gen = _positive_int("max_gen_toks", kwargs.pop("max_gen_toks", self.max_gen_toks))
        if kwargs.pop("do_sample", False):
            raise ValueError("do_sample=True: the hopekit model decodes greedily only")
        if kwargs.pop("num_beams", 1) != 1:
            raise ValueError(f"num_beams={gen_kwargs['num_beams']!r}: the hopekit model decodes greedily only")
        unknown = sorted(set(kwargs) - set(_SAMPLING_ONLY))
        if unknown:
            raise ValueError(f"generation setting {unknown[0]}={kwargs[unknown[0]]!r}: not supported by the hopekit "
                             f"model (it takes until, max_gen_toks, do_sample=False)")
        return [s for s in until if s], max_gen

    def _greedy_until(self, tokens: list[int], max_new: int, until: list[str]) -> str:
        """Greedy continuation of ``tokens``: chunks of 16, 32, 64 … new tokens, each one call of the
        model's cached greedy decoding from all tokens so far (equal, step by step, to a recompute of
        the whole sequence, so chunking does not change the tokens), until a stop string or the
        separator appears or ``max_new`` tokens are made."""
        ids = torch.tensor([tokens], device=self._device)
        new: list[int] = []
        chunk = _FIRST_CHUNK
        while len(new) < max_new:
            ids = self._model.greedy(ids, min(chunk, max_new - len(new)))
            new = ids[0, len(tokens):].tolist()
            if self.tokenizer.eos_id in new:
                new = new[:new.index(self.tokenizer.eos_id)]
                break
            if any(s in self.tok_decode(new) for s in until):
                break
            chunk *= 2
        text = self.tok_decode(new)
        for stop in until:
            text = text.split(stop)[0]
        return text

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="hopekit generate_until", disable=disable_tqdm or len(requests) < 2):
            context, gen_kwargs = req.args
            until, max_gen = self._generation_settings(gen_kwargs)
            tokens = self.tok_encode(context) or [self.prefix_token_id]
            room = self.max_length - max_gen
            if len(tokens) > room:
                if room < 1:
                    raise ValueError(f"max_gen_toks={max_gen}: leaves no room for the context in "
                                     f"max_length={self.max_length}; lower max_gen_toks or raise max_length")
                tokens = tokens[-room:]
            out.append(self._greedy_until(tokens, max_gen, until))
        return out


# --- registration and the command line -----------------------------------------------------------

def register(name: str = MODEL_NAME) -> None:
    """Make ``name`` an lm-eval model type for :class:`HopekitLM` (done on import; idempotent)."""
    import lm_eval.models  # noqa: F401  (the harness's own types first: it loads them only into an empty registry)
    from lm_eval.api import registry

    if name not in registry.MODEL_REGISTRY:
        registry.register_model(name)(HopekitLM)


def main(argv: list[str] | None = None) -> int:
    """``python -m hopekit.integrations.lm_eval ARGS``: lm-eval's command line (``lm_eval ARGS``) with
    the model type ``hopekit`` registered; a bad model argument is one line, not a traceback."""
    from lm_eval.__main__ import cli_evaluate

    from ..cli import _is_user_error, _message

    register()
    sys.argv = ["lm_eval", *(sys.argv[1:] if argv is None else argv)]  # lm-eval's parser reads sys.argv
    try:
        cli_evaluate()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    except Exception as e:
        if not _is_user_error(e):
            raise  # a bug: keep the traceback
        first, *rest = _message(e).splitlines()
        print(f"lm_eval --model {MODEL_NAME}: error: {first}", *rest, sep="\n", file=sys.stderr)
        return 2
    return 0


register()

if __name__ == "__main__":
    sys.exit(main())
