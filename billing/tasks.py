"""Celery entry points of billing; each calls one service."""

from celery import shared_task

from billing import services


@shared_task(name="billing.reservations_release_expired")
def reservations_release_expired() -> int:
    return services.reservations_release_expired()


@shared_task(name="billing.budget_alerts_sweep")
def budget_alerts_sweep() -> int:
    return len(services.budget_alerts_sweep())


@shared_task(name="billing.budget_alert_send")
def budget_alert_send(counter_id: int, threshold: int) -> int:
    return services.budget_alert_email(counter_id=counter_id, threshold=threshold)


@shared_task(name="billing.usage_rollup")
def usage_rollup() -> int:
    return services.usage_rollup()
