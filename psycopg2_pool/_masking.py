"""Keeping passwords out of reprs, logs and error messages.

Every string the package shows about a connection target goes through here.
"""

from __future__ import annotations

import re
from typing import Any

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
