"""tests/external/psycopg_pool_suite.py sorts what fails only on psycopg2_pool by cause.

It runs on a small stand-in for a psycopg checkout, made here: one test of each
kind, run on psycopg_pool and with the alias, as the real suite is.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("psycopg_pool")
pytest.importorskip("anyio")

RUNNER = Path(__file__).resolve().parent / "external" / "psycopg_pool_suite.py"

CONFTEST = """
import pytest


def pytest_addoption(parser):
    parser.addoption("--test-dsn")


@pytest.fixture
def dsn(request):
    return request.config.getoption("--test-dsn")
"""

TESTS = """
import psycopg_pool as pool


def test_public_api(dsn):
    with pool.ConnectionPool(dsn, min_size=1) as p:
        with p.connection() as conn:
            conn.execute("select 1")


def test_private_attribute(dsn):
    with pool.ConnectionPool(dsn, min_size=1) as p:
        assert p._sched_runner is not None


def test_psycopg3_method(dsn):
    with pool.ConnectionPool(dsn, min_size=1) as p:
        with p.connection() as conn:
            assert conn.pgconn.status == 0


def test_psycopg3_connect_keyword(dsn):
    from psycopg.rows import dict_row

    with pool.ConnectionPool(dsn, min_size=1, kwargs={"row_factory": dict_row}, timeout=2) as p:
        with p.connection() as conn:
            assert conn.execute("select 1 as x").fetchone() == {"x": 1}


def test_module_name(dsn):
    assert pool.__name__ == "psycopg_pool"


def test_fails_everywhere(dsn):
    assert False
"""


@pytest.fixture(scope="module")
def report(dsn: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checkout = tmp_path_factory.mktemp("psycopg")
    (checkout / "tests" / "pool").mkdir(parents=True)
    (checkout / "tests" / "__init__.py").write_text("")
    (checkout / "tests" / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (checkout / "tests" / "pool" / "__init__.py").write_text("")
    (checkout / "tests" / "pool" / "test_stand_in.py").write_text(textwrap.dedent(TESTS))
    result = subprocess.run(
        [sys.executable, str(RUNNER), str(checkout), "--dsn", dsn, "--json", "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _test(report: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = report["tests"][f"tests/pool/test_stand_in.py::{name}"]
    return entry


def test_a_test_passing_on_both_counts_as_passed_with_the_alias(report: dict[str, Any]) -> None:
    assert _test(report, "test_public_api") == {"baseline": "passed", "alias": "passed"}


def test_a_private_attribute_of_the_pool_is_put_under_internals(report: dict[str, Any]) -> None:
    entry = _test(report, "test_private_attribute")
    assert entry["column"] == "internals"
    assert "_sched_runner" in entry["reason"]


def test_a_psycopg3_connection_method_is_put_under_driver_api(report: dict[str, Any]) -> None:
    entry = _test(report, "test_psycopg3_method")
    assert entry["column"] == "driver API"
    assert "pgconn" in entry["reason"]


def test_a_psycopg3_connect_keyword_is_put_under_driver_api(report: dict[str, Any]) -> None:
    entry = _test(report, "test_psycopg3_connect_keyword")
    assert entry["column"] == "driver API"
    assert "row_factory" in entry["reason"]


def test_any_other_failure_is_put_under_otherwise_with_its_reason(
    report: dict[str, Any],
) -> None:
    entry = _test(report, "test_module_name")
    assert entry["column"] == "otherwise"
    assert "AssertionError" in entry["reason"]


def test_a_test_failing_on_psycopg_pool_too_is_left_out(report: dict[str, Any]) -> None:
    entry = _test(report, "test_fails_everywhere")
    assert entry["baseline"] == "failed"
    assert "column" not in entry


def test_the_table_counts_each_column_per_file(report: dict[str, Any]) -> None:
    assert report["files"]["tests/pool/test_stand_in.py"] == {
        "pass on psycopg_pool": 5,
        "pass with alias": 1,
        "internals": 1,
        "driver API": 2,
        "otherwise": 1,
    }
