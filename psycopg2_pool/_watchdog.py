"""Bounding a blocking libpq call by a deadline.

libpq waits on its socket with no timeout of its own; if the server stops
answering, only a shutdown of the socket makes the call return. A watchdog
shuts the socket down when the deadline passes, unless the call finished first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from typing import Any


class Watchdog:
    """Shut ``conn``'s socket down if :meth:`done` is not called before :meth:`fire`."""

    __slots__ = ("_conn", "_lock", "state")

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
