"""
The dashboard in a real browser: headless Chromium from Debian's `chromium`
package driven by Playwright (no browser download), against a real
`twistd -n sharq` on a real redis-server with known data.  A screenshot of
each page is written under the test's temporary folder.
"""

import os
import signal

import pytest
from playwright.sync_api import expect, sync_playwright

from support import Sharqd, shared_redis, wait_for

CHROMIUM = os.environ.get("SHARQD_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000  # generous: the machine may be busy

pytestmark = pytest.mark.slow




@pytest.fixture
def server(tmp_path):
    # job_expire_interval 500 ms and a requeue pass every 100 ms (support.py)
    started = Sharqd(str(tmp_path), shared_redis()).start()
    yield started
    started.stop(signal.SIGKILL)


@pytest.fixture
def page(tmp_path):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: ./scripts/run-tests.sh installs Debian's chromium")
    profile = tmp_path / "profile"
    profile.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1400, "height": 1000})
        browser.set_default_timeout(TIMEOUT_MS)
        yield browser.new_page()
        browser.close()


def enqueue(server, qtype, qid, job_id, **extra):
    status, body, _ = server.request("POST", f"/enqueue/{qtype}/{qid}/", {
        "job_id": job_id, "interval": 1000, "payload": {"n": job_id}, **extra})
    assert status == 201, body


def test_dashboard_shows_counts_chart_and_retries_dead_letter(server, page, tmp_path):
    """When the dashboard is opened on known data, it shows each type's
    counts and the busiest queues, draws the rates chart, and its Retry
    button puts a dead letter back into its queue."""
    # a dead letter of sms: requeue_limit 0, dequeued, expired (500 ms)
    enqueue(server, "sms", "dead", "d0", requeue_limit=0)
    status, job, _ = server.request("GET", "/dequeue/sms/")
    assert (status, job["job_id"]) == (200, "d0")
    wait_for(lambda: server.request("GET", "/deadletters/sms/")[1]["total"] == 1, timeout=20)
    for j in range(3):
        enqueue(server, "sms", "u1", f"a{j}")
    enqueue(server, "sms", "u2", "b0")
    enqueue(server, "email", "e1", "c0")
    enqueue(server, "email", "e2", "c1")
    status, job, _ = server.request("GET", "/dequeue/email/")
    assert status == 200
    assert server.request("POST", f"/finish/email/{job['queue_id']}/{job['job_id']}/")[0] == 200
    status, active, _ = server.request("GET", "/dequeue/email/?lease=600000")
    assert status == 200

    page.goto(f"http://127.0.0.1:{server.port}/dashboard/?refresh=1#type=sms")
    sms = page.locator('#types tr[data-type="sms"]')
    expect(sms.locator('[data-field="pending"]')).to_have_text("4")
    expect(sms.locator('[data-field="active"]')).to_have_text("0")
    expect(sms.locator('[data-field="dead"]')).to_have_text("1")
    email = page.locator('#types tr[data-type="email"]')
    expect(email.locator('[data-field="pending"]')).to_have_text("0")
    expect(email.locator('[data-field="active"]')).to_have_text("1")
    expect(page.locator("#redis-state")).to_have_class("pill up")
    expect(page.locator("#workers")).to_have_text("1")
    # busiest queues of sms: u1 (3) before u2 (1)
    rows = page.locator("#queues tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_have_attribute("data-queue", "u1")
    expect(rows.nth(0).locator('[data-field="pending"]')).to_have_text("3")
    # the chart: one line per series, with this server's counts
    enqueued = page.locator('#rates path[data-series="enqueued"]')
    expect(enqueued).to_have_count(1)
    assert sum(map(int, enqueued.get_attribute("data-values").split(","))) == 7
    finished = page.locator('#rates path[data-series="finished"]')
    assert sum(map(int, finished.get_attribute("data-values").split(","))) == 1
    assert page.locator("#rates circle").count() == 30
    page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

    # the dead letter: retry from the page, then check through the API
    dead_row = page.locator('#dead tr[data-job="d0"]')
    expect(dead_row).to_have_count(1)
    dead_row.locator("button.retry").click()
    wait_for(lambda: server.request("GET", "/deadletters/sms/")[1]["total"] == 0, timeout=20)
    status, metrics, _ = server.request("GET", "/metrics/sms/dead/")
    assert (status, metrics["queue_length"]) == (200, 1)
    expect(page.locator("#no-dead")).to_be_visible()
    expect(sms.locator('[data-field="pending"]')).to_have_text("5")
    page.screenshot(path=str(tmp_path / "dashboard-after-retry.png"), full_page=True)

    # the other type, selected by a click: its one queue left has an
    # active job and nothing pending
    email.click()
    expect(page.locator("#queues-card .type-name")).to_have_text("email")
    expect(rows).to_have_count(1)
    expect(rows.nth(0)).to_have_attribute("data-queue", active["queue_id"])
    expect(rows.nth(0).locator('[data-field="pending"]')).to_have_text("0")
    expect(rows.nth(0).locator('[data-field="active"]')).to_have_text("1")
    expect(rows.nth(0).locator('[data-field="next"]')).to_have_text("–")
    page.screenshot(path=str(tmp_path / "dashboard-email.png"), full_page=True)
    assert all((tmp_path / name).stat().st_size > 10_000 for name in (
        "dashboard.png", "dashboard-after-retry.png", "dashboard-email.png"))


def test_dashboard_shows_redis_down(tmp_path, page):
    """When Redis is not reachable, the dashboard says so instead of figures."""
    from support import RedisServer
    redis = RedisServer().start()
    server = Sharqd(str(tmp_path), redis).start()
    try:
        redis.stop()
        page.goto(f"http://127.0.0.1:{server.port}/dashboard/?refresh=1")
        expect(page.locator("#redis-state")).to_have_class("pill down")
        expect(page.locator("#error")).to_contain_text("Redis is not reachable")
        page.screenshot(path=str(tmp_path / "dashboard-redis-down.png"), full_page=True)
    finally:
        server.stop(signal.SIGKILL)
        redis.cleanup()


def test_dashboard_asks_for_a_token_when_auth_is_on(tmp_path, page):
    """With [auth] on, the dashboard's page loads without a token, asks for
    one when the API answers 401, and shows the figures once given a token
    with read:* (sent as a Bearer header, never in the URL)."""
    from sharqd.web.auth import hash_token
    token = "sharq_dashboard-test-token"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"viewer {hash_token(token)} read:*\n")
    server = Sharqd(str(tmp_path), shared_redis(),
                    extra_redis=f"\n[auth]\ntokens_file : {tokens}\n").start()
    try:
        status, _, _ = server.request("POST", "/enqueue/authdash/q1/", {
            "job_id": "a1", "interval": 1000, "payload": {}})
        assert status == 401  # the API itself stays closed
        page.goto(f"http://127.0.0.1:{server.port}/dashboard/?refresh=1")
        expect(page.locator("#login")).to_be_visible()
        page.screenshot(path=str(tmp_path / "dashboard-login.png"), full_page=True)
        page.fill("#token", token)
        page.click("#login button")
        expect(page.locator("#login")).to_be_hidden()
        expect(page.locator("#redis-state")).to_have_class("pill up")
        expect(page.locator("#error")).to_be_hidden()
        assert token not in page.url
    finally:
        server.stop(signal.SIGKILL)
