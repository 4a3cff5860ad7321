"""Shared test settings: deterministic, single-threaded-friendly, offline."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# Property tests draw the same examples on every run: CI stays reproducible, and a
# failure found once is found again.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("memtx", derandomize=True, deadline=None)
_hypothesis_settings.load_profile("memtx")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow and multi-process tests first (a stable sort, the same on every worker).

    Under ``pytest -n 2`` a long test that starts last sets the wall time on its own; the
    short ones then fill the other worker (``--dist worksteal`` in the Makefile).
    """
    items.sort(
        key=lambda item: (
            item.get_closest_marker("slow") is None
            and item.get_closest_marker("distributed") is None
        )
    )
