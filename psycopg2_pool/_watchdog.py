"""Socket-level care for connections: bounding blocking calls, spotting dead ones.

libpq waits on its socket with no timeout of its own; if the server stops
answering, only a shutdown of the socket makes the call return. A watchdog
shuts the socket down when the deadline passes, unless the call finished first.
A server that went away leaves its idle connections readable, which a
zero-timeout select() sees without a round trip.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any


class Watchdog:
    """Shut ``conn``'s socket down if :meth:`done` is not called before :meth:`fire`."""

    # Timers hold what they call weakly (see workers.WeakCall): a watchdog is
    # only needed while the caller of run_bounded() holds it.
    __slots__ = ("__weakref__", "_conn", "_lock", "state")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.state = "running"

    def done(self) -> bool:
        """Mark the call finished; False if the watchdog had fired already."""
        with self._lock:
            if self.state == "fired":
                return False
            self.state = "done"
            return True

    def fire(self) -> None:
        with self._lock:
            if self.state != "running":
                return
            self.state = "fired"
        shutdown_socket(self._conn)


def shutdown_socket(conn: Any) -> None:
    """Make every blocked or future I/O on ``conn`` fail at once (it is then broken)."""
    try:
        fd = os.dup(conn.fileno())
    except Exception:  # already closed
        return
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return
    with sock, contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def run_bounded(
    call: Callable[[], None],
    conn: Any,
    seconds: float,
    schedule: Callable[[float, Callable[[], None]], None],
) -> None:
    """Run ``call`` (I/O on ``conn``); after ``seconds`` break the connection.

    Raises TimeoutError if the deadline passed, whatever ``call`` did.
    """
    dog = Watchdog(conn)
    schedule(max(seconds, 0.0), dog.fire)
    try:
        call()
    finally:
        finished_in_time = dog.done()
    if not finished_in_time:
        raise TimeoutError(f"no answer from the server within {seconds:.2f} sec")


def readable_fds(fds: list[int]) -> list[int]:
    """Which of ``fds`` have something to read right now (no waiting)."""
    if not fds:
        return []
    try:
        ready, _, _ = select.select(fds, [], [], 0)
    except (OSError, ValueError):  # a descriptor closed meanwhile: look one by one
        ready = []
        for fd in fds:
            try:
                if select.select([fd], [], [], 0)[0]:
                    ready.append(fd)
            except (OSError, ValueError):
                ready.append(fd)
    return ready


def socket_alive(conn: Any) -> bool:
    """Whether an idle connection's server end is still there, without a round trip.

    A live idle connection has nothing to read but notifications. A server that
    went away left an ErrorResponse ('E', FATAL) and end-of-file: peeking at the
    first byte tells, without disturbing libpq. Over TLS the bytes are
    encrypted, so libpq reads them instead (poll()) until it sees the end.
    """
    if conn.closed:
        return False
    try:
        fd = conn.fileno()
    except Exception:
        return False
    if not readable_fds([fd]):
        return True
    if not conn.info.ssl_in_use:
        first = _peek(fd)
        if first in (b"", b"E"):
            return False
    for _ in range(3):
        try:
            conn.poll()  # consumes notifications; raises once the server is gone
        except Exception:
            return False
        if conn.closed:
            return False
        if not readable_fds([fd]):
            return True
    return False


def _peek(fd: int) -> bytes | None:
    """The next byte waiting on ``fd`` without consuming it; b"" at end of file."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    with sock:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        except OSError:
            return b""
