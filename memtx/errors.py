"""Errors raised at memtx's boundaries: each names the wrong thing and what was expected."""

from __future__ import annotations


class MemtxError(Exception):
    """Base class of every error memtx raises for bad input (the CLI exits with code 2)."""


class ConfigError(MemtxError, ValueError):
    """A configuration value, key or combination that cannot work."""


class DataError(MemtxError, ValueError):
    """A corpus, file, token tensor or memory value that cannot be used."""
