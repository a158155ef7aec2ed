"""A threaded WSGI app (wsgiref with ThreadingMixIn) using ``pool.connection()``.

::

    python examples/wsgi_threaded.py [DSN] [--port 8000] [--check N]

Each request runs in its own thread and borrows a connection for the length
of a ``with pool.connection()`` block: committed at the end, given back, and
handed to the next request. Without a DSN (argument or ``$PSYCOPG2_POOL_DSN``)
a throwaway embedded PostgreSQL is started. ``--check N`` sends N concurrent
requests to itself, prints a summary and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import urllib.request
from collections.abc import Iterator
from socketserver import ThreadingMixIn
from typing import Any, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from psycopg2_pool import ConnectionPool
from psycopg2_pool._embedded import dsn_or_server


@contextlib.contextmanager
def server_dsn(dsn: str | None) -> Iterator[str]:
    """The DSN given (argument or environment), or an embedded server's."""
    with dsn_or_server(dsn) as target:
        print(f"using server: {target.description}", flush=True)
        yield target.dsn


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def make_app(pool: ConnectionPool) -> Callable[..., list[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") == "/stats":
            body: dict[str, Any] = pool.get_stats()
        else:
            with pool.connection() as conn:
                # pg_sleep stands for real work: requests overlap and share the pool.
                conn.execute("SELECT pg_sleep(0.01)")
                row = conn.execute("SELECT pg_backend_pid(), txid_current()").fetchone()
            body = {"thread": threading.current_thread().name, "backend": row[0], "txid": row[1]}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode() + b"\n"]

    return app


def check(port: int, requests: int) -> None:
    """Send ``requests`` concurrent requests and summarise the answers."""
    answers: list[dict[str, Any]] = []

    def get() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as reply:
            answers.append(json.loads(reply.read()))

    clients = [threading.Thread(target=get) for _ in range(requests)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as reply:
        stats = json.loads(reply.read())
    backends = {answer["backend"] for answer in answers}
    print(f"{len(answers)} of {requests} requests answered", flush=True)
    print(f"served by {len(backends)} server connections", flush=True)
    print(f"pool stats: {json.dumps(stats, sort_keys=True)}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="A threaded WSGI app on a ConnectionPool.")
    parser.add_argument("dsn", nargs="?", help="libpq connection string (default: embedded)")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--check", type=int, metavar="N", help="send N requests and exit")
    args = parser.parse_args(argv)
    server = server_dsn(args.dsn)
    with server as dsn, ConnectionPool(dsn, min_size=2, max_size=4, timeout=10, open=True) as pool:
        pool.wait()
        httpd = make_server(
            "127.0.0.1", args.port, make_app(pool), ThreadingWSGIServer, QuietHandler
        )
        with httpd:
            print(f"serving on http://127.0.0.1:{httpd.server_port}/", flush=True)
            if args.check is None:
                with contextlib.suppress(KeyboardInterrupt):
                    httpd.serve_forever()
                return 0
            thread = threading.Thread(target=httpd.serve_forever, daemon=True)
            thread.start()
            try:
                check(httpd.server_port, args.check)
            finally:
                httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
