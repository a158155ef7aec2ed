"""psycopg 3's ``with conn.transaction():`` blocks, on a sync handle's psycopg2 connection.

A block that finds no transaction open begins one and commits it at its end;
a block inside an open transaction (an enclosing block, or statements run
before it) sets a savepoint and releases it. A block that raises rolls back
(to its savepoint) and lets the exception go on.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from psycopg2 import sql
from psycopg2.extensions import TRANSACTION_STATUS_IDLE as _IDLE

__all__ = ["Transaction"]

logger = logging.getLogger("psycopg2_pool")


class Transaction:
    """One ``with conn.transaction():`` block (what ``as`` gives).

    ``connection`` is the handle it runs on; ``savepoint_name`` the savepoint
    it set, or None for a block that began the transaction without one.
    """

    __slots__ = (
        "_autocommit",
        "_outer",
        "_state",
        "connection",
        "force_rollback",
        "savepoint_name",
    )

    def __init__(
        self, connection: Any, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> None:
        self.connection = connection
        self.savepoint_name = savepoint_name
        self.force_rollback = force_rollback
        self._outer = False
        self._autocommit = False
        self._state = "inactive"  # then "active", then "ended"

    def __repr__(self) -> str:
        where = f"savepoint {self.savepoint_name!r}" if self.savepoint_name else "transaction"
        return f"<{type(self).__name__} ({where}, {self._state}) at 0x{id(self):x}>"

    def _run(self, statement: sql.Composable | str) -> None:
        with self.connection.__wrapped__.cursor() as cur:
            cur.execute(statement)

    def __enter__(self) -> Transaction:
        if self._state != "inactive":
            raise TypeError("a transaction block can be entered only once")
        handle = self.connection
        real = handle.__wrapped__
        depth = handle._self_transactions
        # psycopg 3 looks at the server's transaction status alone; psycopg2
        # sends its BEGIN only with the first statement, so an enclosing block
        # may not have opened one yet: the blocks open on the handle count too.
        self._outer = depth == 0 and real.get_transaction_status() == _IDLE
        self._autocommit = bool(real.autocommit)
        if self._outer:
            if self._autocommit:
                self._run("BEGIN")
            # Otherwise psycopg2 begins the transaction with the next statement.
        elif self.savepoint_name is None:
            self.savepoint_name = f"_psycopg2_pool_savepoint_{depth + 1}"
        if self.savepoint_name is not None:
            try:
                self._run(sql.SQL("SAVEPOINT {}").format(sql.Identifier(self.savepoint_name)))
            except BaseException:
                if self._outer:
                    self._end(commit=False)
                raise
        handle._self_transactions = depth + 1
        self._state = "active"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.connection._self_transactions -= 1
        self._state = "ended"
        if exc_type is None:
            self._finish(commit=not self.force_rollback)
            return
        try:
            self._finish(commit=False)
        except Exception as error:  # the block's own exception is the one to see
            logger.warning("error ignored in rollback of %r: %s", self, error)

    def _finish(self, commit: bool) -> None:
        name = self.savepoint_name
        if name is not None and not self._outer:
            savepoint = sql.Identifier(name)
            if not commit:
                self._run(sql.SQL("ROLLBACK TO SAVEPOINT {}").format(savepoint))
            self._run(sql.SQL("RELEASE SAVEPOINT {}").format(savepoint))
            return
        self._end(commit)

    def _end(self, commit: bool) -> None:
        """End the transaction this (outer) block began."""
        if self._autocommit:
            self._run("COMMIT" if commit else "ROLLBACK")
        elif commit:
            self.connection.__wrapped__.commit()
        else:
            self.connection.__wrapped__.rollback()
