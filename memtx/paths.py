"""Output folders checked before any work starts (light: the CLI imports it eagerly)."""

from __future__ import annotations

import os
from pathlib import Path

from memtx.errors import ConfigError

__all__ = ["check_writable_folder"]


def check_writable_folder(folder: Path, *, what: str = "--out") -> None:
    """Raise :class:`ConfigError` unless ``folder`` is, or can be made, a writable folder.

    Checked before any work and without creating anything: ``folder`` must not be a file,
    and its nearest existing ancestor must be a folder this process may write into.
    ``what`` names the folder in the message (the option that gave it).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{what} {folder} is a file, not a folder")
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {folder} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {folder} cannot be written: {existing} is not writable")
