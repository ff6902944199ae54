"""REST API of billing: this period's spend and budgets, and ledger rows for a date range.

Owners and admins see the organization's spend and every ledger row of it; members their own.
Reading ledger rows is an export: each page writes a `usage.export` audit event.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import islice

from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import membership_of
from accounts.serializers import error_responses
from billing.periods import period_end, period_start
from billing.selectors import budget_statuses, usage_report
from billing.serializers import LedgerPageSerializer, LedgerQuerySerializer, UsageSerializer
from billing.usage import usage_export


class UsageView(APIView):
    @extend_schema(summary="This period's spend and budgets", responses={200: UsageSerializer, **error_responses()})
    def get(self, request: Request) -> Response:
        membership = membership_of(request)
        now = timezone.now()
        start = period_start(now)
        whole = membership.is_admin
        report = usage_report(
            organization=membership.organization,
            start=start,
            end=now.date() + timedelta(days=1),
            membership=None if whole else membership,
        )
        budgets = [
            {
                "scope": b.scope,
                "label": b.label,
                "limit": b.limit,
                "spent": b.spent,
                "reserved": b.reserved,
                "remaining": b.remaining,
                "percent": b.percent,
                "level": b.level,
                "resets_at": b.resets_at,
            }
            for b in budget_statuses(membership=membership, at=now)
        ]
        body = {
            "period_start": start,
            "period_end": period_end(now),
            "scope": "organization" if whole else "member",
            "spent": report.total_cost,
            "calls": report.total_calls,
            "by_model": [
                {"model": m, "cost": cost, "calls": calls, "input_tokens": i, "output_tokens": o}
                for m, cost, calls, i, o in report.by_model
            ],
            "budgets": budgets,
        }
        return Response(UsageSerializer(body).data)


class LedgerView(APIView):
    @extend_schema(
        summary="Ledger rows (one per provider call) for a date range, oldest first",
        parameters=[LedgerQuerySerializer],
        responses={200: LedgerPageSerializer, **error_responses()},
    )
    def get(self, request: Request) -> Response:
        membership = membership_of(request)
        query = LedgerQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        now = timezone.now()
        start = query.validated_data.get("start") or period_start(now)
        end = query.validated_data.get("end") or (now.date() + timedelta(days=1))
        if end <= start:
            end = start + timedelta(days=1)
        offset, limit = query.validated_data["offset"], query.validated_data["limit"]
        # An export of the ledger: each page read is recorded (usage.export, with the range and page).
        rows = usage_export(membership=membership, start=start, end=end, channel="api", offset=offset, limit=limit)
        page = list(islice(rows, offset, offset + limit + 1))
        more = len(page) > limit
        body = {
            "start": start,
            "end": end,
            "offset": offset,
            "limit": limit,
            "next_offset": offset + limit if more else None,
            "results": page[:limit],
        }
        return Response(LedgerPageSerializer(body).data)


