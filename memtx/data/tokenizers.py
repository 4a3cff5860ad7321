"""Tokenizers that turn corpus bytes into ``np.uint16`` token ids and back.

Two kinds are lossless on arbitrary bytes:

* :class:`ByteTokenizer` maps each byte to its value (vocabulary of 256).
* :class:`BPETokenizer` wraps a byte-level BPE model of the Hugging Face ``tokenizers``
  library, trained locally.

A third, :class:`PretrainedTokenizer`, is a pretrained model's own (``transformers``).

Both write a single ``tokenizer.json`` into a directory with ``save``;
:func:`load_tokenizer` reads it back and tells the kinds apart by content: the byte
tokenizer's file is ``{"kind": "byte"}``, the BPE tokenizer's file is the unmodified
Hugging Face tokenizer JSON (its ``model.type`` is ``"BPE"``), so it can also be opened
with ``tokenizers.Tokenizer.from_file``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np

from memtx.errors import DataError

TOKENIZER_FILE: Final = "tokenizer.json"
TOKENIZER_KINDS: Final = ("byte", "bpe", "hf")

# Token ids are stored as uint16 everywhere in memtx.data, which caps the vocabulary.
MAX_VOCAB_SIZE: Final = 1 << 16

# Valid UTF-8 text is handed to the Hugging Face tokenizer in pieces of about this many
# characters so ``encode_batch`` can use several threads on large corpora.
_CHUNK_CHARS: Final = 1 << 16

# ``bytes.decode("utf-8", errors="surrogateescape")`` turns each byte that is not part of
# valid UTF-8 into one lone surrogate U+DC80..U+DCFF; these runs are the raw bytes.
_SURROGATE_RUNS: Final = re.compile("([\udc80-\udcff]+)")


def _as_bytes(data: str | bytes | bytearray | memoryview) -> bytes:
    """Returns ``data`` as bytes; a str is UTF-8 encoded (lone surrogates kept as-is)."""
    if isinstance(data, str):
        # surrogatepass: a str holding lone surrogates still encodes instead of raising.
        return data.encode("utf-8", errors="surrogatepass")
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise DataError(f"tokenizer input must be str or bytes, got {type(data).__name__}")


def _as_ids(ids: Sequence[int] | np.ndarray, *, vocab_size: int) -> np.ndarray:
    """Returns ``ids`` as a 1-D int64 array, checking every id is below ``vocab_size``."""
    array = np.asarray(ids)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            f"token ids must be a 1-D sequence of integers, got shape {array.shape} "
            f"and dtype {array.dtype}"
        )
    array = array.astype(np.int64, copy=False)
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= vocab_size:
        raise DataError(f"token ids must lie in [0, {vocab_size}), got values in [{low}, {high}]")
    return array


@cache
def bytes_to_unicode() -> dict[int, str]:
    """Returns GPT-2's byte -> printable character table that byte-level BPE works on.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map to U+0100 onwards.
    It is the same table the ``ByteLevel`` pre-tokenizer of ``tokenizers`` uses.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ByteTokenizer:
    """One token per byte: id ``b`` is byte ``b``.

    Attributes:
        vocab_size: Always 256.
        kind: Always ``"byte"``.
    """

    vocab_size: int = 256
    kind: Literal["byte"] = "byte"

    def encode(self, data: str | bytes) -> np.ndarray:
        """Encodes bytes (a str is UTF-8 encoded first) into a 1-D ``np.uint16`` array."""
        return np.frombuffer(_as_bytes(data), dtype=np.uint8).astype(np.uint16)

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """Returns the exact bytes that ``ids`` stand for."""
        return _as_ids(ids, vocab_size=self.vocab_size).astype(np.uint8).tobytes()

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Returns ``ids`` as text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        """Writes ``tokenizer.json`` (``{"kind": "byte"}``) into ``directory``, creating it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_FILE).write_text(json.dumps({"kind": self.kind}) + "\n")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) backed by the Hugging Face ``tokenizers`` library.

    Every byte sequence round-trips exactly: valid UTF-8 text goes through the BPE model,
    and any byte that is not valid UTF-8 is emitted as the token of that single byte
    (all 256 byte tokens are always in the vocabulary).

    Build one with :meth:`train` or :func:`load_tokenizer`; the constructor wraps an
    already-built ``tokenizers.Tokenizer``.

    Attributes:
        vocab_size: Number of token ids, alphabet of 256 bytes plus merges.
        kind: Always ``"bpe"``.
    """

    kind: Literal["bpe"] = "bpe"

    def __init__(self, hf_tokenizer: object) -> None:
        """Wraps ``hf_tokenizer``, a ``tokenizers.Tokenizer`` with a byte-level BPE model.

        Raises:
            DataError: If it lacks one of the 256 byte tokens or has too many ids.
        """
        from tokenizers import Tokenizer as HFTokenizer

        if not isinstance(hf_tokenizer, HFTokenizer):
            raise DataError(
                f"BPETokenizer wraps a tokenizers.Tokenizer, got {type(hf_tokenizer).__name__}"
            )
        self._hf = hf_tokenizer
        self.vocab_size = int(hf_tokenizer.get_vocab_size(with_added_tokens=True))
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise DataError(
                f"BPE vocabulary has {self.vocab_size} tokens, more than the "
                f"{MAX_VOCAB_SIZE} that uint16 token ids allow"
            )
        vocab = hf_tokenizer.get_vocab(with_added_tokens=True)
        char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
        missing = [b for b, c in bytes_to_unicode().items() if c not in vocab]
        if missing:
            raise DataError(
                f"BPE vocabulary lacks the tokens of {len(missing)} single bytes "
                f"(e.g. byte {missing[0]}); expected a byte-level BPE with all 256"
            )
        # id -> exact bytes, used by decode_bytes instead of the HF decoder so that ids
        # for raw (non-UTF-8) bytes come back unchanged.
        self._id_bytes: list[bytes] = [b""] * self.vocab_size
        for token, index in vocab.items():
            try:
                self._id_bytes[index] = bytes(char_to_byte[c] for c in token)
            except KeyError as error:
                raise DataError(
                    f"BPE token {token!r} (id {index}) is not made of byte-level characters"
                ) from error
        self._byte_ids = np.array(
            [vocab[bytes_to_unicode()[b]] for b in range(256)], dtype=np.uint16
        )

    @classmethod
    def train(cls, texts: Iterable[bytes | str], *, vocab_size: int) -> BPETokenizer:
        """Learns a byte-level BPE vocabulary of ``vocab_size`` ids from ``texts``.

        Bytes that are not valid UTF-8 are left out of the merge statistics (they still
        encode, as single-byte tokens). Training on the same texts gives the same
        vocabulary. The result may hold fewer ids than asked for when the texts offer
        too few distinct pairs to merge.

        Args:
            texts: Training documents.
            vocab_size: Wanted number of ids: the 256 byte tokens plus merges, so at
                least 257 and at most 65536.

        Raises:
            DataError: If ``vocab_size`` is out of range or the texts allow no merge.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if not 257 <= vocab_size <= MAX_VOCAB_SIZE:
            raise DataError(
                f"BPE vocab_size must be between 257 (256 bytes + one merge) and "
                f"{MAX_VOCAB_SIZE}, got {vocab_size}"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )

        def text_chunks() -> Iterator[str]:
            for text in texts:
                for piece in _split_utf8(_as_bytes(text)):
                    if isinstance(piece, str):
                        yield from _chunk_text(piece)

        hf.train_from_iterator(text_chunks(), trainer=trainer)
        if hf.get_vocab_size() < 257:
            raise DataError("BPE training texts are too small: no pair of bytes could be merged")
        return cls(hf)

    def encode(self, data: str | bytes) -> np.ndarray:
        """Encodes bytes (a str is UTF-8 encoded first) into a 1-D ``np.uint16`` array."""
        texts: list[str] = []
        # One entry per piece in order: token ids of raw bytes, or None where the ids of
        # the next text chunk go once the whole batch is encoded.
        parts: list[np.ndarray | None] = []
        for piece in _split_utf8(_as_bytes(data)):
            if isinstance(piece, str):
                for chunk in _chunk_text(piece):
                    texts.append(chunk)
                    parts.append(None)
            else:
                parts.append(self._byte_ids[np.frombuffer(piece, dtype=np.uint8)])
        if not parts:
            return np.zeros(0, dtype=np.uint16)
        encodings = iter(self._hf.encode_batch(texts, add_special_tokens=False))
        return np.concatenate(
            [
                np.asarray(next(encodings).ids, dtype=np.uint16) if part is None else part
                for part in parts
            ]
        )

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """Returns the exact bytes that ``ids`` stand for."""
        table = self._id_bytes
        return b"".join([table[i] for i in _as_ids(ids, vocab_size=self.vocab_size).tolist()])

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Returns ``ids`` as text; bytes that are not valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        """Writes the Hugging Face tokenizer JSON as ``tokenizer.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / TOKENIZER_FILE).write_text(self._hf.to_str(pretty=True), encoding="utf-8")

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


