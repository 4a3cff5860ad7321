"""The checked-dataclass base every config derives from, and building configs from tables."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from memtx.errors import ConfigError

__all__ = ["Checked", "construct", "section_tables"]


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` fits the annotation ``tp`` (the subset of typing our configs use)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
    if tp is float:
        # An int is a fine float (``lr = 1`` in TOML); a bool is not.
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def read_json_table(path: Path, *, name: str) -> dict[str, Any]:
    """The JSON object in ``path``; a one-line :class:`ConfigError` naming ``name`` when the
    file cannot be read, is not JSON, or holds something other than an object."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{name} cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{name} does not hold a table")
    return raw


class Checked:
    """Mixin: type-check every field on creation, then run the class's own ``_validate``.

    Besides its type, every field is checked for values no config can mean: a float that
    is NaN or infinite (unless the field is named in ``infinite_ok``; NaN never passes),
    and a string that is empty or only spaces.
    """

    section: ClassVar[str] = ""
    #: float fields for which an infinite value means something (NaN is never allowed)
    infinite_ok: ClassVar[frozenset[str]] = frozenset()

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, list):  # TOML arrays arrive as lists; configs hold tuples
                value = tuple(value)
                object.__setattr__(self, f.name, value)
            tp = hints[f.name]
            if not _matches(value, tp):
                raise ConfigError(f"{self._key(f.name)} must be {_type_name(tp)}, got {value!r}")
            if tp is float and isinstance(value, int):
                object.__setattr__(self, f.name, float(value))
            self._check_finite_and_nonempty(f.name, value)
        self._validate()

    def _check_finite_and_nonempty(self, name: str, value: Any) -> None:
        """Reject NaN/inf floats and blank strings in ``value`` (or in the tuple it is)."""
        items = value if isinstance(value, tuple) else (value,)
        for item in items:
            if isinstance(item, float) and not math.isfinite(item):
                if name in self.infinite_ok and math.isnan(item):
                    raise ConfigError(f"{self._key(name)} must be a number or inf, got {value!r}")
                if name not in self.infinite_ok:
                    raise ConfigError(f"{self._key(name)} must be a finite number, got {value!r}")
            if isinstance(item, str) and not item.strip():
                raise ConfigError(f"{self._key(name)} must not be empty, got {value!r}")

    def _key(self, name: str) -> str:
        return f"{self.section}.{name}" if self.section else name

    def _validate(self) -> None:
        """Range and combination checks; overridden by each config."""

    def _at_least(self, name: str, minimum: float) -> None:
        value = getattr(self, name)
        if value < minimum:
            raise ConfigError(f"{self._key(name)} must be >= {minimum}, got {value}")

    def _check_optimization(self) -> None:
        """lr, min_lr_ratio, weight_decay, grad_clip, betas and device of a training config."""
        cfg: Any = self  # TrainConfig or a pre-training config: both have these fields
        lr, betas, device = cfg.lr, cfg.betas, cfg.device
        if not lr > 0:
            raise ConfigError(f"{self._key('lr')} must be > 0, got {lr}")
        self._in_range("min_lr_ratio", 0.0, 1.0, high_open=False)
        self._at_least("weight_decay", 0.0)
        self._at_least("grad_clip", 0.0)
        if any(not 0.0 <= beta < 1.0 for beta in betas):
            raise ConfigError(f"{self._key('betas')} must be in [0, 1), got {betas}")
        if not (device in ("cpu", "cuda", "auto") or device.startswith("cuda:")):
            raise ConfigError(
                f"{self._key('device')} must be cpu, cuda, cuda:N or auto, got {device!r}"
            )

    def _in_range(self, name: str, low: float, high: float, *, high_open: bool = True) -> None:
        value = getattr(self, name)
        ok = low <= value < high if high_open else low <= value <= high
        if not ok:
            bracket = ")" if high_open else "]"
            raise ConfigError(f"{self._key(name)} must be in [{low}, {high}{bracket}, got {value}")


def _known_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def construct(cls: type, values: dict[str, Any], *, section: str) -> Any:
    known = _known_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"{section}." if section else ""
        raise ConfigError(f"unknown key {where}{unknown[0]} (known: {', '.join(known)})")
    return cls(**values)


def section_tables(
    raw: Any, *, sections: Sequence[str], what: str = "a config"
) -> dict[str, dict[str, Any]]:
    """``raw``'s tables (copies), after checking each is a known section and a table.

    Raises:
        ConfigError: ``raw`` is not a table, a section is unknown or not a table.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} must be a table of {', '.join(sections)}")
    unknown = sorted(set(raw) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section {unknown[0]!r} (known: {', '.join(sections)})")
    tables: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        tables[key] = dict(value)
    return tables
