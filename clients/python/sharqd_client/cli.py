"""
sharqctl: the operators' command line for sharqd (click for the commands,
rich for the tables and progress bars). Every command takes --json for
scripts; a failure exits with status 1 and the server's message.
"""

import json
import sys
import time
from datetime import datetime, timezone

try:
    import click
    from rich.console import Console, Group as Stack
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeRemainingColumn
    from rich.table import Table
    from rich.text import Text
except ImportError as e:  # installed without the `cli` extra
    sys.exit(f"sharqctl needs click and rich: pip install 'sharqd-client[cli]' ({e})")

from sharqd_client import __version__
from sharqd_client.client import DEFAULT_URL, Client
from sharqd_client.errors import NotFound, SharqdError

console = Console()
errors = Console(stderr=True)


class Context:
    def __init__(self, url, token, timeout, retry_for, as_json):
        self.url, self.token, self.timeout, self.json = url, token, timeout, as_json
        self.retry_for = retry_for
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = Client(self.url, self.token, self.timeout,
                                  retry_for=self.retry_for)
        return self._client


class Group(click.Group):
    """Turns the client's errors into `Error: <server message>`, exit 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SharqdError as e:
            raise click.ClickException(str(e))


def json_option(command):
    """--json on a command, as on the group."""
    def set_json(ctx, param, value):
        if value:
            ctx.find_object(Context).json = True
    return click.option("--json", "as_json", is_flag=True, expose_value=False,
                        callback=set_json, help="Print JSON for scripts.")(command)


def emit(ctx, data, render):
    """JSON for scripts, or what render() draws for people."""
    if ctx.json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        render()


def table(*columns, title=None):
    t = Table(title=title, title_justify="left", box=None, header_style="bold")
    for name in columns:
        t.add_column(name, justify="right" if name.isupper() and name in _NUMERIC else "left")
    return t


_NUMERIC = {"QUEUES", "PENDING", "ACTIVE", "DEAD LETTERS", "ENQUEUED", "DEQUEUED",
            "DEAD", "REQUEUES", "INTERVAL", "VALUE"}


def when(ms):
    if ms is None:
        return "-"
    return datetime.fromtimestamp(int(ms) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def short(value, width=60):
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[:width - 1] + "…"


def route_missing(error):
    return isinstance(error, NotFound) and "No such route" in error.message


def progress_bar(disable=False):
    """A bar on stderr (stdout stays clean for --json), gone when done."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=errors, transient=True, disable=disable)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="SHARQD_URL", default=DEFAULT_URL, show_default=True,
              help="sharqd's address (or $SHARQD_URL).")
@click.option("--token", envvar="SHARQD_TOKEN",
              help="Sent as `Authorization: Bearer` (or $SHARQD_TOKEN).")
