"""Token streams: documents to one token array, and that array to training batches.

:class:`StreamLoader` follows Transformer-XL: the token array of a split is cut into
``batch_size * world_size`` contiguous streams, and each batch is the next window of every
stream, so a recurrent memory carried from one batch to the next sees continuous text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from memtx.errors import DataError

if TYPE_CHECKING:
    from memtx.data.corpora import Document
    from memtx.data.tokenizers import Tokenizer


def encode_documents(
    docs: list[Document], tokenizer: Tokenizer, *, separator: bytes = b"\n\n"
) -> np.ndarray:
    """Encodes ``docs`` in order into one 1-D ``np.uint16`` token array.

    Each document is encoded on its own (so one document's tokens never depend on its
    neighbour) and consecutive documents are joined by the encoded ``separator``.
    An empty list gives an empty array.
    """
    parts: list[np.ndarray] = []
    separator_ids = tokenizer.encode(separator) if separator else None
    for index, doc in enumerate(docs):
        if index and separator_ids is not None:
            parts.append(separator_ids)
        parts.append(tokenizer.encode(doc.data))
    if not parts:
        return np.zeros(0, dtype=np.uint16)
    return np.concatenate(parts).astype(np.uint16, copy=False)


def _check_tokens(tokens: np.ndarray) -> np.ndarray:
    """Returns ``tokens`` as a 1-D integer array or raises DataError."""
    array = np.asarray(tokens)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) or array.size == 0):
        raise DataError(
            f"tokens must be a 1-D integer array, got shape {array.shape} and dtype {array.dtype}"
        )
    return array


def _check_positive(**values: int) -> None:
    """Raises DataError naming the first value that is not a positive int."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class Batch:
    """One training batch.

    Attributes:
        tokens: int64 tensor [batch_size, window + 1]; inputs are ``tokens[:, :-1]`` and
            targets ``tokens[:, 1:]``.
        reset: True when the rows start again from the beginning of their streams (first
            batch, and after every wrap), so any carried memory must be cleared.
    """

    tokens: torch.Tensor
    reset: bool


class StreamLoader:
    """Endless batches of contiguous windows over ``batch_size * world_size`` streams.

    The token array is cut into ``batch_size * world_size`` contiguous rows of equal
    length (the tail remainder is dropped). Rank ``r`` owns rows ``r * batch_size`` to
    ``(r + 1) * batch_size - 1``, so the ranks' batches stacked in rank order equal the
    batch of a single process with ``batch_size * world_size`` rows. Each batch is columns
    ``[position, position + window + 1)`` of the rank's rows, and ``position`` then moves by
    ``window``: consecutive batches overlap by one token, the last target of one batch
    being the first input of the next. When fewer than ``window + 1`` tokens remain, the
    loader wraps to position 0 and counts an epoch.

    Attributes:
        position: Column where the next batch starts.
        epoch: Number of completed passes over the rows.
        steps_per_epoch: Batches in one pass.
        row_length: Tokens in each row.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        *,
        batch_size: int,
        window: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        """Lays out ``tokens`` for ``rank`` of ``world_size`` processes.

        Args:
            tokens: 1-D integer token array of the whole split (not copied).
            batch_size: Rows per batch on this rank.
            window: Tokens predicted per row and batch.
            rank: This process's index, in ``[0, world_size)``.
            world_size: Number of processes sharing the data.

        Raises:
            DataError: If an argument is out of range or the rows are shorter than
                ``window + 1`` tokens.
        """
        tokens = _check_tokens(tokens)
        _check_positive(batch_size=batch_size, window=window, world_size=world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise DataError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        rows = batch_size * world_size
        row_length = len(tokens) // rows
        if row_length < window + 1:
            raise DataError(
                f"stream data too short: {len(tokens)} tokens cut into {rows} rows give "
                f"{row_length} tokens per row, fewer than window + 1 = {window + 1}"
            )
        self.batch_size = batch_size
        self.window = window
        self.rank = rank
        self.world_size = world_size
        self.row_length = row_length
        self.steps_per_epoch = (row_length - 1) // window
        # A view of the caller's array; rows are widened to int64 one window at a time,
        # which keeps memory at the size of the (uint16) split.
        grid = tokens[: rows * row_length].reshape(rows, row_length)  # [rows, row_length]
        self._rows = grid[rank * batch_size : (rank + 1) * batch_size]  # [batch_size, row_length]
        self.position = 0
        self.epoch = 0
        self._reset_next = True

    def next_batch(self) -> Batch:
        """Returns the next window of every row and advances ``position`` by ``window``."""
        if self.position + self.window + 1 > self.row_length:
            self.position = 0
            self.epoch += 1
            self._reset_next = True
        chunk = self._rows[:, self.position : self.position + self.window + 1]
        tokens = torch.from_numpy(chunk.astype(np.int64))  # [batch_size, window + 1]
        batch = Batch(tokens=tokens, reset=self._reset_next)
        self.position += self.window
        self._reset_next = False
        return batch

    def state_dict(self) -> dict[str, int]:
        """Returns what :meth:`load_state_dict` needs to continue with the same batches."""
        return {
            "position": self.position,
            "epoch": self.epoch,
            "reset_next": int(self._reset_next),
            "row_length": self.row_length,
            "rows": self.batch_size * self.world_size,
            "window": self.window,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores a :meth:`state_dict` taken from a loader with the same data and layout.

        Raises:
            DataError: If keys are missing or the layout (rows, row length, window) differs.
        """
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise DataError(f"stream loader state lacks {', '.join(missing)}")
        for key in ("rows", "row_length", "window"):
            if int(state[key]) != expected[key]:
                raise DataError(
                    f"stream loader state has {key}={state[key]}, but this loader has "
                    f"{key}={expected[key]}; expected the same data and layout"
                )
        position = int(state["position"])
        if not 0 <= position <= self.row_length:
            raise DataError(
                f"stream loader state has position={position}; expected [0, {self.row_length}]"
            )
        self.position = position
        self.epoch = int(state["epoch"])
        self._reset_next = bool(state["reset_next"])

    def __repr__(self) -> str:
        return (
            f"StreamLoader(batch_size={self.batch_size}, window={self.window}, "
            f"rank={self.rank}, world_size={self.world_size}, row_length={self.row_length}, "
            f"position={self.position}, epoch={self.epoch})"
        )


def as_rows(tokens: np.ndarray, *, rows: int) -> torch.Tensor:
    """Cuts ``tokens`` into ``rows`` contiguous equal-length rows (tail dropped).

    If the data is too short for every row to hold 2 tokens (one input, one target),
    fewer rows are made, at least one.

    Returns:
        int64 tensor [rows', n] with ``rows' <= rows`` and ``n >= 2``.

    Raises:
        DataError: If ``rows`` is not positive or there are fewer than 2 tokens.
    """
    tokens = _check_tokens(tokens)
    _check_positive(rows=rows)
    if len(tokens) < 2:
        raise DataError(f"as_rows needs at least 2 tokens, got {len(tokens)}")
    rows = min(rows, len(tokens) // 2)
    length = len(tokens) // rows
    return torch.from_numpy(tokens[: rows * length].astype(np.int64).reshape(rows, length))
