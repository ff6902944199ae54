"""Periodic tasks of conversations (collected into CELERY_BEAT_SCHEDULE by config/celery.py)."""

BEAT_SCHEDULE = {
    "conversations-interrupted-sweep": {
        "task": "conversations.tasks.messages_interrupted_sweep",
        "schedule": 60.0,
    },
}
