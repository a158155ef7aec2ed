"""The benchmark suite's own parts work: every adapter runs a scenario against
a real server, the floor baselines keep the promises they stand for, and the
report turns results into tables and target lines. (Timing is not checked
here: figures belong to benchmarks/run.py.)"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import peers  # noqa: E402
import report  # noqa: E402
import scenarios  # noqa: E402

# psycopg2-pool 1.2 has our import name: it only runs from its own directory,
# in a process of its own, which run.py sets up (and which needs PyPI).
IN_PROCESS = sorted(key for key, adapter in peers.ADAPTERS.items() if not adapter.isolated)


@pytest.mark.parametrize("key", IN_PROCESS)
def test_every_adapter_runs_s2(key: str, dsn: str) -> None:
    adapter = peers.ADAPTERS[key]()
    result = scenarios.s2_select_1(adapter, {"dsn": dsn, "repeats": 1, "repeat_seconds": 0.005})
    assert result["us_per_op"] > 0
    assert result["ops_per_repeat"] >= 1


@pytest.mark.parametrize("key", ["ours", "ours-with", "bare-fifo", "bare-fifo-handle"])
def test_contended_scenario_serves_every_thread(key: str, dsn: str) -> None:
    params = {"dsn": dsn, "threads": 6, "size": 2, "warmup": 0.1, "window": 0.3, "windows": 1}
    result = scenarios.s3_select_1_contended(peers.ADAPTERS[key](), params)
    assert result["errors"] == 0
    assert result["starved"] == 0
    assert result["ops_per_s"] > 0
    assert result["wait_p50_us"] <= result["wait_p99_us"] <= result["wait_max_us"]


def test_bare_handle_is_dead_once_released(dsn: str) -> None:
    adapter = peers.ADAPTERS["bare-fifo-handle"]()
    with peers.opened(adapter, dsn, 1, 1):
        handle = adapter.acquire()
        assert handle.cursor() is not None
        adapter.release(handle)
        with pytest.raises(RuntimeError, match="returned"):
            handle.cursor()
        with pytest.raises(KeyError):
            adapter.release(handle)  # found again on return: a second return is refused


def _document(results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    keys = {pool for scenario in results.values() for pool in scenario}
    return {
        "meta": {
            "labels": {key: peers.ADAPTERS[key].label for key in peers.ADAPTERS},
            "families": {key: peers.ADAPTERS[key].family for key in peers.ADAPTERS},
            "drivers": {key: peers.ADAPTERS[key].driver for key in keys},
        },
        "scenarios": {
            name: {"title": name, "params": {"size": 8}, "results": pools}
            for name, pools in results.items()
        },
    }


def _s2_line(doc: dict[str, Any]) -> str:
    return next(c.line() for c in report.targets(doc) if c.text.startswith("S2 ours "))


def test_a_failed_s2_target_shows_the_floors_measured_beside_it() -> None:
    doc = _document(
        {
            "S2": {
                "ours": {"us_per_op": 13.0},
                "no-pool": {"us_per_op": 10.0},
                "bare-fifo": {"us_per_op": 10.5},
                "bare-fifo-handle": {"us_per_op": 12.0},
            }
        }
    )
    line = _s2_line(doc)
    assert line.startswith("FAIL")
    assert "1.300x" in line
    assert "bare FIFO pool (no handle) 1.050x" in line
    assert "bare FIFO pool + wrapt handle 1.200x" in line


def test_a_passed_target_carries_no_floors() -> None:
    doc = _document(
        {
            "S2": {
                "ours": {"us_per_op": 10.5},
                "no-pool": {"us_per_op": 10.0},
                "bare-fifo-handle": {"us_per_op": 12.0},
            }
        }
    )
    line = _s2_line(doc)
    assert line.startswith("PASS")
    assert "in this run" not in line


def test_spread_is_max_wait_less_p50_in_ms() -> None:
    doc = _document({"S3": {"ours": {"wait_p50_us": 800.0, "wait_max_us": 2300.0}}})
    assert report.spread_cell(doc, "S3", "ours") == "1.50"
    assert report.spread_cell(doc, "S3", "bare-fifo") == report.MISSING
