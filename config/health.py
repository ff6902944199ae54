"""Probes for load balancers and orchestrators: `/healthz` (alive) and `/readyz` (dependencies)."""

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.cache import never_cache


def _error(error: Exception) -> str:
    # The class name only: probes are public and must not leak hosts or credentials.
    return f"error: {error.__class__.__name__}"


@never_cache
def healthz(request):
    """Alive: the process answers (touches nothing else)."""
    return JsonResponse({"status": "ok"})


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_cache() -> str:
    cache.set("parley:readyz", "1", 5)
    return "ok" if cache.get("parley:readyz") == "1" else "error: no round trip"


def _check_redis() -> str:
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        return "ok" if client.ping() else "error: no PONG"
    finally:
        client.close()


@never_cache
def readyz(request):
    """Ready: the database, the cache and (when configured) Redis answer. 503 otherwise."""
    probes = {"database": _check_database, "cache": _check_cache}
    if settings.REDIS_URL:
        probes["redis"] = _check_redis
    checks = {}
    for name, probe in probes.items():
        try:
            checks[name] = probe()
        except Exception as error:  # any driver error means "not ready", never a 500
            checks[name] = _error(error)
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
