"""pytest plugin loaded by psycopg_pool_suite.py into the run of psycopg's tests/pool/.

It records every test's outcome and failure (exception chain, attribute or module
names, traceback frames) as JSON lines, and with ``--alias-psycopg-pool`` it makes
``import psycopg_pool`` give ``psycopg2_pool``. Nothing happens on import.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.abc
import json
import logging
import sys
import traceback
import types
from collections.abc import Generator, Sequence
from typing import Any

import pytest

#: psycopg's fixtures whose tests the alias cannot reach (they run a subprocess).
UNREACHABLE_FIXTURES = {"mypy": "runs mypy in a subprocess, where the alias does not apply"}

_MAX_MESSAGE = 1000
_MAX_FRAMES = 40
_MAX_LOGGED = 20


class _NoPrivateSubmodules(importlib.abc.MetaPathFinder):
    """Refuse ``psycopg_pool.<anything>``: psycopg2_pool is aliased as a whole only."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> None:
        if fullname.startswith("psycopg_pool."):
            _BLOCKED_IMPORTS.append((fullname, _importer_file()))
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (psycopg_pool is aliased to psycopg2_pool,"
                " which only offers psycopg_pool's public names)",
                name=fullname,
            )
        return None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("psycopg2_pool suite")
    group.addoption(
        "--alias-psycopg-pool",
        action="store_true",
        help="make 'import psycopg_pool' give psycopg2_pool",
    )
    group.addoption("--record-results", metavar="PATH", help="append JSON lines here")
    group.addoption("--select-from", metavar="PATH", help="run only the node ids listed")
    group.addoption("--skip-from", metavar="PATH", help="do not run the node ids listed")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--alias-psycopg-pool"):
        if "psycopg_pool" in sys.modules:
            raise pytest.UsageError("psycopg_pool was imported before the alias could apply")
        import psycopg2_pool

        sys.modules["psycopg_pool"] = psycopg2_pool
        sys.meta_path.insert(0, _NoPrivateSubmodules())
        _watch_psycopg3_classes()
    path = config.getoption("--record-results")
    if path:
        config.stash[_RECORDER] = _Recorder(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    recorder = config.stash.get(_RECORDER, None)
    if recorder is not None:
        recorder.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    select = _read_ids(config.getoption("--select-from"))
    skip = _read_ids(config.getoption("--skip-from")) or set()
    kept, dropped = [], []
    for item in items:
        wanted = (select is None or item.nodeid in select) and item.nodeid not in skip
        (kept if wanted else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    if not config.getoption("--alias-psycopg-pool"):
        return
    for item in items:
        for fixture, reason in UNREACHABLE_FIXTURES.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.skip(reason=f"not applicable: {reason}"))


def pytest_collection_finish(session: pytest.Session) -> None:
    recorder = session.config.stash.get(_RECORDER, None)
    if recorder is not None:
        recorder.write({"collected": [item.nodeid for item in session.items]})


def _read_ids(path: str | None) -> set[str] | None:
    if not path:
        return None
    with open(path, encoding="utf-8") as file:
        return {line.strip() for line in file if line.strip()}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    catcher = _LogCatcher()
    item.stash[_LOGGED] = catcher.records
    item.stash[_BUILT_BEFORE] = len(_PSYCOPG3_BUILT)
    root = logging.getLogger()
    root.addHandler(catcher)
    try:
        yield
    finally:
        root.removeHandler(catcher)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield
    # Still inside the test: monkeypatch undoes its patches at teardown.
    item.stash[_PATCHED_CONNECT] = _psycopg_connect_patched()
    # Collect what the test dropped now, so that an exception in a __del__ is
    # reported with this test (at its teardown), not with whichever test runs
    # when the garbage collector next passes.
    gc.collect()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    recorder = item.config.stash.get(_RECORDER, None)
    if recorder is None:
        return
    record: dict[str, Any] = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "duration": round(report.duration, 3),
    }
    if hasattr(report, "wasxfail"):
        record["xfail"] = True
    if report.skipped and isinstance(report.longrepr, tuple):
        record["reason"] = str(report.longrepr[2])
    if report.failed:
        if call.excinfo is not None:
            record["exceptions"] = _describe(call.excinfo.value)
        record["longrepr"] = report.longreprtext[-4000:]
        record["fixtures"] = list(getattr(item, "fixturenames", ()))
        record["markers"] = sorted({mark.name for mark in item.iter_markers()})
        record["logged"] = list(item.stash.get(_LOGGED, []))
        built = _PSYCOPG3_BUILT[item.stash.get(_BUILT_BEFORE, len(_PSYCOPG3_BUILT)) :]
        if built:
            record["psycopg3_classes_built_by_psycopg2"] = sorted(set(built))
        blocked = [name for name, file in _BLOCKED_IMPORTS if file == str(item.path)]
        if blocked:
            record["blocked_imports"] = blocked
        if report.when == "call":
            record["patched_psycopg_connect"] = item.stash.get(_PATCHED_CONNECT, [])
    recorder.write(record)


