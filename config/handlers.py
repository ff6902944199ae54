"""Django's ASGI handler without the middleware, for the OpenAI-compatible endpoint (`/v1/`).

`/v1/` authenticates by API key only: no session, cookie, CSRF, message or static file is ever
involved, so the middleware has nothing to do there. It is not free, though: under ASGI each
sync-style middleware (Django's own) runs its request and response hooks on a thread, so a dozen
thread hops per request. This handler resolves the URL and calls the view directly; errors still
become responses as they do everywhere (`convert_exception_to_response`).

It also runs no sync view, so it does not give each request a thread of its own (Django starts
and joins one per request for thread-sensitive calls): the few it makes — the request signals'
receivers and closing the response — share asgiref's single sync thread.

A database failure that escapes a view (the views answer their own) is OpenAI's 503
`service_unavailable` with `Retry-After`, as under /api/ (config.middleware.DatabaseOutageMiddleware),
never Django's 500 page.

`WebsocketOutageGuard` does the same for websocket upgrades: a database failure while the session,
the user or the API key is read (before any consumer runs) is an accepted socket, an `error` frame
`service_unavailable` with `retry_after`, and close code 4503 (reconnect after `retry_after`), not a
failed handshake.
"""

import asyncio
import contextlib
import json
import logging

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse, JsonResponse

from config.errors import (
    DATABASE_RETRY_AFTER_SECONDS,
    ParleyError,
    database_unavailable,
    log_database_unavailable,
    openai_error_parts,
    ws_error_frame,
)

logger = logging.getLogger(__name__)

# As conversations.consumers: 4000 + the HTTP status, like 4401 and 4403 (Daphne's Autobahn refuses
# the registered 1013 "try again later": a server may only send 1000 or 3000-4999).
UNAVAILABLE_CLOSE_CODE = 4503


class MiddlewareFreeASGIHandler(ASGIHandler):
    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        self._middleware_chain = convert_exception_to_response(self._get_response_or_outage)

    async def _get_response_or_outage(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self._get_response_async(request)
        except Exception as exc:
            error = database_unavailable(exc)
            if error is None:
                raise
            log_database_unavailable(exc, request.path[:80])
            status, body, headers = openai_error_parts(error)
            return JsonResponse(body, status=status, headers=headers)


class WebsocketOutageGuard:
    """ASGI middleware around the websocket stack (config/asgi.py): see the module docstring.

    Daphne drops an upgrade the application has not answered within 5 s (its
    `--websocket_connect_timeout`), while the database pool waits up to its timeout (10 s) for a
    connection: so an upgrade not answered within UPGRADE_SECONDS is answered here, the same way.
    A failure that is not the database's, or one after the socket was closed, is raised as before.
    """

    UPGRADE_SECONDS = 4.0

    def __init__(self, inner) -> None:
        self.inner = inner

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "websocket":
            await self.inner(scope, receive, send)
            return
        state = {"connected": False, "accepted": False, "closed": False}
        answered = asyncio.Event()

        async def tracked_receive():
            message = await receive()
            if message["type"] == "websocket.connect":
                state["connected"] = True
            elif message["type"] == "websocket.disconnect":
                state["closed"] = True
                answered.set()
            return message

        async def tracked_send(message) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
                answered.set()
            elif message["type"] == "websocket.close":
                state["closed"] = True
                answered.set()
            await send(message)

        task = asyncio.ensure_future(self.inner(scope, tracked_receive, tracked_send))
        waiter = asyncio.ensure_future(answered.wait())
        try:
            await asyncio.wait({task, waiter}, timeout=self.UPGRADE_SECONDS, return_when=asyncio.FIRST_COMPLETED)
            if not task.done() and not answered.is_set():
                task.cancel()  # still reading who the socket acts as: a database thread that waits
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                logger.warning("database unavailable (websocket upgrade): not answered in %s s", self.UPGRADE_SECONDS)
                await self._unavailable(receive, send, state, _upgrade_timeout())
                return
            await task
        except Exception as exc:
            error = database_unavailable(exc)
            if error is None or state["closed"]:
                raise
            log_database_unavailable(exc, "websocket upgrade")
            await self._unavailable(receive, send, state, error)
        finally:
            waiter.cancel()
            if not task.done():
                task.cancel()

    @staticmethod
    async def _unavailable(receive, send, state: dict, error: ParleyError) -> None:
        """Accept (when not yet), the `error` frame, close 4503."""
        with contextlib.suppress(Exception):  # the client may be gone meanwhile: nothing to tell
            if not state["accepted"]:
                if not state["connected"] and (await receive())["type"] != "websocket.connect":
                    return
                await send({"type": "websocket.accept"})
            frame = json.dumps(ws_error_frame(error), separators=(",", ":"))
            await send({"type": "websocket.send", "text": frame})
            await send({"type": "websocket.close", "code": UNAVAILABLE_CLOSE_CODE, "reason": error.code})


def _upgrade_timeout() -> ParleyError:
    return ParleyError(
        "Parley cannot read who this socket acts as right now; retry in a few seconds.",
        code="service_unavailable",
        retry_after=DATABASE_RETRY_AFTER_SECONDS,
    )


def prefix_router(prefix: str, matched, other):
    """An ASGI app that sends HTTP requests whose path starts with `prefix` to `matched`, the rest to `other`."""

    async def app(scope, receive, send):
        target = matched if scope["path"].startswith(prefix) else other
        await target(scope, receive, send)

    return app
