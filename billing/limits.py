"""Requests-per-minute and tokens-per-minute limits: sliding one-minute windows.

With `REDIS_URL`, the windows live in Redis and one Lua script checks every scope (organization,
member, API key) and takes the request slot in all of them atomically, so processes share limits
and a refusal in one scope takes nothing from the others. Without Redis (the embedded default),
or while Redis is unreachable, a process-local window does the same job. See billing/README.md.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from django.conf import settings

logger = logging.getLogger(__name__)

WINDOW_MS = 60_000
KEY_PREFIX = "parley:rl:"
# After a Redis failure, skip Redis for this long instead of paying a timeout on every turn.
REDIS_RETRY_SECONDS = 5.0
# A call waits at most this long for a Redis that does not answer, and is retried once at once on a
# new connection (the first call after a Redis restart meets a pooled connection the restart closed):
# a hung Redis costs a turn 2 × 0.25 s = 0.5 s, inside the budget row's lock, then Redis is skipped.
REDIS_TIMEOUT = 0.25


def _clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class Scope:
    """One thing that is limited: `name` is e.g. 'org:<uuid>'; a limit of None means unlimited."""

    name: str
    requests_per_minute: int | None
    tokens_per_minute: int | None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: float = 0.0  # seconds until a retry can pass
    scope: str = ""
    # a refusal: the clock time (ms) at which the refusing window frees a place (unrounded)
    free_at_ms: int | None = field(default=None, compare=False)


# Checks every token window is under its limit and every request window has a free slot; if all
# pass, takes a slot in every request window. Returns {1} or {0, retry_ms, index of the scope}.
# KEYS: request windows (n_req of them), then token windows. ARGV: now_ms, window_ms, n_req,
# slot member, then one limit per key. Token entries are members "<tokens>:<id>".
_ADMIT_LUA = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local nreq = tonumber(ARGV[3])
local slot = ARGV[4]
for i = 1, #KEYS do
  local key = KEYS[i]
  local limit = tonumber(ARGV[4 + i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if limit <= 0 then
    return {0, window, i}
  end
  if i <= nreq then
    local count = redis.call('ZCARD', key)
    if count >= limit then
      local entry = redis.call('ZRANGE', key, count - limit, count - limit, 'WITHSCORES')
      return {0, tonumber(entry[2]) + window - now, i}
    end
  else
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local total = 0
    for j = 1, #entries, 2 do
      total = total + tonumber(string.match(entries[j], '^(%d+):'))
    end
    if total >= limit then
      for j = 1, #entries, 2 do
        total = total - tonumber(string.match(entries[j], '^(%d+):'))
        if total < limit then
          return {0, tonumber(entries[j + 1]) + window - now, i}
        end
      end
    end
  end
end
for i = 1, nreq do
  redis.call('ZADD', KEYS[i], now, slot)
  redis.call('PEXPIRE', KEYS[i], window)
end
return {1}
"""


