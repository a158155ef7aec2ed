"""psycopg 3's ``Connection.connect()`` options, which are no libpq parameters.

psycopg_pool callers put them in ``kwargs`` (``kwargs={"autocommit": True}``);
here they are taken out before psycopg2 sees the rest, and turned into what
psycopg2 can do: ``autocommit`` and ``cursor_factory`` are honoured,
``prepare_threshold`` changes nothing (psycopg2 never prepares statements on
the server), ``row_factory`` and ``context`` have no psycopg2 counterpart and
are refused unless None.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import psycopg2

__all__ = ["ConnectOptions", "split_options"]

#: psycopg 3's own keywords of ``Connection.connect()``.
PSYCOPG3_KEYWORDS = frozenset(
    ("autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context")
)

_REFUSED = {
    "row_factory": "psycopg2 has no row factories: pass cursor_factory instead"
    " (psycopg2.extras.RealDictCursor for dict_row, NamedTupleCursor for namedtuple_row)",
    "context": "psycopg2 has no adaptation contexts: register adapters and types"
    " with psycopg2.extensions (in the pool's configure callback, for instance)",
}


class ConnectOptions(NamedTuple):
    """What a new connection must get once psycopg2 has opened it."""

    autocommit: bool = False
    cursor_factory: Any = None


PLAIN = ConnectOptions()


def split_options(arguments: Mapping[str, Any]) -> tuple[dict[str, Any], ConnectOptions]:
    """``arguments`` without psycopg 3's options, and those options.

    Raise :class:`psycopg2.NotSupportedError` for an option psycopg2 cannot
    honour (``row_factory``, ``context``) set to anything but None.
    """
    if PSYCOPG3_KEYWORDS.isdisjoint(arguments):
        return dict(arguments), PLAIN
    rest = {k: v for k, v in arguments.items() if k not in PSYCOPG3_KEYWORDS}
    for name, hint in _REFUSED.items():
        if arguments.get(name) is not None:
            raise psycopg2.NotSupportedError(f"{name} is a psycopg 3 option: {hint}")
    options = ConnectOptions(
        autocommit=bool(arguments.get("autocommit", False)),
        cursor_factory=arguments.get("cursor_factory"),
    )
    return rest, options
