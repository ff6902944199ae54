"""`PARLEY_ENV=production` refuses an unsafe configuration; a safe one passes `check --deploy`.

Settings are read once per process, so each case runs Python in a subprocess with its own environment.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from config.settings import email_settings_from_url

ROOT = Path(__file__).resolve().parents[2]
SAFE = {
    "PARLEY_ENV": "production",
    "SECRET_KEY": "k3J9_x-7ZqL2mV8pR4tW1yB6nC0dF5gH9jK2lM7nP3qS8uV4wX6yZ1aB5cD9eF0g",
    "DATABASE_URL": "postgres://parley:secret@db.internal:5432/parley",
    "REDIS_URL": "redis://redis.internal:6379/0",
    "ALLOWED_HOSTS": "parley.example.com",
    "CSRF_TRUSTED_ORIGINS": "https://parley.example.com",
}
SETTINGS_VARS = set(SAFE) | {"DEBUG", "SQLITE_PATH", "PARLEY_TESTING", "CELERY_TASK_ALWAYS_EAGER", "EMAIL_HOST", "EMAIL_URL"}
LOAD = "import django; django.setup(); from django.conf import settings; print('loaded', settings.ACCOUNT_EMAIL_VERIFICATION)"


def _run(args: list[str], **overrides: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key not in SETTINGS_VARS}
    env["DJANGO_SETTINGS_MODULE"] = "config.settings"
    env.update(overrides)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _unsafe(**changes: str) -> dict[str, str]:
    env = dict(SAFE)
    for key, value in changes.items():
        if value is None:
            env.pop(key)
        else:
            env[key] = value
    return env


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"SECRET_KEY": None}, "SECRET_KEY must be set to a random value of at least 50 characters"),
        ({"SECRET_KEY": "short"}, "SECRET_KEY must be set"),
        ({"SECRET_KEY": "django-insecure-" + "x" * 60}, "SECRET_KEY must be set"),
        ({"DATABASE_URL": None}, "DATABASE_URL must point at PostgreSQL"),
        ({"DATABASE_URL": "sqlite:////tmp/parley.sqlite3"}, "DATABASE_URL must point at PostgreSQL"),
        ({"ALLOWED_HOSTS": None}, "ALLOWED_HOSTS must list the site's host names"),
        ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS must list the site's host names"),
        ({"REDIS_URL": None}, "REDIS_URL must be set"),
        ({"DEBUG": "1"}, "DEBUG must be off"),
    ],
)
def test_production_refuses_an_unsafe_configuration(changes, message):
    result = _run(["-c", LOAD], **_unsafe(**changes))
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "Unsafe production configuration" in result.stderr
    assert message in result.stderr


def test_production_with_nothing_set_lists_every_problem():
    result = _run(["-c", LOAD], PARLEY_ENV="production")
    assert result.returncode != 0
    for message in ["SECRET_KEY", "DATABASE_URL", "ALLOWED_HOSTS", "REDIS_URL"]:
        assert message in result.stderr


def test_safe_production_configuration_loads_with_mandatory_email_verification():
    result = _run(["-c", LOAD], **SAFE)
    assert result.returncode == 0, result.stderr
    assert "loaded mandatory" in result.stdout


def test_safe_production_configuration_passes_check_deploy():
    result = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **SAFE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout


def test_embedded_default_needs_nothing():
    result = _run(["-c", LOAD], SQLITE_PATH="/tmp/parley-settings-check.sqlite3")
    assert result.returncode == 0, result.stderr
    assert "loaded optional" in result.stdout


EMAIL = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_HOST_USER, s.EMAIL_HOST_PASSWORD, "
    "s.EMAIL_USE_TLS, s.EMAIL_USE_SSL)"
)


def test_email_url_configures_smtp():
    """EMAIL_URL was read and then ignored: the connection came from EMAIL_HOST … (localhost:587)."""
    result = _run(
        ["-c", EMAIL], SQLITE_PATH="/tmp/parley-settings-check.sqlite3", EMAIL_URL="smtp+tls://mailer:p%40ss@mail.example.com:2525"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "django.core.mail.backends.smtp.EmailBackend", "mail.example.com", "2525", "mailer", "p@ss", "True", "False",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://u:pw@mx.example.org", {"EMAIL_HOST": "mx.example.org", "EMAIL_PORT": 25, "EMAIL_HOST_USER": "u",
                                        "EMAIL_HOST_PASSWORD": "pw", "EMAIL_USE_TLS": False, "EMAIL_USE_SSL": False}),
        ("smtp+tls://u:pw@mx.example.org", {"EMAIL_PORT": 587, "EMAIL_USE_TLS": True, "EMAIL_USE_SSL": False}),
        ("smtps://u:a%2Fb%3Ac@mx.example.org", {"EMAIL_PORT": 465, "EMAIL_USE_SSL": True, "EMAIL_USE_TLS": False,
                                                 "EMAIL_HOST_PASSWORD": "a/b:c"}),
        ("smtp+ssl://mx.example.org:1465?timeout=7", {"EMAIL_PORT": 1465, "EMAIL_USE_SSL": True, "EMAIL_TIMEOUT": 7.0,
                                                      "EMAIL_HOST_USER": ""}),
        ("smtp://[::1]:2525", {"EMAIL_HOST": "::1", "EMAIL_PORT": 2525}),
        ("console://", {"EMAIL_BACKEND": "django.core.mail.backends.console.EmailBackend"}),
        ("locmem://", {"EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend"}),
        ("file:///tmp/parley-mail", {"EMAIL_BACKEND": "django.core.mail.backends.filebased.EmailBackend",
                                     "EMAIL_FILE_PATH": "/tmp/parley-mail"}),
    ],
)  # fmt: skip
def test_email_url_forms(url, expected):
    parsed = email_settings_from_url(url)
    for key, value in expected.items():
        assert parsed[key] == value, (key, parsed)
    if url.startswith("smtp"):
        assert parsed["EMAIL_BACKEND"] == "django.core.mail.backends.smtp.EmailBackend"


@pytest.mark.parametrize("url", ["imap://mx.example.org", "smtp://", "smtp://mx.example.org:port", "mx.example.org"])
def test_email_url_that_cannot_be_used_refuses_to_start(url):
    with pytest.raises(ImproperlyConfigured, match="EMAIL_URL"):
        email_settings_from_url(url)
