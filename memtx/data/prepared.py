"""A corpus loaded, split by whole documents and tokenized: what every kind of run reads."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memtx.config import DataConfig
from memtx.data.corpora import load_splits
from memtx.data.streams import encode_documents
from memtx.data.tokenizers import ByteTokenizer, Tokenizer, build_tokenizer
from memtx.errors import DataError

__all__ = ["TASK_TEXT_REPEATS", "PreparedData", "no_corpus", "prepare_data"]


@dataclass
class PreparedData:
    """Tokenized splits of a corpus, ready for the loop and evaluation.

    Attributes:
        tokenizer: what made the token ids.
        train, valid, test: 1-D token ids of each split (documents joined).
        bytes_per_token: text bytes per token of each split (bits per byte from bits
            per token).
    """

    tokenizer: Tokenizer
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    bytes_per_token: dict[str, float]


#: how often a task's sentences are repeated among a BPE tokenizer's training texts: a
#: run reads them in every sample, so their words must become tokens as a corpus's
#: common words do (about 20K mentions of a qa1 name against 4.5M bytes of plays)
TASK_TEXT_REPEATS = 1000


def prepare_data(
    config: DataConfig,
    *,
    tokenizer: Tokenizer | None = None,
    task_texts: Sequence[str] = (),
) -> PreparedData:
    """Load the corpus of ``config``, split it by whole documents, tokenize each split.

    A BPE tokenizer is trained on the training split unless ``tokenizer`` is given
    (a resumed or evaluated run passes the one saved with it), and on ``task_texts``
    (a task's sentences, :func:`memtx.data.tasks.task_vocabulary`), each repeated
    :data:`TASK_TEXT_REPEATS` times: what a task run trains on besides the corpus.

    Raises:
        DataError: a corpus that cannot be found or read.
    """
    splits = load_splits(
        config.corpus,
        cache_dir=Path(config.cache_dir) if config.cache_dir else None,
        valid_fraction=config.valid_fraction,
        test_fraction=config.test_fraction,
        seed=config.split_seed,
    )
    if tokenizer is None and config.tokenizer == "hf":
        raise DataError(
            "data.tokenizer='hf' is the pretrained model's own: pass it "
            "(PretrainedTokenizer.from_pretrained(model.hf_path))"
        )
    if tokenizer is None:
        if config.tokenizer == "byte":
            tokenizer = ByteTokenizer()
        else:
            texts = itertools.chain(
                (d.data for d in splits.train),
                (text for text in task_texts for _ in range(TASK_TEXT_REPEATS)),
            )
            tokenizer = build_tokenizer("bpe", train_texts=texts, vocab_size=config.bpe_vocab_size)
    arrays: dict[str, np.ndarray] = {}
    ratios: dict[str, float] = {}
    for name in ("train", "valid", "test"):
        docs = getattr(splits, name)
        arrays[name] = encode_documents(docs, tokenizer)
        n_bytes = sum(len(d.data) for d in docs) + 2 * max(len(docs) - 1, 0)
        ratios[name] = n_bytes / max(len(arrays[name]), 1)
    return PreparedData(tokenizer, arrays["train"], arrays["valid"], arrays["test"], ratios)


def no_corpus() -> PreparedData:
    """What a run that reads no corpus has (synthetic tasks): byte tokens, empty splits."""
    empty = np.zeros(0, dtype=np.uint16)
    return PreparedData(
        ByteTokenizer(), empty, empty, empty, {"train": 1.0, "valid": 1.0, "test": 1.0}
    )
