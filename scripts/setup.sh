#!/usr/bin/env bash
# Debian packages (redis-server, redis-tools, python3-venv and any named on
# the command line) where missing, and .venv with the pinned requirements.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
for tool in "$@"; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" python3
fi
[ -x .venv/bin/twistd ] || python3 -m venv .venv
.venv/bin/pip install -q -r requirements.txt
