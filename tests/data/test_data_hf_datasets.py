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


# --- hub datasets: fail fast offline, refuse loading scripts ---------------------------------------

@pytest.fixture()
def no_hub(tmp_path, monkeypatch):
    """No offline variable, an empty datasets cache, and an endpoint nothing listens on (127.0.0.1:9,
    refused at once): what a machine without network looks like, without touching the network."""
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))

    def no_load(*args, **kwargs):
        raise AssertionError("datasets.load_dataset was called")

    monkeypatch.setattr(datasets, "load_dataset", no_load)
    return tmp_path / "empty-cache"


def test_an_unreachable_hub_fails_at_once_in_one_line(no_hub):
    with pytest.raises(ValueError, match=r"^data.corpus='hf:someorg/nosuch': a hub dataset with no cached copy, and "
                                         r"the hub \(http://127.0.0.1:9\) is unreachable \(Connection refused\); "):
        load_corpus("hf:someorg/nosuch", "train")


def test_an_unroutable_endpoint_fails_within_the_timeout(no_hub, monkeypatch):
    from hopekit import hub

    monkeypatch.setattr(hub, "HUB_TIMEOUT", 0.2)
    monkeypatch.setenv("HF_ENDPOINT", "http://192.0.2.1")   # TEST-NET-1 (RFC 5737): never routed
    with pytest.raises(ValueError, match=r"hub \(http://192.0.2.1\) is unreachable \(.+\)"):
        load_corpus("hf:someorg/nosuch:default", "test", streaming=True)


@pytest.mark.parametrize("var", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_an_offline_variable_fails_at_once_naming_it(no_hub, monkeypatch, var):
    monkeypatch.setenv(var, "1")
    with pytest.raises(ValueError, match=rf"hf:someorg/nosuch'.*no cached copy, and {var} is set; .*hf:parquet"):
        load_corpus("hf:someorg/nosuch", "train", limit=3)


def test_a_cached_dataset_passes_the_check_offline_but_a_stream_does_not(no_hub, monkeypatch):
    from hopekit.data.hf_datasets import check_dataset_access

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (no_hub / "someorg___no_such" / "default" / "0.0.0" / "abc123").mkdir(parents=True)
    check_dataset_access("someorg/NoSuch")            # datasets' own cache layout: offline it loads from there
    with pytest.raises(ValueError, match="streamed"):
        check_dataset_access("someorg/NoSuch", streaming=True)
    check_dataset_access("parquet")                   # packaged builders and local folders never ask the hub
    check_dataset_access(str(no_hub))


def test_a_loading_script_repository_is_refused_naming_its_parquet_copy(no_hub, monkeypatch):
    from hopekit.data import hf_datasets

    def script(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found pg19.py")

    monkeypatch.setattr(hf_datasets, "check_dataset_access", lambda *a, **k: None)
    monkeypatch.setattr(datasets, "load_dataset", script)
    with pytest.raises(ValueError, match=r"^data.corpus='hf:deepmind/pg19': a loading-script dataset, which datasets "
                                         r"\S+ no longer runs; use hf:emozilla/pg19, the same data as parquet$"):
        load_corpus("hf:deepmind/pg19", "test")
