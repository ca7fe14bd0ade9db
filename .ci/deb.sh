#!/usr/bin/env bash
# .ci/deb.sh: build the sharqd .deb and check it end to end on Debian 12.
#
# Run as root from the repo root: bash .ci/deb.sh
# Installs its build and test tools, builds dist/sharqd_*.deb with
# `make deb`, runs lintian, installs the package, runs the service's
# command as the sharqd user against a local Redis, smoke-tests the API,
# upgrades to a rebuilt package with a bumped version (a locally edited
# conffile must survive), and purges.  One PASS/FAIL line per step; exits
# non-zero on the first failure.  Processes it starts are stopped on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# a pyenv or virtualenv python must play no part
unset VIRTUAL_ENV PYTHONPATH PYTHONHOME
export PATH=/usr/sbin:/usr/bin:/sbin:/bin:$PATH

VENV=/opt/venvs/sharqd
CONF=/etc/sharqd/sharq.conf
ACCESS_LOG=/var/log/sharqd/access.log
URL=http://127.0.0.1:8080
APT_OPTS=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)

WORK=$(mktemp -d /tmp/sharqd-deb-ci.XXXXXX)
chmod 755 "$WORK"
REDIS_STARTED=
RUNUSER_PID=
T0=$(date +%s)

pass() { echo "PASS: $*"; }
fail() {
    echo "FAIL: $*"
    exit 1
}

# The twistd process under runuser (runuser forks it and waits).
sharqd_pid() { pgrep -P "$RUNUSER_PID" 2>/dev/null | head -n1; }

cleanup() {
    local rc=$?
    if [ -n "$RUNUSER_PID" ] && kill -0 "$RUNUSER_PID" 2>/dev/null; then
        pid=$(sharqd_pid || true)
        kill -TERM "${pid:-$RUNUSER_PID}" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$RUNUSER_PID" 2>/dev/null || break; sleep 0.5; done
        kill -KILL "$RUNUSER_PID" ${pid:+"$pid"} 2>/dev/null || true
    fi
    if [ -n "$REDIS_STARTED" ]; then
        redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 ||
            kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
    fi
    rm -rf "$WORK"
    echo "deb.sh: total $(( $(date +%s) - T0 )) s, exit $rc"
}
trap cleanup EXIT

# HTTP call: `http METHOD PATH [BODY]` sets CODE and BODY.
http() {
    local args=(-s -o "$WORK/body" -w '%{http_code}' -X "$1" "$URL$2")
    [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' -d "$3")
    CODE=$(curl "${args[@]}") || CODE=000
    BODY=$(cat "$WORK/body" 2>/dev/null || true)
}

# --- 1. tools ----------------------------------------------------------
apt-get update -q >"$WORK/apt.log" 2>&1 &&
    apt-get install "${APT_OPTS[@]}" --no-install-recommends \
        build-essential debhelper dh-virtualenv lintian devscripts \
        python3.11 python3.11-venv python3.11-dev python3-setuptools \
        redis-server redis-tools curl logrotate procps util-linux systemd \
        >>"$WORK/apt.log" 2>&1 ||
    { tail -n 30 "$WORK/apt.log"; fail "install build and test tools"; }
pass "install build and test tools"

# a sharqd from an earlier run must not be in the way
if dpkg-query -W -f='${Status}' sharqd 2>/dev/null | grep -q installed ||
    dpkg-query -W -f='${Status}' sharqd 2>/dev/null | grep -q config-files; then
    apt-get purge "${APT_OPTS[@]}" sharqd >"$WORK/purge0.log" 2>&1 ||
        { cat "$WORK/purge0.log"; fail "purge the sharqd installed before"; }
fi
if curl -s -o /dev/null "$URL/"; then
    fail "something already listens on 127.0.0.1:8080"
fi
pass "clean start (no sharqd installed, port 8080 free)"

# --- 2. build ----------------------------------------------------------
VERSION=$(dpkg-parsechangelog -S Version)
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
DEB=dist/sharqd_${VERSION}_${ARCH}.deb
rm -f "$DEB"
t=$(date +%s)
make deb >"$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log"; fail "make deb"; }
[ -f "$DEB" ] || fail "make deb: $DEB not found"
pass "make deb -> $DEB ($(( $(date +%s) - t )) s)"

