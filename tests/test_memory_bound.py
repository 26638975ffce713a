"""Memory stays bounded while 1,000,000 distinct tag sets (or metric names) are recorded.

Each case runs ``memory_probe.py`` in a fresh interpreter, so that the peak RSS it reports grew with what
it recorded and nothing else. The bounds are the ones stated in README "Memory": without them, a million
series would take about a gigabyte (some 1.1 kB each on the fast path, more on the SDK path).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import clean_env

MIB = 1024  # KiB


def probe(case: str) -> dict[str, Any]:
    script = Path(__file__).with_name("memory_probe.py")
    done = subprocess.run(
        [sys.executable, str(script), case], env=clean_env(), capture_output=True, text=True, timeout=110, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_million_tag_sets_under_the_default_cardinality_limit_grow_peak_rss_by_under_16_mib() -> None:
    found = probe("limited")
    assert found["counted"] == found["observed"] == 1_000_000  # every recording kept (overflow included)
    assert found["series"] == 1 + 2 * (2000 + 1)  # warm-up; a counter and a histogram: limit + overflow series
    assert found["growth_kib"] < 16 * MIB, found


def test_a_million_tag_sets_with_idle_eviction_grow_peak_rss_by_under_64_mib() -> None:
    found = probe("evicting")
    assert found["exported"] == 1_000_000  # each tag set was exported before it was evicted
    assert found["overflow_points"] == 0  # freed slots were reused: nothing fell into the overflow series
    assert found["most_series_held"] <= 2 * 10_000  # this batch and the previous one, no more
    assert found["growth_kib"] < 64 * MIB, found
    assert found["growth_kib"] - found["growth_at_half_kib"] < 4 * MIB, found  # flat: the second half adds ~nothing


def test_a_million_metric_names_stop_at_the_metric_limit_and_grow_peak_rss_by_under_64_mib() -> None:
    found = probe("names")
    assert found["metrics"] == found["instruments"] == 10_000
    assert found["dropped"] == 1_000_000 + 1 - 10_000  # the warm-up metric is one of the 10,000
    assert found["growth_kib"] < 64 * MIB, found
