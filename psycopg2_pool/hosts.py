"""Host order: which host of a multi-host conninfo a pool's connects try first.

libpq tries the hosts of ``host=a,b port=p,q`` in the order given, and waits
its whole ``connect_timeout`` (2 s at least) on one that accepts TCP but never
answers (a hung server) before it tries the next. A pool connects again and
again: it remembers the hosts that failed it lately (named in libpq's error,
passed over by a connection that landed on a later one, or whose connection
broke) and lists them last, those that timed out after those that failed
fast, for :data:`HOLD` seconds. Every host is still tried: only the order
changes. A conninfo with one host, with ``load_balance_hosts=random`` (libpq
shuffles the hosts itself) or naming a service (whose hosts the pool does not
see) is left as it is.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import psycopg2
from psycopg2 import extensions as _ext

__all__ = ["HOLD", "HostOrder", "Hosts"]

#: Seconds a host that failed the pool is listed last (each new failure starts
#: them again; a connection that lands on it ends them).
HOLD = 30.0

_FAILED = 1  # refused, wrong role, broken connection: fast to find again
_TIMED_OUT = 2  # connect_timeout spent on it: the costliest to try first

# libpq 14+ names the host of each failed attempt (untranslated messages only:
# a translated one teaches nothing, which costs only the order).
_FAILURE = re.compile(
    r'^connection to server (?:at "(?P<host>[^"]*)"(?: \([^)]*\))?, port (?P<port>\d+)'
    r'|on socket "(?P<dir>.*)/\.s\.PGSQL\.(?P<sport>\d+)") failed: (?P<why>.*)$',
    re.MULTILINE,
)

_DEFAULT_PORT = "5432"

# The keywords that say where libpq connects, and their environment variables.
_WHERE = (
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("service", "PGSERVICE"),
    ("load_balance_hosts", "PGLOADBALANCEHOSTS"),
)

Server = tuple[str, str]  # (host name, address or socket directory; port)


def _split(value: str | None) -> list[str]:
    return value.split(",") if value else []


class Hosts:
    """The hosts of one multi-host conninfo, in the order libpq is given them."""

    __slots__ = ("addrs", "names", "ports")

    def __init__(self, names: list[str], addrs: list[str], ports: list[str]) -> None:
        self.names = names  # host=, or empty
        self.addrs = addrs  # hostaddr=, or empty
        self.ports = ports  # port=: none, one for all, or one each

    @classmethod
    def of(cls, params: Mapping[str, Any]) -> Hosts | None:
        """The hosts of libpq's keywords ``params``, if there are several to order."""
        if params.get("service") or params.get("load_balance_hosts") == "random":
            return None
        names, addrs = _split(params.get("host")), _split(params.get("hostaddr"))
        ports = _split(params.get("port"))
        count = max(len(names), len(addrs))
        if count < 2 or (names and len(names) != count) or (addrs and len(addrs) != count):
            return None
        if len(ports) not in (0, 1, count):
            return None  # libpq reports it
        return cls(names, addrs, ports)

    def __len__(self) -> int:
        return max(len(self.names), len(self.addrs))

    def servers(self, index: int) -> list[Server]:
        """How libpq names the ``index``-th host: by name, and by address."""
        port = self.ports[index] if len(self.ports) > 1 else "".join(self.ports)
        port = port or os.environ.get("PGPORT") or _DEFAULT_PORT
        found = []
        for names in (self.names, self.addrs):
            if names and names[index]:
                found.append((names[index], port))
        return found

    def arguments(self, order: list[int]) -> dict[str, str]:
        """The keywords that make libpq try the hosts in ``order``."""
        arguments = {}
        for key, values in (("host", self.names), ("hostaddr", self.addrs), ("port", self.ports)):
            if len(values) > 1:
                arguments[key] = ",".join(values[i] for i in order)
        return arguments


def _where(arguments: Mapping[str, Any]) -> dict[str, str]:
    """Where the connect() call with ``arguments`` goes: its conninfo, its
    keywords over it, the environment under both (as libpq reads them)."""
    try:
        params = _ext.parse_dsn(arguments.get("dsn") or "")
    except psycopg2.ProgrammingError:
        return {}  # connect() reports the bad conninfo itself
    for key, variable in _WHERE:
        value = arguments.get(key)
        if value is not None:
            params[key] = str(value)
        elif key not in params and os.environ.get(variable):
            params[key] = os.environ[variable]
    return params


class HostOrder:
    """What one pool remembers of the hosts that failed it lately (see the module).

    Its methods run on several threads without a lock: each reads or writes
    one entry of a dict at a time, and a race loses at worst one lesson.
    """

    def __init__(self) -> None:
        # (host, port) -> (how it failed, until when it is listed last)
        self._failed: dict[Server, tuple[int, float]] = {}
        # The last conninfo seen, and its hosts: most pools have only one.
        self._seen: tuple[tuple[Any, ...], Hosts | None] = ((), None)
        #: Whether the last conninfo had several hosts to order.
        self.several = False

    def plan(self, arguments: dict[str, Any], now: float) -> None:
        """List the hosts that failed lately last, in the keywords ``arguments``."""
        key = tuple(arguments.get(k) for k in ("dsn", "host", "hostaddr", "port", "service"))
        seen_key, hosts = self._seen
        if seen_key != key:
            hosts = Hosts.of(_where(arguments))
            self._seen = (key, hosts)
        self.several = hosts is not None
        if hosts is None or not self._failed:
            return
        ranks = [self._rank(hosts.servers(i), now) for i in range(len(hosts))]
        if any(ranks):
            order = sorted(range(len(hosts)), key=lambda i: (ranks[i], i))
            arguments.update(hosts.arguments(order))

    def _rank(self, servers: list[Server], now: float) -> int:
        rank = 0
        for server in servers:
            how, until = self._failed.get(server, (0, 0.0))
            if until > now:
                rank = max(rank, how)
        return rank

    def _mark(self, server: Server, how: int, now: float) -> None:
        before, until = self._failed.get(server, (0, 0.0))
        if until > now:
            how = max(how, before)  # a timeout is not forgotten for a fast failure
        self._failed[server] = (how, now + HOLD)

    def failed(self, message: str, now: float) -> None:
        """A connect failed with libpq's ``message``: mark each host it names."""
        for match in _FAILURE.finditer(message):
            host = match["host"] if match["host"] is not None else match["dir"]
            port = match["port"] or match["sport"]
            how = _TIMED_OUT if match["why"].startswith("timeout expired") else _FAILED
            self._mark((host, port), how, now)

    def landed(self, conn: Any, now: float) -> None:
        """``conn`` was just made: the hosts listed before its own failed."""
        try:
            hosts = Hosts.of(conn.get_dsn_parameters())
            server = (conn.info.host, str(conn.info.port))
        except psycopg2.Error:  # pragma: no cover - a connection just made
            return
        if hosts is None:
            return
        tried = [hosts.servers(index) for index in range(len(hosts))]
        on = next((index for index, names in enumerate(tried) if server in names), None)
        if on is None:
            return  # not found as libpq was given it: nothing learned
        for passed in tried[:on]:
            for other in passed:
                if other != server:
                    self._mark(other, _FAILED, now)
        for landed in tried[on]:
            self._failed.pop(landed, None)

    def lost(self, server: tuple[str, int], now: float) -> None:
        """A connection to ``server`` broke: list it last for a while."""
        self._mark((server[0], str(server[1])), _FAILED, now)
