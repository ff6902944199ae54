"""Celery entry points of llm; each calls one function."""

from celery import shared_task

from llm import rollup


@shared_task(name="llm.call_log_rollup")
def call_log_rollup() -> int:
    return rollup.call_log_rollup()
