"""Where the chat turn's database work runs when called from async code.

`database_sync_to_async` defaults to one thread shared by every thread-sensitive call of the
process, so each turn of every socket would wait for all the others. The turn's calls do not need
that thread (each takes its own connection from the pool), so they run on a pool of their own,
sized below the database connection pool.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings


def _threads() -> int:
    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        return 4  # SQLite writes one at a time anyway
    pool = (database.get("OPTIONS") or {}).get("pool")
    size = pool.get("max_size", 20) if isinstance(pool, dict) else 20
    # Few threads: the ORM work is CPU-bound under the GIL, and every extra busy thread delays the
    # event loop (the streams) by up to a switch interval; the pool is for overlapping I/O waits.
    return max(2, min(4, int(size) - 4))


EXECUTOR = ThreadPoolExecutor(max_workers=_threads(), thread_name_prefix="conversations-db")


def db_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`await db_async(fn)(...)`: run a sync function that uses the database on the turn's pool."""
    return database_sync_to_async(fn, thread_sensitive=False, executor=EXECUTOR)
