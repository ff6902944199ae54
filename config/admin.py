"""Parley's admin site: Django's, plus the staff console at /admin/console/ (linked from the index).

The console is staff only through the admin's own check (`admin_view`: active staff, else the
admin's log-in page). It reads billing.console and renders server-side: the charts are SVG and CSS
bars computed here, no script and nothing fetched from elsewhere.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path

from billing import console
from billing.charts import day_bars

LONGEST_RANGE_DAYS = 366
ORGANIZATION_ROWS = 50  # the page lists the highest spenders; the total counts every organization


def _share(rows: list, top: Decimal) -> list[dict]:
    """Rows with the width (percent of the largest) of their horizontal bar."""
    return [
        {"row": row, "width": float(max(row.cost, Decimal(0)) * 100 / top) if top > 0 else 0.0} for row in rows
    ]


def _parse_range(request: HttpRequest) -> tuple[date, date, str]:
    """The inclusive [start, end] asked for (default: this month, UTC), and an error to show if any."""
    default_start, default_end = console.console_default_range()
    raw_start, raw_end = request.GET.get("start") or "", request.GET.get("end") or ""
    try:
        start = date.fromisoformat(raw_start) if raw_start else default_start
        end = date.fromisoformat(raw_end) if raw_end else default_end
    except ValueError:
        return default_start, default_end, "Dates are YYYY-MM-DD; showing this month."
    if end < start:
        return default_start, default_end, "The end date is before the start date; showing this month."
    if (end - start).days >= LONGEST_RANGE_DAYS:
        return default_start, default_end, f"Choose at most {LONGEST_RANGE_DAYS} days; showing this month."
    return start, end, ""


class ParleyAdminSite(admin.AdminSite):
    site_header = "Parley administration"
    site_title = "Parley admin"
    index_title = "Administration"

    def get_urls(self):
        return [path("console/", self.admin_view(self.console_view), name="console"), *super().get_urls()]

    def console_view(self, request: HttpRequest) -> HttpResponse:
        start, end, error = _parse_range(request)
        data = console.console_overview(start=start, end=end + timedelta(days=1))
        by_organization = data.spend.by_organization
        by_model = data.spend.by_model
        context = {
            **self.each_context(request),
            "title": "Staff console",
            "console": data,
            "start": start,
            "end": end,
            "error": error,
            "day_chart": day_bars(data.spend.by_day),
            "organization_bars": _share(
                by_organization[:ORGANIZATION_ROWS], max((r.cost for r in by_organization), default=Decimal(0))
            ),
            "organizations_more": max(0, len(by_organization) - ORGANIZATION_ROWS),
            "model_bars": _share(by_model, max((r.cost for r in by_model), default=Decimal(0))),
        }
        request.current_app = self.name
        return TemplateResponse(request, "admin/console.html", context)
