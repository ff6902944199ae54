#!/usr/bin/env bash
# `make run`: Parley on the embedded default (SQLite, in-memory layer, eager Celery, demo model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
PY=.venv/bin/python
$PY manage.py migrate --noinput
$PY manage.py collectstatic --noinput -v 0
$PY manage.py parley_demo_setup
# The only server process starts now: answers left `streaming` by a previous run end `interrupted`.
$PY manage.py conversations_mark_interrupted --all
PORT=${PORT:-8000}
echo "Parley is serving at http://127.0.0.1:${PORT}  (Ctrl+C stops it)"
exec .venv/bin/daphne -b 127.0.0.1 -p "$PORT" config.asgi:application
