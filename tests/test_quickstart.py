"""The quickstart example runs as the README says, with and without a DSN."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"


def run_quickstart(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_quickstart_runs_against_a_given_dsn(dsn: str) -> None:
    out = run_quickstart(dsn)
    assert "using the server at" in out
    assert "8 threads on 4 connections computed: [0, 2, 4, 6, 8, 10, 12, 14]" in out
    assert "couldn't get a connection" in out
    assert out.rstrip().endswith("done")


def test_quickstart_starts_its_own_server_without_a_dsn() -> None:
    out = run_quickstart()
    assert "started a throwaway PostgreSQL: host=127.0.0.1" in out
    assert "database: postgres" in out
