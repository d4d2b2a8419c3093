"""A tiny random Llama model directory with a byte-level tokenizer, and some text, for the tests of
``hopekit eval --hf`` (tests/eval/test_pretrained.py, tests/test_cli_hf.py)."""

from __future__ import annotations

import torch

WINDOW = 32          # the tiny model's max_position_embeddings
BASE = 500.0         # not a default base: a patched method must inherit it


def save_tiny_model(path, *, seed: int = 0) -> None:
    """A random 2-layer Llama (vocab 257, GQA 4/2 heads) and a byte-level tokenizer whose
    ``<|endoftext|>`` (id 256) is the document separator, saved as a model directory."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|endoftext|>"])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>",
                                         eos_token="<|endoftext|>").save_pretrained(path)
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=WINDOW,
                                   rope_theta=BASE, tie_word_embeddings=False)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)


def words(n_docs: int = 3, n_words: int = 60, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    vocab = ["the", "king", "doth", "speak", "and", "queen", "is", "fair", "so", "foul", "a", "day"]
    return [" ".join(vocab[int(i)] for i in torch.randint(0, len(vocab), (n_words,), generator=g)) + "."
            for _ in range(n_docs)]
