"""Accounts pages: landing, dashboard, organization switcher, organization settings, API keys,
invitations, the audit log. Thin: parse the form, call one service or selector, render or redirect."""

import csv
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import wraps
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied as PageForbidden
from django.core.paginator import Page, Paginator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import audit, selectors, services
from accounts.errors import InvalidInput, NotFound, ParleyError
from accounts.models import Role

SETTINGS_URL = "organization_settings"
API_KEYS_URL = "api_keys"


def membership_required(view):
    """Logged in and acting in an organization (`request.membership`, resolved by the middleware)."""

    @login_required
    @wraps(view)
    def wrapper(request: HttpRequest, *args, **kwargs):
        if request.membership is None:
            messages.info(request, "You are not in any organization yet. Create one to get started.")
            return redirect("organization_create")
        return view(request, *args, **kwargs)

    return wrapper


def _safe_next(request: HttpRequest, default: str) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, require_https=request.is_secure()):
        return target
    return default


def _run(request: HttpRequest, action, success: str | None = None) -> bool:
    """Call a service; show its error as a message. NotFound stays a 404 (foreign ids leak nothing)."""
    try:
        action()
    except NotFound:
        raise Http404 from None
    except ParleyError as error:
        messages.error(request, error.message)
        return False
    if success:
        messages.success(request, success)
    return True


# --- Landing and dashboard --------------------------------------------------------------------


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("dashboard")
    return render(request, "home.html")


