"""The memory benchmark's own logic: the largest-batch search and the stop-at-limit watchdog."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_memory import largest_fitting, run_watched  # noqa: E402


@pytest.mark.parametrize("capacity", [0, 15, 16, 17, 40, 100, 1000, 5000])
def test_largest_fitting_finds_the_capacity_to_the_granularity(capacity: int) -> None:
    tried = []

    def fits(batch: int) -> bool:
        tried.append(batch)
        return batch <= capacity

    found = largest_fitting(fits, 16, 4096, granularity=8)
    if capacity < 16:
        assert found == 0
    else:
        assert found <= capacity
        assert capacity - found < 8 or found == 4096
    assert len(tried) <= 20


def test_run_watched_stops_a_process_that_grows_past_the_limit() -> None:
    grow = "import time\nx = []\nwhile True:\n    x.append(bytearray(32 * 2**20)); time.sleep(0.05)"
    result = run_watched([sys.executable, "-c", grow], rss_limit_mb=300)
    assert result["error"].startswith("stopped")
    assert result["exceeded_mb"] > 300


def test_run_watched_reads_the_last_json_line() -> None:
    result = run_watched([sys.executable, "-c", "print('noise'); print('{\"peak_rss_mb\": {\"weight\": 1.0}}')"],
                         rss_limit_mb=10_000)
    assert result["peak_rss_mb"] == {"weight": 1.0}
