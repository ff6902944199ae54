"""Where the chat turn's database work runs when called from async code.

`database_sync_to_async` defaults to one thread shared by every thread-sensitive call of the
process, so each turn of every socket would wait for all the others. The turn's calls do not need
that thread (each takes its own connection from the pool), so they run on a pool of their own,
sized below the database connection pool.
"""

from __future__ import annotations

import os
import sys
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

# These threads run ORM code (CPU) while the event loop streams. Each time the loop makes a system
# call (one socket send per frame) it releases the GIL, and a busy thread may then keep it for a
# whole switch interval (5 ms by default) before the loop gets it back: at thousands of frames a
# second that stalls every stream. A short interval bounds the stall.
_SWITCH_INTERVAL = float(os.environ.get("PARLEY_GIL_SWITCH_INTERVAL", "0.0005"))
if _SWITCH_INTERVAL > 0 and sys.getswitchinterval() > _SWITCH_INTERVAL:
    sys.setswitchinterval(_SWITCH_INTERVAL)


def db_async(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`await db_async(fn)(...)`: run a sync function that uses the database on the turn's pool."""
    return database_sync_to_async(fn, thread_sensitive=False, executor=EXECUTOR)
