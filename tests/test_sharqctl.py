"""
sharqctl against a real sharqd on a real redis-server, through click's
CliRunner (and once as the installed console script): tables for people,
--json for scripts, exit status 1 with the server's message on failure,
--help on every command.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from client_support import unique_type, url_of, wait_for
from sharqd_client.cli import main
from support import free_port


# every test here starts sharqd processes
pytestmark = pytest.mark.slow

@pytest.fixture
def ctl(server):
    """sharqctl --url <the test's sharqd> ARGS -> click Result."""
    runner = CliRunner()

    def run(*args, input=None):
        return runner.invoke(main, ["--url", url_of(server), *args], input=input)

    return run


def as_json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_help_on_every_command():
    """When any command is given --help, it prints its usage and exits 0."""
    runner = CliRunner()
    assert runner.invoke(main, ["--help"]).exit_code == 0
    for name in main.commands:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name


def test_enqueue_and_look(ctl, client):
    """When jobs are enqueued with sharqctl, types, queues, show and metrics
    show them, as tables and as JSON."""
    qtype = unique_type()
    result = ctl("enqueue", qtype, "u1", "--payload", '{"to": "+1555"}', "--job-id", "j1")
    assert result.exit_code == 0 and f"queued {qtype}/u1/j1" in result.output
    for i in range(3):
        ctl("enqueue", qtype, "u2", "--payload", str(i), "--interval", "0")
    assert client.dequeue(qtype).payload in ({"to": "+1555"}, 0)

    types = as_json(ctl("types", "--json"))
    assert {"queue_type": qtype, "queues": 2, "dead_letters": 0} in types
    assert qtype in ctl("types").output

    queues = as_json(ctl("--json", "queues", qtype))
    assert queues[0]["queue_id"] == "u2"  # the most pending jobs
    table = ctl("queues", qtype, "--sort", "queue_id").output
    assert table.index("u1") < table.index("u2")

    shown = as_json(ctl("show", qtype, "u2", "--json"))
    assert shown["queue_id"] == "u2"
    assert "u2" in ctl("show", qtype, "u2").output

    metrics = as_json(ctl("metrics", qtype, "--json"))
    assert sorted(metrics["queue_ids"]) == ["u1", "u2"]
    assert as_json(ctl("metrics", qtype, "u2", "--json"))["queue_length"] >= 2
    assert "ENQUEUED" in ctl("metrics").output


def test_interval(ctl, client):
    """When `sharqctl interval` sets a queue's interval, later enqueues do not
    change it: two jobs come out 1 s apart at most once."""
    qtype = unique_type()
    ctl("enqueue", qtype, "u1", "--payload", "1", "--interval", "0")
    ctl("enqueue", qtype, "u1", "--payload", "2", "--interval", "0")
    result = ctl("interval", qtype, "u1", "60000")
    assert result.exit_code == 0 and "60000 ms" in result.output
    assert client.dequeue(qtype) is not None
    assert client.dequeue(qtype) is None  # the second waits a minute now


def test_failures_exit_1_with_the_server_message(ctl, server):
    """When the server refuses a command, sharqctl exits 1 and prints the
    server's message; bad usage exits 2."""
    qtype = unique_type()
    ctl("enqueue", qtype, "u1", "--payload", "{}", "--job-id", "j1")
    dup = ctl("enqueue", qtype, "u1", "--payload", "{}", "--job-id", "j1")
    assert dup.exit_code == 1 and "already pending or active" in dup.stderr
    bad = ctl("interval", qtype, "u1", "--", "-5")
    assert bad.exit_code == 1 and "`interval` has an invalid value." in bad.stderr
    missing = ctl("interval", qtype, "nope", "5")
    assert missing.exit_code == 1 and "404" in missing.stderr
    assert ctl("enqueue", qtype, "u1", "--payload", "{not json").exit_code == 2
    runner = CliRunner()
    down = runner.invoke(main, ["--url", f"http://127.0.0.1:{free_port()}", "--retry-for",
                                "0", "types"])
    assert down.exit_code == 1 and "no answer" in down.stderr


def kill_jobs(client, qtype, ids):
    for job_id in ids:
        client.enqueue(qtype, "u1", {"id": job_id}, interval=0, job_id=job_id,
                       requeue_limit=0)
        client.dequeue(qtype, lease=1)
    wait_for(lambda: client.dead_letters(qtype).total == len(ids))


