"""The usage page, its CSV export, and setting a member's budget. Thin: parse, call, render."""

from __future__ import annotations

import csv
from datetime import UTC, date, timedelta
from decimal import Decimal, InvalidOperation
from functools import wraps
from uuid import UUID

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from accounts.errors import NotFound, ParleyError
from accounts.selectors import member_get_in_organization, organization_members
from billing import budgets, selectors
from billing.charts import day_bars
from billing.periods import period_end, period_start
from billing.usage import usage_export


def member_required(view):
    @login_required
    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs):
        if getattr(request, "membership", None) is None:
            messages.info(request, "Join or create an organization first.")
            return redirect("/dashboard/")
        return view(request, *args, **kwargs)

    return wrapped


@member_required
def usage_page(request: HttpRequest) -> HttpResponse:
    membership = request.membership
    organization = membership.organization
    now = timezone.now()
    start = period_start(now)
    end = period_end(now).date()
    scope_member = None if membership.is_admin else membership
    report = selectors.usage_report(organization=organization, start=start, end=end, membership=scope_member)
    context = {
        "budgets": selectors.budget_statuses(membership=membership, at=now),
        "report": report,
        "chart": day_bars(report.by_day),
        "period_label": f"{start:%B %Y}",
        "resets_at": period_end(now),
        "org_wide": scope_member is None,
        "today": now.astimezone(UTC).date(),
        "export_start": start,
        "export_end": now.astimezone(UTC).date(),
    }
    if membership.is_admin:
        members = organization_members(organization=organization)
        spend = dict(report.by_member)
        limits = selectors.member_budget_limits(organization=organization)
        period_spend = selectors.member_spend_this_period(organization=organization, at=now)
        context["members"] = [
            {
                "membership": m,
                "spent": spend.get(m.id, Decimal(0)),
                "period_spent": period_spend.get(m.id, Decimal(0)),
                "budget": limits.get(m.id),
            }
            for m in members
        ]
        known = {m.id for m in members}
        context["former_members_spend"] = sum((c for mid, c in report.by_member if mid not in known), Decimal(0))
    return render(request, "billing/usage.html", context)


def _parse_day(value: str | None, default: date) -> date:
    if not value:
        return default
    return date.fromisoformat(value)


def _cell(text: str) -> str:
    """Free text as a CSV cell a spreadsheet shows rather than runs (a leading = + - @ is a formula)."""
    return f"'{text}" if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


@member_required
def usage_csv(request: HttpRequest) -> HttpResponse:
    """The ledger for days [start, end] inclusive: the whole organization for owners/admins, else one's own."""
    membership = request.membership
    today = timezone.now().astimezone(UTC).date()
    try:
        start = _parse_day(request.GET.get("start"), period_start(timezone.now()))
        end = _parse_day(request.GET.get("end"), today)
    except ValueError:
        return HttpResponseBadRequest("Dates are YYYY-MM-DD.")
    if end < start:
        return HttpResponseBadRequest("The end date is before the start date.")
    rows = usage_export(membership=membership, start=start, end=end + timedelta(days=1), channel="csv")

    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())
    header = [
        "created_at", "request_id", "member", "api_key", "conversation_id", "message_id", "provider", "model",
        "input_tokens", "output_tokens", "cached_input_tokens", "input_per_mtok", "output_per_mtok",
        "cached_input_per_mtok", "cost_usd", "estimated", "kind", "note",
    ]  # fmt: skip

    def lines():
        yield writer.writerow(header)
        for e in rows:
            yield writer.writerow(
                [
                    e.created_at.astimezone(UTC).isoformat(),
                    e.request_id,
                    e.user_email,
                    e.api_key.prefix if e.api_key else "",
                    e.conversation_id or "",
                    e.message_id or "",
                    e.provider,
                    e.model,
                    e.input_tokens,
                    e.output_tokens,
                    e.cached_input_tokens,
                    f"{e.input_per_mtok:f}",  # fixed-point: str() would print zero as 0E-12
                    f"{e.output_per_mtok:f}",
                    f"{e.cached_input_per_mtok:f}",
                    f"{e.cost:f}",
                    int(e.estimated),
                    e.kind,
                    _cell(e.note),
                ]
            )

    response = StreamingHttpResponse(lines(), content_type="text/csv")
    slug = membership.organization.slug
    response["Content-Disposition"] = f'attachment; filename="parley-usage-{slug}-{start}-{end}.csv"'
    return response


@require_POST
@member_required
def member_budget(request: HttpRequest, membership_id: UUID) -> HttpResponse:
    actor = request.membership
    if not actor.is_admin:
        # A plain member cannot tell whether the id exists in the organization.
        raise Http404("Member not found.")
    try:
        member = member_get_in_organization(organization=actor.organization, membership_id=membership_id)
    except NotFound:
        raise Http404("Member not found.") from None
    raw = (request.POST.get("monthly_limit_usd") or "").strip()
    try:
        amount = Decimal(raw) if raw else None
        if amount is not None and (not amount.is_finite() or amount < 0):
            raise InvalidOperation
    except InvalidOperation:
        messages.error(request, "Enter a budget in US dollars, e.g. 25 or 12.50, or leave it empty for none.")
        return redirect("billing:usage")
    try:
        budgets.member_budget_set(actor=actor, member=member, monthly_limit_usd=amount)
    except ParleyError as error:
        messages.error(request, error.message)
        return redirect("billing:usage")
    who = member.user.email
    messages.success(request, f"Budget of {who} set to ${amount}." if amount is not None else f"{who} has no own budget now.")
    return redirect("billing:usage")
