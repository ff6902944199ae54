"""Accounts pages: landing, dashboard, organization switcher, organization settings, API keys,
invitations. Thin: parse the form, call one service or selector, render or redirect."""

from datetime import UTC, date, datetime, time, timedelta
from functools import wraps

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts import selectors, services
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
