"""The benchmark suite's own parts work: every adapter runs a scenario against
a real server, the floor baselines keep the promises they stand for, and the
report turns results into tables and target lines. (Timing is not checked
here: figures belong to benchmarks/run.py.)"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import psycopg2.extensions
import psycopg2.extras
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import many_clients  # noqa: E402
import peers  # noqa: E402
import report  # noqa: E402
import s7_report  # noqa: E402
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


def test_bare_handles_cursors_refuse_every_use_once_the_handle_went_back(dsn: str) -> None:
    """The floor pays for the same per-cursor check ours pays to refuse stale cursors."""
    adapter = peers.ADAPTERS["bare-fifo-handle"]()
    with peers.opened(adapter, dsn, 1, 1):
        handle = adapter.acquire()
        cur = handle.cursor()
        named = handle.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        assert isinstance(cur, psycopg2.extensions.cursor)
        assert isinstance(named, psycopg2.extras.RealDictCursor)
        assert type(named) is not psycopg2.extras.RealDictCursor  # a checked subclass
        assert type(handle.cursor()) is type(cur)  # made once per class asked for
        cur.execute("SELECT 1")
        assert cur.connection is handle.__wrapped__
        named.execute("SELECT 2 AS two")
        adapter.release(handle)
        uses = [
            lambda: cur.execute("SELECT 1"),
            cur.fetchone,
            cur.fetchall,
            lambda: cur.fetchmany(1),
            lambda: cur.mogrify("SELECT 1"),
            lambda: next(cur),
            lambda: cur.connection,
            cur.close,
            lambda: cur.__enter__(),
            named.fetchone,
        ]
        for use in uses:
            with pytest.raises(RuntimeError, match="returned"):
                use()
        # The connection went back to the pool untouched: the next holder's cursor works.
        again = adapter.acquire()
        fresh = again.cursor()
        fresh.execute("SELECT 3")
        assert fresh.fetchone() == (3,)
        adapter.release(again)


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


def _line(doc: dict[str, Any], *words: str) -> str:
    """The one S1-S6 target line whose text has all ``words``."""
    found = [c.line() for c in report.targets(doc) if all(w in c.text for w in words)]
    assert len(found) == 1, found
    return found[0]


GETCONN, WITH = "ours ConnectionPool getconn", "ours ConnectionPool with"


def test_the_targets_are_issue_19s_and_only_those() -> None:
    texts = [c.text for c in report.targets(_document({}))]
    assert len(texts) == 24
    assert all(c.passed is None for c in report.targets(_document({})))
    assert not any("every peer" in t or ("S3" in t and "fairness" in t) for t in texts)
    assert "S2 ours ConnectionPool getconn time per op vs psycopg2.pool Threaded <= 1.15x" in texts
    assert not any("S2 ours ConnectionPool with time per op" in t for t in texts)


def test_s1_targets_judge_the_ratios_and_a_failure_shows_the_floors() -> None:
    doc = _document(
        {
            "S1": {
                "ours-legacy": {"us_per_op": 1.05},
                "psycopg2-threaded": {"us_per_op": 1.0},
                "ours": {"us_per_op": 1.5},
                "psycopg_pool": {"us_per_op": 3.0},
                "ours-with": {"us_per_op": 2.5},
                "psycopg_pool-with": {"us_per_op": 5.0},
                "bare-fifo": {"us_per_op": 0.5},
                "bare-fifo-handle": {"us_per_op": 1.2},
            }
        }
    )
    legacy = _line(doc, "S1", "ThreadedConnectionPool")
    assert legacy.startswith("PASS") and "<= 1.05x" in legacy and "1.050x" in legacy
    getconn = _line(doc, "S1", GETCONN)
    assert getconn.startswith("PASS") and "<= 0.50x" in getconn and "in this run" not in getconn
    with_ = _line(doc, "S1", WITH)
    assert with_.startswith("FAIL") and "<= 0.40x" in with_ and "0.500x" in with_
    # The floors' own ratio to psycopg_pool's with, in this run.
    assert "bare FIFO pool (no handle) 0.100x" in with_
    assert "bare FIFO pool + wrapt handle 0.240x" in with_

    doc["scenarios"]["S1"]["results"]["ours-legacy"]["us_per_op"] = 1.06
    legacy = _line(doc, "S1", "ThreadedConnectionPool")
    # Ours hands out raw connections there: the floor is the pool with no handle.
    assert legacy.startswith("FAIL") and "bare FIFO pool (no handle) 0.500x" in legacy
    assert "wrapt handle" not in legacy.split(":", 1)[1]


def _s2(ours: float, ours_with: float, threaded: float = 15.0) -> dict[str, Any]:
    return _document(
        {
            "S2": {
                "ours": {"us_per_op": ours},
                "ours-with": {"us_per_op": ours_with},
                "no-pool": {"us_per_op": 10.0},
                "psycopg2-threaded": {"us_per_op": threaded},
                "bare-fifo": {"us_per_op": 10.5},
                "bare-fifo-handle": {"us_per_op": 12.0},
            }
        }
    )


def test_s2_share_is_the_pools_us_over_no_pool_against_the_handle_floors() -> None:
    # Floor: 12 - 10 = 2 µs; 1.25x of it is 2.5 µs over no pool.
    doc = _s2(ours=12.5, ours_with=12.6)
    getconn = _line(doc, "S2", GETCONN, "share")
    assert getconn.startswith("PASS") and "2.50 / 2.00 µs = 1.250x" in getconn
    with_ = _line(doc, "S2", WITH, "share")
    assert with_.startswith("FAIL") and "2.60 / 2.00 µs = 1.300x" in with_
    assert "(no pool 10.0 µs/op)" in with_
    assert "bare FIFO pool (no handle) 0.50 µs" in with_


def test_s2_share_against_a_floor_that_added_nothing_is_still_judged() -> None:
    doc = _s2(ours=10.4, ours_with=10.0)
    doc["scenarios"]["S2"]["results"]["bare-fifo-handle"]["us_per_op"] = 9.9
    assert _line(doc, "S2", GETCONN, "share").startswith("FAIL")
    with_ = _line(doc, "S2", WITH, "share")
    assert with_.startswith("PASS") and "added nothing measurable" in with_


def test_s2_getconn_within_115_percent_of_psycopg2s_threaded_pool() -> None:
    line = _line(_s2(ours=17.25, ours_with=20.0), "S2", "psycopg2.pool Threaded")
    assert line.startswith("PASS") and "1.150x" in line
    line = _line(_s2(ours=17.4, ours_with=20.0), "S2", "psycopg2.pool Threaded")
    assert line.startswith("FAIL") and "1.160x" in line
    assert "bare FIFO pool + wrapt handle 0.800x" in line


def _s3(**ours: float) -> dict[str, Any]:
    def row(ops: float, p50: float, p99: float, worst: float, **extra: Any) -> dict[str, Any]:
        waits = {"wait_p50_us": p50, "wait_p99_us": p99, "wait_max_us": worst}
        return {"ops_per_s": ops, "errors": 0, "starved": 0, **waits, **extra}

    mine = {"ops": 30_000.0, "p50": 800.0, "p99": 1_600.0, "worst": 2_000.0, **ours}
    return _document(
        {
            "S3": {
                "ours": row(mine["ops"], mine["p50"], mine["p99"], mine["worst"],
                            machine_stalls=1, machine_stall_max_ms=4.0),
                "psycopg_pool": row(20_000.0, 1_200.0, 2_400.0, 2_500.0, machine_stalls=0),
                "bare-fifo": row(36_000.0, 600.0, 1_800.0, 2_600.0),
                "bare-fifo-handle": row(34_000.0, 700.0, 1_400.0, 2_000.0),
            }
        }
    )  # fmt: skip


def test_s3_targets_pass_when_ours_is_fast_short_waited_and_even() -> None:
    doc = _s3()
    for words in (("errors",), ("starved",), ("throughput",), ("longest wait",), ("p99",)):
        assert _line(doc, "S3", GETCONN, *words).startswith("PASS"), words
    assert "1.500x" in _line(doc, "S3", GETCONN, "throughput")
    assert "1,600 / 800 µs = 2.000x" in _line(doc, "S3", GETCONN, "p99")


def test_s3_failures_show_the_floors_and_the_machines_stalls() -> None:
    doc = _s3(ops=29_000.0, p99=2_100.0, worst=3_000.0)
    doc["scenarios"]["S3"]["results"]["ours"].update(errors=2, starved=1)
    assert _line(doc, "S3", GETCONN, "errors").startswith("FAIL")
    assert _line(doc, "S3", GETCONN, "starved").startswith("FAIL")
    throughput = _line(doc, "S3", GETCONN, "throughput")
    assert throughput.startswith("FAIL") and "bare FIFO pool (no handle) 1.800x" in throughput
    longest = _line(doc, "S3", GETCONN, "longest wait")
    assert longest.startswith("FAIL") and "3,000 / 2,500 = 1.200x" in longest
    assert "ours ConnectionPool getconn 1, up to 4.0 ms" in longest
    assert "psycopg_pool getconn none" in longest
    assert "bare FIFO pool + wrapt handle 0.800x" in longest
    spread = _line(doc, "S3", GETCONN, "p99")
    assert spread.startswith("FAIL") and "2.625x" in spread
    assert "bare FIFO pool (no handle) 3.000x" in spread
    assert "bare FIFO pool + wrapt handle 2.000x" in spread


def _s4(ours: float, ceiling: float | None = 90.0) -> dict[str, Any]:
    doc = _document(
        {
            "S4": {
                "ours": {"pct_of_ideal": ours, "fairness": 1.5},
                "bare-fifo": {"pct_of_ideal": 85.5, "fairness": 1.4},
                "no-pool-8": {"pct_of_ideal": 88.2, "fairness": 150.0},
            }
        }
    )
    if ceiling is not None:
        doc["scenarios"]["S4"]["ceiling_pct"] = ceiling
    return doc


def test_s4_share_is_judged_against_the_ceiling_of_the_same_run() -> None:
    line = _line(_s4(87.3), "S4", GETCONN, "ceiling")
    assert line.startswith("PASS") and "87.3 / 90.0 = 97.00%" in line
    line = _line(_s4(87.2), "S4", GETCONN, "ceiling")
    assert line.startswith("FAIL") and "87.2 / 90.0 = 96.89%" in line
    assert "bare FIFO pool (no handle) 85.5 (95.0%)" in line
    assert "no pool, 8 threads 88.2 (98.0%)" in line
    assert _line(_s4(87.2, ceiling=None), "S4", GETCONN, "ceiling").startswith("n/a")
    assert _line(_s4(87.2), "S4", GETCONN, "fairness").startswith("PASS")


def test_spread_is_max_wait_less_p50_in_ms() -> None:
    doc = _document({"S3": {"ours": {"wait_p50_us": 800.0, "wait_max_us": 2300.0}}})
    assert report.spread_cell(doc, "S3", "ours") == "1.50"
    assert report.spread_cell(doc, "S3", "bare-fifo") == report.MISSING


# -- S7, many clients: every part runs, and its report is what the figures say --------

TINY_S7 = {
    "size": 2,
    "threads": [2, 6],
    "warmup": 0.05,
    "warmup_max": 0.5,
    "window": 0.1,
    "window_max": 0.2,
    "driver_seconds": 0.03,
    "timeout": 0.2,
    "timeout_threads": 20,
    "async_size": 1,
    "tasks": [40],
    "starts": ["staggered", "burst"],
    "batch": 10,
    "tick": 0.005,
    "memory_slots": [1, 2],
    "memory_repeats": 1,
    "memory_waiters": 50,
}


def test_s7_runs_every_part_on_ours(dsn: str) -> None:
    result = many_clients.run(peers.ADAPTERS["ours"](), {**TINY_S7, "dsn": dsn})
    assert [row["threads"] for row in result["threads"]] == [2, 6]
    for row in result["threads"]:
        assert row["starved"] == 0 and row["errors"] == 0 and row["stuck_threads"] == 0
        assert row["ops_per_s"] > 0
        assert row["wait_p50_us"] <= row["wait_p99_us"] <= row["wait_max_us"]
        assert row["cpu_us_per_op"] > 0
    timing_out = result["timing_out"]
    assert timing_out["outcomes"] == {"PoolTimeout": 20}
    assert timing_out["slowest_s"] >= 0.2
    assert [(row["start"], row["outcomes"]) for row in result["tasks"]] == [
        ("staggered", {"timed out": 40}),
        ("burst", {"timed out": 40}),
    ]
    assert all(row["slowest_s"] >= 0.2 for row in result["tasks"])
    # A waiting task costs at least a task awaiting a bare future; a pooled
    # connection at least the driver's own.
    waiting, idle = result["waiting"], result["idle_slot"]
    assert waiting["waiting_task_bytes"] > waiting["parked_task_bytes"] > 0
    assert idle["idle_slot_bytes"] > idle["driver_connection_bytes"] > 0


def test_bare_fifo_waiter_that_times_out_leaves_the_line(dsn: str) -> None:
    adapter = peers.ADAPTERS["bare-fifo"]()
    with peers.opened(adapter, dsn, 1, 1):
        assert adapter.acquire_within is not None
        held = adapter.acquire_within(1.0)
        with pytest.raises(TimeoutError):
            adapter.acquire_within(0.05)
        adapter.release(held)  # no one waits any more: it goes back among the idle
        assert adapter.acquire_within(0.05) is held


def _s7_document(ours_at_2000: float, slowest: float) -> dict[str, Any]:
    def threads(ops: list[float], starved: int = 0) -> list[dict[str, Any]]:
        return [
            {"threads": n, "ops_per_s": o, "us_per_op": 1e6 / o, "starved": starved,
             "errors": 0, "wait_p50_us": 1.0, "wait_p99_us": 2.0, "wait_max_us": 3.0,
             "cpu_us_per_op": 20.0, "pool_cpu_us": 5.0}
            for n, o in zip([8, 2000], ops)
        ]  # fmt: skip

    def tasks(slowest: float, lag: float) -> list[dict[str, Any]]:
        return [
            {"tasks": 1000, "start": "staggered", "slowest_s": slowest, "p50_s": 1.0,
             "last_answer_s": slowest, "asked_within_ms": 10.0, "loop_lag_max_ms": lag,
             "loop_lag_p99_ms": lag, "ticks_over_20ms": 0, "gc_pause_max_ms": 1.0,
             "gc_full_collections": 0, "outcomes": {"timed out": 1000}}
        ]  # fmt: skip

    def pool(ops: list[float], label: str, slowest: float, starved: int = 0) -> dict[str, Any]:
        return {
            "driver_cpu_us": 15.0,
            "threads": threads(ops, starved),
            "async_label": label,
            "tasks": tasks(slowest, 5.0),
            "timing_out": {"threads": 1000, "all_answered_s": 1.1, "slowest_s": 1.1,
                           "p50_s": 1.0, "asked_within_ms": 5.0, "outcomes": {"PoolTimeout": 1000},
                           "unanswered": 0},
            "idle_slot": {"idle_slot_bytes": 1000.0, "driver_connection_bytes": 700.0,
                          "pool_bytes_per_slot": 300.0},
            "waiting": {"waiting_task_bytes": 2000.0, "parked_task_bytes": 800.0,
                        "pool_bytes_per_waiter": 1200.0, "kept_after_cancel_bytes": 0.0},
        }  # fmt: skip

    doc = _document(
        {
            "S7": {
                "ours": pool([10_000, ours_at_2000], "ours async", slowest),
                "psycopg_pool": pool([9_000, 7_000], "psycopg_pool async", 1.2),
                "dbutils": pool([12_000, 9_000], "-", 1.0, starved=3),
                "bare-fifo": pool([13_000, 11_000], "bare async", 1.05),
            }
        }
    )
    doc["meta"].update(
        date="2026-12-02", pinning="nothing pinned", quick=True, cpus=2, machine="x86_64",
        server_version="18", versions={"python": "3.11"},
    )  # fmt: skip
    doc["meta"]["drivers"] = {key: peers.ADAPTERS[key].driver for key in peers.ADAPTERS}
    doc["scenarios"]["S7"]["params"] = {**TINY_S7, "threads": [8, 2000], "tasks": [1000]}
    doc["scenarios"]["S7"]["params"]["starts"] = ["staggered"]
    return doc


def _s7_line(doc: dict[str, Any], *words: str) -> str:
    """The target line whose text has all ``words``."""
    return next(c.line() for c in s7_report.targets(doc) if all(w in c.text for w in words))


def test_s7_targets_judge_ours_against_unstarved_peers_and_its_own_throughput() -> None:
    doc = _s7_document(ours_at_2000=8_500, slowest=1.02)
    kept = _s7_line(doc, "ours ConnectionPool getconn", "0.80x its throughput")
    assert kept.startswith("PASS") and "0.850x" in kept
    ahead = _s7_line(doc, "ours ConnectionPool getconn", "every peer")
    # DBUtils is faster but starved threads: psycopg_pool is the peer to beat.
    assert ahead.startswith("PASS") and "psycopg_pool getconn" in ahead and "DBUtils" not in ahead

    doc = _s7_document(ours_at_2000=7_000, slowest=1.3)
    assert _s7_line(doc, "ours ConnectionPool getconn", "0.80x its throughput").startswith("FAIL")
    timeouts = _s7_line(doc, "S7b ours async", "PoolTimeout")
    assert timeouts.startswith("FAIL")
    assert "bare async 1.05" in timeouts and "psycopg_pool async 1.20" in timeouts


def test_s7_report_writes_its_tables_and_the_same_svg_for_the_same_figures(
    tmp_path: Path,
) -> None:
    doc = _s7_document(ours_at_2000=8_500, slowest=1.02)
    s7_report.write(doc, tmp_path)
    first = (tmp_path / "s7.svg").read_bytes()
    ElementTree.fromstring(first)  # well-formed
    s7_report.write(doc, tmp_path)
    assert (tmp_path / "s7.svg").read_bytes() == first
    text = (tmp_path / "s7.md").read_text()
    assert "![S7 chart](s7.svg)" in text
    assert "| ours ConnectionPool getconn | 10,000 | 8,500 | 0.85 |" in text
