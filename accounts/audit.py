"""The audit trail: record who did what, in the same transaction as the change.

Services call `audit_record(...)` next to the write they audit, inside their `transaction.atomic`,
so a change and its event commit together or not at all. Who acted, from where, comes from the
audit context: `AuditContextMiddleware`-equivalent code in accounts.middleware binds the request's
user, IP address and user agent; API-key authentication adds the key; tasks and commands bind a
system actor with `audit_actor(system="...")`. A service may also pass `actor=` explicitly.

Events form one hash chain per organization (and one, "platform", for events of no organization):
each row's hash covers its own fields and the previous row's hash. `audit_verify` (the
`manage.py audit_verify` command) recomputes the chains and names the first row that does not fit.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC
from typing import Any

import structlog
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from accounts.models import ActorType, ApiKey, AuditChainHead, AuditEvent, Organization, User

PLATFORM_CHAIN = "platform"
GENESIS_HASH = "0" * 64
USER_AGENT_MAX = 400
# Field names whose values never go into an event (the change is recorded, the value is not).
_SECRET_MARKERS = ("password", "secret", "token", "hashed", "key_value", "otp", "recovery")
REDACTED = "[redacted]"


@dataclass(frozen=True)
class AuditContext:
    """Who is acting, and from where. Bound per request, task or command."""

    user: Any = None  # a User (or AnonymousUser, treated as nobody)
    api_key: ApiKey | None = None
    system: str = ""  # a task's or command's name
    ip_address: str | None = None
    user_agent: str = ""


_context: ContextVar[AuditContext] = ContextVar("parley_audit_context", default=AuditContext())  # noqa: B039


def audit_context() -> AuditContext:
    return _context.get()


@contextlib.contextmanager
def audit_actor(**fields: Any) -> Iterator[AuditContext]:
    """Act as someone for the block: `audit_actor(system="manage.py organization_suspend")`,
    `audit_actor(user=staff_user)`. Fields not given keep the surrounding context's values."""
    token = _context.set(replace(_context.get(), **fields))
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def audit_bind(**fields: Any):
    """Set context fields until the returned token is reset (middleware); see `audit_actor`."""
    return _context.set(replace(_context.get(), **fields))


def audit_unbind(token) -> None:
    _context.reset(token)


def client_ip(meta: Mapping[str, Any]) -> str | None:
    """The caller's address. Behind `PARLEY_TRUSTED_PROXIES` proxies (each appends to
    X-Forwarded-For), the address the outermost trusted proxy saw; otherwise REMOTE_ADDR."""
    proxies = int(getattr(settings, "PARLEY_TRUSTED_PROXIES", 0) or 0)
    candidate = meta.get("REMOTE_ADDR")
    if proxies > 0:
        hops = [hop.strip() for hop in (meta.get("HTTP_X_FORWARDED_FOR") or "").split(",") if hop.strip()]
        if len(hops) >= proxies:
            candidate = hops[-proxies]
    return _normal_ip(candidate)


def _normal_ip(value: Any) -> str | None:
    if not value:
        return None
    try:
        return ipaddress.ip_address(str(value).strip()).compressed
    except ValueError:
        return None


def context_from_request(request, *, anonymous: bool = False) -> dict[str, Any]:
    """The audit context fields of an HTTP request (user, IP address, user agent).

    `anonymous=True` skips `request.user` (an async request without a session cookie: resolving
    it would be a database read on the event loop)."""
    user = None if anonymous else getattr(request, "user", None)
    return {
        "user": user if user is not None and user.is_authenticated else None,
        "ip_address": client_ip(request.META),
        "user_agent": (request.META.get("HTTP_USER_AGENT") or "")[:USER_AGENT_MAX],
    }


def context_from_scope(scope: Mapping[str, Any]) -> dict[str, Any]:
    """The same for a websocket's ASGI scope."""
    headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", [])}
    meta = {"REMOTE_ADDR": (scope.get("client") or [None])[0], "HTTP_X_FORWARDED_FOR": headers.get("x-forwarded-for")}
    user = scope.get("user")
    return {
        "user": user if user is not None and getattr(user, "is_authenticated", False) else None,
        "ip_address": client_ip(meta),
        "user_agent": headers.get("user-agent", "")[:USER_AGENT_MAX],
    }


# --- Changes ----------------------------------------------------------------------------------


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_MARKERS)


def _plain(value: Any) -> Any:
    """A JSON value that reads back exactly as stored (Decimal, dates, UUIDs become strings)."""
    return json.loads(json.dumps(value, cls=DjangoJSONEncoder))


def changes_between(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, list]:
    """{field: [before, after]} for the fields whose value differs; secret fields are redacted."""
    changed: dict[str, list] = {}
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if _plain(old) == _plain(new):
            continue
        changed[name] = [REDACTED, REDACTED] if is_secret_field(name) else [old, new]
    return changed