class MemoryWindows:
    """The same sliding windows in this process's memory (embedded default, or Redis down)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._windows: dict[str, deque[tuple[int, int]]] = {}

    def _window(self, key: str, now: int) -> deque[tuple[int, int]]:
        window = self._windows.setdefault(key, deque())
        while window and window[0][0] <= now - WINDOW_MS:
            window.popleft()
        return window

    def admit(self, scopes: Sequence[Scope], now: int) -> Verdict:
        with self._lock:
            for scope in scopes:
                if scope.requests_per_minute is not None:
                    window = self._window(KEY_PREFIX + scope.name + ":req", now)
                    limit = scope.requests_per_minute
                    if limit <= 0:
                        return _refusal(scope, now, now + WINDOW_MS)
                    if len(window) >= limit:
                        oldest_to_expire = window[len(window) - limit][0]
                        return _refusal(scope, now, oldest_to_expire + WINDOW_MS)
                if scope.tokens_per_minute is not None:
                    window = self._window(KEY_PREFIX + scope.name + ":tok", now)
                    total = sum(weight for _, weight in window)
                    if scope.tokens_per_minute <= 0:
                        return _refusal(scope, now, now + WINDOW_MS)
                    if total >= scope.tokens_per_minute:
                        for at, weight in window:
                            total -= weight
                            if total < scope.tokens_per_minute:
                                return _refusal(scope, now, at + WINDOW_MS)
            for scope in scopes:
                if scope.requests_per_minute is not None:
                    self._window(KEY_PREFIX + scope.name + ":req", now).append((now, 1))
            return Verdict(True)

    def record_tokens(self, scopes: Sequence[Scope], tokens: int, now: int) -> None:
        with self._lock:
            for scope in scopes:
                if scope.tokens_per_minute is not None:
                    self._window(KEY_PREFIX + scope.name + ":tok", now).append((now, tokens))

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


def _seconds(ms: float) -> float:
    return max(1.0, float(math.ceil(ms / 1000)))


def _refusal(scope: Scope, now: int, free_at_ms: int) -> Verdict:
    return Verdict(False, _seconds(free_at_ms - now), scope.name, free_at_ms=free_at_ms)


# Refusals remembered per process: at most this many scopes (expired ones are dropped first).
KNOWN_REFUSALS_MAX = 10_000


class RateLimiter:
    def __init__(self, redis_url: str | None) -> None:
        self.redis_url = redis_url
        self.memory = MemoryWindows()
        self._redis = None
        self._script = None
        self._redis_down_until = 0.0
        self._lock = threading.Lock()
        # (scope, its limits) -> clock ms until which that scope is known to refuse
        self._full_until: dict[tuple[str, int | None, int | None], int] = {}

    def _client(self):
        if not self.redis_url or time.monotonic() < self._redis_down_until:
            return None
        if self._redis is None:
            with self._lock:
                if self._redis is None:
                    import redis
                    from redis.backoff import NoBackoff
                    from redis.retry import Retry

                    client = redis.Redis.from_url(
                        self.redis_url,
                        socket_timeout=REDIS_TIMEOUT,
                        socket_connect_timeout=REDIS_TIMEOUT,
                        retry=Retry(NoBackoff(), 1),
                        health_check_interval=30,
                    )
                    self._script = client.register_script(_ADMIT_LUA)
                    self._redis = client
        return self._redis

    def _redis_failed(self, error: Exception) -> None:
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS
        logger.warning(
            "Rate limits: Redis unreachable (%s); using this process's own windows for %.0f s. "
            "Budgets are still enforced by the database.",
            error.__class__.__name__,
            REDIS_RETRY_SECONDS,
        )

    @property
    def using_redis(self) -> bool:
        return self._client() is not None

    def known_refusal(self, scopes: Sequence[Scope], now: int | None = None) -> Verdict | None:
        """A refusal this process has already seen and that still holds, found without asking Redis.

        Windows only fill up until the time a refusal names (entries are added, or expire in order),
        so until then the same scope with the same limits refuses again: a client hammering at its
        limit costs no Redis call, and the caller can refuse before any database work.
        """
        if not self._full_until:
            return None
        now = _clock_ms() if now is None else now
        for scope in scopes:
            free_at = self._full_until.get((scope.name, scope.requests_per_minute, scope.tokens_per_minute))
            if free_at is not None and free_at > now:
                return Verdict(False, _seconds(free_at - now), scope.name, free_at_ms=free_at)
        return None

    def _remember(self, verdict: Verdict, scopes: Sequence[Scope], now: int) -> Verdict:
        if verdict.allowed or verdict.free_at_ms is None:
            return verdict
        scope = next(s for s in scopes if s.name == verdict.scope)
        with self._lock:
            if len(self._full_until) >= KNOWN_REFUSALS_MAX:
                expired = [key for key, free_at in self._full_until.items() if free_at <= now]
                for key in expired or list(self._full_until)[: KNOWN_REFUSALS_MAX // 2]:
                    del self._full_until[key]
            self._full_until[(scope.name, scope.requests_per_minute, scope.tokens_per_minute)] = verdict.free_at_ms
        return verdict

    def forget(self) -> None:
        """Forget this process's windows and remembered refusals (tests; a limit's change needs none)."""
        self.memory.clear()
        with self._lock:
            self._full_until.clear()

    def admit(self, scopes: Sequence[Scope], now: int | None = None) -> Verdict:
        """Take one request slot in every scope, or none when any scope is full."""
        now = _clock_ms() if now is None else now
        scopes = [s for s in scopes if s.requests_per_minute is not None or s.tokens_per_minute is not None]
        if not scopes:
            return Verdict(True)
        return self._remember(self._admit(scopes, now), scopes, now)

    def _admit(self, scopes: Sequence[Scope], now: int) -> Verdict:
        client = self._client()
        if client is not None:
            import redis

            req = [s for s in scopes if s.requests_per_minute is not None]
            tok = [s for s in scopes if s.tokens_per_minute is not None]
            keys = [KEY_PREFIX + s.name + ":req" for s in req] + [KEY_PREFIX + s.name + ":tok" for s in tok]
            limits = [s.requests_per_minute for s in req] + [s.tokens_per_minute for s in tok]
            try:
                result = self._script(
                    keys=keys, args=[now, WINDOW_MS, len(req), f"{now}:{uuid.uuid4().hex}", *limits], client=client
                )
            except redis.RedisError as error:
                self._redis_failed(error)
            else:
                if int(result[0]) == 1:
                    return Verdict(True)
                failing = (req + tok)[int(result[2]) - 1]
                return _refusal(failing, now, now + int(result[1]))
        return self.memory.admit(scopes, now)

    def record_tokens(self, scopes: Sequence[Scope], tokens: int, now: int | None = None) -> None:
        """Count tokens a call really used into the token windows (after settlement)."""
        now = _clock_ms() if now is None else now
        scopes = [s for s in scopes if s.tokens_per_minute is not None]
        if not scopes or tokens <= 0:
            return
        client = self._client()
        if client is not None:
            import redis

            member = f"{int(tokens)}:{uuid.uuid4().hex}"
            try:
                with client.pipeline(transaction=True) as pipe:
                    for scope in scopes:
                        key = KEY_PREFIX + scope.name + ":tok"
                        pipe.zadd(key, {member: now})
                        pipe.pexpire(key, WINDOW_MS)
                    pipe.execute()
                return
            except redis.RedisError as error:
                self._redis_failed(error)
        self.memory.record_tokens(scopes, tokens, now)


_limiter: RateLimiter | None = None
_limiter_lock = threading.Lock()


def limiter() -> RateLimiter:
    """The process's rate limiter (Redis when REDIS_URL is set, else memory)."""
    global _limiter
    url = getattr(settings, "BILLING_RATELIMIT_REDIS_URL", None) or settings.REDIS_URL or None
    if _limiter is None or _limiter.redis_url != url:
        with _limiter_lock:
            if _limiter is None or _limiter.redis_url != url:
                _limiter = RateLimiter(url)
    return _limiter
