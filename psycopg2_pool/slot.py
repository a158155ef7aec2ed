"""Slot: the one record a pool keeps for each connection it opened.

Everything the pool knows of a connection besides who holds it (that is the
engine's ``_used``/``_rused``, psycopg2.pool's own maps) lives here, in one
object found by ``id(connection)``: when it expires, since when it is idle,
when it was last known to work, the role it must keep and its server, and,
with ``leak_timeout``, where it was checked out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Slot"]


class Slot:
    """What the pool remembers about one of its connections, for its whole life."""

    __slots__ = (
        "checked_out_at",
        "expires",
        "given_back_raw",
        "idle_since",
        "leak_reported",
        "off_role",
        "server",
        "stack",
        "verified",
    )

    def __init__(self, expires: float, now: float) -> None:
        self.expires = expires
        self.idle_since = now
        self.verified = now  # last known to work: made, or probed, then
        # putconn() took it back by the real connection once: never again.
        self.given_back_raw = False
        #: For a connection made with a target_session_attrs: tells, from the
        #: parameters the server reports, that it no longer has the role asked.
        self.off_role: Callable[[Any], bool] | None = None
        self.server: tuple[str, int] | None = None  # (host, port) it is on
        #: With leak_timeout, while checked out: when, and the caller's stack.
        self.checked_out_at = 0.0
        self.stack: list[str] | None = None
        self.leak_reported = False

    def checked_out(self, now: float, stack: list[str]) -> None:
        """Note a checkout, for leak reports."""
        self.checked_out_at = now
        self.stack = stack
        self.leak_reported = False

    def checked_in(self) -> None:
        """The checkout ended: nothing to report any more."""
        self.stack = None
