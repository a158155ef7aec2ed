"""Keeping passwords out of reprs, logs and error messages.

Every string the package shows about a connection target goes through here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from psycopg2.extensions import parse_dsn

_MASK = "********"

# key=value conninfo: password=secret or password='sec ret' (with \' escapes)
_KV_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# URI: scheme://user:secret@host
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@\s]*)(@)")
# URI query parameter: ?password=secret&...
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&\s]*)", re.IGNORECASE)


def mask_dsn(dsn: str) -> str:
    """Return ``dsn`` (key/value or URI) with any password replaced by stars."""
    masked = _KV_PASSWORD.sub(lambda m: m.group(1) + _MASK, dsn)
    masked = _URI_PASSWORD.sub(lambda m: m.group(1) + _MASK + m.group(3), masked)
    return _QUERY_PASSWORD.sub(lambda m: m.group(1) + _MASK, masked)


def mask_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of connect() keywords safe to show."""
    shown = {}
    for key, value in kwargs.items():
        if key == "password":
            shown[key] = _MASK
        elif key == "dsn" and isinstance(value, str):
            shown[key] = mask_dsn(value)
        else:
            shown[key] = value
    return shown


def mask_text(text: str, secrets: tuple[str, ...]) -> str:
    """Remove literal secrets (known passwords) from arbitrary text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _MASK)
    return mask_dsn(text)


def secrets_in(sources: Iterable[Any]) -> tuple[str, ...]:
    """The passwords found in connect() arguments: conninfo strings, URIs, dicts."""
    found = []
    for source in sources:
        if isinstance(source, dict):
            password = source.get("password")
            if isinstance(password, str) and password:
                found.append(password)
            source = source.get("dsn")
        if isinstance(source, str) and source:
            try:
                password = parse_dsn(source).get("password")
            except Exception:  # malformed: mask_dsn's patterns still apply
                password = None
            if password:
                found.append(password)
    return tuple(found)


def scrubbed(exc: BaseException, secrets: tuple[str, ...]) -> BaseException:
    """``exc``, or an exception of the same class whose message shows no password.

    libpq quotes a malformed URI whole, password included, in its error.
    """
    text = str(exc)
    clean = mask_text(text, secrets)
    if clean == text:
        return exc
    try:
        masked = type(exc)(clean)
    except Exception:  # a class that wants other arguments
        masked = RuntimeError(clean)
    return masked.with_traceback(exc.__traceback__)