def test_deadletters_list_retry_all_purge(ctl, client):
    """When a type has dead letters, sharqctl lists them, puts them all back
    (with a progress bar) or purges them after asking."""
    qtype = unique_type()
    kill_jobs(client, qtype, [f"j{i}" for i in range(5)])
    listing = ctl("deadletters", qtype, "--limit", "2")
    assert listing.exit_code == 0 and "2 of 5 dead letter(s)" in listing.output
    assert "requeue limit spent" in listing.output
    page = as_json(ctl("deadletters", qtype, "--json"))
    assert sorted(d["job_id"] for d in page["dead_letters"]) == [f"j{i}" for i in range(5)]

    retried = as_json(ctl("deadletters", qtype, "--retry-all", "--json"))
    assert (retried["retried"], retried["failed"]) == (5, [])
    assert client.dead_letters(qtype).total == 0
    assert len(client.dequeue(qtype, count=10)) == 5

    wait_for(lambda: client.dead_letters(qtype).total == 5)  # lease 1 ms: dead again
    refused = ctl("deadletters", qtype, "--purge", input="n\n")
    assert refused.exit_code == 1 and client.dead_letters(qtype).total == 5
    purged = ctl("deadletters", qtype, "--purge", "--yes")
    assert purged.exit_code == 0 and "deleted 5" in purged.output
    assert client.dead_letters(qtype).total == 0


def test_retry_all_reports_what_cannot_go_back(ctl, client):
    """When a dead letter's job id is pending again, --retry-all retries the
    others, names it with the server's message and exits 1."""
    qtype = unique_type()
    kill_jobs(client, qtype, ["j1", "j2"])
    client.enqueue(qtype, "u1", {}, interval=0, job_id="j1")
    result = ctl("deadletters", qtype, "--retry-all")
    assert result.exit_code == 1
    assert "retried 1 dead letter(s)" in result.output
    assert "u1/j1" in result.stderr and "already pending or active" in result.stderr


def test_delete_queue(ctl, client):
    """When delete-queue is confirmed, the queue's pending jobs are gone."""
    qtype = unique_type()
    client.enqueue(qtype, "u1", {}, interval=0)
    assert ctl("delete-queue", qtype, "u1", input="y\n").exit_code == 0
    assert client.dequeue(qtype) is None


def test_watch_refreshes(ctl, client):
    """When watch runs with --json --times 2, it prints two snapshots that
    list the queue types."""
    qtype = unique_type()
    client.enqueue(qtype, "u1", {}, interval=0)
    result = ctl("watch", "--json", "--times", "2", "--every", "0.1")
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.exit_code == 0 and len(snapshots) == 2
    assert any(t["queue_type"] == qtype for t in snapshots[-1]["types"])
    assert snapshots[-1]["enqueued_this_minute"] >= 1
    human = ctl("watch", "--times", "1")
    assert human.exit_code == 0 and qtype in human.output


def test_policy_commands(ctl, client):
    """When the server has policies and pause (later sharqd versions), the
    commands set and show them; skipped on servers without."""
    qtype = unique_type()
    client.enqueue(qtype, "u1", {}, interval=0)
    result = ctl("policy", qtype, "u1", "--rate", "2", "--burst", "3", "--json")
    if result.exit_code == 1 and "No such route" in result.stderr:
        pytest.skip("this sharqd has no /policy/ routes")
    assert result.exit_code == 0, result.output
    assert as_json(ctl("policy", qtype, "u1", "--json"))["rate"] == 2.0
    assert ctl("pause", qtype).exit_code == 0
    assert ctl("resume", qtype).exit_code == 0
    assert ctl("policy", qtype, "u1", "--delete").exit_code == 0


def test_console_script_is_installed(server):
    """When the test environment was set up (as scripts/run-tests.sh does),
    `sharqctl` is a command beside its python and talks to sharqd."""
    path = shutil.which("sharqctl", path=os.path.dirname(sys.executable))
    if path is None:
        pytest.skip("sharqctl is not installed beside this python")
    out = subprocess.run([path, "--url", url_of(server), "--json", "types"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), list)
