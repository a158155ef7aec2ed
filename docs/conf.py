"""Sphinx configuration for the psycopg2_pool documentation."""

from __future__ import annotations

import sys
from pathlib import Path

# Document the package of this checkout, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2_pool

project = "psycopg2_pool"
author = "the psycopg2_pool authors"
copyright = "the psycopg2_pool authors"
release = psycopg2_pool.__version__
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx"]
exclude_patterns = ["_build"]
html_theme = "alabaster"

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
# Type names in signatures that Sphinx cannot resolve to a documented target.
nitpicky = False

intersphinx_mapping: dict[str, tuple[str, str | None]] = {}
