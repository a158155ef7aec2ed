"""Fetching a package's release file from PyPI at test time, cached between runs.

Code other people wrote (psycopg2 2.7.7's pool module, psycopg2-pool 1.2's own
tests, liberapay's postgres 4.0) is run as published, never vendored: pip
downloads the file into ``$PSYCOPG2_POOL_TEST_CACHE`` (default
``~/.cache/psycopg2_pool_tests``) once, and later runs reuse it.
``PSYCOPG2_POOL_OFFLINE=1`` makes a test that needs an uncached file skip
instead of fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

OFFLINE_ENV = "PSYCOPG2_POOL_OFFLINE"
CACHE_ENV = "PSYCOPG2_POOL_TEST_CACHE"


class Unavailable(RuntimeError):
    """A release file could not be fetched or read."""


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "psycopg2_pool_tests"


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV) == "1"


def fetch(requirement: str, filename: str, *, source: bool) -> Path:
    """The cached file ``filename`` that ``pip download requirement`` gives.

    ``source`` asks for the sdist rather than a wheel. Raises :class:`Unavailable`.
    """
    target = cache_dir() / filename
    if target.exists():
        return target
    if offline():
        raise Unavailable(f"{target} is not cached and {OFFLINE_ENV}=1")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            *(["--no-binary", ":all:"] if source else ["--only-binary", ":all:"]),
            "--disable-pip-version-check",
            "--timeout",
            "20",
            "--retries",
            "1",
            "--dest",
            tmp,
            requirement,
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Unavailable(f"{' '.join(command)} failed: {exc}") from exc
        downloaded = Path(tmp) / filename
        if result.returncode != 0 or not downloaded.exists():
            output = (result.stdout + result.stderr).strip().splitlines()[-15:]
            raise Unavailable(
                f"{' '.join(command)} exited with {result.returncode}:\n" + "\n".join(output)
            )
        os.replace(downloaded, target)
    return target


def fetch_or_fail(requirement: str, filename: str, *, source: bool) -> Path:
    """For tests: :func:`fetch`, or fail (skip when ``PSYCOPG2_POOL_OFFLINE=1``)."""
    try:
        return fetch(requirement, filename, source=source)
    except Unavailable as exc:
        problem = str(exc)
    if offline():
        pytest.skip(f"{requirement} unavailable and {OFFLINE_ENV}=1: {problem}")
    pytest.fail(
        f"{requirement} could not be fetched from PyPI: {problem}\n"
        f"Set {OFFLINE_ENV}=1 to skip these tests offline.",
        pytrace=False,
    )
