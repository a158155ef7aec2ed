"""The handles that stand for a pooled connection: the client's, and the callbacks'.

Each proxies the real psycopg2 connection (``conn.__wrapped__``) and goes dead
when its lease ends (the client gives the connection back, the callback
returns): it can never touch a connection someone else now holds.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from operator import attrgetter
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import wrapt
from psycopg2.extensions import TRANSACTION_STATUS_IDLE as _IDLE
from psycopg2.extensions import cursor as Cursor

from .errors import ConnectionReturned
from .transaction import Transaction

logger = logging.getLogger("psycopg2_pool")


class Owner(Protocol):
    """What a sync handle needs of the pool it comes from."""

    name: str
    close_returns: bool

    def putconn(self, conn: Any) -> None: ...


def _returned_error() -> ConnectionReturned:
    return ConnectionReturned(
        "this connection was returned to the pool: get a new one from the pool"
    )


class _Returned:
    """What a handle wraps once its connection went back to the pool.

    Only ``closed`` can be read: a returned handle is closed to its holder
    (psycopg2's 1, "closed"), whatever the pooled connection, now someone
    else's, is doing.
    """

    __slots__ = ()

    closed = 1

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise _returned_error()

    def __setattr__(self, name: str, value: Any) -> None:
        raise _returned_error()

    def __delattr__(self, name: str) -> None:
        raise _returned_error()

    def __repr__(self) -> str:
        return "<connection returned to the pool>"


RETURNED = _Returned()


def end_block(pool: Any, handle: Any, conn: Any, commit: bool) -> None:
    """End a ``with`` block on ``conn``: commit what is open (or roll it back
    after an exception), then give ``handle`` back to ``pool``.

    A failed rollback is logged, not raised: the client's own exception wins.
    """
    try:
        # Nothing open costs no call (commit() would cost one for nothing).
        if conn.get_transaction_status() == _IDLE or conn.closed:
            return
        if commit:
            conn.commit()
            return
        try:
            conn.rollback()
        except Exception as exc:
            logger.warning("error ignored in rollback on %r: %s", handle, exc)
    finally:
        pool.putconn(handle)


#: The cursor methods that reach the connection or its results: after the
#: handle went back, each raises instead of touching a connection that another
#: client may now hold.
_CURSOR_USES = (
    "execute",
    "executemany",
    "callproc",
    "mogrify",
    "fetchone",
    "fetchmany",
    "fetchall",
    "scroll",
    "copy_from",
    "copy_to",
    "copy_expert",
    "cast",
    "nextset",
    "close",
    "__next__",
    "__enter__",
    "__exit__",
)

#: Guarded subclasses of cursor classes that take no new attribute (psycopg2's
#: own, written in C): few, and they live for ever anyway. A Python cursor
#: class keeps its guarded subclass itself (see guarded_cursor_class).
_guarded_cursor_classes: dict[type[Cursor], type[Cursor]] = {}

#: Where a Python cursor class keeps its guarded subclass.
_GUARDED_ATTRIBUTE = "_psycopg2_pool_guarded"


#: psycopg2's own cursor methods that take no argument, and its execute():
#: their guards take the arguments as they are, with no packing, as they run
#: on every request.
_NO_ARGUMENTS = frozenset(vars(Cursor)[name] for name in ("fetchone", "fetchall", "close"))
_EXECUTE = vars(Cursor)["execute"]


def _guarded_use(method: Any) -> Any:
    guarded: Callable[..., Any]
    if method in _NO_ARGUMENTS:

        def guarded(self: Any) -> Any:
            if self._pool_handle.__wrapped__ is RETURNED:
                raise _returned_error()
            return method(self)

    elif method is _EXECUTE:

        def guarded(self: Any, query: Any, vars: Any = None) -> Any:
            if self._pool_handle.__wrapped__ is RETURNED:
                raise _returned_error()
            return method(self, query, vars)

    else:

        def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
            if self._pool_handle.__wrapped__ is RETURNED:
                raise _returned_error()
            return method(self, *args, **kwargs)

    guarded.__name__ = method.__name__
    guarded.__qualname__ = getattr(method, "__qualname__", method.__name__)
    guarded.__doc__ = method.__doc__
    return guarded


_cursor_connection: Any = vars(Cursor)["connection"]


def _guarded_connection(self: Any) -> Any:
    if self._pool_handle.__wrapped__ is RETURNED:
        raise _returned_error()
    return _cursor_connection.__get__(self)


def guarded_cursor_class(factory: type[Cursor]) -> type[Cursor]:
    """The subclass of cursor class ``factory`` that a handle's cursors are made of.

    It behaves as ``factory`` while the handle is checked out; once the handle
    went back, every use of the cursor raises :class:`ConnectionReturned`.
    """
    guarded = _guarded_cursor_classes.get(factory) or vars(factory).get(_GUARDED_ATTRIBUTE)
    if guarded is None:
        namespace: dict[str, Any] = {
            name: _guarded_use(getattr(factory, name))
            for name in _CURSOR_USES
            if hasattr(factory, name)
        }
        namespace["__slots__"] = ("_pool_handle",)
        namespace["__module__"] = factory.__module__
        namespace["connection"] = property(_guarded_connection, doc=Cursor.connection.__doc__)
        guarded = type(factory.__name__, (factory,), namespace)
        # Kept on the class, not in a module-level dict, so that a cursor class
        # made per connection (OpenTelemetry's instrumentation makes one for
        # each connect()) goes away with its connection, guarded subclass and all.
        try:
            setattr(factory, _GUARDED_ATTRIBUTE, guarded)
        except (TypeError, AttributeError):  # a C type
            _guarded_cursor_classes[factory] = guarded
    return guarded


if TYPE_CHECKING:
    _Proxy = wrapt.BaseObjectProxy[Any]
else:
    _Proxy = wrapt.BaseObjectProxy


def _forward(name: str, writable: bool = False) -> Any:
    """A class-level shortcut to the wrapped connection's ``name``.

    wrapt finds a forwarded attribute only after a failed lookup on the proxy,
    which costs an exception; the attributes every request touches skip that.
    The getter is a C-level attrgetter: no Python frame either.
    """

    def set_(self: Any, value: Any) -> None:
        setattr(self.__wrapped__, name, value)

    return property(
        attrgetter(f"__wrapped__.{name}"),
        set_ if writable else None,
        doc=f"The connection's ``{name}``.",
    )


class _Handle(_Proxy):
    """What every sync handle is: the connection itself, plus psycopg 3's
    ``execute()`` and ``transaction()``."""

    # A handle is also the pool's key for its checkout: it must hash and
    # compare as itself, not as the connection it wraps (which goes away).
    __hash__ = object.__hash__
    __eq__ = object.__eq__
    __ne__ = object.__ne__

    commit = _forward("commit")
    rollback = _forward("rollback")
    closed = _forward("closed")
    status = _forward("status")
    autocommit = _forward("autocommit", writable=True)
    get_transaction_status = _forward("get_transaction_status")

    #: ``transaction()`` blocks open on this handle (see :mod:`.transaction`).
    #: A class default: handles are made without an ``__init__``.
    _self_transactions = 0

    @staticmethod
    def _pool_unwrap(handle: _Handle) -> Any:
        return handle.__wrapped__

    # wrapt looks this hook up and calls it on every __wrapped__ change: without
    # it the lookup fails through __getattr__ and costs an exception each time.
    # A builtin that takes no argument is the cheapest thing to call.
    __wrapped_setattr_fixups__ = staticmethod(int)

    def cursor(
        self,
        name: str | None = None,
        cursor_factory: type[Cursor] | None = None,
        scrollable: bool | None = None,
        withhold: bool = False,
    ) -> Cursor:
        """A new cursor, as the connection's; it is dead once the handle went back."""
        conn = self.__wrapped__
        factory = cursor_factory or conn.cursor_factory or Cursor
        guarded = _guarded_cursor_classes.get(factory)
        if guarded is not None and name is None:
            # The common case, with no call of our own: psycopg2's cursor class
            # (or another C one) guarded already, an unnamed cursor.
            made: Any = conn.cursor(None, guarded)
            made._pool_handle = self
            cur: Cursor = made  # no cast(): a call on every request
            return cur
        # psycopg2 refuses scrollable/withhold on unnamed cursors, even unset.
        options = {} if name is None else {"scrollable": scrollable, "withhold": withhold}
        if not isinstance(factory, type):
            # A factory function: its cursors cannot be guarded by subclassing.
            unguarded: Cursor = conn.cursor(name, factory, **options)
            return unguarded
        made = conn.cursor(name, guarded_cursor_class(factory), **options)
        made._pool_handle = self
        cur = made
        return cur

    def execute(self, query: Any, params: Any = None) -> Cursor:
        """Execute ``query`` on a new cursor and return the cursor, as psycopg 3 does."""
        cur = self.cursor()
        cur.execute(query, params)
        return cur

    def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> Transaction:
        """A block run as one transaction, as psycopg 3's ``conn.transaction()``.

        ``with conn.transaction():`` begins a transaction if none is open, or
        sets a savepoint if one is (an enclosing block, or statements run
        before); it commits (releases the savepoint) at the end of the block,
        or rolls back (to the savepoint) if the block raised, and re-raises.
        """
        return Transaction(self, savepoint_name, force_rollback)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a pooled connection cannot be pickled")


class PooledConnection(_Handle):
    """A psycopg2 connection checked out of a :class:`ConnectionPool`.

    Use it as the connection itself. Leaving ``with conn:`` commits (or rolls
    back on an exception) and gives it back to the pool. Once given back, only
    ``closed`` (1) and ``close()`` (which does nothing) still work on it.
    """

    # Each pool makes its own subclass with ``_self_pool`` set on the class, so
    # that a handle carries nothing but the connection.
    _self_pool: Owner

    @classmethod
    def for_pool(cls, pool: Owner) -> type[PooledConnection]:
        """The handle class of ``pool``."""
        # Weakly: a handle kept after its return must not keep its pool alive.
        namespace = {"_self_pool": weakref.proxy(pool), "__module__": cls.__module__}
        return type(cls.__name__, (cls,), namespace)

    def close(self) -> None:
        """Close the connection, or give it back if the pool has ``close_returns``.

        On a handle already given back, do nothing: the connection is no
        longer this handle's to close.
        """
        conn = self.__wrapped__
        if conn is RETURNED:
            return
        if self._self_pool.close_returns:
            self._self_pool.putconn(self)
        else:
            conn.close()

    def __enter__(self) -> PooledConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn = self.__wrapped__
        if conn is RETURNED:
            return  # given back inside the block already
        end_block(self._self_pool, self, conn, exc_type is None)


class CallbackConnection(_Handle):
    """The connection as a sync pool's ``configure``, ``check`` and ``reset`` get it.

    The same kind of object as a client's handle (``conn.execute()``,
    ``conn.transaction()``, the psycopg2 connection otherwise), alive only
    while the callback runs. ``with conn:`` is psycopg2's: it ends the
    transaction and leaves the connection open.
    """

    def __enter__(self) -> CallbackConnection:
        self.__wrapped__.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Any:
        return self.__wrapped__.__exit__(exc_type, exc, tb)


_new_callback_connection = CallbackConnection.__new__


def lend(callback: Callable[[Any], object], conn: Any) -> None:
    """Call ``callback`` with a :class:`CallbackConnection` on ``conn``, dead once it returns."""
    handle = _new_callback_connection(CallbackConnection)
    handle.__wrapped__ = conn
    try:
        callback(handle)
    finally:
        handle.__wrapped__ = RETURNED
