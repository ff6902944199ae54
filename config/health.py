from django.core.cache import cache
from django.db import connection
from django.http import JsonResponse


def healthz(request):
    """Alive: the process answers."""
    return JsonResponse({"status": "ok"})


def readyz(request):
    """Ready: the database and (when configured) Redis answer."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = "ok"
    except Exception as error:  # any driver error means not ready
        checks["database"] = f"error: {error.__class__.__name__}"
    try:
        cache.set("parley:readyz", "1", 5)
        checks["cache"] = "ok" if cache.get("parley:readyz") == "1" else "error: no round trip"
    except Exception as error:
        checks["cache"] = f"error: {error.__class__.__name__}"
    ready = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ready else "unavailable", "checks": checks}, status=200 if ready else 503)
