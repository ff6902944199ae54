"""Parley settings: one module, driven by environment variables.

With nothing set, Parley runs on the embedded default (SQLite, in-memory channel layer,
local-memory cache, eager Celery, console e-mail, the built-in `demo` model). Each variable is
documented in `.env.example`. `PARLEY_ENV=production` refuses to start on an unsafe configuration.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from dotenv import load_dotenv

from config.observability import logging_config, sentry_init

BASE_DIR = Path(__file__).resolve().parent.parent

# `.env` in the project root (or the file PARLEY_ENV_FILE names) fills in variables the real
# environment does not set: the environment always wins. Tests never read it.
if not os.environ.get("PARLEY_TESTING"):
    load_dotenv(os.environ.get("PARLEY_ENV_FILE") or BASE_DIR / ".env", override=False)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_bool(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def env_list(name: str, default: list[str]) -> list[str]:
    value = os.environ.get(name, "").strip()
    return [item.strip() for item in value.split(",") if item.strip()] if value else default


PARLEY_ENV = env_str("PARLEY_ENV", "development")
PRODUCTION = PARLEY_ENV == "production"
TESTING = env_bool("PARLEY_TESTING")

DEBUG = env_bool("DEBUG", default=not PRODUCTION)
_INSECURE_KEY = "django-insecure-parley-embedded-default-never-use-in-production"
SECRET_KEY = env_str("SECRET_KEY") or _INSECURE_KEY
DATABASE_URL = env_str("DATABASE_URL")
REDIS_URL = env_str("REDIS_URL")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

if PRODUCTION:
    problems = []
    if SECRET_KEY == _INSECURE_KEY or len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure"):
        problems.append("SECRET_KEY must be set to a random value of at least 50 characters")
    if not DATABASE_URL or DATABASE_URL.startswith("sqlite"):
        problems.append("DATABASE_URL must point at PostgreSQL")
    if not ALLOWED_HOSTS or "*" in ALLOWED_HOSTS:
        problems.append("ALLOWED_HOSTS must list the site's host names")
    if not REDIS_URL:
        problems.append("REDIS_URL must be set (channel layer, cache, rate limits, Celery broker)")
    if DEBUG:
        problems.append("DEBUG must be off")
    if problems:
        raise ImproperlyConfigured("Unsafe production configuration: " + "; ".join(problems))

INSTALLED_APPS = [
    "daphne",
    "config.apps.ParleyAdminConfig",  # django.contrib.admin with Parley's site (the staff console)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "pgtrigger",
    "accounts",
    "llm",
    "billing",
    "conversations",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "config.middleware.DatabaseOutageMiddleware",
    "config.middleware.AsyncWhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts.middleware.CurrentOrganizationMiddleware",
    "config.observability.LogContextMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.current_organization",
                "billing.context_processors.budget_banner",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL)
    if _db["ENGINE"] == "django.db.backends.postgresql":
        # Django's backend, with a pool that recovers from a PostgreSQL restart at once (see there).
        _db["ENGINE"] = "config.postgresql"
        # Under ASGI, persistent connections leak per thread; psycopg's pool is the supported way.
        _db["CONN_MAX_AGE"] = 0
        # A PostgreSQL restart leaves every pooled connection dead. With health checks on, Django
        # has psycopg's pool check a connection before lending it (one round trip), so a restart
        # costs at most the requests in flight (config/postgresql/).
        _db["CONN_HEALTH_CHECKS"] = env_bool("DATABASE_HEALTH_CHECKS", True)
        # Server-side binding lets psycopg prepare the queries a connection repeats (every turn's).
        _db.setdefault("OPTIONS", {})["server_side_binding"] = env_bool("DATABASE_SERVER_SIDE_BINDING", True)
        _db["OPTIONS"]["pool"] = {
            "min_size": env_int("DATABASE_POOL_MIN", 2),
            "max_size": env_int("DATABASE_POOL_MAX", 20),
            # How long a request waits for a connection: during an outage, the wait before its 503.
            "timeout": env_int("DATABASE_POOL_TIMEOUT", 5),
        }
        if env_str("DATABASE_TEST_NAME"):
            _db["TEST"] = {"NAME": env_str("DATABASE_TEST_NAME")}
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env_str("SQLITE_PATH") or str(BASE_DIR / "db.sqlite3"),
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "accounts.User"

# --- Cache, channel layer, Celery -----------------------------------------------------------
if REDIS_URL:
    CACHES = {
        "default": {
            # Survives a Redis outage: a miss on read, a no-op on write, 0.25 s timeouts (config/cache.py).
            "BACKEND": "config.cache.ResilientRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "parley",
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            # The pub/sub layer: a group send is one PUBLISH, the cheapest way to reach other
            # processes. socket_timeout=None: redis-py 8's 5 s read timeout closes idle consumers.
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
                "prefix": env_str("CHANNEL_LAYER_PREFIX", "parley"),
            },
        }
    }
    CELERY_BROKER_URL = REDIS_URL
    CELERY_RESULT_BACKEND = None
    CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", default=False)
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "parley"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True

CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TIMEZONE = "UTC"
# Slow model work (titles, summaries: seconds each) has its own queue and worker, so it never
# delays the money sweeps (recovery of crashed turns, expired reservations) on the default queue.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_TASK_ROUTES = {
    "conversations.tasks.conversation_title": {"queue": "models"},
    "conversations.tasks.conversation_summarize": {"queue": "models"},
}
# A Redis restart must not end the worker: it reconnects for as long as it takes.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Each app adds its periodic tasks in its own `beat.py`; config/celery.py collects them.
CELERY_BEAT_SCHEDULE: dict = {}
# billing: release reservations of crashed processes, budget alerts, daily usage summary.
CELERY_BEAT_SCHEDULE.update(
    {
        "billing-release-expired-reservations": {"task": "billing.reservations_release_expired", "schedule": 60.0},
        "billing-budget-alerts": {"task": "billing.budget_alerts_sweep", "schedule": 300.0},
        "billing-usage-rollup": {"task": "billing.usage_rollup", "schedule": 900.0},
        "llm-call-log-rollup": {"task": "llm.call_log_rollup", "schedule": 900.0},
    }
)

# --- Auth and allauth -----------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = "mandatory" if PRODUCTION else env_str("ACCOUNT_EMAIL_VERIFICATION", "optional")
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
ACCOUNT_LOGOUT_ON_GET = False
# Scheme of links in allauth e-mails sent outside a request.
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if PRODUCTION else "http"
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = "Parley"
LOGIN_REDIRECT_URL = "/dashboard/"
LOGIN_URL = "/accounts/login/"

# --- E-mail ---------------------------------------------------------------------------------
_EMAIL_BACKENDS = {
    "smtp": "django.core.mail.backends.smtp.EmailBackend",
    "console": "django.core.mail.backends.console.EmailBackend",
    "locmem": "django.core.mail.backends.locmem.EmailBackend",
    "file": "django.core.mail.backends.filebased.EmailBackend",
    "dummy": "django.core.mail.backends.dummy.EmailBackend",
}


def email_settings_from_url(url: str) -> dict:
    """Django's EMAIL_* settings from one URL.

    `smtp://user:pass@host:port` (plain SMTP, port 25), `smtp+tls://…` (STARTTLS, port 587),
    `smtps://…` or `smtp+ssl://…` (TLS from the start, port 465), `console://`, `locmem://`,
    `dummy://`, `file:///path/to/dir`. User and password are percent-decoded; `?timeout=10` sets
    EMAIL_TIMEOUT.
    """
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    tls = scheme == "smtp+tls"
    ssl = scheme in ("smtps", "smtp+ssl")
    kind = "smtp" if scheme in ("smtp", "smtp+tls", "smtps", "smtp+ssl") else scheme
    if kind not in _EMAIL_BACKENDS:
        raise ImproperlyConfigured(
            f"EMAIL_URL has an unknown scheme {parts.scheme!r}: use smtp, smtp+tls, smtps, console, locmem, dummy or file"
        )
    result: dict = {"EMAIL_BACKEND": _EMAIL_BACKENDS[kind]}
    if kind == "file":
        result["EMAIL_FILE_PATH"] = unquote(parts.path) or str(BASE_DIR / "sent-emails")
    if kind != "smtp":
        return result
    if not parts.hostname:
        raise ImproperlyConfigured("EMAIL_URL names no host (smtp://user:password@host:port)")
    try:
        port = parts.port
    except ValueError:
        raise ImproperlyConfigured("EMAIL_URL has a port that is not a number") from None
    result.update(
        EMAIL_HOST=parts.hostname,
        EMAIL_PORT=port or (465 if ssl else 587 if tls else 25),
        EMAIL_HOST_USER=unquote(parts.username or ""),
        EMAIL_HOST_PASSWORD=unquote(parts.password or ""),
        EMAIL_USE_TLS=tls,
        EMAIL_USE_SSL=ssl,
    )
    timeout = parse_qs(parts.query).get("timeout")
    if timeout:
        try:
            result["EMAIL_TIMEOUT"] = float(timeout[-1])
        except ValueError:
            raise ImproperlyConfigured("EMAIL_URL's timeout is not a number of seconds") from None
    return result


EMAIL_URL = env_str("EMAIL_URL")
if EMAIL_URL:
    # One URL says it all (the EMAIL_HOST … variables are ignored then).
    globals().update(email_settings_from_url(EMAIL_URL))
elif env_str("EMAIL_HOST"):
    EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
    EMAIL_PORT = env_int("EMAIL_PORT", 587)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", default=True)
else:
    EMAIL_BACKEND = "django.core.mail.backends.console.EmailBackend"
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Parley <noreply@localhost>")
# Scheme and host used in links of e-mails sent outside a request (invitations use the request's own).
PARLEY_SITE_URL = env_str("PARLEY_SITE_URL", "http://127.0.0.1:8000")

# --- Oversight --------------------------------------------------------------------------------
# How many reverse proxies in front of Parley append to X-Forwarded-For: the audit log records the
# address the outermost of them saw (0: REMOTE_ADDR, for a Parley reached directly).
PARLEY_TRUSTED_PROXIES = env_int("PARLEY_TRUSTED_PROXIES", 0)
# Audit events older than this many days are deleted by `manage.py audit_purge` (only by it: no
# scheduled task); unset keeps them forever.
AUDIT_RETENTION_DAYS = int(os.environ["AUDIT_RETENTION_DAYS"]) if env_str("AUDIT_RETENTION_DAYS") else None
# How long a staff user's break-glass access to one organization's conversations lasts by default
# (accounts.content_access; 5 to 480 minutes).
PARLEY_CONTENT_ACCESS_MINUTES = env_int("PARLEY_CONTENT_ACCESS_MINUTES", 60)

# --- Request bodies ---------------------------------------------------------------------------
# The largest body Parley reads, on every endpoint (REST, /v1/, forms): larger ones answer 413
# `payload_too_large` with this limit in the message (docs/errors.md).
DATA_UPLOAD_MAX_MEMORY_SIZE = 4 * 1024 * 1024
# A refused CSRF token answers JSON under /api/ (the HTML page elsewhere).
CSRF_FAILURE_VIEW = "config.urls.csrf_failure"

# --- REST framework -------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "config.exceptions.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "config.exceptions.api_exception_handler",
    # The API speaks JSON (form bodies cannot say null, and programs send JSON), read strictly: size,
    # depth, UTF-8 and surrogates are checked (config/exceptions.py), a refusal is a JSON 400 or 413.
    "DEFAULT_PARSER_CLASSES": ["config.exceptions.JSONParser"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Parley API",
    "DESCRIPTION": "Multi-tenant chat with large language models.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's assets are served from the drf-spectacular-sidecar package (works offline).
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # The OpenAI-compatible endpoint (plain async views) is described by a hook of its own.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "conversations.openai.openapi.openapi_paths",
    ],
    "ENUM_NAME_OVERRIDES": {
        "MembershipRoleEnum": "accounts.models.Role.choices",
        "MessageRoleEnum": "conversations.models.Role.choices",
    },
}

# --- Providers (the SDKs' own variable names) -----------------------------------------------
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
ANTHROPIC_BASE_URL = env_str("ANTHROPIC_BASE_URL")
GEMINI_API_KEY = env_str("GEMINI_API_KEY") or env_str("GOOGLE_API_KEY")
GEMINI_BASE_URL = env_str("GEMINI_BASE_URL")

# --- i18n, static ---------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or TESTING
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Security -------------------------------------------------------------------------------
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = PRODUCTION and env_bool("SECURE_SSL_REDIRECT", default=True)
# Load balancers probe over plain HTTP inside the private network.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if PRODUCTION else None
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000) if PRODUCTION else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# Plain lines for development; JSON in production: request and organization ids, never content
# or secrets (config/observability.py, docs/operations.md).
LOGGING = logging_config(env_str("LOG_FORMAT", "json" if PRODUCTION else "plain"), env_str("LOG_LEVEL", "INFO"))

# --- Observability --------------------------------------------------------------------------
# /metrics: with METRICS_TOKEN set, scrapers send it as a bearer token; without, only direct
# loopback and private-network callers get it.
METRICS_TOKEN = env_str("METRICS_TOKEN")
sentry_init()  # only when SENTRY_DSN is set
