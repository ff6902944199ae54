import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("parley")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

from config.observability import celery_setup  # noqa: E402 - after the app exists

celery_setup()  # task ids in the logs; the worker's /metrics when METRICS_PORT is set


@app.on_after_configure.connect
def _collect_beat_schedules(sender: Celery, **kwargs) -> None:
    """Each app declares its periodic tasks in its own `beat.py` (BEAT_SCHEDULE); merge them here."""
    from importlib import import_module

    from django.conf import settings

    schedule = dict(sender.conf.beat_schedule or {})
    for name in settings.INSTALLED_APPS:
        try:
            module = import_module(f"{name}.beat")
        except ModuleNotFoundError as exc:
            # No beat module (or the entry is an AppConfig path, e.g. config.apps.ParleyAdminConfig):
            # nothing to merge. A missing import inside a beat module still fails loudly.
            wanted = f"{name}.beat"
            if exc.name != wanted and not wanted.startswith(f"{exc.name}."):
                raise
            continue
        schedule.update(getattr(module, "BEAT_SCHEDULE", {}))
    sender.conf.beat_schedule = schedule
