"""THE config loader: TOML presets and ``--set section.key=value`` overrides, for every run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib

from memtx.config.run import SECTIONS, RunConfig
from memtx.errors import ConfigError

__all__ = ["apply_overrides", "load_config_tables", "load_run_config", "parse_overrides"]


def _parse_value(text: str) -> Any:
    """A ``--set`` value: a TOML literal (``3``, ``1e-3``, ``true``, ``[1, 2]``) or a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_overrides(
    items: Sequence[str], *, sections: Sequence[str] = SECTIONS
) -> dict[str, dict[str, Any]]:
    """Turn ``["train.lr=1e-3", "model.name=rmt"]`` into ``{"train": {"lr": 0.001}, ...}``."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        if section not in sections:
            raise ConfigError(f"unknown section in --set {item!r} (known: {', '.join(sections)})")
        out.setdefault(section, {})[name] = _parse_value(value.strip())
    return out


def load_config_tables(
    path: Path | str | None, *, overrides: Sequence[str] = (), sections: Sequence[str]
) -> dict[str, Any]:
    """THE config loader: a TOML preset (None: empty) with ``--set`` overrides applied.

    Every kind of run reads its config through this; each maps the tables it gets to
    its dataclasses (:meth:`RunConfig.from_dict`, ``ElectraRun.from_dict``).

    Raises:
        ConfigError: missing or unreadable file, TOML syntax error, bad override.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file {str(path)!r} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {str(path)!r} cannot be read: {exc}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return apply_overrides(raw, overrides, sections=sections)


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[str], *, sections: Sequence[str]
) -> dict[str, Any]:
    """``raw`` (nested tables, changed in place and returned) with ``--set`` overrides.

    Raises:
        ConfigError: a bad override, or a section of ``raw`` that is not a table.
    """
    for section, values in parse_overrides(overrides, sections=sections).items():
        current = raw.setdefault(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{section} must be a table")
        current.update(values)
    return raw


def load_run_config(
    path: Path | str | None, *, overrides: Sequence[str] | None = None
) -> RunConfig:
    """Read a TOML preset (or the defaults when ``path`` is None) and apply ``--set`` overrides.

    Raises:
        ConfigError: missing file, TOML syntax error, unknown key, bad type or value.
    """
    return RunConfig.from_dict(
        load_config_tables(path, overrides=overrides or (), sections=SECTIONS)
    )
