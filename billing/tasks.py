"""Celery entry points of billing; each calls one service.

The service modules never import this one: billing.alerts enqueues `billing.budget_alert_send` by name.
"""

from celery import shared_task

from billing import alerts, settlement, usage


@shared_task(name="billing.reservations_release_expired")
def reservations_release_expired() -> int:
    return settlement.reservations_release_expired()


@shared_task(name="billing.budget_alerts_sweep")
def budget_alerts_sweep() -> int:
    return len(alerts.budget_alerts_sweep())


@shared_task(name=alerts.ALERT_TASK)
def budget_alert_send(counter_id: int, threshold: int) -> int:
    return alerts.budget_alert_email(counter_id=counter_id, threshold=threshold)


@shared_task(name="billing.usage_rollup")
def usage_rollup() -> int:
    return usage.usage_rollup()
