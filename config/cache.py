"""Django's Redis cache, made to survive Redis: an outage costs cache misses, never an error.

`ResilientRedisCache` is `django.core.cache.backends.redis.RedisCache` whose every operation
answers as if the key were missing when Redis cannot be reached (connection refused, reset, or
timed out): reads return the default (`get`, `get_many` → `{}`, `has_key` → False), writes and
deletes do nothing and return False (`set_many` returns every key, Django's "these failed"),
`incr`/`decr` raise ValueError as they do for a missing key. Everything built on the cache (the
API-key cache's generation mark, allauth's rate limits, `get_or_set`) therefore degrades to "not
cached". Other Redis errors (a wrong type, a script error) still raise: they are bugs, not outages.

After a failure, Redis is not asked again for `outage_seconds` (the operations answer at once, as
above), so a dead or hung Redis costs one request one timeout every few seconds, not every request
every call. A failure is logged at WARNING at most once per `outage_seconds` (and once when Redis
answers again), naming the host and port only (never the URL, which may hold a password).

OPTIONS (any of them can be set in CACHES["default"]["OPTIONS"]; these are the defaults):

- `socket_connect_timeout`: 0.25 s, `socket_timeout`: 0.25 s: how long a call waits for a Redis
  that does not answer (a hung server, a lost network);
- `retry`: `redis.retry.Retry(NoBackoff(), 1)`: one immediate retry on a fresh connection, so the
  first call after a Redis restart (on a pooled connection the restart closed) succeeds. redis-py 8
  would otherwise retry 10 times with backoff (seconds per call while Redis is down). Worst case, a
  hung Redis costs a call 2 × 0.25 s = 0.5 s;
- `outage_seconds`: 2.0 (Parley's, not redis-py's): how long to answer without Redis after a failure.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

logger = logging.getLogger(__name__)

SOCKET_TIMEOUT = 0.25  # seconds
OUTAGE_SECONDS = 2.0
# What an unreachable Redis raises (BusyLoadingError, a restarting Redis, is a ConnectionError).
OUTAGE_ERRORS: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)

_T = TypeVar("_T")


class _Outage:
    """Whether one Redis (by its servers) is known to be down, shared by every thread's cache object."""

    def __init__(self, where: str, seconds: float) -> None:
        self.where = where
        self.seconds = seconds
        self.down_until = 0.0  # monotonic; 0: Redis answered last time
        self._logged_at = -1e9
        self._lock = threading.Lock()

    def skipping(self) -> bool:
        return self.down_until != 0.0 and time.monotonic() < self.down_until

    def failed(self, error: Exception) -> None:
        now = time.monotonic()
        with self._lock:
            self.down_until = now + self.seconds
            if now - self._logged_at < self.seconds:
                return
            self._logged_at = now
        logger.warning(
            "Cache: Redis at %s unreachable (%s); answering as cache misses, retrying in %.0f s.",
            self.where,
            error.__class__.__name__,
            self.seconds,
        )

    def answered(self) -> None:
        with self._lock:
            if self.down_until == 0.0:
                return
            self.down_until = 0.0
        logger.warning("Cache: Redis at %s answers again.", self.where)


_outages: dict[tuple[tuple[str, ...], float], _Outage] = {}
_outages_lock = threading.Lock()


def _where(servers: list[str]) -> str:
    """host:port of each server, without user, password or database."""
    places = []
    for server in servers:
        parts = urlsplit(server)
        if parts.scheme == "unix":
            places.append(parts.path or "unix socket")
        else:
            places.append(f"{parts.hostname}:{parts.port or 6379}")
    return ", ".join(places)


def _outage_for(servers: list[str], seconds: float) -> _Outage:
    key = (tuple(servers), seconds)
    with _outages_lock:
        outage = _outages.get(key)
        if outage is None:
            outage = _outages[key] = _Outage(_where(servers), seconds)
        return outage


class ResilientRedisCache(RedisCache):
    def __init__(self, server, params) -> None:
        params = dict(params)
        options = dict(params.get("OPTIONS") or {})
        seconds = float(options.pop("outage_seconds", OUTAGE_SECONDS))
        options.setdefault("socket_connect_timeout", SOCKET_TIMEOUT)
        options.setdefault("socket_timeout", SOCKET_TIMEOUT)
        options.setdefault("retry", Retry(NoBackoff(), 1))
        params["OPTIONS"] = options
        super().__init__(server, params)
        self._outage = _outage_for(self._servers, seconds)

    def _guarded(self, call: Callable[[], _T], fallback: Callable[[], _T]) -> _T:
        outage = self._outage
        if outage.skipping():
            return fallback()
        try:
            result = call()
        except OUTAGE_ERRORS as error:
            outage.failed(error)
            return fallback()
        if outage.down_until:
            outage.answered()
        return result

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None) -> bool:
        return self._guarded(lambda: super(ResilientRedisCache, self).add(key, value, timeout, version), _false)

    def get(self, key, default=None, version=None) -> Any:
        return self._guarded(lambda: super(ResilientRedisCache, self).get(key, default, version), lambda: default)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None) -> bool | None:
        """None once written (as Django's backends answer), False when Redis could not be reached."""
        return self._guarded(lambda: super(ResilientRedisCache, self).set(key, value, timeout, version), _false)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None) -> bool:
        return self._guarded(lambda: super(ResilientRedisCache, self).touch(key, timeout, version), _false)

    def delete(self, key, version=None) -> bool:
        return self._guarded(lambda: super(ResilientRedisCache, self).delete(key, version), _false)

    def get_many(self, keys, version=None) -> dict:
        return self._guarded(lambda: super(ResilientRedisCache, self).get_many(keys, version), dict)

    def has_key(self, key, version=None) -> bool:
        return self._guarded(lambda: super(ResilientRedisCache, self).has_key(key, version), _false)

    def incr(self, key, delta=1, version=None) -> int:
        def missing() -> int:
            raise ValueError(f"Key '{key}' not found.")

        return self._guarded(lambda: super(ResilientRedisCache, self).incr(key, delta, version), missing)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None) -> list:
        """Django's contract: the keys that could not be set (all of them when Redis is down)."""
        return self._guarded(lambda: super(ResilientRedisCache, self).set_many(data, timeout, version), lambda: list(data))

    def delete_many(self, keys, version=None) -> bool | None:
        return self._guarded(lambda: super(ResilientRedisCache, self).delete_many(keys, version), _false)

    def clear(self) -> bool:
        return self._guarded(lambda: super(ResilientRedisCache, self).clear(), _false)


def _false() -> bool:
    return False