# --- 3. lintian --------------------------------------------------------
lintian --fail-on error --tag-display-limit 0 "$DEB" >"$WORK/lintian.log" 2>&1 ||
    { cat "$WORK/lintian.log"; fail "lintian --fail-on error"; }
grep -E '^[EW]: ' "$WORK/lintian.log" || true
pass "lintian --fail-on error"

# --- 4. install --------------------------------------------------------
apt-get install "${APT_OPTS[@]}" "./$DEB" >"$WORK/install.log" 2>&1 ||
    { tail -n 30 "$WORK/install.log"; fail "apt-get install ./$DEB"; }
getent passwd sharqd >/dev/null || fail "install: no sharqd user"
for f in "$VENV/bin/twistd" "$CONF" /etc/logrotate.d/sharqd /lib/systemd/system/sharqd.service; do
    [ -e "$f" ] || fail "install: $f missing"
done
[ "$(readlink /usr/bin/sharq-server)" = "$VENV/bin/sharq-server" ] ||
    fail "install: /usr/bin/sharq-server is not a symlink to $VENV/bin/sharq-server"
[ "$(readlink /usr/bin/sharqctl)" = "$VENV/bin/sharqctl" ] ||
    fail "install: /usr/bin/sharqctl is not a symlink to $VENV/bin/sharqctl"
"$VENV/bin/python" -c 'import sharqd_client.original, sharqd_client.cli' ||
    fail "install: sharqctl's modules (redis, msgpack, click, rich) do not import"
[ "$(stat -c %U /var/lib/sharqd)" = sharqd ] && [ "$(stat -c %U /var/log/sharqd)" = sharqd ] ||
    fail "install: /var/lib/sharqd and /var/log/sharqd not owned by sharqd"
ls "$VENV"/lib/python3*/site-packages/twisted/plugins/dropin.cache >/dev/null 2>&1 ||
    fail "install: postinst did not build the twistd plugin cache"
[ "$(readlink -f "$VENV/bin/python")" = /usr/bin/python3.11 ] ||
    fail "install: venv python is $(readlink -f "$VENV/bin/python"), not /usr/bin/python3.11"
systemd-analyze verify /lib/systemd/system/sharqd.service >"$WORK/verify.log" 2>&1 ||
    { cat "$WORK/verify.log"; fail "systemd-analyze verify sharqd.service"; }
logrotate -d /etc/logrotate.d/sharqd >"$WORK/logrotate.log" 2>&1 ||
    { cat "$WORK/logrotate.log"; fail "logrotate -d /etc/logrotate.d/sharqd"; }
pass "apt-get install ./$DEB (user, dirs, plugin cache, unit, logrotate)"

# --- 5. Redis ----------------------------------------------------------
if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; then
    pass "Redis already answers on 127.0.0.1:6379"
else
    redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' \
        --appendonly no --dir "$WORK" --pidfile "$WORK/redis.pid" \
        --logfile "$WORK/redis.log" >/dev/null
    REDIS_STARTED=1
    for _ in $(seq 50); do
        [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ] && break
        sleep 0.2
    done
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ] || fail "start redis-server"
    pass "start redis-server on 127.0.0.1:6379"
fi

# --- 6. run the service's command as sharqd ----------------------------
# exactly the unit's ExecStart, as its User= (where systemd runs, the
# package started the unit: stop it to free the port)
if [ -d /run/systemd/system ]; then
    systemctl stop sharqd.service || true
fi
cd /var/lib/sharqd
runuser -u sharqd -- "$VENV/bin/twistd" --nodaemon --pidfile= --logfile=- \
    sharq -c "$CONF" >"$WORK/sharqd.log" 2>&1 &
