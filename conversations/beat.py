"""Periodic tasks of conversations (collected into CELERY_BEAT_SCHEDULE by config/celery.py)."""

BEAT_SCHEDULE = {
    # Bills and ends the turns of dead processes: within 30 s of silence + 15 s, under a minute.
    "conversations-turns-recover": {
        "task": "conversations.turns_recover",
        "schedule": 15.0,
    },
}
