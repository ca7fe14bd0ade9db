#!/usr/bin/env bash
# Fresh Debian 12 -> the full test suite.  Installs redis-server and
# redis-tools (the tests start their own redis-server processes and a Redis
# Cluster on free loopback ports), Debian's chromium (the dashboard's
# browser tests drive it headless through Playwright; no browser is
# downloaded) and the pinned Python packages in .venv-test, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-cli >/dev/null || need+=(redis-tools)  # the cluster tests' redis-cli --cluster
[ -x /usr/bin/chromium ] || need+=(chromium fonts-dejavu-core)
python3 -c "import venv, ensurepip" 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" python3
fi
[ -x .venv-test/bin/pytest ] || python3 -m venv .venv-test
.venv-test/bin/pip install -q -r requirements-test.txt
.venv-test/bin/pip install -q --no-deps -r requirements-original.txt
exec .venv-test/bin/pytest -q tests "$@"