@click.option("--timeout", default=10.0, show_default=True, help="Seconds per request.")
@click.option("--retry-for", default=5.0, show_default=True,
              help="Seconds to retry a call that is safe to repeat while sharqd answers "
                   "503 or cannot be reached.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.version_option(__version__, prog_name="sharqctl")
@click.pass_context
def main(ctx, url, token, timeout, retry_for, as_json):
    """Look at and fix the queues of a sharqd server.

    Exit status: 0 done, 1 refused or failed (the server's message is
    printed), 2 bad usage."""
    ctx.obj = Context(url, token, timeout, retry_for, as_json)


# ---- looking


@main.command()
@json_option
@click.pass_obj
def types(ctx):
    """The queue types with jobs: queues and dead letters of each."""
    rows = []
    for qtype in ctx.client.metrics()["queue_types"]:
        info = ctx.client.metrics(qtype)
        # "total": servers that page the ids; older ones list them all
        rows.append({"queue_type": qtype,
                     "queues": info.get("total", len(info["queue_ids"])),
                     "dead_letters": info.get("dead_letter_length", 0)})

    def render():
        t = table("TYPE", "QUEUES", "DEAD LETTERS")
        for row in rows:
            t.add_row(row["queue_type"], str(row["queues"]), str(row["dead_letters"]))
        console.print(t if rows else "No queue type has jobs.")

    emit(ctx, rows, render)


def _all_queue_ids(client, qtype):
    """Every queue id of a type, page by page (a server that does not page
    answers them all at once, without a `total`)."""
    ids = []
    while True:
        page = client.metrics(qtype, offset=len(ids) or None)
        ids.extend(page["queue_ids"])
        if not page["queue_ids"] or len(ids) >= page.get("total", 0):
            return ids


def _queues_from_metrics(ctx, qtype):
    """Pending jobs of each queue of a type, one /metrics/ call per queue (for
    servers without GET /queues/TYPE/)."""
    ids = _all_queue_ids(ctx.client, qtype)
    rows = []
    with progress_bar(disable=len(ids) < 50) as bar:
        task = bar.add_task(f"reading {len(ids)} queues", total=len(ids))
        for queue_id in ids:
            length = ctx.client.metrics(qtype, queue_id)["queue_length"]
            rows.append({"queue_id": queue_id, "pending": length})
            bar.advance(task)
    return rows


@main.command()
@click.argument("queue_type")
@click.option("--sort", type=click.Choice(["pending", "queue_id"]), default="pending",
              show_default=True, help="Order of the queues.")
@click.option("--limit", default=50, show_default=True, help="Queues shown.")
@json_option
@click.pass_obj
def queues(ctx, queue_type, sort, limit):
    """The queues of a type, busiest first."""
    try:
        rows = ctx.client.queues(queue_type, sort=sort, limit=limit)
    except NotFound as e:
        if not route_missing(e):
            raise
        rows = _queues_from_metrics(ctx, queue_type)
        if sort == "pending":
            rows.sort(key=lambda r: (-r["pending"], r["queue_id"]))
        else:
            rows.sort(key=lambda r: r["queue_id"])
        rows = rows[:limit]

    def render():
        columns = list(dict.fromkeys(k for row in rows for k in row))
        t = table(*[c.upper().replace("_", " ") if c != "queue_id" else "QUEUE"
                    for c in columns])
        for row in rows:
            t.add_row(*[str(row.get(c, "")) for c in columns])
        console.print(t if rows else f"No queue of type `{queue_type}` has jobs.")

    emit(ctx, rows, render)


def _sum(counts):
    return sum((counts or {}).values())


@main.command()
@click.argument("queue_type")
@click.argument("queue_id")
@json_option
@click.pass_obj
def show(ctx, queue_type, queue_id):
    """One queue: pending jobs, rates, and on servers that explain it, its
    policy and why it is not ready."""
    try:
        data = ctx.client.queue(queue_type, queue_id)
    except NotFound as e:
        if not route_missing(e):
            raise
        metrics = ctx.client.metrics(queue_type, queue_id)
        data = {"queue_type": queue_type, "queue_id": queue_id,
                "pending": metrics["queue_length"],
                "enqueued_10min": _sum(metrics.get("enqueue_counts")),
                "dequeued_10min": _sum(metrics.get("dequeue_counts")),
                "dead_lettered_10min": _sum(metrics.get("dead_letter_counts"))}

    def render():
        t = table("FIELD", "VALUE", title=f"{queue_type}/{queue_id}")
        for key, value in data.items():
            t.add_row(key.replace("_", " "),
                      value if isinstance(value, str) else json.dumps(value))
        console.print(t)

    emit(ctx, data, render)


@main.command()
@click.argument("queue_type", required=False)
@click.argument("queue_id", required=False)
@json_option
@click.pass_obj
def metrics(ctx, queue_type, queue_id):
    """Counts per minute (last 10 minutes): all types, a type, or a queue."""
    data = ctx.client.metrics(queue_type, queue_id)

    def render():
        if "queue_ids" in data:
            console.print(f"queues of `{queue_type}`: {len(data['queue_ids'])}   "
                          f"dead letters: {data.get('dead_letter_length', 0)}")
            for queue_id_ in data["queue_ids"]:
                console.print(f"  {queue_id_}")
            return
        if "queue_types" in data:
            console.print("queue types: " + (", ".join(data["queue_types"]) or "none"))
        if "queue_length" in data:
            console.print(f"pending: {data['queue_length']}")
        t = table("MINUTE (UTC)", "ENQUEUED", "DEQUEUED", "DEAD")
        for minute in sorted(data.get("enqueue_counts", {}), reverse=True):
            t.add_row(when(minute)[:-3], str(data["enqueue_counts"][minute]),
                      str(data.get("dequeue_counts", {}).get(minute, 0)),
                      str(data.get("dead_letter_counts", {}).get(minute, 0)))
        console.print(t)

    emit(ctx, data, render)


def _snapshot(client):
    """One view of the server for watch: per type, and the current minute."""
    overview = client.metrics()
    minute = max(overview["enqueue_counts"], default=None)
    rows = []
    for qtype in overview["queue_types"]:
        info = client.metrics(qtype)
        # "total": servers that page the ids; older ones list them all
        rows.append({"queue_type": qtype,
                     "queues": info.get("total", len(info["queue_ids"])),
                     "dead_letters": info.get("dead_letter_length", 0)})
    return {"time": int(time.time() * 1000), "types": rows,
            "enqueued_this_minute": overview["enqueue_counts"].get(minute, 0),
            "dequeued_this_minute": overview["dequeue_counts"].get(minute, 0)}


def _watch_table(snapshot, url, error=None):
    title = f"{url}  {when(snapshot['time'])} UTC\nthis minute: " \
            f"{snapshot['enqueued_this_minute']} enqueued, " \
            f"{snapshot['dequeued_this_minute']} dequeued"
    if error:
        title += f"\n[red]{error}[/red]"
    t = table("TYPE", "QUEUES", "DEAD LETTERS")
    for row in snapshot["types"]:
        t.add_row(row["queue_type"], str(row["queues"]), str(row["dead_letters"]))
    return Stack(Text.from_markup(title), t)


@main.command()
@click.option("--every", default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--times", type=int, help="Stop after this many refreshes (default: Ctrl-C).")
@json_option
@click.pass_obj
def watch(ctx, every, times):
    """Refresh a view of the queue types until Ctrl-C (--json: one line per
    refresh)."""
    empty = {"time": 0, "types": [], "enqueued_this_minute": 0, "dequeued_this_minute": 0}
    last, shown = empty, 0
    live = None if ctx.json else Live(_watch_table(empty, ctx.url), console=console,
                                      auto_refresh=False)
    try:
        if live:
            live.start()
        while times is None or shown < times:
            if shown:
                time.sleep(every)
            error = None
            try:
                last = _snapshot(ctx.client)
            except SharqdError as e:  # keep watching through an outage
                error = str(e)
            shown += 1
            if ctx.json:
                click.echo(json.dumps(dict(last, error=error), sort_keys=True))
            else:
                live.update(_watch_table(last, ctx.url, error), refresh=True)
    except KeyboardInterrupt:
        pass
    finally:
        if live:
            live.stop()


# ---- changing


@main.command()
@click.argument("queue_type")
@click.argument("queue_id")
@click.option("--payload", required=True, help="The job's payload, as JSON.")
@click.option("--job-id", help="Default: a random one.")
@click.option("--interval", default=1000, show_default=True,
              help="ms between dequeues of the queue (an enqueue sets it, unless set "
                   "with `sharqctl interval`).")
@click.option("--requeue-limit", type=int, help="-1: requeue forever (server default).")
@click.option("--max-queued-length", type=int, help="Refuse the job if the queue holds "
              "this many pending jobs.")
@json_option
@click.pass_obj
def enqueue(ctx, queue_type, queue_id, payload, job_id, interval, requeue_limit,
            max_queued_length):
    """Enqueue one job."""
    try:
        value = json.loads(payload)
    except ValueError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--payload")
    stored = ctx.client.enqueue(queue_type, queue_id, value, interval=interval,
                                job_id=job_id, requeue_limit=requeue_limit,
                                max_queued_length=max_queued_length)
    data = {"queue_type": queue_type, "queue_id": queue_id, "job_id": stored.job_id}
    if stored.current_queue_length is not None:
        data["current_queue_length"] = stored.current_queue_length
    emit(ctx, data, lambda: console.print(f"queued {queue_type}/{queue_id}/{stored.job_id}"))


@main.command()
@click.argument("queue_type")
@click.argument("queue_id")
@click.argument("ms", type=int)
@json_option
@click.pass_obj
def interval(ctx, queue_type, queue_id, ms):
    """Set a queue's interval (ms between dequeues); it sticks while the
    queue exists."""
    ctx.client.interval(queue_type, queue_id, ms)
    emit(ctx, {"queue_type": queue_type, "queue_id": queue_id, "interval": ms},
         lambda: console.print(f"interval of {queue_type}/{queue_id}: {ms} ms"))


@main.command(name="delete-queue")
@click.argument("queue_type")
@click.argument("queue_id")
@click.option("--purge-all", is_flag=True, help="Also its active jobs and interval.")
@click.option("--yes", is_flag=True, help="Do not ask.")
@json_option
@click.pass_obj
def delete_queue(ctx, queue_type, queue_id, purge_all, yes):
    """Delete a queue's pending jobs."""
    if not yes:
        click.confirm(f"Delete the pending jobs of {queue_type}/{queue_id}?", abort=True,
                      err=True)
    ctx.client.delete_queue(queue_type, queue_id, purge_all)
    emit(ctx, {"queue_type": queue_type, "queue_id": queue_id, "deleted": True},
         lambda: console.print(f"deleted {queue_type}/{queue_id}"))


@main.command()
@click.argument("queue_type")
@click.option("--retry-all", is_flag=True, help="Put every dead letter back in its queue.")
@click.option("--purge", is_flag=True, help="Delete every dead letter of the type.")
@click.option("--offset", default=0, show_default=True, help="Skip this many (listing).")
@click.option("--limit", default=20, show_default=True, help="Show this many (listing).")
@click.option("--yes", is_flag=True, help="Do not ask before --purge.")
@json_option
@click.pass_obj
def deadletters(ctx, queue_type, retry_all, purge, offset, limit, yes):
    """List a type's dead letters (newest first), retry them all, or purge them."""
    if retry_all and purge:
        raise click.UsageError("--retry-all and --purge exclude each other")
    if purge:
        if not yes:
            click.confirm(f"Delete every dead letter of `{queue_type}`?", abort=True, err=True)
        deleted = ctx.client.purge_dead_letters(queue_type)
        return emit(ctx, {"queue_type": queue_type, "deleted": deleted},
                    lambda: console.print(f"deleted {deleted} dead letter(s) of `{queue_type}`"))
    if retry_all:
        return _retry_all(ctx, queue_type)
    page = ctx.client.dead_letters(queue_type, offset, limit)

    def render():
        t = table("QUEUE", "JOB", "FAILED AT (UTC)", "REASON", "REQUEUES", "PAYLOAD")
        for d in page.dead_letters:
            t.add_row(d["queue_id"], d["job_id"], when(d.get("failed_at")),
                      d.get("reason", ""), str(d.get("requeues_spent", "")),
                      short(d.get("payload")))
        console.print(t)
        console.print(f"{len(page.dead_letters)} of {page.total} dead letter(s) of "
                      f"`{queue_type}` (from {page.offset})")

    emit(ctx, {"total": page.total, "offset": page.offset, "limit": page.limit,
               "dead_letters": page.dead_letters}, render)


def _retry_all(ctx, queue_type):
    """Retry page by page; a dead letter that cannot go back (its job id is
    pending again: 409) stays and is skipped."""
    client = ctx.client
    total = client.dead_letters(queue_type, 0, 1).total
    retried, failures, skip = 0, [], 0
    with progress_bar() as bar:
        task = bar.add_task(f"retrying dead letters of {queue_type}", total=total)
        while True:
            page = client.dead_letters(queue_type, skip, 100)
            if not page.dead_letters:
                break
            for d in page.dead_letters:
                try:
                    client.retry_dead_letter(queue_type, d["queue_id"], d["job_id"])
                    retried += 1
                except SharqdError as e:
                    failures.append({"queue_id": d["queue_id"], "job_id": d["job_id"],
                                     "message": str(e)})
                    if e.status != 404:  # still a dead letter: step over it
                        skip += 1
                bar.advance(task)
    data = {"queue_type": queue_type, "retried": retried, "failed": failures}

    def render():
        console.print(f"retried {retried} dead letter(s) of `{queue_type}`")
        for f in failures[:20]:
            errors.print(f"  {f['queue_id']}/{f['job_id']}: {f['message']}")

    emit(ctx, data, render)
    if failures:
        raise click.ClickException(f"{len(failures)} dead letter(s) could not be retried")


@main.command()
@click.argument("queue_type")
@click.argument("queue_id", required=False)
@click.option("--rate", type=float, help="Jobs per second (token bucket).")
@click.option("--burst", type=int, help="Jobs allowed back to back after idling.")
@click.option("--max-active", type=int, help="Jobs of the queue active at once.")
@click.option("--paused/--unpaused", default=None, help="Hand out nothing / resume.")
@click.option("--delete", is_flag=True, help="Drop the policy.")
@json_option
@click.pass_obj
def policy(ctx, queue_type, queue_id, rate, burst, max_active, paused, delete):
    """Show or set the rate policy of a queue (or, without QUEUE_ID, the
    type's default), on servers that have policies."""
    fields = {k: v for k, v in (("rate", rate), ("burst", burst), ("max_active", max_active),
                                ("paused", paused)) if v is not None}
    if delete:
        ctx.client.delete_policy(queue_type, queue_id)
        data = {"deleted": True}
    elif fields:
        data = ctx.client.set_policy(queue_type, queue_id, **fields)
    else:
        data = ctx.client.policy(queue_type, queue_id)

    def render():
        t = table("FIELD", "VALUE")
        for key, value in data.items():
            t.add_row(key, json.dumps(value))
        console.print(t)

    emit(ctx, data, render)


@main.command()
@click.argument("queue_type")
@json_option
@click.pass_obj
def pause(ctx, queue_type):
    """Stop handing out jobs of a type (on servers that can)."""
    ctx.client.pause(queue_type)
    emit(ctx, {"queue_type": queue_type, "paused": True},
         lambda: console.print(f"paused `{queue_type}`"))


@main.command()
@click.argument("queue_type")
@json_option
@click.pass_obj
def resume(ctx, queue_type):
    """Hand out jobs of a paused type again."""
    ctx.client.resume(queue_type)
    emit(ctx, {"queue_type": queue_type, "paused": False},
         lambda: console.print(f"resumed `{queue_type}`"))


# ---- import from the original SharQ Server


@main.command(name="import-original")
@click.option("--redis", "redis_url", required=True,
              help="The original's Redis: redis://[:PASSWORD@]HOST:PORT/DB or "
                   "unix:///PATH?db=N.")
@click.option("--key-prefix", default="sharq_server", show_default=True,
              help="The original's `[redis] key_prefix`.")
@click.option("--type", "types", multiple=True, help="Only this queue type (repeatable).")
@click.option("--dry-run", is_flag=True, help="Count what would move; change nothing.")
@click.option("--keep", is_flag=True, help="Copy: leave the jobs in the original's keys "
              "(a re-run after workers finished them delivers them again).")
@click.option("--batch-size", default=200, show_default=True, help="Jobs per request.")
@click.option("--default-interval", default=1000, show_default=True,
              help="ms, for a queue the original kept no interval for.")
@json_option
@click.pass_obj
def import_original(ctx, redis_url, key_prefix, types, dry_run, keep, batch_size,
                    default_interval):
    """Move the jobs waiting in an original SharQ Server's Redis into sharqd.

    Stop the original server and its workers first. Pending jobs keep their
    payload, interval, requeue budget and order; active jobs are put back
    as pending, ahead of the pending ones. Each batch is removed from the
    original once sharqd has it (unless --keep), so an interrupted import
    goes on where it stopped when run again; a job sharqd already has
    counts as imported."""
    import redis

    from sharqd_client.original import Importer, OriginalKeys, QueueChanged

    try:
        connection = redis.StrictRedis.from_url(redis_url, socket_timeout=30)
        connection.ping()
    except (redis.RedisError, ValueError) as e:
        raise click.ClickException(f"cannot reach the original's Redis at {redis_url}: {e}")
    keys = OriginalKeys(connection, key_prefix)
    importer = Importer(keys, ctx.client, keep=keep, batch_size=batch_size,
                        default_interval=default_interval, types=set(types) or None)
    counted = importer.count()
    if not dry_run:
        ctx.client.ping()  # fail before touching anything when sharqd is not there
        total = sum(t.pending + t.active for t in counted.values())
        with progress_bar() as bar:
            task = bar.add_task("importing", total=total)
            importer.progress = lambda n: bar.advance(task, n)
            try:
                tallies = importer.run()
            except QueueChanged as e:
                raise click.ClickException(str(e))
    else:
        tallies = counted
    _report_import(ctx, tallies, dry_run)


def _report_import(ctx, tallies, dry_run):
    data = {qtype: tally.as_dict() for qtype, tally in tallies.items()}

    def render():
        if dry_run:
            t = table("TYPE", "QUEUES", "PENDING", "ACTIVE", title="would import (dry run)")
            for qtype, x in tallies.items():
                t.add_row(qtype, str(x.queues), str(x.pending), str(x.active))
        else:
            t = table("TYPE", "QUEUES", "IMPORTED", "ALREADY", "FAILED", "SKIPPED")
            for qtype, x in tallies.items():
                t.add_row(qtype, str(x.queues), str(x.imported), str(x.already),
                          str(x.failed), str(x.skipped))
        console.print(t if tallies else "No jobs in the original's keys.")
        for x in tallies.values():
            for qtype, queue_id, job_id, message in x.failures[:20]:
                errors.print(f"  not imported {qtype}/{queue_id}/{job_id}: {message}")

    emit(ctx, data, render)
    failed = sum(x.failed for x in tallies.values())
    if failed:
        raise click.ClickException(f"{failed} job(s) were not imported (they stay in the "
                                   f"original's keys; see above)")


if __name__ == "__main__":
    main()
