"""The benchmarks' shared measurements."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from memtx.bench.common import (
    binned_distances,
    distance_markdown,
    markdown_table,
    report_worker,
    run_json_worker,
)


def test_peak_rss_window_forgets_an_earlier_peak() -> None:
    # In a fresh process: a 400 MB peak, a new window, then a 80 MB one.
    code = """
import numpy as np
from memtx.bench.common import peak_rss_mb, reset_peak_rss
a = np.ones(50_000_000); del a
before = peak_rss_mb()
if not reset_peak_rss():
    print("unsupported"); raise SystemExit
base = peak_rss_mb()
b = np.ones(10_000_000); b += 1; del b
print(before, base, peak_rss_mb())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    if out.stdout.strip() == "unsupported":
        pytest.skip("no /proc/self/clear_refs here")
    before, base, after = map(float, out.stdout.split())
    assert before - base > 300  # the 400 MB peak is forgotten
    assert 70 < after - base < 110  # the 80 MB one is seen


def test_markdown_table() -> None:
    assert markdown_table(["a", "b"], [[1, 2]]) == "| a | b |\n|---|---|\n| 1 | 2 |\n"


def test_a_worker_reports_its_result_or_its_failure(capsys) -> None:
    assert report_worker(lambda: {"tokens_per_s": 12.5}) == 0
    assert json.loads(capsys.readouterr().out) == {"tokens_per_s": 12.5}

    def broken() -> dict:
        raise ValueError("segment_len must be >= 1")

    assert report_worker(broken) == 1
    assert json.loads(capsys.readouterr().out) == {
        "status": "failed (ValueError: segment_len must be >= 1)"
    }


def test_a_failing_worker_process_becomes_a_failed_row() -> None:
    # A real worker entry point in a fresh process, asked for a model that does not exist.
    args = ["--model=no-such-model", "--length=64"]
    result = run_json_worker("memtx.bench.scaling", args, timeout_s=120, threads=1)
    assert result["status"].startswith("failed (")
    assert "no-such-model" in result["status"]


def test_distances_are_binned_and_popped_from_the_result() -> None:
    result = {"exact_match": 0.5, "samples_back_0": 2.0, "exact_match_back_0": 1.0}
    result |= {"samples_back_2": 1.0, "exact_match_back_2": 0.0}
    result |= {"samples_back_3": 1.0, "exact_match_back_3": 1.0}
    result |= {"samples_back_300": 4.0, "exact_match_back_300": 0.25}
    assert binned_distances(result) == {"0": [2, 2], "2-3": [1, 2], "256+": [1, 4]}
    assert result == {"exact_match": 0.5}


def test_distance_markdown_has_a_column_per_bin_that_occurs() -> None:
    table = distance_markdown(
        [("a", {"0": [1, 2], "256+": [0, 3]}), ("b", {"1": [1, 1]})], first="m"
    )
    lines = table.splitlines()
    assert lines[0] == "| m | 0 | 1 | 256+ |"
    assert lines[2] == "| a | 0.50 (2) |  | 0.00 (3) |" and lines[3] == "| b |  | 1.00 (1) |  |"