@require_GET
@membership_required
def dashboard(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    return render(
        request,
        "accounts/dashboard.html",
        {
            "tier": membership.organization.tier,
            "members_count": len(selectors.organization_members(organization=membership.organization)),
            "keys_count": len(selectors.api_keys_for_member(membership=membership, include_revoked=False)),
        },
    )


# --- Organizations ----------------------------------------------------------------------------


@require_POST
@login_required
def organization_switch(request: HttpRequest) -> HttpResponse:
    try:
        membership = services.organization_switch(
            request_or_session=request, user=request.user, organization_id=request.POST.get("organization_id", "")
        )
    except NotFound:
        raise Http404("Organization not found.") from None
    messages.success(request, f"Switched to {membership.organization.name}.")
    return redirect(_safe_next(request, reverse("dashboard")))


@require_http_methods(["GET", "POST"])
@login_required
def organization_create(request: HttpRequest) -> HttpResponse:
    name = ""
    if request.method == "POST":
        name = request.POST.get("name", "")
        try:
            organization = services.organization_create(name=name, owner=request.user)
        except ParleyError as error:
            messages.error(request, error.message)
        else:
            services.organization_switch(request_or_session=request, user=request.user, organization_id=organization.id)
            messages.success(request, f"Created {organization.name}. Invite your team from its settings.")
            return redirect(SETTINGS_URL)
    return render(request, "accounts/organization_create.html", {"name": name})


@require_GET
@membership_required
def organization_settings(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    organization = membership.organization
    members = selectors.organization_members(organization=organization)
    return render(
        request,
        "accounts/organization_settings.html",
        {
            "members": members,
            "owners_count": sum(1 for member in members if member.is_owner),
            "invitations": selectors.invitations_for_organization(organization=organization)
            if membership.is_admin
            else [],
            "assignable_roles": Role.choices
            if membership.is_owner
            else [r for r in Role.choices if r[0] != Role.OWNER],
        },
    )


@require_POST
@membership_required
def organization_rename(request: HttpRequest) -> HttpResponse:
    _run(
        request,
        lambda: services.organization_rename(membership=request.membership, name=request.POST.get("name", "")),
        "Organization renamed.",
    )
    return redirect(SETTINGS_URL)


@require_POST
@membership_required
def invitation_create(request: HttpRequest) -> HttpResponse:
    email = request.POST.get("email", "")
    _run(
        request,
        lambda: services.invitation_create(
            membership=request.membership,
            email=email,
            role=request.POST.get("role", Role.MEMBER),
            base_url=request.build_absolute_uri("/"),
        ),
        f"Invitation sent to {email.strip()}.",
    )
    return redirect(SETTINGS_URL)


@require_POST
@membership_required
def invitation_revoke(request: HttpRequest, invitation_id) -> HttpResponse:
    _run(
        request,
        lambda: services.invitation_revoke(membership=request.membership, invitation_id=invitation_id),
        "Invitation revoked.",
    )
    return redirect(SETTINGS_URL)


@require_POST
@membership_required
def member_change_role(request: HttpRequest, membership_id) -> HttpResponse:
    _run(
        request,
        lambda: services.membership_change_role(
            membership=request.membership, target_id=membership_id, role=request.POST.get("role", "")
        ),
        "Role changed.",
    )
    return redirect(SETTINGS_URL)


@require_POST
@membership_required
def member_remove(request: HttpRequest, membership_id) -> HttpResponse:
    leaving = str(request.membership.id) == str(membership_id)
    organization_name = request.membership.organization.name
    done = _run(
        request,
        lambda: services.membership_remove(membership=request.membership, target_id=membership_id),
        f"You left {organization_name}." if leaving else "Member removed.",
    )
    if done and leaving:
        return redirect("dashboard")
    return redirect(SETTINGS_URL)


# --- Invitations (the invited person's side) ---------------------------------------------------


@require_http_methods(["GET", "POST"])
@login_required
def invitation_accept(request: HttpRequest, organization_id, token: str) -> HttpResponse:
    error = None
    try:
        invitation = selectors.invitation_get_by_token(token=token)
    except NotFound as not_found:
        invitation, error = None, not_found.message
    if request.method == "POST" and error is None:
        try:
            membership = services.invitation_accept(user=request.user, token=token, organization_id=organization_id)
        except ParleyError as refused:
            error = refused.message
        else:
            services.organization_switch(
                request_or_session=request, user=request.user, organization_id=membership.organization_id
            )
            messages.success(request, f"Welcome to {membership.organization.name}!")
            return redirect("dashboard")
    elif invitation is not None:
        # Say up front what accepting would refuse, instead of offering a button that fails.
        if str(invitation.organization_id) != str(organization_id):
            error = "This invitation is for a different organization."
        elif invitation.accepted_at is not None:
            error = "This invitation has already been accepted."
        elif invitation.is_expired:
            error = "This invitation has expired. Ask an admin of the organization for a new one."
    status = 400 if error else 200
    return render(request, "accounts/invitation_accept.html", {"invitation": invitation, "error": error}, status=status)


# --- API keys ---------------------------------------------------------------------------------


def _parse_expiry(value: str) -> datetime | None:
    """'' → never; '30' → in 30 days; 'YYYY-MM-DD' → the end of that day (UTC)."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isdigit():
        return timezone.now() + timedelta(days=int(value))
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise InvalidInput("Enter the expiry as a date (YYYY-MM-DD).") from None
    return datetime.combine(day, time(23, 59, 59), tzinfo=UTC)


@require_http_methods(["GET", "POST"])
@membership_required
def api_keys(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    created_secret = None
    if request.method == "POST":
        try:
            expires_at = _parse_expiry(request.POST.get("expires", ""))
            key, created_secret = services.api_key_create(
                membership=membership, name=request.POST.get("name", ""), expires_at=expires_at
            )
        except ParleyError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"Created the key “{key.name}”. Copy the secret now: it is not shown again.")
    response = render(
        request,
        "accounts/api_keys.html",
        {
            "keys": selectors.api_keys_for_member(membership=membership),
            "created_secret": created_secret,
            "now": timezone.now(),
            "api_enabled": membership.organization.tier.has_feature("api"),
        },
    )
    response["Cache-Control"] = "no-store"  # the page may show a secret
    return response


@require_POST
@membership_required
def api_key_revoke(request: HttpRequest, key_id) -> HttpResponse:
    _run(request, lambda: services.api_key_revoke(membership=request.membership, key_id=key_id), "Key revoked.")
    return redirect(API_KEYS_URL)


# --- Audit log (owners and admins) ------------------------------------------------------------

AUDIT_PAGE_SIZE = 50
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _admin_only(request: HttpRequest) -> None:
    """Admin-only organization pages answer members 403, as the organization API does."""
    if not request.membership.is_admin:
        raise PageForbidden("Only owners and admins can see the audit log.")


class NextPagePaginator(Paginator):
    """A Paginator that never counts: it reads one row more than a page to know whether another
    follows (a COUNT(*) over a long audit trail would cost more than the page itself)."""

    def validate_number(self, number) -> int:
        try:
            number = int(number)
        except (TypeError, ValueError):
            return 1
        return max(1, number)

    def page(self, number) -> "NextPage":
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        rows = list(self.object_list[bottom : bottom + self.per_page + 1])
        return NextPage(rows[: self.per_page], number, self, more=len(rows) > self.per_page)


class NextPage(Page):
    def __init__(self, object_list, number, paginator, *, more: bool) -> None:
        super().__init__(object_list, number, paginator)
        self.more = more

    def has_next(self) -> bool:
        return self.more

    def start_index(self) -> int:
        return (self.number - 1) * self.paginator.per_page + 1 if self.object_list else 0

    def end_index(self) -> int:
        return (self.number - 1) * self.paginator.per_page + len(self.object_list)


@dataclass
class AuditFilters:
    actor: str = ""
    action: str = ""
    start: date | None = None  # the first day shown (UTC)
    end: date | None = None  # the last day shown (UTC), inclusive

    @property
    def since(self) -> datetime | None:
        return datetime.combine(self.start, time.min, tzinfo=UTC) if self.start else None

    @property
    def until(self) -> datetime | None:
        return datetime.combine(self.end + timedelta(days=1), time.min, tzinfo=UTC) if self.end else None

    def query(self) -> dict[str, str]:
        """The filters as query parameters (page links and the CSV link keep them)."""
        values = {"actor": self.actor, "action": self.action, "from": self.start, "to": self.end}
        return {name: str(value) for name, value in values.items() if value}

    def service_kwargs(self) -> dict:
        return {"actor": self.actor or None, "action": self.action or None, "since": self.since, "until": self.until}


def _audit_filters(request: HttpRequest) -> tuple[AuditFilters, str | None]:
    """The filters of the query string, and what is wrong with them (the wrong part is dropped)."""
    filters = AuditFilters(
        actor=(request.GET.get("actor") or "").strip()[:255], action=(request.GET.get("action") or "").strip()[:64]
    )
    try:
        filters.start = date.fromisoformat(request.GET["from"]) if request.GET.get("from") else None
        filters.end = date.fromisoformat(request.GET["to"]) if request.GET.get("to") else None
    except ValueError:
        filters.start = filters.end = None
        return filters, "Enter the dates as YYYY-MM-DD."
    if filters.start and filters.end and filters.end < filters.start:
        filters.start = filters.end = None
        return filters, "The end date is before the start date."
    return filters, None


def _change_value(value) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _change_lines(changes) -> list[tuple[str, str, str]]:
    """{field: [before, after]} as (field, before, after) strings; anything else shown as it is."""
    lines = []
    for name, value in (changes or {}).items() if isinstance(changes, dict) else []:
        if isinstance(value, list | tuple) and len(value) == 2:
            lines.append((name, _change_value(value[0]), _change_value(value[1])))
        else:
            lines.append((name, "", _change_value(value)))
    return lines


def _actor_text(event) -> str:
    return event.actor_label or event.get_actor_type_display()


@require_GET
@membership_required
def organization_audit(request: HttpRequest) -> HttpResponse:
    _admin_only(request)
    organization = request.membership.organization
    filters, error = _audit_filters(request)
    events = audit.audit_events_for(organization=organization, **filters.service_kwargs())
    page = NextPagePaginator(events, AUDIT_PAGE_SIZE).page(request.GET.get("page"))
    rows = [{"event": event, "actor": _actor_text(event), "changes": _change_lines(event.changes)} for event in page]
    query = filters.query()
    return render(
        request,
        "accounts/audit.html",
        {
            "page": page,
            "rows": rows,
            "filters": filters,
            "filter_error": error,
            "filtered": bool(query),
            "actions": audit.audit_actions_for(organization=organization),
            "actors": audit.audit_actors_for(organization=organization),
            "previous_query": urlencode({**query, "page": page.number - 1}) if page.has_previous() else "",
            "next_query": urlencode({**query, "page": page.number + 1}) if page.has_next() else "",
            "export_query": urlencode(query),
        },
    )


def _csv_cell(value) -> str:
    """A cell a spreadsheet will not run: text starting with = + - @ (or a tab/CR) gets a leading '."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(CSV_FORMULA_STARTS) else text


AUDIT_CSV_HEADER = [
    "created_at", "actor_type", "actor", "action", "target_type", "target_id", "target", "changes",
    "ip_address", "user_agent", "request_id", "sequence", "event_id",
]  # fmt: skip


@require_GET
@membership_required
def organization_audit_csv(request: HttpRequest) -> HttpResponse:
    _admin_only(request)
    filters, error = _audit_filters(request)
    if error:
        return HttpResponseBadRequest(error)
    membership = request.membership
    events = audit.audit_export_start(membership=membership, **filters.service_kwargs())

    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())

    def lines():
        yield writer.writerow(AUDIT_CSV_HEADER)
        for e in events:
            cells = [
                e.created_at.astimezone(UTC).isoformat(),
                e.actor_type,
                e.actor_label,
                e.action,
                e.target_type,
                e.target_id,
                e.target_label,
                json.dumps(e.changes, ensure_ascii=False, sort_keys=True) if e.changes else "",
                e.ip_address,
                e.user_agent,
                e.request_id,
                e.sequence,
                e.id,
            ]
            yield writer.writerow([_csv_cell(cell) for cell in cells])

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    day = timezone.now().astimezone(UTC).date()
    response["Content-Disposition"] = f'attachment; filename="parley-audit-{membership.organization.slug}-{day}.csv"'
    response["Cache-Control"] = "no-store"
    return response
