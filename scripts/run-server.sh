#!/usr/bin/env bash
# Fresh Debian 12 -> a running sharqd on 127.0.0.1:8080 (foreground).
# Installs the system packages and .venv (scripts/setup.sh), starts a local
# redis-server if none answers on 127.0.0.1:6379, then runs
# `twistd -n sharq -c etc/sharq.conf` (or the config given as $1).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis-server on 127.0.0.1:6379 (appendonly, data in /var/tmp/sharqd-redis)"
    mkdir -p /var/tmp/sharqd-redis
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --appendonly yes \
        --dir /var/tmp/sharqd-redis --logfile /var/tmp/sharqd-redis/redis.log
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
.venv/bin/pip install -q --no-deps .
exec .venv/bin/twistd --nodaemon --pidfile= sharq -c "${1:-etc/sharq.conf}"
