"""The transformers side of fine-tuning a pretrained model with hopekit's training loop.

:func:`hopekit.train.train` runs one loop for the reference decoder and for a pretrained model (an
``ExperimentConfig`` with ``hf`` set; ``hopekit train --hf smollm2 --pe hope_highfreq``). What is
specific to transformers lives here:

* :func:`load_for_training`: the base model and its tokenizer (:func:`load_pretrained`), a digest of
  its weights taken before anything changes them, and the encoding put in (:func:`patch_model`).
  :func:`~hopekit.integrations.hf.patch.resolve_pe` reads the encoding against the model, which owns two facts: a method's
  ``train_len`` left unset becomes the model's pre-training window (``max_position_embeddings``),
  and a rotary method's ``base`` left unset becomes the model's own (SmolLM2: 1e5, not the
  registry's 1e4; ``hope_highfreq`` then keeps the high-frequency pairs of the spectrum the model
  was trained with). ``None`` is the model's own encoding, through hopekit;
* :func:`causal_lm_logits`: the forward the loop calls (``use_cache=False``; the loop computes the
  loss from the logits, as the reference decoder does);
* :func:`model_from_checkpoint`: the fine-tuned model back from a training checkpoint, built from the
  architecture the checkpoint stores (no base model needed).

A checkpoint of such a run stores, besides the weights (learnable positional parameters, registered at
``model.model.hopekit_pe``, included): ``model_config = {"hf_config": ...}`` (the base model's
architecture as a plain config dict) and ``pretrained = {"name", "source", "digest"}`` (what the user
named, the files it resolved to, the sha256 of the base weights). Resuming compares the digest:
fine-tuning another base is refused, whatever its name.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import torch
from torch import nn

from ... import pe
from ...data.tokenizer import HFTokenizer
from ...hashing import digest
from .load import load_pretrained
from .patch import full_attention_mask, patch_model, resolve_pe

__all__ = ["FineTuneModel", "load_for_training", "causal_lm_logits", "model_from_checkpoint",
           "plain_config"]

#: config keys that say where or by which version a config was written, not what the model is
_NOT_ARCHITECTURE = ("_name_or_path", "transformers_version", "hopekit_pe")


@dataclasses.dataclass
class FineTuneModel:
    """A pretrained model ready to fine-tune, and what a checkpoint must record about it."""

    model: nn.Module               # the model with the encoding patched in, on the device, train mode
    tokenizer: HFTokenizer         # its own; ``eos_id`` is the document separator
    pe: pe.Params                  # the encoding it runs with, every default filled in
    vocab_size: int                # rows of its token embedding (>= the tokenizer's ids)
    model_config: dict[str, Any]   # {"hf_config": the base architecture}: the checkpoint's model_config
    pretrained: dict[str, Any]     # {"name", "source", "digest"}: the base a resume must find again
    summary: str                   # one line for the training log


def plain_config(config: Any) -> dict[str, Any]:
    """A transformers config as plain JSON values, without the keys that only say where or by which
    version it was written (nor a hopekit encoding block)."""
    d = json.loads(config.to_json_string(use_diff=False))
    return {k: v for k, v in d.items() if k not in _NOT_ARCHITECTURE}


def load_for_training(name: str, pe_config: pe.Params | Mapping[str, Any] | None,
                      device: torch.device | str) -> FineTuneModel:
    """Load ``name`` (:func:`load_pretrained`) in float32, digest its weights, move it to ``device`` and
    put ``pe_config`` in (:func:`resolve_pe`)."""
    lm = load_pretrained(name, dtype=torch.float32, device="cpu")
    model = lm.model
    base_digest = digest(model.state_dict())
    hf_config = plain_config(model.config)
    vocab = int(model.get_input_embeddings().weight.shape[0])
    if lm.tokenizer.vocab_size > vocab:
        raise ValueError(f"hf={name!r}: its tokenizer has {lm.tokenizer.vocab_size} ids, more than the model's "
                         f"{vocab} embeddings")
    if lm.tokenizer.eos_id is None:
        raise ValueError(f"hf={name!r}: its tokenizer has no end-of-text token to separate documents with")
    params = resolve_pe(pe_config, model)
    model.to(device)
    patch_model(model, params)
    model.train()
    n = sum(p.numel() for p in model.parameters())
    summary = (f"{name} ({model.config.model_type}, {n:,} parameters, {len(model.model.layers)} layers), "
               f"pe {params.kind}, tokenizer {lm.tokenizer.name} (separator id {lm.tokenizer.eos_id})")
    return FineTuneModel(model=model, tokenizer=lm.tokenizer, pe=params, vocab_size=vocab,
                         model_config={"hf_config": hf_config},
                         pretrained={"name": lm.name, "source": dict(lm.source), "digest": base_digest},
                         summary=summary)


def causal_lm_logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, T, vocab)`` of a transformers causal LM for ``input_ids`` ``(B, T)``, positions
    ``0 … T − 1``, no KV cache."""
    return model(input_ids=input_ids, attention_mask=full_attention_mask(input_ids), use_cache=False).logits


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu") -> nn.Module:
    """The fine-tuned model of a training checkpoint (``ckpt["pretrained"]`` set): the architecture from
    ``model_config["hf_config"]``, the encoding from ``config["pe"]``, then the stored weights; eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = dict(ckpt["model_config"]["hf_config"])
    config = AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    patch_model(model, ckpt["config"]["pe"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()
