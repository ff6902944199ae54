"""Old home of billing's services, kept only while callers move to the use-case modules:

billing.reservations (turn_authorize), billing.settlement (turn_settle, reservations_release_expired),
billing.alerts, billing.budgets, billing.usage. Import from those; this module is going away.
"""

from billing.alerts import budget_alert_email, budget_alerts_check, budget_alerts_sweep
from billing.budgets import member_budget_set, organization_budget_set
from billing.reservations import TurnAuthorization, rate_limit_policies_forget, rate_limit_scopes, turn_authorize
from billing.settlement import reservations_release_expired, turn_settle
from billing.usage import usage_rollup

__all__ = [
    "TurnAuthorization",
    "budget_alert_email",
    "budget_alerts_check",
    "budget_alerts_sweep",
    "member_budget_set",
    "organization_budget_set",
    "rate_limit_policies_forget",
    "rate_limit_scopes",
    "reservations_release_expired",
    "turn_authorize",
    "turn_settle",
    "usage_rollup",
]
