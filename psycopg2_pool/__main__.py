"""``python -m psycopg2_pool``: the command line tools of :mod:`psycopg2_pool.cli`."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
