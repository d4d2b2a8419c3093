"""Tokenizers: bytes (exact round trip), BPE (deterministic, cached), a pretrained tokenizer.json."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hopekit.data import ENDOFTEXT, ByteTokenizer, HFTokenizer, Tokenizer, load_corpus, load_tokenizer, train_bpe
from hopekit.data.tokenizer import cache_dir

pytest.importorskip("tokenizers")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOPEKIT_CACHE", str(tmp_path / "hopekit-cache"))


@pytest.fixture(scope="module")
def small_texts():
    # a few hundred kB of real text keeps BPE training well under a second
    docs = load_corpus("shakespeare", "train")
    return [d.text[:20_000] for d in docs[:10]]


# --- bytes ---------------------------------------------------------------------------------------

@settings(max_examples=100, deadline=None)
@given(st.text())
def test_byte_round_trip_is_exact(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert all(0 <= i < 256 for i in ids)
    assert ids == list(s.encode("utf-8"))
    assert tok.decode(ids) == s


def test_byte_vocab_and_specials():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.eos_id, tok.bos_id, tok.name) == (257, 256, None, "byte257")
    assert tok.decode([72, 105, 256, 33]) == "Hi" + ENDOFTEXT + "!"
    assert tok.encode(ENDOFTEXT) == list(ENDOFTEXT.encode())     # text never becomes a special
    pure = ByteTokenizer(specials=())
    assert (pure.vocab_size, pure.eos_id, pure.name) == (256, None, "byte256")
    both = ByteTokenizer(specials=("<|bos|>", ENDOFTEXT))
    assert (both.bos_id, both.eos_id, both.vocab_size) == (256, 257, 258)
    with pytest.raises(ValueError, match="outside"):
        pure.decode([256])
    assert tok.decode([0xE2, 0x82]) == "\ufffd"       # truncated UTF-8 from a sampler: replaced


def test_load_tokenizer_byte_specs():
    assert load_tokenizer("byte").vocab_size == 257
    assert load_tokenizer("byte256").vocab_size == 256
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer("wordpiece")


# --- BPE -----------------------------------------------------------------------------------------

def test_bpe_trains_deterministically(small_texts, tmp_path):
    a = train_bpe(small_texts, 400, corpus="t", cache=False)
    b = train_bpe(small_texts, 400, corpus="t", cache=False)
    assert a.tokenizer.to_str() == b.tokenizer.to_str()
    assert a.vocab_size == 400 and a.eos_id is not None and a.decode([a.eos_id]) == ENDOFTEXT
    text = small_texts[0][:2000]
    assert a.encode(text) == b.encode(text)
    assert len(a.encode(text)) < 0.75 * len(text.encode())     # it actually compresses


def test_bpe_is_cached_by_corpus_vocab_and_text(small_texts):
    a = train_bpe(small_texts, 320, corpus="shakespeare-mini")
    files = sorted((cache_dir() / "tokenizers").glob("*.json"))
    assert [f.name.startswith("bpe-shakespeare-mini-320-") for f in files] == [True]
    b = train_bpe(small_texts, 320, corpus="shakespeare-mini")       # a cache hit
    assert b.tokenizer.to_str() == a.tokenizer.to_str()
    assert len(list((cache_dir() / "tokenizers").glob("*.json"))) == 1
    train_bpe(small_texts[:-1], 320, corpus="shakespeare-mini")      # other text: a new entry
    train_bpe(small_texts, 330, corpus="shakespeare-mini")           # other size: a new entry
    assert len(list((cache_dir() / "tokenizers").glob("*.json"))) == 3


@pytest.fixture(scope="module")
def bpe(small_texts, tmp_path_factory):
    return train_bpe(small_texts, 400, corpus="t", directory=tmp_path_factory.mktemp("bpe"))


@settings(max_examples=100, deadline=None)
@given(st.text())
def test_bpe_round_trip_is_exact(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


def test_bpe_rejects_tiny_vocab(small_texts):
    with pytest.raises(ValueError, match="256"):
        train_bpe(small_texts, 200)


# --- pretrained tokenizer.json -------------------------------------------------------------------

def test_pretrained_from_file_reads_specials_from_config(bpe, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    bpe.tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": {"content": ENDOFTEXT}, "bos_token": None}))
    tok = load_tokenizer(str(folder))
    assert isinstance(tok, HFTokenizer) and isinstance(tok, Tokenizer)
    assert tok.eos_id == bpe.eos_id and tok.bos_id is None
    text = "To be, or not to be, that is the question:\n"
    assert tok.encode(text) == bpe.encode(text)
    assert tok.decode(tok.encode(text)) == text
    assert HFTokenizer.from_file(folder / "tokenizer.json").eos_id == bpe.eos_id   # guessed


def test_pretrained_unknown_special_is_an_error(bpe, tmp_path):
    bpe.tokenizer.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="not in the vocabulary"):
        HFTokenizer.from_file(tmp_path / "tokenizer.json", eos_token="</s>")


def test_vocab_size_covers_every_id_of_a_tokenizer_json_with_holes(tmp_path):
    """A tokenizer.json may number its tokens with gaps; vocab_size (a model's embedding size)
    must still exceed every id encode can give, or the id reaches the model out of range."""
    from tokenizers import Tokenizer as _Tk
    from tokenizers import models, pre_tokenizers

    tk = _Tk(models.WordLevel({"[UNK]": 0, "to": 1, "be": 7}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(str(tmp_path / "tokenizer.json"))
    ids = tok.encode("to be or not to be")
    assert 7 in ids and tok.vocab_size == 8
    assert max(ids) < tok.vocab_size


@pytest.mark.slow
def test_bpe_on_the_full_train_split():
    tok = load_tokenizer("bpe:2048")
    docs = load_corpus("shakespeare", "validation")
    text = docs[0].text
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < 0.4 * len(text.encode())
    assert load_tokenizer("bpe:2048").tokenizer.to_str() == tok.tokenizer.to_str()   # cached
