"""The Sphinx documentation builds without a warning and covers the public API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import psycopg2_pool

pytest.importorskip("sphinx")

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_docs_build_warning_free(tmp_path: Path) -> None:
    out = tmp_path / "html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-b",
            "html",
            "-d",
            str(tmp_path / "doctrees"),
            str(DOCS),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    api = (out / "api.html").read_text()
    for name in psycopg2_pool.__all__:
        assert f'id="psycopg2_pool.{name}"' in api, f"{name} is missing from the API reference"
    for page in (
        "migrating-psycopg2-pool",
        "migrating-psycopg2-pool-1.2",
        "migrating-psycopg-pool",
        "settings",
        "guarantees",
    ):
        assert (out / f"{page}.html").exists(), page


def test_settings_page_covers_every_setting() -> None:
    import inspect

    text = (DOCS / "settings.rst").read_text()
    parameters = inspect.signature(psycopg2_pool.ConnectionPool.__init__).parameters
    for name, parameter in parameters.items():
        if name == "self" or parameter.kind is parameter.VAR_KEYWORD:
            continue
        assert f"``{name}``" in text, f"settings page says nothing about {name}"
