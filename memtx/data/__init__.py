"""Data for memtx: corpora and their splits, tokenizers, and token streams."""

from __future__ import annotations

from memtx.data.corpora import (
    KNOWN_CORPORA,
    Document,
    Splits,
    default_cache_dir,
    load_splits,
    split_documents,
)
from memtx.data.prepared import PreparedData, no_corpus, prepare_data
from memtx.data.streams import Batch, StreamLoader, as_rows, encode_documents
from memtx.data.tokenizers import (
    BPETokenizer,
    ByteTokenizer,
    PretrainedTokenizer,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
)

__all__ = [
    "KNOWN_CORPORA",
    "BPETokenizer",
    "Batch",
    "ByteTokenizer",
    "PretrainedTokenizer",
    "Document",
    "PreparedData",
    "Splits",
    "StreamLoader",
    "Tokenizer",
    "as_rows",
    "build_tokenizer",
    "default_cache_dir",
    "encode_documents",
    "load_splits",
    "load_tokenizer",
    "no_corpus",
    "prepare_data",
    "split_documents",
]
