"""Sessions: a context per session, in RAM up to a bound, every one on disk as a snapshot.

Every change of a session (creation, a completed append, a generation that keeps its
text) is written through to ``<state_dir>/<id>.mem`` atomically before the request is
answered, so a killed server loses at most the request in flight, and a restarted one
finds every session where its last completed request left it. RAM holds the
``max_in_memory`` most recently used contexts; the others are dropped from RAM (their
snapshot on disk is current: spilling costs no write) and loaded back on use.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path

from memtx import snapshot
from memtx.checkpoint import atomic_write_bytes
from memtx.errors import DataError
from memtx.models.protocol import SegmentModel
from memtx.reading import Context

__all__ = ["SESSION_ID", "SessionStore", "UnknownSession"]

#: what a session id may be (it names a file)
SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_SUFFIX = ".mem"


class UnknownSession(DataError):
    """No session of that id."""


class SessionStore:
    """Contexts by session id (thread-safe; see the module docstring).

    Args:
        root: the folder of the snapshots (created; sessions found there are served).
        model: the served model; snapshots of another model are refused.
        identity: ``snapshot.identify(model)``.
        max_in_memory: contexts kept in RAM at most (>= 1).
    """

    def __init__(
        self,
        root: Path,
        *,
        model: SegmentModel,
        identity: snapshot.ModelIdentity,
        max_in_memory: int,
    ) -> None:
        if max_in_memory < 1:
            raise DataError(f"--max-sessions-in-memory must be >= 1, got {max_in_memory}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(f".*{_SUFFIX}.tmp-*"):  # left by a killed writer
            stale.unlink(missing_ok=True)
        self.model, self.identity, self.max_in_memory = model, identity, max_in_memory
        self._ram: OrderedDict[str, Context] = OrderedDict()
        self._known = {p.name[: -len(_SUFFIX)] for p in self.root.glob(f"*{_SUFFIX}")}
        self._lock = threading.Lock()
        self.loads = 0  # contexts loaded back from disk

    @staticmethod
    def check_id(session_id: str) -> str:
        if not SESSION_ID.match(session_id):
            raise DataError(f"session id {session_id!r} must be 1-64 letters, digits, '_' or '-'")
        return session_id

    def _path(self, session_id: str) -> Path:
        return self.root / f"{self.check_id(session_id)}{_SUFFIX}"

    def ids(self) -> list[str]:
        with self._lock:
            return sorted(self._known)

    def exists(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._known

    def in_memory(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._ram

    @property
    def count_in_memory(self) -> int:
        with self._lock:
            return len(self._ram)

    def get(self, session_id: str) -> Context:
        """The session's context (loaded from its snapshot if it was spilled).

        Raises:
            UnknownSession: no such session.
            SnapshotError: its snapshot is damaged or of another model.
        """
        with self._lock:
            if session_id in self._ram:
                self._ram.move_to_end(session_id)
                return self._ram[session_id]
            if session_id not in self._known:
                raise UnknownSession(f"no session {session_id!r}")
        saved = snapshot.load(self._path(session_id), model=self.model, identity=self.identity)
        context = Context(saved.memory, saved.pending, saved.tokens_read)
        with self._lock:
            self.loads += 1
            self._keep(session_id, context)
        return context

    def put(self, session_id: str, context: Context) -> None:
        """Write the session's snapshot (atomically), then keep its context in RAM."""
        data = snapshot.to_bytes(context, model=self.model, identity=self.identity)
        self.put_bytes(session_id, data, context)

    def put_bytes(self, session_id: str, data: bytes, context: Context) -> None:
        """:meth:`put` with the snapshot's bytes already made (an upload)."""
        atomic_write_bytes(self._path(session_id), data)
        with self._lock:
            self._known.add(session_id)
            self._keep(session_id, context)

    def snapshot_bytes(self, session_id: str) -> bytes:
        """The session's snapshot file (current: every change is written through)."""
        if not self.exists(session_id):
            raise UnknownSession(f"no session {session_id!r}")
        return self._path(session_id).read_bytes()

    def delete(self, session_id: str) -> None:
        with self._lock:
            if session_id not in self._known:
                raise UnknownSession(f"no session {session_id!r}")
            self._known.discard(session_id)
            self._ram.pop(session_id, None)
        self._path(session_id).unlink(missing_ok=True)

    def _keep(self, session_id: str, context: Context) -> None:
        """Hold ``context`` in RAM as the most recent; spill the oldest beyond the bound."""
        self._ram[session_id] = context
        self._ram.move_to_end(session_id)
        while len(self._ram) > self.max_in_memory:
            self._ram.popitem(last=False)
