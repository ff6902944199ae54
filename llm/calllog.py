"""The call log: one llm.models.ProviderCall row per provider attempt, written after the attempt ends."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from channels.db import database_sync_to_async

from llm import conf
from llm.providers.base import redact
from llm.types import ChatRequest, Usage

logger = logging.getLogger(__name__)


def prompt_sha256(request: ChatRequest, vendor_model: str = "") -> str:
    payload = {
        "model": vendor_model or request.model,
        "messages": [
            [m.role, m.content, [[c.id, c.name, c.raw_arguments or c.arguments] for c in m.tool_calls], m.tool_call_id]
            for m in request.messages
        ],
        "tools": [t.name for t in request.tools],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Attempt:
    request_id: str
    call_id: str
    organization_id: UUID | None
    user_id: UUID | None
    provider: str
    model: str
    vendor_model: str
    attempt: int
    round: int
    started_at: datetime
    prompt_sha256: str
    time_to_first_token_ms: int | None = None
    duration_ms: int = 0
    usage: Usage | None = None
    status: str = "ok"
    finish_reason: str = ""
    error_class: str = ""
    error_message: str = ""


def _write(attempt: Attempt) -> None:
    from llm.models import ProviderCall

    usage = attempt.usage
    ProviderCall.objects.create(
        organization_id=attempt.organization_id,
        user_id=attempt.user_id,
        request_id=attempt.request_id[:100],
        call_id=attempt.call_id[:120],
        provider=attempt.provider,
        model=attempt.model,
        vendor_model=attempt.vendor_model,
        attempt=attempt.attempt,
        round=attempt.round,
        started_at=attempt.started_at,
        time_to_first_token_ms=attempt.time_to_first_token_ms,
        duration_ms=attempt.duration_ms,
        input_tokens=usage.input_tokens if usage else 0,
        output_tokens=usage.output_tokens if usage else 0,
        cached_input_tokens=usage.cached_input_tokens if usage else 0,
        usage_estimated=bool(usage and usage.estimated),
        status=attempt.status,
        finish_reason=attempt.finish_reason,
        error_class=attempt.error_class,
        error_message=redact(attempt.error_message),
        prompt_sha256=attempt.prompt_sha256,
    )


_write_async = database_sync_to_async(_write)


def call_log_write_sync(attempt: Attempt) -> None:
    """The same row from synchronous code (the recovery of a dead process's call); raises on failure."""
    if conf.call_log_enabled():
        _write(attempt)


RETRY_DELAYS = (0.5, 1, 2, 4, 8, 15, 30, 60)  # about two minutes: longer than a PostgreSQL restart
_retrying: set[asyncio.Task] = set()


async def call_log_write(attempt: Attempt) -> None:
    """Never fails the stream: a row that cannot be written now (the database restarting) is
    written later, in the background, retried with backoff for about two minutes."""
    if not conf.call_log_enabled():
        return
    try:
        await _write_async(attempt)
    except Exception as exc:
        logger.warning("could not write the provider call log (%s): %s; retrying", type(exc).__name__, redact(str(exc)))
        task = asyncio.ensure_future(_write_later(attempt))
        _retrying.add(task)
        task.add_done_callback(_retrying.discard)


async def _write_later(attempt: Attempt) -> None:
    for delay in RETRY_DELAYS:
        await asyncio.sleep(delay)
        try:
            await _write_async(attempt)
            return
        except Exception as exc:
            failure = exc
    logger.error("gave up writing the provider call log of %s (%s)", attempt.call_id, type(failure).__name__)