RUNUSER_PID=$!
cd - >/dev/null
for _ in $(seq 60); do
    curl -s -o /dev/null "$URL/" && break
    kill -0 "$RUNUSER_PID" 2>/dev/null || { cat "$WORK/sharqd.log"; fail "sharqd exited at start"; }
    sleep 0.5
done
http GET /
[ "$CODE" = 200 ] && [[ "$BODY" == *'"Hello, SharQ!"'* ]] ||
    { cat "$WORK/sharqd.log"; fail "GET / -> $CODE $BODY"; }
pass "sharqd started as sharqd, GET / -> $CODE $BODY"

# --- 7. API smoke test -------------------------------------------------
# a queue type of its own, in case Redis holds jobs of an earlier run
QT=ci_$(date +%s)_$$
http POST "/enqueue/$QT/u1/" '{"job_id":"j1","interval":1000,"payload":{"a":1}}'
[ "$CODE" = 201 ] && [[ "$BODY" == *'"queued"'* ]] || fail "enqueue -> $CODE $BODY"
pass "enqueue -> $CODE $BODY"
http GET "/dequeue/$QT/"
[ "$CODE" = 200 ] && echo "$BODY" | /usr/bin/python3 -c \
    'import json, sys; d = json.load(sys.stdin); assert d["job_id"] == "j1" and d["payload"] == {"a": 1}, d' ||
    fail "dequeue -> $CODE $BODY"
pass "dequeue -> $CODE $BODY"
http POST "/finish/$QT/u1/j1/"
[ "$CODE" = 200 ] || fail "finish -> $CODE $BODY"
pass "finish -> $CODE $BODY"
/usr/bin/sharqctl --url "$URL" enqueue "$QT" u2 --payload '{"b": 2}' --job-id j2 >/dev/null &&
    /usr/bin/sharqctl --url "$URL" --json queues "$QT" | grep -q '"u2"' ||
    fail "sharqctl enqueue / queues"
pass "sharqctl enqueue + queues"

# --- 8. logs -----------------------------------------------------------
for _ in $(seq 10); do [ -s "$ACCESS_LOG" ] && break; sleep 0.5; done
grep -q "/enqueue/$QT/u1/" "$ACCESS_LOG" 2>/dev/null || fail "access log $ACCESS_LOG has no request lines"
pass "access log: $(wc -l <"$ACCESS_LOG") lines in $ACCESS_LOG"
if grep -n -i -E 'dropin|permission denied|cache' "$WORK/sharqd.log"; then
    fail "sharqd's log mentions the plugin cache or a permission error"
fi
pass "sharqd log has no plugin-cache or permission error"

# Rotation as /etc/logrotate.d/sharqd does it: rename, then the HUP that
# its postrotate sends with systemctl (sent by hand here: no systemd).
logrotate -f -s "$WORK/logrotate.state" /etc/logrotate.d/sharqd ||
    fail "logrotate -f /etc/logrotate.d/sharqd"
[ -f "$ACCESS_LOG.1" ] || fail "logrotate: no $ACCESS_LOG.1"
kill -HUP "$(sharqd_pid)"
sleep 1
http GET /?after-rotation
[ "$CODE" = 200 ] || fail "GET / after HUP -> $CODE (did HUP stop sharqd?)"
sleep 0.5
grep -q "after-rotation" "$ACCESS_LOG" || fail "after rotation + HUP, requests are not logged in $ACCESS_LOG"
grep -q "/finish/$QT/u1/j1/" "$ACCESS_LOG.1" || fail "rotated $ACCESS_LOG.1 lost lines"
pass "logrotate + HUP: old lines in access.log.1, new ones in access.log"

