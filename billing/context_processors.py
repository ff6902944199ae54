"""`budget_banner`: the current member's budgets at 75 % or more, for the banner in base.html."""

from billing.selectors import budget_statuses


def budget_banner(request) -> dict:
    membership = getattr(request, "membership", None)
    user = getattr(request, "user", None)
    if membership is None or user is None or not user.is_authenticated:
        return {}
    alerts = [status for status in budget_statuses(membership=membership) if status.level != "ok"]
    return {"budget_alerts": alerts} if alerts else {}
