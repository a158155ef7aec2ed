"""The reference implementations the differential tests run side by side with ours:
the installed psycopg2.pool, and psycopg2 2.7.7's pool module (the last one with
PersistentConnectionPool), fetched from PyPI at test time and cached.

Nothing of psycopg2 is vendored: the 2.7.7 sdist is downloaded with pip into
``$PSYCOPG2_POOL_TEST_CACHE`` (default ``~/.cache/psycopg2_pool_tests``) and its
``lib/pool.py`` is loaded from there as the module ``psycopg2_277_pool``.
"""

from __future__ import annotations

import importlib.util
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import psycopg2.pool
import pytest

from tests import pypi

#: The psycopg2 pool module installed today: the reference for Simple and Threaded.
current = psycopg2.pool

VERSION = "2.7.7"
MODULE_NAME = "psycopg2_277_pool"
MEMBER = f"psycopg2-{VERSION}/lib/pool.py"

# The sdist holds Python 2 source; its setup.py ran 2to3 at build time, whose only
# effect on lib/pool.py is this import. We apply the same rewrite, nothing else.
_PY2_IMPORT = "import thread as _thread"
_PY3_IMPORT = "import _thread as _thread"


class ReferenceUnavailable(RuntimeError):
    """psycopg2 2.7.7's pool.py could not be fetched or loaded."""


def _extract_source(sdist: Path) -> str:
    try:
        with tarfile.open(sdist) as archive:
            member = archive.extractfile(MEMBER)
            if member is None:
                raise ReferenceUnavailable(f"{MEMBER} is not a regular file in {sdist}")
            source = member.read().decode("utf-8")
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise ReferenceUnavailable(f"cannot read {MEMBER} from {sdist}: {exc}") from exc
    if source.count(_PY2_IMPORT) != 1:
        raise ReferenceUnavailable(f"{MEMBER} in {sdist} is not the file these tests expect")
    return source.replace(_PY2_IMPORT, _PY3_IMPORT)


def _load() -> ModuleType:
    directory = pypi.cache_dir()
    try:
        sdist = pypi.fetch(f"psycopg2=={VERSION}", f"psycopg2-{VERSION}.tar.gz", source=True)
    except pypi.Unavailable as exc:
        raise ReferenceUnavailable(str(exc)) from exc
    # Loaded from a real file, so tracebacks through the reference show its lines.
    path = directory / f"{MODULE_NAME}.py"
    source = _extract_source(sdist)
    if not path.exists() or path.read_text(encoding="utf-8") != source:
        path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    if spec is None or spec.loader is None:
        raise ReferenceUnavailable(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ReferenceUnavailable(f"importing {path} failed: {exc!r}") from exc
    sys.modules[MODULE_NAME] = module
    return module


_loaded: ModuleType | None = None
_failure: ReferenceUnavailable | None = None


def load_psycopg2_277_pool() -> ModuleType:
    """psycopg2 2.7.7's pool module; raises ReferenceUnavailable (remembered) if it can't."""
    global _loaded, _failure
    if _loaded is None:
        if _failure is not None:
            raise _failure
        try:
            _loaded = _load()
        except ReferenceUnavailable as exc:
            _failure = exc
            raise
    return _loaded


def psycopg2_277_pool() -> ModuleType:
    """For tests: the 2.7.7 module, or fail (skip when ``PSYCOPG2_POOL_OFFLINE=1``)."""
    try:
        return load_psycopg2_277_pool()
    except ReferenceUnavailable as exc:
        problem = str(exc)
    # Outside the except block, so the report shows the reason once, without a chain.
    if pypi.offline():
        pytest.skip(f"psycopg2 {VERSION} reference unavailable and {pypi.OFFLINE_ENV}=1: {problem}")
    pytest.fail(
        f"psycopg2 {VERSION}'s lib/pool.py, the reference for PersistentConnectionPool, "
        f"could not be loaded: {problem}\nSet {pypi.OFFLINE_ENV}=1 to skip these tests offline.",
        pytrace=False,
    )
