"""Probes for load balancers and orchestrators: `/healthz` (alive) and `/readyz` (dependencies);
`/metrics` for Prometheus (docs/operations.md)."""

import hmac
import ipaddress
import logging
import os

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from config.metrics import render

logger = logging.getLogger(__name__)


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


# --- /metrics ---------------------------------------------------------------------------------------

# Requests relayed by a proxy carry one of these: without a token, only a direct scrape from an
# internal address is served (behind nginx, REMOTE_ADDR is the proxy's private address).
_FORWARDED = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")
# Loopback and the private ranges (RFC 1918, IPv6 unique local). Not `ip.is_private`, which also
# counts the documentation and other reserved ranges.
_INTERNAL_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128", "fc00::/7")
)


def _metrics_token() -> str:
    return (getattr(settings, "METRICS_TOKEN", None) or os.environ.get("METRICS_TOKEN") or "").strip()


def _internal(request) -> bool:
    if any(request.META.get(header) for header in _FORWARDED):
        return False
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", "").split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _INTERNAL_NETWORKS)


def _bearer_matches(request, token: str) -> bool:
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _not_found() -> HttpResponse:
    # The same answer whatever was wrong (no token, a wrong one, an outside address): nothing to probe.
    return HttpResponse("Not Found\n", status=404, content_type="text/plain; charset=utf-8")


@csrf_exempt  # a POST gets this view's plain 404/405, not the CSRF middleware's HTML 403
@never_cache
def metrics(request):
    """Prometheus scrape: with METRICS_TOKEN set, `Authorization: Bearer <token>` is required;
    without it, only direct requests from loopback or private addresses are served. Anyone else: 404."""
    token = _metrics_token()
    allowed = _bearer_matches(request, token) if token else _internal(request)
    if not allowed:
        return _not_found()
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(
            "Method Not Allowed\n", status=405, headers={"Allow": "GET, HEAD"}, content_type="text/plain"
        )
    try:
        body, content_type = render(request.META.get("HTTP_ACCEPT", ""))
    except Exception:  # the scrape fails as text, never as Django's HTML 500 page
        logger.exception("rendering /metrics failed")
        return HttpResponse("metrics unavailable\n", status=503, content_type="text/plain; charset=utf-8")
    return HttpResponse(body, content_type=content_type)
