"""Corpora, tokenizers and batching for language modelling (DESIGN §5).

Imports torch, numpy and the standard library only; ``tokenizers`` and ``datasets`` are imported
inside the functions that need them.

Corpora — whole documents, split by work (two editions of a play are one work)::

    docs = load_corpus("shakespeare", "train")          # embedded default, offline
    docs = load_corpus("path/to/folder_or_file.jsonl", "test", text_field="text")
    docs = load_corpus("hf:emozilla/pg19", "validation", streaming=True, limit=10)
    docs = load_corpus_from_config(config.data, "test")  # a DataConfig, its hf: settings included

Tokenizers — ``encode`` / ``decode`` / ``vocab_size`` / ``bos_id`` / ``eos_id`` / ``name``::

    tok = load_tokenizer("byte")          # 256 bytes + <|endoftext|>
    tok = load_tokenizer("bpe:4096")      # byte-level BPE on the train split, cached
    tok = load_tokenizer("path/to/tokenizer.json")
    tok = tokenizer_from_config(config.data)  # data.tokenizer; a BPE of an hf: corpus on a sample, cached

Batching::

    stream = token_stream(docs, tok)                     # doc SEP doc SEP ..., ids < tok.vocab_size
    stream = prepare_tokens(config.data, "train", tok)   # hf: corpus -> cached memory-mapped token file
    batches = TrainBatches(stream, batch_size=32, train_len=256, seed=0,
                           vocab_size=tok.vocab_size)    # refuses ids outside [0, vocab_size)
    x, y = batches.batch(step)                           # same (seed, step) -> same batch
    batches.epochs(steps)                                # steps * batch_size * train_len / num_tokens
    for w in eval_windows(NONOVERLAP, encode_documents(test_docs, tok), eval_len=1024,
                          separator=tok.eos_id): ...

BiPE: ``boundary_ids_for(tok)`` — the ids of ``tok`` that end a segment, for the encoding's
``boundary_ids`` (the positions are computed by :func:`hopekit.pe.bipe.bipe_positions`).
"""

from .batching import (
    DEFAULT_PROTOCOL,
    NONOVERLAP,
    PROTOCOLS,
    SLIDING,
    TRUNCATE,
    EvalWindow,
    TaskMixture,
    TrainBatches,
    check_token_ids,
    encode_document,
    encode_documents,
    eval_windows,
    join_tokens,
    nonoverlap_windows,
    sliding_windows,
    step_seed,
    token_stream,
    truncate_windows,
)
from .bipe import BIPE_BOUNDARY_CHARS, boundary_ids_for
from .corpus import (
    DEFAULT_CORPUS,
    EMBEDDED,
    corpus_stats,
    embedded_manifest,
    load_corpus,
    load_directory,
    load_embedded,
    load_jsonl,
    load_local,
    load_text_file,
)
from .documents import Document
from .prepare import (
    corpus_tokens,
    is_hf_corpus,
    load_corpus_from_config,
    open_token_file,
    prepare_tokens,
    tokenizer_from_config,
)
from .gutenberg import split_gutenberg, strip_gutenberg
from .splits import (
    DEFAULT_SPLIT_SEED,
    SPLITS,
    assign_splits,
    canonical_id,
    split_documents,
    work_id,
)
from .tokenizer import (
    ENDOFTEXT,
    ByteTokenizer,
    HFTokenizer,
    Tokenizer,
    cache_dir,
    load_tokenizer,
    train_bpe,
)

__all__ = [
    "BIPE_BOUNDARY_CHARS", "DEFAULT_CORPUS", "DEFAULT_PROTOCOL", "DEFAULT_SPLIT_SEED", "EMBEDDED",
    "ENDOFTEXT", "NONOVERLAP", "PROTOCOLS", "SLIDING", "SPLITS", "TRUNCATE", "ByteTokenizer",
    "Document", "EvalWindow", "HFTokenizer", "TaskMixture", "Tokenizer", "TrainBatches", "assign_splits",
    "boundary_ids_for", "cache_dir", "canonical_id", "check_token_ids", "corpus_stats", "corpus_tokens",
    "embedded_manifest", "encode_document", "encode_documents", "eval_windows", "is_hf_corpus", "join_tokens",
    "load_corpus", "load_corpus_from_config", "load_directory", "load_embedded", "load_jsonl", "load_local",
    "load_text_file", "load_tokenizer", "nonoverlap_windows", "open_token_file", "prepare_tokens",
    "sliding_windows", "split_documents", "split_gutenberg", "step_seed", "strip_gutenberg", "token_stream",
    "tokenizer_from_config", "train_bpe", "truncate_windows", "work_id",
]