# --- 9. SIGTERM --------------------------------------------------------
pid=$(sharqd_pid)
[ -n "$pid" ] || fail "find the twistd process under runuser"
t=$(date +%s)
kill -TERM "$pid"
for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
kill -0 "$pid" 2>/dev/null && fail "sharqd still running 15 s after SIGTERM"
rc=0
wait "$RUNUSER_PID" || rc=$?
RUNUSER_PID=
# twistd re-raises the signal after a clean shutdown: 143 = killed by
# SIGTERM, which systemd counts as a clean stop
[ "$rc" = 0 ] || [ "$rc" = 143 ] ||
    { cat "$WORK/sharqd.log"; fail "sharqd exited with status $rc on SIGTERM"; }
grep -q "Server Shut Down" "$WORK/sharqd.log" || { cat "$WORK/sharqd.log"; fail "sharqd did not shut down cleanly"; }
pass "SIGTERM: sharqd shut down cleanly (status $rc) in $(( $(date +%s) - t )) s"

# --- 10. upgrade -------------------------------------------------------
# the same tree with version VERSION+ci1 in debian/changelog and sharqd/
NEW=${VERSION}+ci1
SRC=$WORK/src/sharqd
mkdir -p "$SRC"
tar --exclude=./.git --exclude=./dist --exclude=./debian/sharqd --exclude=./debian/.debhelper \
    -cf - . | tar -xf - -C "$SRC"
sed -i "s/^__version__ = .*/__version__ = \"$NEW\"/" "$SRC/sharqd/__init__.py"
{
    printf 'sharqd (%s) bookworm; urgency=medium\n\n  * CI upgrade test build.\n\n' "$NEW"
    printf ' -- %s  %s\n\n' "$(dpkg-parsechangelog -S Maintainer)" "$(date -R)"
    cat debian/changelog
} >"$SRC/debian/changelog"
t=$(date +%s)
make -C "$SRC" deb >"$WORK/build2.log" 2>&1 || { tail -n 40 "$WORK/build2.log"; fail "make deb ($NEW)"; }
DEB2=$SRC/dist/sharqd_${NEW}_${ARCH}.deb
[ -f "$DEB2" ] || fail "make deb ($NEW): $DEB2 not found"
pass "make deb -> sharqd_${NEW}_${ARCH}.deb ($(( $(date +%s) - t )) s)"

MARK="# local edit by .ci/deb.sh $$"
echo "$MARK" >>"$CONF"
apt-get install "${APT_OPTS[@]}" "$DEB2" >"$WORK/upgrade.log" 2>&1 ||
    { tail -n 30 "$WORK/upgrade.log"; fail "upgrade to $NEW"; }
[ "$(dpkg-query -W -f='${Version}' sharqd)" = "$NEW" ] || fail "upgrade: installed version is not $NEW"
[ "$("$VENV/bin/sharq-server" --version)" = "sharqd $NEW" ] || fail "upgrade: sharq-server --version is not $NEW"
grep -qxF "$MARK" "$CONF" || fail "upgrade: local edit of $CONF lost"
ls "$VENV"/lib/python3*/site-packages/twisted/plugins/dropin.cache >/dev/null 2>&1 ||
    fail "upgrade: no twistd plugin cache"
pass "upgrade $VERSION -> $NEW kept the local edit of $CONF"

# --- 11. purge ---------------------------------------------------------
apt-get purge "${APT_OPTS[@]}" sharqd >"$WORK/purge.log" 2>&1 ||
    { tail -n 30 "$WORK/purge.log"; fail "apt-get purge sharqd"; }
for f in "$VENV" /lib/systemd/system/sharqd.service /usr/lib/systemd/system/sharqd.service \
    "$CONF" /etc/sharqd /etc/logrotate.d/sharqd /usr/bin/sharq-server \
    /var/lib/sharqd /var/log/sharqd; do
    [ ! -e "$f" ] && [ ! -L "$f" ] || fail "purge: $f is still there"
done
pass "apt-get purge sharqd removed the venv, unit, conffiles, state and logs"
echo "PASS: all .ci/deb.sh steps"