class _Recorder:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in unconfigure

    def write(self, record: dict[str, Any]) -> None:
        # One line per report, flushed: a run killed half-way still leaves its records.
        self._file.write(json.dumps(record, default=repr) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _LogCatcher(logging.Handler):
    """Keeps the warnings and errors that the pools (and psycopg) log during a test.

    A pool logs what its workers and callbacks run into; that is often the real
    reason why a test then times out.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("psycopg") or len(self.records) >= _MAX_LOGGED:
            return
        entry: dict[str, Any] = {
            "logger": record.name,
            "level": record.levelname,
            "message": record.getMessage()[:_MAX_MESSAGE],
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["exceptions"] = _describe(record.exc_info[1])
        self.records.append(entry)


#: (module, importing file) of each psycopg_pool submodule import refused.
_BLOCKED_IMPORTS: list[tuple[str, str]] = []
#: psycopg 3 connection classes that something built from a conninfo string, as
#: psycopg2.connect(connection_factory=cls) does: a psycopg 3 class was given as a
#: pool's connection_class.
_PSYCOPG3_BUILT: list[str] = []


def _importer_file() -> str:
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith("<") and name != __file__:
            return name
        frame = frame.f_back
    return ""


def _watch_psycopg3_classes() -> None:
    """Note each psycopg 3 connection built on a string rather than a libpq connection.

    psycopg 3 builds its connections on a PGconn; only psycopg2's
    ``connect(connection_factory=cls)`` calls ``cls(dsn, ...)``. Behaviour is
    unchanged: the original ``__init__`` runs (and fails) as before.
    """
    import psycopg

    for cls in (psycopg.Connection, psycopg.AsyncConnection):
        original = cls.__dict__["__init__"]

        def init(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            if args and isinstance(args[0], str):
                _PSYCOPG3_BUILT.append(f"{type(self).__module__}.{type(self).__qualname__}")
            __original(self, *args, **kwargs)

        cls.__init__ = init


_RECORDER = pytest.StashKey[_Recorder]()
_BUILT_BEFORE = pytest.StashKey[int]()
_LOGGED = pytest.StashKey[list[dict[str, Any]]]()
_PATCHED_CONNECT = pytest.StashKey[list[str]]()
_ORIGINAL_CONNECTS: dict[str, Any] = {}


def _psycopg_connect_patched() -> list[str]:
    """Which of psycopg's own connect methods a test replaced (psycopg2_pool never calls them)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return []
    patched = []
    for name in ("Connection", "AsyncConnection"):
        current = getattr(psycopg, name).__dict__.get("connect")
        original = _ORIGINAL_CONNECTS.setdefault(name, current)
        if current is not original:
            patched.append(f"psycopg.{name}.connect")
    return patched


def _type_name(obj: object) -> str:
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _describe(exc: BaseException) -> list[dict[str, Any]]:
    """The exception and its causes, outermost first, with what a classifier needs."""
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(chain) < 10:
        seen.add(id(current))
        entry: dict[str, Any] = {
            "type": _type_name(current),
            "message": str(current)[:_MAX_MESSAGE],
        }
        if isinstance(current, AttributeError):
            # name and obj exist from Python 3.10 on.
            entry["attr"] = getattr(current, "name", None)
            obj = getattr(current, "obj", None)
            if obj is not None:
                entry["obj_type"] = _type_name(obj)
                if isinstance(obj, types.ModuleType):
                    entry["obj_module"] = obj.__name__
                # A proxy (wrapt) reports the class of what it wraps; a dead
                # handle may refuse even that.
                with contextlib.suppress(Exception):
                    entry["obj_class"] = _type_name(obj.__class__)
        if isinstance(current, ImportError):
            entry["module"] = current.name
        group = getattr(current, "exceptions", None)
        if isinstance(group, tuple):  # an exception group (Python 3.11+)
            entry["group"] = [_describe(sub) for sub in group[:5]]
        frames = traceback.extract_tb(current.__traceback__)[-_MAX_FRAMES:]
        entry["frames"] = [
            {"file": f.filename, "line": f.lineno, "func": f.name, "code": f.line or ""}
            for f in frames
        ]
        chain.append(entry)
        cause = current.__cause__
        if cause is None and not current.__suppress_context__:
            cause = current.__context__
        current = cause
    return chain
