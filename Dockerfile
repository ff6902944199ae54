# Parley: one image for the web (Daphne), the Celery worker and Celery beat.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them (psycopg[binary] needs no compiler).
COPY requirements.lock .
RUN pip install -r requirements.lock

COPY . .

# collectstatic only reads settings: a throwaway key and the embedded default are enough here.
RUN SECRET_KEY=collectstatic-only DEBUG=0 python manage.py collectstatic --noinput -v 0 \
    && useradd --system --uid 10001 --home-dir /app parley \
    && chown -R parley /app

USER parley
EXPOSE 8000

# Migrations run as a separate step (see compose.yaml) so several web processes can start at once.
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "--proxy-headers", "config.asgi:application"]
