"""Option types and parsers shared by the CLI's verbs.

Each parser checks one option's value and ends the command with exit code 2 and a line
naming the option (via :func:`memtx.cli.common.fail`) when the value is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Optional

import typer

from memtx.cli.common import fail

__all__ = ["SetOption", "at_least", "check_device", "int_list", "name_list"]

SetOption = Annotated[
    Optional[list[str]],
    typer.Option("--set", help="Override a config value: section.key=value (repeatable)."),
]


def int_list(text: str, *, name: str, minimum: int = 1) -> list[int]:
    """The comma-separated integers of option ``name``, each >= ``minimum`` (at least one)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        fail(f"{name} expects comma-separated integers, got {text!r}")
    if not values or min(values) < minimum:
        fail(f"{name} expects integers >= {minimum}, got {text!r}")
    return values


def name_list(text: str, *, name: str, known: Sequence[str]) -> list[str]:
    """The comma-separated names of option ``name``: at least one, each one of ``known``."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        fail(f"{name} expects at least one of {', '.join(known)}, got {text!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        fail(f"{name}: unknown {unknown[0]!r} (known: {', '.join(known)})")
    return names


def at_least(value: int | None, minimum: int, *, name: str) -> None:
    """Exit 2 unless option ``name`` is unset (None) or >= ``minimum``."""
    if value is not None and value < minimum:
        fail(f"{name} must be >= {minimum}, got {value}")


def check_device(device: str) -> None:
    """Exit 2 unless ``--device`` is cpu, or cuda / cuda:N with that GPU present."""
    index = device.removeprefix("cuda:")
    if device not in ("cpu", "cuda") and not (device.startswith("cuda:") and index.isdigit()):
        fail(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device != "cpu":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (int(index) if index.isdigit() else 0) >= count:
            fail(f"--device is {device!r} but this machine has {count} CUDA GPU(s)")
