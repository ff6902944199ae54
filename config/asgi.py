import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.ws import WebsocketAuthStack  # noqa: E402
from config.handlers import MiddlewareFreeASGIHandler, WebsocketOutageGuard, prefix_router  # noqa: E402
from config.observability import WebsocketLogContext, asgi_application  # noqa: E402
from conversations.routing import websocket_urlpatterns  # noqa: E402

# asgi_application: request ids in the logs for every protocol, and Sentry's ASGI middleware when
# SENTRY_DSN is set (Django's integration does not see /v1 or the websockets).
application = asgi_application(
    ProtocolTypeRouter(
        {
            # The OpenAI-compatible endpoint (API keys only) skips the middleware: see config/handlers.py.
            "http": prefix_router("/v1/", MiddlewareFreeASGIHandler(), django_asgi_app),
            # WebsocketOutageGuard: an upgrade the database cannot answer closes 4503 with an error frame.
            "websocket": WebsocketOutageGuard(
                WebsocketAuthStack(WebsocketLogContext(URLRouter(websocket_urlpatterns)))
            ),
        }
    )
)
