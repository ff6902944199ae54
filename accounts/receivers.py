"""Authentication events into the audit trail: log-in, failed log-in, log-out, password, MFA.

Django and allauth announce these with signals; each receiver only turns the signal into one
`audit_record` call. The events have no organization (the platform chain) and name the user as
the target. Who acted, from which address and user agent, comes from the request the signal
carries. Connected in `AccountsConfig.ready()`.

A failing write is not swallowed: the signals are sent with `send()`, so the error reaches the
request, which answers 500 (and a 500 does not save the session, so a log-in without its event
does not stick).
"""

from __future__ import annotations

from typing import Any

from accounts.audit import AuditContext, audit_context, audit_record, context_from_request
from accounts.models import User


def _context(request, *, anonymous: bool = False) -> AuditContext:
    """The actor fields of the signal's request; the bound context when it carries none."""
    if request is None or not hasattr(request, "META"):
        bound = audit_context()
        return AuditContext(ip_address=bound.ip_address, user_agent=bound.user_agent) if anonymous else bound
    return AuditContext(**context_from_request(request, anonymous=anonymous))


def _user_event(action: str, request, user, changes: dict[str, Any] | None = None) -> None:
    if user is None or not getattr(user, "pk", None):
        return  # e.g. a log-out of nobody
    audit_record(action, target=user, target_type="user", changes=changes, actor=_context(request), user=user)


def on_user_logged_in(sender, request, user, **kwargs) -> None:
    _user_event("auth.login", request, user)


def on_user_logged_out(sender, request, user, **kwargs) -> None:
    _user_event("auth.logout", request, user)


def on_user_login_failed(sender, credentials, request=None, **kwargs) -> None:
    """Someone tried to log in: the attempted address (and its user's id when it exists), never
    the password (Django has already masked it; it is not read here)."""
    email = str(credentials.get("email") or credentials.get(User.USERNAME_FIELD) or credentials.get("username") or "")
    audit_record(
        "auth.login_failed",
        target_type="user",
        target_id=User.objects.filter(email__iexact=email).values_list("pk", flat=True).first() if email else None,
        target_label=email,
        actor=_context(request, anonymous=True),
    )


def on_password_changed(sender, request, user, **kwargs) -> None:
    _user_event("auth.password_change", request, user)


def on_password_set(sender, request, user, **kwargs) -> None:
    _user_event("auth.password_change", request, user, {"password_usable": [False, True]})


def on_password_reset(sender, request, user, **kwargs) -> None:
    _user_event("auth.password_reset", request, user)


def on_authenticator_added(sender, request, user, authenticator, **kwargs) -> None:
    _user_event("auth.mfa_enable", request, user, {"type": [None, authenticator.type]})


def on_authenticator_reset(sender, request, user, authenticator, **kwargs) -> None:
    """Recovery codes regenerated: a new set of codes is enabled (the old ones stop working)."""
    _user_event("auth.mfa_enable", request, user, {"type": [None, authenticator.type], "regenerated": [None, True]})


def on_authenticator_removed(sender, request, user, authenticator, **kwargs) -> None:
    _user_event("auth.mfa_disable", request, user, {"type": [authenticator.type, None]})


def connect() -> None:
    from allauth.account import signals as account_signals
    from allauth.mfa import signals as mfa_signals
    from django.contrib.auth import signals as auth_signals

    # Django's own log-in signals (allauth logs in through django.contrib.auth.login, which sends
    # user_logged_in; allauth's own `user_logged_in` is not connected, or each log-in would count twice).
    for signal, receiver in (
        (auth_signals.user_logged_in, on_user_logged_in),
        (auth_signals.user_logged_out, on_user_logged_out),
        (auth_signals.user_login_failed, on_user_login_failed),
        (account_signals.password_changed, on_password_changed),
        (account_signals.password_set, on_password_set),
        (account_signals.password_reset, on_password_reset),
        (mfa_signals.authenticator_added, on_authenticator_added),
        (mfa_signals.authenticator_reset, on_authenticator_reset),
        (mfa_signals.authenticator_removed, on_authenticator_removed),
    ):
        signal.connect(receiver, dispatch_uid=f"accounts.audit.{receiver.__name__}")