def _clean_changes(changes: Mapping[str, Any] | None) -> dict[str, Any]:
    cleaned = {}
    for name, value in (changes or {}).items():
        cleaned[str(name)] = [REDACTED, REDACTED] if is_secret_field(str(name)) else value
    return _plain(cleaned)


# --- The chain --------------------------------------------------------------------------------


def chain_key(organization_id: Any) -> str:
    return str(organization_id) if organization_id else PLATFORM_CHAIN


def event_hash(event: AuditEvent, prev_hash: str) -> str:
    """SHA-256 over the event's fields (canonical JSON) and the previous row's hash."""
    created = event.created_at.astimezone(UTC) if timezone.is_aware(event.created_at) else event.created_at
    fields = {
        "id": str(event.id),
        "created_at": created.isoformat(timespec="microseconds"),
        "organization_id": str(event.organization_id) if event.organization_id else None,
        "sequence": event.sequence,
        "actor_type": event.actor_type,
        "actor_user_id": str(event.actor_user_id) if event.actor_user_id else None,
        "actor_api_key_id": str(event.actor_api_key_id) if event.actor_api_key_id else None,
        "actor_label": event.actor_label,
        "action": event.action,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "target_label": event.target_label,
        "changes": event.changes,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "prev_hash": prev_hash,
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, cls=DjangoJSONEncoder)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _actor_fields(context: AuditContext) -> dict[str, Any]:
    if context.api_key is not None:
        key = context.api_key
        return {
            "actor_type": ActorType.API_KEY,
            "actor_api_key_id": key.pk,
            "actor_user_id": key.user_id,
            "actor_label": f"{key.name} ({key.prefix}…)"[:255],
        }
    user = context.user
    if user is not None and getattr(user, "is_authenticated", False):
        return {
            "actor_type": ActorType.STAFF if user.is_staff else ActorType.USER,
            "actor_user_id": user.pk,
            "actor_label": user.email[:255],
        }
    if context.system:
        return {"actor_type": ActorType.SYSTEM, "actor_label": context.system[:255]}
    return {"actor_type": ActorType.ANONYMOUS, "actor_label": ""}


def _target_fields(target: Any, target_type: str | None, target_id: Any, target_label: str | None) -> dict[str, str]:
    if target is not None:
        target_type = target_type or target._meta.model_name
        target_id = target_id if target_id is not None else target.pk
        target_label = target_label if target_label is not None else str(target)
    return {
        "target_type": (target_type or "")[:64],
        "target_id": "" if target_id is None else str(target_id)[:64],
        "target_label": (target_label or "")[:255],
    }


def audit_enabled() -> bool:
    """`PARLEY_AUDIT_ENABLED=0` turns recording off (only for the side-by-side benchmark)."""
    return bool(getattr(settings, "PARLEY_AUDIT_ENABLED", True))


def audit_record(
    action: str,
    *,
    organization: Organization | Any = None,
    target: Any = None,
    target_type: str | None = None,
    target_id: Any = None,
    target_label: str | None = None,
    changes: Mapping[str, Any] | None = None,
    actor: AuditContext | None = None,
    user: User | None = None,
) -> AuditEvent | None:
    """Append one event to its organization's chain, in the caller's transaction.

    `organization` is an Organization or its id (None: the platform chain). `target` is the changed
    row (its model name, pk and str are used unless given). `changes` is `{field: [before, after]}`
    (see `changes_between`); secret fields are redacted. `actor` replaces the bound context;
    `user` is a shortcut for "this user acted" (log-in signals).
    """
    if not audit_enabled():
        return None
    context = actor or audit_context()
    if user is not None:
        context = replace(context, user=user, api_key=None)
    organization_id = getattr(organization, "pk", organization)
    request_id = structlog.contextvars.get_contextvars().get("request_id") or ""
    with transaction.atomic():
        head, _ = AuditChainHead.objects.select_for_update().get_or_create(chain=chain_key(organization_id))
        event = AuditEvent(
            organization_id=organization_id,
            sequence=head.sequence + 1,
            action=action,
            changes=_clean_changes(changes),
            ip_address=_normal_ip(context.ip_address),
            user_agent=(context.user_agent or "")[:USER_AGENT_MAX],
            request_id=str(request_id)[:100],
            prev_hash=head.hash or GENESIS_HASH,
            **_actor_fields(context),
            **_target_fields(target, target_type, target_id, target_label),
        )
        event.created_at = timezone.now()
        event.hash = event_hash(event, event.prev_hash)
        event.save(force_insert=True)
        head.sequence, head.hash = event.sequence, event.hash
        head.save(update_fields=["sequence", "hash"])
    return event
