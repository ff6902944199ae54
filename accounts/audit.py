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
# Field names whose values never go into an event (the change is recorded, the value is not): any
# name with one of these words (`token`, `hashed_secret`, `password1`, `recovery_codes`), but not
# `max_output_tokens`.
_SECRET_WORDS = frozenset({"secret", "token", "hashed", "otp", "recovery", "totp"})
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
    `audit_actor(user=staff_user)`. Fields not given keep the surrounding context's values, except
    that a user given without a key acts as that user, not through a key bound around it."""
    token = audit_bind(**fields)
    try:
        yield _context.get()
    finally:
        _context.reset(token)


def audit_bind(**fields: Any):
    """Set context fields until the returned token is reset (middleware); see `audit_actor`."""
    if "user" in fields:
        fields.setdefault("api_key", None)
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
    words = name.lower().replace("-", "_").split("_")
    return any(word in _SECRET_WORDS or word.startswith("password") for word in words)


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
    # No savepoint (two round trips fewer): a failure here fails the caller's transaction anyway.
    with transaction.atomic(savepoint=False):
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


# --- Reading ----------------------------------------------------------------------------------
# The organization's own view of its trail (the "Audit log" tab and its CSV export). Every query
# starts from one organization, so the (organization, -created_at) index serves it and no other
# tenant's row can come back; the filters only narrow that.

from django.db.models import Q  # noqa: E402

# The action names services record (the filter offers them even before one has happened).
AUDIT_ACTIONS = (
    "api_key.create", "api_key.revoke", "membership.invite", "invitation.revoke", "membership.join",
    "membership.role_change", "membership.remove", "organization.create", "organization.rename",
    "organization.tier_change", "organization.suspend", "organization.reactivate", "budget.update",
    "price.create", "price.change", "price.delete", "model.create", "model.change", "model.delete",
    "usage.export", "audit.export", "audit.purge", "auth.login", "auth.login_failed", "auth.logout",
    "auth.mfa_enable", "auth.mfa_disable", "auth.password_change", "auth.password_reset",
    "staff.content_access", "ledger.credit", "ledger.refund",
)  # fmt: skip
# The filter choices look at this many of the newest events only (an index range, however long the trail).
CHOICES_WINDOW = 2000


def audit_events_for(
    *, organization: Organization | Any, actor: str | None = None, action: str | None = None, since=None, until=None
):
    """The organization's events, newest first: a lazy queryset (slice it, or `.iterator()` it).

    `actor` is an actor's label (an e-mail, an API key's "name (prefix…)", a task's name) or a
    user's e-mail (which also finds what they did with their API keys), case-insensitive. `action`
    is a dotted name. `since` (inclusive) and `until` (exclusive) are aware datetimes.
    """
    organization_id = getattr(organization, "pk", organization)
    if not organization_id:
        return AuditEvent.objects.none()  # the platform chain is for staff only
    events = AuditEvent.objects.for_organization(organization_id)
    if actor:
        events = events.filter(Q(actor_label__iexact=actor) | Q(actor_user__email__iexact=actor))
    if action:
        events = events.filter(action=action)
    if since is not None:
        events = events.filter(created_at__gte=since)
    if until is not None:
        events = events.filter(created_at__lt=until)
    return events.order_by("-created_at", "-sequence")


def _recent_values(organization_id: Any, field: str) -> set[str]:
    """The distinct values of `field` among the newest events: one range of the organization's index."""
    recent = AuditEvent.objects.for_organization(organization_id).order_by("-created_at")
    return {value for value in recent.values_list(field, flat=True)[:CHOICES_WINDOW] if value}


def audit_actions_for(*, organization: Organization | Any) -> list[str]:
    """The actions to offer in the filter: the known names and any other among the newest events."""
    organization_id = getattr(organization, "pk", organization)
    if not organization_id:
        return []
    return sorted(set(AUDIT_ACTIONS) | _recent_values(organization_id, "action"))


def audit_actors_for(*, organization: Organization | Any) -> list[str]:
    """The actors to suggest in the filter: the members' e-mails and the labels among the newest events."""
    organization_id = getattr(organization, "pk", organization)
    if not organization_id:
        return []
    members = set(User.objects.filter(memberships__organization_id=organization_id).values_list("email", flat=True))
    return sorted(members | _recent_values(organization_id, "actor_label"), key=str.lower)


def audit_export_start(*, membership, actor: str | None = None, action: str | None = None, since=None, until=None):
    """An owner's or admin's CSV export: records `audit.export` (its filters in `changes`), then
    returns the exported events, newest first, as an iterator (read while the answer streams)."""
    from accounts.errors import PermissionDenied

    if not membership.is_admin:
        raise PermissionDenied("Only owners and admins can see the audit log.")
    filters = {
        "actor": actor or None,
        "action": action or None,
        "since": since.isoformat() if since is not None else None,
        "until": until.isoformat() if until is not None else None,
    }
    organization = membership.organization
    with transaction.atomic():
        audit_record(
            "audit.export",
            organization=organization,
            target=organization,
            changes={name: [None, value] for name, value in filters.items()},
        )
    events = audit_events_for(organization=organization, actor=actor, action=action, since=since, until=until)
    return events.iterator(chunk_size=2000)
