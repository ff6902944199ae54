#!/usr/bin/env bash
# `make test`: the whole suite against real PostgreSQL and Redis.
# Installs what is missing (apt: postgresql, redis-server, nginx, chromium), starts private throwaway
# instances on free loopback ports, runs pytest, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

need=()
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)  # tests/ops/test_deploy.py runs the proxy configs
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "Installing with apt: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
scripts/bootstrap.sh
PY=.venv/bin/python

PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT=$(free_port); REDISPORT=$(free_port)
RUN=$(mktemp -d /tmp/parley-test.XXXXXX)
chmod 755 "$RUN"
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then chown postgres "$RUN"; AS_PG=(su postgres -s /bin/bash -c); else AS_PG=(bash -c); fi

cleanup() {
  [ -f "$RUN/pgdata/postmaster.pid" ] && kill -INT "$(head -1 "$RUN/pgdata/postmaster.pid")" 2>/dev/null || true
  [ -f "$RUN/redis.pid" ] && kill "$(cat "$RUN/redis.pid")" 2>/dev/null || true
  sleep 0.5
  rm -rf "$RUN"
}
trap cleanup EXIT

"${AS_PG[@]}" "$PGBIN/initdb -D $RUN/pgdata -U postgres --auth=trust -E UTF8 >/dev/null"
"${AS_PG[@]}" "$PGBIN/pg_ctl -D $RUN/pgdata -l $RUN/pg.log -o '-p $PGPORT -k $RUN -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off' -w start >/dev/null"
redis-server --daemonize yes --port "$REDISPORT" --bind 127.0.0.1 --save '' --appendonly no \
  --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log"
for _ in $(seq 50); do redis-cli -p "$REDISPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done

export DATABASE_URL="postgres://postgres@127.0.0.1:$PGPORT/parley"
export REDIS_URL="redis://127.0.0.1:$REDISPORT/0"
export PARLEY_TESTING=1 CELERY_TASK_ALWAYS_EAGER=1 PLAYWRIGHT_CHROMIUM=/usr/bin/chromium
echo "PostgreSQL on 127.0.0.1:$PGPORT, Redis on 127.0.0.1:$REDISPORT"
set +e
$PY -m pytest "$@"
status=$?
set -e
echo "make test took $(( $(date +%s) - started )) s"
exit $status
