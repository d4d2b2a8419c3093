"""A data configuration's hf: settings, tokenizer and memory-mapped token files, on local parquet files.

Every ``hf:`` corpus here is ``hf:parquet`` with ``data.data_files`` pointing at files pyarrow writes
in ``tmp_path``: the real ``datasets.load_dataset`` path, no network. The oracle of a token file is
the in-memory path it replaces: ``token_stream(load_corpus_from_config(data, split), tokenizer)``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hopekit.config import DataConfig, load_config
from hopekit.data import (
    SPLITS,
    ByteTokenizer,
    TrainBatches,
    load_corpus,
    load_corpus_from_config,
    prepare_tokens,
    split_documents,
    token_stream,
    tokenizer_from_config,
)
from hopekit.data import prepare as prep

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

#: PG-19's columns; texts of different lengths, non-ASCII, and one with a Gutenberg header
BOOKS = [
    {"short_book_title": f"Book {i}", "publication_date": 1800 + i,
     "url": f"http://www.gutenberg.org/ebooks/{1000 + i}",
     "text": f"Chapter {i}. Þe bōok of {i} — “quoted”.\n" * (3 + 7 * i)}
    for i in range(24)
]
BOOKS[5]["text"] = ("The Project Gutenberg EBook of Book 5\n*** START OF THIS PROJECT GUTENBERG EBOOK BOOK 5 ***\n"
                    "The body of book five.\n" * 3 + "*** END OF THIS PROJECT GUTENBERG EBOOK BOOK 5 ***\nlicence\n")


class WideTokenizer:
    """A vocabulary past uint16: byte b is id 65000 + b, the separator 69999 (module level: picklable)."""

    name = "wide-test"
    vocab_size = 70000
    bos_id = None
    eos_id = 69999

    def encode(self, text: str) -> list[int]:
        return [65000 + b for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(int(i) - 65000 for i in ids if int(i) != self.eos_id).decode("utf-8", errors="replace")


@pytest.fixture(autouse=True)
def _caches(tmp_path, monkeypatch):
    """Token files, tokenizers and datasets' prepared copies go to tmp_path; no hub access at all."""
    monkeypatch.setenv("HOPEKIT_CACHE", str(tmp_path / "hopekit-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _write(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.fixture()
def one_file(tmp_path):
    """A single-split dataset (the shape of a corpus re-split by work)."""
    return _write(tmp_path / "books.parquet", BOOKS)


@pytest.fixture()
def three_files(tmp_path):
    """A dataset with its own three splits, validation spelled ``valid``."""
    return {"train": _write(tmp_path / "train.parquet", BOOKS[:16]),
            "valid": _write(tmp_path / "valid.parquet", BOOKS[16:20]),
            "test": _write(tmp_path / "test.parquet", BOOKS[20:])}


def _data(files, **kw) -> DataConfig:
    return DataConfig(corpus="hf:parquet", data_files=files, **kw)


def _oracle(data: DataConfig, split: str, tokenizer) -> torch.Tensor:
    return token_stream(load_corpus_from_config(data, split), tokenizer)


# --- the config's hf: settings -------------------------------------------------------------------

def test_hf_fields_are_refused_for_other_corpora_and_validated():
    for kw, match in ((dict(limit=5), r"DataConfig.limit=5: only for an hf: corpus"),
                      (dict(streaming=True), r"DataConfig.streaming=True: only for an hf: corpus"),
                      (dict(split="train"), r"DataConfig.split='train': only for an hf: corpus"),
                      (dict(data_files="x.parquet"), r"DataConfig.data_files='x.parquet': only for an hf: corpus")):
        with pytest.raises(ValueError, match=match):
            DataConfig(**kw)
    with pytest.raises(ValueError, match=r"DataConfig.limit=-1: must be >= 0"):
        DataConfig(corpus="hf:parquet", limit=-1)
    with pytest.raises(ValueError, match=r"DataConfig.split=\{'dev': 'valid'\}: key 'dev' is not one of our splits"):
        DataConfig(corpus="hf:parquet", split={"dev": "valid"})
    with pytest.raises(TypeError, match=r"DataConfig.data_files=\{'train': 3\}"):
        DataConfig(corpus="hf:parquet", data_files={"train": 3})
    assert DataConfig(corpus="hf:parquet", limit=None).limit == 0   # null means all, like 0


def test_settings_flow_from_yaml_overrides(one_file):
    config = load_config("tiny", ["data.corpus=hf:parquet", f"data.data_files=[{one_file}]", "data.split=train",
                                  "data.limit=10", "data.streaming=true"])
    assert config.data == _data([one_file], split="train", limit=10, streaming=True)
    assert config.resolved()["data"]["data_files"] == [one_file]
    assert hash(config.data) == hash(_data([one_file], split="train", limit=10, streaming=True))


def test_a_dataset_with_its_own_splits_keeps_them_and_renames_by_mapping(three_files):
    data = _data(three_files, split={"validation": "valid"})
    got = {s: [d.title for d in load_corpus_from_config(data, s)] for s in SPLITS}
    assert got == {"train": [b["short_book_title"] for b in BOOKS[:16]],
                   "validation": [b["short_book_title"] for b in BOOKS[16:20]],
                   "test": [b["short_book_title"] for b in BOOKS[20:]]}
    with pytest.raises(ValueError, match="validation"):   # without the mapping: datasets has no such split
        load_corpus_from_config(_data(three_files), "validation")


def test_a_single_split_dataset_is_resplit_by_work_as_split_documents_does(one_file):
    data = _data(one_file, split="train")
    everything = load_corpus("hf:parquet", "all", data_files=one_file)
    expected = split_documents(everything)
    for s in SPLITS:
        got = load_corpus_from_config(data, s)
        assert [(d.id, d.title, d.text) for d in got] == [(d.id, d.title, d.text) for d in expected[s]]
        assert got
    assert "body of book five" in next(d.text for d in everything if d.title == "Book 5")
    assert "START OF THIS" not in next(d.text for d in everything if d.title == "Book 5")


def test_limit_and_streaming(one_file):
    first = load_corpus_from_config(_data(one_file, split={"train": "train"}, limit=6), "train")
    assert [d.title for d in first] == [f"Book {i}" for i in range(6)]
    streamed = load_corpus_from_config(_data(one_file, split={"train": "train"}, limit=6, streaming=True), "train")
    assert [(d.id, d.text) for d in streamed] == [(d.id, d.text) for d in first]
    # a limit applies before the re-split: the three splits partition the first `limit` records
    parts = {s: load_corpus_from_config(_data(one_file, split="train", limit=12, streaming=True), s) for s in SPLITS}
    assert sorted(d.title for v in parts.values() for d in v) == sorted(f"Book {i}" for i in range(12))
    again = load_corpus_from_config(_data(one_file, split="train", limit=12), "test")
    assert [d.id for d in again] == [d.id for d in parts["test"]]


# --- token files ---------------------------------------------------------------------------------

@pytest.mark.parametrize("streaming", [False, True])
def test_a_token_file_is_the_in_memory_stream(one_file, streaming):
    data = _data(one_file, split="train", streaming=streaming)
    tok = ByteTokenizer()
    for split in SPLITS:
        stream = prepare_tokens(data, split, tok)
        assert stream.dtype == torch.uint16 and stream.dim() == 1
        assert torch.equal(stream.long(), _oracle(data, split, tok))


def test_uint16_or_uint32_by_vocabulary_size(three_files, tmp_path):
    assert prep.token_dtype(65536) == np.uint16 and prep.token_dtype(65537) == np.uint32
    data = _data(three_files, split={"validation": "valid"})
    wide = WideTokenizer()
    stream = prepare_tokens(data, "validation", wide)
    assert stream.dtype == torch.uint32
    ref = _oracle(data, "validation", wide)
    assert int(ref.max()) == 69999 and torch.equal(stream.long(), ref)
    path = prep.token_file_path(data, "validation", wide)
    assert path.stat().st_size == 4 * ref.numel()


def test_a_bpe_token_file_matches_and_the_bpe_is_cached(one_file, monkeypatch):
    data = _data(one_file, split="train", tokenizer="bpe", vocab_size=300)
    bpe = tokenizer_from_config(data)
    assert bpe.name == "bpe-hf_parquet-300" and bpe.vocab_size == 300
    stream = prepare_tokens(data, "train", bpe)
    assert stream.dtype == torch.uint16 and torch.equal(stream.long(), _oracle(data, "train", bpe))

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(prep, "train_bpe", no_training)
    again = tokenizer_from_config(data)
    assert again.tokenizer.to_str() == bpe.tokenizer.to_str()
    with pytest.raises(AssertionError, match="trained again"):   # other records: another BPE
        tokenizer_from_config(_data(one_file, split="train", tokenizer="bpe", vocab_size=300, limit=12))


def test_a_token_file_is_made_once_then_reused(one_file, monkeypatch):
    data = _data(one_file, split="train")
    tok = ByteTokenizer()
    first = prepare_tokens(data, "train", tok)
    path = prep.token_file_path(data, "train", tok)
    stamp = path.stat().st_mtime_ns

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(prep, "_write_tokens", no_tokenizing)
    second = prepare_tokens(data, "train", tok)
    assert torch.equal(first, second) and path.stat().st_mtime_ns == stamp
    assert not list(path.parent.glob("*.tmp*"))   # written under a temporary name, renamed


def test_a_stale_token_file_is_never_reused(one_file, tmp_path):
    tok = ByteTokenizer()
    data = _data(one_file, split="train")
    base = prepare_tokens(data, "train", tok)
    path = prep.token_file_path(data, "train", tok)
    # another limit, another tokenizer (same vocabulary size, other specials), another separator
    limited = _data(one_file, split="train", limit=12)
    assert prep.token_file_path(limited, "train", tok) != path
    assert torch.equal(prepare_tokens(limited, "train", tok).long(), _oracle(limited, "train", tok))
    bos = ByteTokenizer(specials=("<|bos|>",))
    assert prep.token_file_path(data, "train", bos, separator=256) != path
    # the data file edited in place: its size and modification time are part of the key
    _write(one_file, BOOKS[::-1])
    os.utime(one_file, ns=(1, 1))
    assert prep.token_file_path(data, "train", tok) != path
    assert torch.equal(prepare_tokens(data, "train", tok).long(), _oracle(data, "train", tok))
    assert not torch.equal(base.long()[:100], _oracle(data, "train", tok)[:100])
    # a truncated file (a crash mid-copy, a full disk) is rebuilt, not read
    data = _data(one_file, split="train")
    path = prep.token_file_path(data, "train", tok)
    with open(path, "r+b") as f:
        f.truncate(10)
    assert torch.equal(prepare_tokens(data, "train", tok).long(), _oracle(data, "train", tok))


def test_two_processes_give_the_same_file(one_file):
    """num_proc=2 (datasets' worker processes, the tokenizer pickled to them) writes the same tokens."""
    data = _data(one_file, split="train", tokenizer="bpe", vocab_size=300)
    bpe = tokenizer_from_config(data)
    one = prepare_tokens(data, "train", bpe, num_proc=1)
    environ = os.environ
    two = prepare_tokens(_data(one_file, split="train", tokenizer="bpe", vocab_size=300, num_proc=2), "train", bpe,
                         directory=prep.cache_dir() / "other")
    assert torch.equal(one, two) and torch.equal(one.long(), _oracle(data, "train", bpe))
    assert os.environ is environ and os.environ["HF_HUB_OFFLINE"] == "1"   # datasets rebinds it; we undo that


# --- batches from a token file -------------------------------------------------------------------

def test_train_batches_sample_a_memory_map_in_place_and_identically(one_file):
    tok = ByteTokenizer()
    data = _data(one_file, split="train")
    mapped = prepare_tokens(data, "train", tok)
    in_memory = _oracle(data, "train", tok)
    a = TrainBatches(mapped, batch_size=8, train_len=32, seed=5, vocab_size=tok.vocab_size)
    b = TrainBatches(in_memory, batch_size=8, train_len=32, seed=5, vocab_size=tok.vocab_size)
    assert a.stream.data_ptr() == mapped.data_ptr() and a.stream.dtype == torch.uint16   # not copied
    for step in (0, 1, 7, 1000):
        xa, ya = a.batch(step)
        xb, yb = b.batch(step)
        assert xa.dtype == torch.long and torch.equal(xa, xb) and torch.equal(ya, yb)
    numpy_map = np.memmap(prep.token_file_path(data, "train", tok), dtype=np.uint16, mode="r")
    c = TrainBatches(numpy_map, batch_size=8, train_len=32, seed=5)
    assert torch.equal(c.batch(3)[0], b.batch(3)[0])
    assert a.num_tokens == in_memory.numel()
    assert a.epochs(100) == pytest.approx(100 * 8 * 32 / in_memory.numel())


def test_an_id_outside_the_vocabulary_is_found_in_a_mapped_stream():
    stream = torch.zeros(100, dtype=torch.uint16)
    stream[77] = 300
    with pytest.raises(ValueError, match=r"token id 300 at position 77, outside the vocabulary \[0, 257\)"):
        TrainBatches(stream, 2, 8, vocab_size=257)
    batches = TrainBatches(stream, 2, 8, vocab_size=301)
    batches._check_ids_in_chunks(chunk=16)   # the position is found across chunk boundaries too
    stream[77], stream[95] = 0, 999
    with pytest.raises(ValueError, match="at position 95"):
        TrainBatches(stream, 2, 8, vocab_size=301)._check_ids_in_chunks(chunk=16)


def test_corpus_batches_reads_the_token_file_and_gives_the_in_memory_batches(one_file):
    from hopekit.train import corpus_batches

    config = load_config("tiny", ["data.corpus=hf:parquet", f"data.data_files={one_file}", "data.split=train",
                                  "train.batch_size=4", "train.train_len=16"])
    batches, vocab = corpus_batches(config)
    sampler = batches.__self__
    assert vocab == 257 and sampler.stream.dtype == torch.uint16
    ref = TrainBatches(_oracle(config.data, "train", ByteTokenizer()), 4, 16, seed=config.train.seed)
    for step in (0, 5):
        assert all(torch.equal(u, v) for u, v in zip(batches(step), ref.batch(step)))
    assert sampler.epochs(config.train.steps) == pytest.approx(config.train.steps * 4 * 16 / ref.num_tokens)
