"""The Hugging Face ``datasets`` loader, exercised on local files in the hub formats.

The code path is the real one (``datasets.load_dataset``); only the source is a local JSON-lines
or parquet file written by the test, shaped like PG-19 (``short_book_title``, ``url``, ``text``).
"""

from __future__ import annotations

import json

import pytest

from hopekit.data import SPLITS, load_corpus
from hopekit.data.hf_datasets import load_hf_documents, parse_hf_source

datasets = pytest.importorskip("datasets")

BOOKS = [
    {"short_book_title": f"Book {i}", "publication_date": 1800 + i,
     "url": f"http://www.gutenberg.org/ebooks/{1000 + i}", "text": f"Text of book {i}. " * (i + 1)}
    for i in range(12)
]


@pytest.fixture()
def pg19_jsonl(tmp_path):
    path = tmp_path / "pg19-sample.jsonl"
    path.write_text("".join(json.dumps(b) + "\n" for b in BOOKS))
    return path


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return str(tmp_path / "hf-cache")


def test_parse_hf_source():
    assert parse_hf_source("hf:deepmind/pg19") == ("deepmind/pg19", None)
    assert parse_hf_source("hf:wikitext:wikitext-103-raw-v1") == ("wikitext", "wikitext-103-raw-v1")
    with pytest.raises(ValueError):
        parse_hf_source("hf:")


def test_json_file_through_load_dataset(pg19_jsonl, hf_cache):
    docs = load_corpus("hf:json", "train", data_files=str(pg19_jsonl), cache_dir=hf_cache,
                       title_field="short_book_title")
    assert [d.text for d in docs] == [b["text"] for b in BOOKS]
    assert docs[3].title == "Book 3"
    assert docs[3].id == BOOKS[3]["url"]          # "url" is a recognised id column
    assert docs[3].meta["publication_date"] == 1803
    assert docs[3].meta["source"] == "hf:json"


def test_title_column_is_found_without_being_named(pg19_jsonl, hf_cache):
    docs = load_hf_documents("json", "train", data_files=str(pg19_jsonl), cache_dir=hf_cache)
    assert docs[0].title == "Book 0"


def test_streaming_and_limit(pg19_jsonl, hf_cache):
    docs = load_corpus("hf:json", "train", data_files=str(pg19_jsonl), streaming=True, limit=4)
    assert [d.title for d in docs] == ["Book 0", "Book 1", "Book 2", "Book 3"]


def test_parquet_file(tmp_path, hf_cache):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "validation.parquet"
    pq.write_table(pa.Table.from_pylist(BOOKS[:3]), path)
    docs = load_corpus("hf:parquet", "validation", data_files={"validation": str(path)}, cache_dir=hf_cache)
    assert [d.title for d in docs] == ["Book 0", "Book 1", "Book 2"]


def test_resplit_a_single_split_dataset_by_work(pg19_jsonl, hf_cache):
    parts = {s: load_corpus("hf:json", s, data_files=str(pg19_jsonl), cache_dir=hf_cache, resplit=True)
             for s in SPLITS}
    assert sorted(d.id for v in parts.values() for d in v) == sorted(b["url"] for b in BOOKS)
    assert all(parts[s] for s in SPLITS)
    again = load_corpus("hf:json", "test", data_files=str(pg19_jsonl), cache_dir=hf_cache, resplit=True)
    assert [d.id for d in again] == [d.id for d in parts["test"]]


def test_missing_text_column_is_named(pg19_jsonl, hf_cache):
    with pytest.raises(KeyError, match="content"):
        load_corpus("hf:json", "train", data_files=str(pg19_jsonl), cache_dir=hf_cache, text_field="content")


def test_missing_split_comes_from_datasets(pg19_jsonl, hf_cache):
    with pytest.raises(ValueError):
        load_corpus("hf:json", "test", data_files=str(pg19_jsonl), cache_dir=hf_cache)