class PretrainedTokenizer:
    """A pretrained model's own tokenizer (``data.tokenizer = "hf"``), from ``transformers``.

    Loaded from the checkpoint ``model.hf_path`` names (a folder, a GGUF file, a hub name)
    and saved with the run: ``tokenizer.json`` says ``{"kind": "hf", ...}`` and the
    tokenizer's own files go to ``hf_tokenizer/``, so a run needs its checkpoint only for
    the weights. Text is encoded without special tokens; bytes that are not UTF-8 are
    replaced (U+FFFD) first, so unlike the byte and BPE tokenizers it is not lossless on
    arbitrary bytes.

    Attributes:
        vocab_size: ids the tokenizer may produce (``len(tokenizer)``, added tokens too).
        kind: Always ``"hf"``.
        source: the ``model.hf_path`` it came from.
    """

    kind: Literal["hf"] = "hf"
    FOLDER: Final = "hf_tokenizer"

    def __init__(self, hf_tokenizer: Any, *, source: str) -> None:
        self._hf = hf_tokenizer
        self.source = source
        self.vocab_size = len(hf_tokenizer)
        if self.vocab_size > MAX_VOCAB_SIZE:
            raise DataError(
                f"the tokenizer of {source!r} has {self.vocab_size} tokens, more than the "
                f"{MAX_VOCAB_SIZE} that uint16 token ids allow"
            )

    @classmethod
    def from_pretrained(cls, hf_path: str) -> PretrainedTokenizer:
        """The tokenizer of the checkpoint ``hf_path`` (see :mod:`memtx.config.pretrained`).

        Raises:
            ConfigError: see :func:`~memtx.config.pretrained.resolve_source`.
            DataError: the checkpoint has no tokenizer.
        """
        from memtx.config.pretrained import converted_folder, resolve_source

        source = resolve_source(hf_path)
        what = f"model.hf_path={hf_path!r}"
        where, kwargs = source.from_pretrained_args()
        converted = converted_folder(source, "tokenizer")
        if converted is not None and not (converted / "tokenizer_config.json").is_file():
            staging = converted.with_name(f".tokenizer-{os.getpid()}")
            _auto_tokenizer(where, kwargs, what=what).save_pretrained(str(staging))
            with contextlib.suppress(OSError):  # another process may have converted it first
                staging.rename(converted)
            shutil.rmtree(staging, ignore_errors=True)
        if converted is not None:  # a GGUF tokenizer converts slowly: once per file
            where, kwargs = str(converted), {"local_files_only": True}
        return cls(_auto_tokenizer(where, kwargs, what=what), source=hf_path)

    @property
    def hf(self) -> Any:
        """The ``transformers`` tokenizer underneath (chat templates, special tokens)."""
        return self._hf

    @property
    def eos_id(self) -> int | None:
        """The end-of-text token id, where the tokenizer has one."""
        eos = getattr(self._hf, "eos_token_id", None)
        return int(eos) if isinstance(eos, int) else None

    def encode(self, data: str | bytes) -> np.ndarray:
        """Encodes text (bytes are decoded as UTF-8) into a 1-D ``np.uint16`` array."""
        text = data if isinstance(data, str) else _as_bytes(data).decode("utf-8", "replace")
        ids = self._hf(text, add_special_tokens=False)["input_ids"] if text else []
        return np.asarray(ids, dtype=np.uint16)

    def decode_bytes(self, ids: Sequence[int] | np.ndarray) -> bytes:
        """The UTF-8 bytes of the text ``ids`` stand for."""
        return self.decode(ids).encode("utf-8")

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """The text ``ids`` stand for; ids past the tokenizer's (rows a model's embedding
        may have beyond its tokenizer, e.g. padding to a multiple of 64) decode to nothing."""
        array = _as_ids(ids, vocab_size=MAX_VOCAB_SIZE)
        return str(self._hf.decode(array[array < self.vocab_size].tolist()))

    def save(self, directory: Path) -> None:
        """Writes ``tokenizer.json`` (kind, source, vocabulary) and ``hf_tokenizer/``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._hf.save_pretrained(str(directory / self.FOLDER))
        record = {"kind": self.kind, "source": self.source, "vocab_size": self.vocab_size}
        (directory / TOKENIZER_FILE).write_text(json.dumps(record) + "\n")

    def __repr__(self) -> str:
        return f"PretrainedTokenizer({self.source!r}, vocab_size={self.vocab_size})"


def _auto_tokenizer(where: str, kwargs: dict[str, Any], *, what: str) -> Any:
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            f"{what}: data.tokenizer='hf' needs transformers: pip install memtx[hf]"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(where, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{what} has no tokenizer that loads: {first}") from None


Tokenizer = ByteTokenizer | BPETokenizer | PretrainedTokenizer


def _split_utf8(data: bytes) -> list[str | bytes]:
    """Splits ``data`` into maximal valid UTF-8 runs (str) and invalid byte runs (bytes)."""
    text = data.decode("utf-8", errors="surrogateescape")
    pieces: list[str | bytes] = []
    # re.split with a capturing group alternates: valid text, invalid run, valid text, ...
    for index, piece in enumerate(_SURROGATE_RUNS.split(text)):
        if not piece:
            continue
        if index % 2:
            pieces.append(bytes(ord(c) - 0xDC00 for c in piece))
        else:
            pieces.append(piece)
    return pieces


def _chunk_text(text: str) -> Iterator[str]:
    """Cuts ``text`` into pieces of about ``_CHUNK_CHARS`` at pre-token boundaries.

    A cut is made only right after a newline that is followed by a non-space character:
    the GPT-2 pre-tokenizer regex never joins such a newline to the next character, so
    encoding the pieces separately gives the same ids as encoding the whole text.
    """
    start = 0
    while len(text) - start > _CHUNK_CHARS:
        cut = text.find("\n", start + _CHUNK_CHARS)
        while cut != -1 and cut + 1 < len(text) and text[cut + 1].isspace():
            cut = text.find("\n", cut + 1)
        if cut == -1 or cut + 1 >= len(text):
            break
        yield text[start : cut + 1]
        start = cut + 1
    yield text[start:]


def load_tokenizer(directory: Path) -> Tokenizer:
    """Loads the tokenizer that ``save`` wrote into ``directory``.

    Raises:
        DataError: If ``tokenizer.json`` is missing, unreadable or not a memtx tokenizer.
    """
    path = Path(directory) / TOKENIZER_FILE
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text)
    except FileNotFoundError as error:
        raise DataError(f"tokenizer file '{path}' does not exist") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"tokenizer file '{path}' is not readable JSON: {error}") from error
    if not isinstance(content, dict):
        raise DataError(f"tokenizer file '{path}' holds no JSON object")
    if content.get("kind") == "byte":
        return ByteTokenizer()
    if content.get("kind") == "hf":
        folder = str(Path(directory) / PretrainedTokenizer.FOLDER)
        hf = _auto_tokenizer(folder, {"local_files_only": True}, what=f"tokenizer '{path}'")
        tokenizer = PretrainedTokenizer(hf, source=str(content.get("source")))
        if tokenizer.vocab_size != content.get("vocab_size"):
            raise DataError(f"tokenizer '{path}': the saved tokenizer's vocabulary changed")
        return tokenizer
    model = content.get("model")
    if isinstance(model, dict) and model.get("type") == "BPE":
        from tokenizers import Tokenizer as HFTokenizer

        try:
            hf = HFTokenizer.from_str(text)
        except Exception as error:  # the Rust side raises plain Exception
            raise DataError(
                f"tokenizer file '{path}' is not a valid tokenizers JSON: {error}"
            ) from error
        return BPETokenizer(hf)
    raise DataError(
        f'tokenizer file \'{path}\' is neither a byte tokenizer ({{"kind": "byte"}}) '
        "nor a byte-level BPE tokenizer"
    )


def build_tokenizer(
    kind: str,
    *,
    train_texts: Iterable[bytes | str] | None = None,
    vocab_size: int = 256,
) -> Tokenizer:
    """Builds a tokenizer of ``kind`` (``"byte"`` or ``"bpe"``).

    Args:
        kind: ``"byte"`` or ``"bpe"``.
        train_texts: Texts to learn BPE merges from; required for ``"bpe"``, ignored
            for ``"byte"``.
        vocab_size: BPE vocabulary size (see :meth:`BPETokenizer.train`); ignored for
            ``"byte"``, whose size is always 256.

    Raises:
        DataError: If ``kind`` is unknown, or BPE lacks texts or gets a bad vocab_size.
    """
    if kind == "byte":
        return ByteTokenizer()
    if kind == "bpe":
        if train_texts is None:
            raise DataError("tokenizer 'bpe' needs train_texts to learn its merges from")
        return BPETokenizer.train(train_texts, vocab_size=vocab_size)
    raise DataError(f"tokenizer kind '{kind}' is not one of {', '.join(TOKENIZER_KINDS)}")
