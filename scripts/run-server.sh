#!/usr/bin/env bash
# Fresh Debian 12 -> a running sharqd on 127.0.0.1:8080 (foreground).
# Installs the system packages, starts a local redis-server if none answers
# on 127.0.0.1:6379, builds .venv and runs `twistd -n sharq -c etc/sharq.conf`.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" python3
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis-server on 127.0.0.1:6379 (appendonly, data in /var/tmp/sharqd-redis)"
    mkdir -p /var/tmp/sharqd-redis
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --appendonly yes \
        --dir /var/tmp/sharqd-redis --logfile /var/tmp/sharqd-redis/redis.log
    for _ in $(seq 50); do redis-cli ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
[ -x .venv/bin/twistd ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
.venv/bin/pip install -q --no-deps .
exec .venv/bin/twistd --nodaemon --pidfile= sharq -c "${1:-etc/sharq.conf}"
