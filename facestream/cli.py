"""The ``facestream`` command line. Settings come from FACESTREAM_* variables (see README)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.formats import named_as_image
from core.settings import Settings
from facestream.render import columns_text, console, event_line, kv_table, rows_table
from facestream.tally import Tally

if TYPE_CHECKING:
    from facestream.embedded import EmbeddedStack
    from facestream.prometheus_server import PrometheusServer


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        raise click.ClickException(f"invalid settings: {exc}") from exc


class Main(click.Group):
    """Every error a user can cause is one line and a non-zero exit, never a traceback
    (FACESTREAM_LOG_LEVEL=debug shows it, for a bug report)."""

    def invoke(self, ctx: click.Context) -> object:
        if os.environ.get("FACESTREAM_LOG_LEVEL", "").lower() != "debug":
            # The Kafka client logs each failed connection; the one-line error says it all.
            logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            from core.errors import one_line

            if os.environ.get("FACESTREAM_LOG_LEVEL", "").lower() == "debug":
                raise
            raise click.ClickException(_explained(exc) or one_line(exc)) from exc


def _explained(exc: Exception) -> str | None:
    """What the commonest failures mean for the person at the terminal."""
    from aiokafka.errors import KafkaConnectionError

    from core.errors import one_line
    from core.settings import SettingsError

    cause = getattr(exc, "cause", None)  # Ray's wrapper of an actor's own exception
    if isinstance(cause, Exception):
        return _explained(cause) or one_line(cause)

    if isinstance(exc, SettingsError):  # found wrong only once running (e.g. too few CPUs)
        return f"invalid settings: {exc}"
    if isinstance(exc, KafkaConnectionError):
        return "cannot reach the Kafka broker (FACESTREAM_KAFKA__BOOTSTRAP_SERVERS): is it up?"
    if isinstance(exc, TimeoutError) and str(exc):
        return str(exc).splitlines()[0]
    return None


def _refuse_taken_ports(wanted: dict[str, tuple[str, int | None]]) -> None:
    from facestream.ports import taken

    if busy := taken(wanted):
        raise click.ClickException(
            f"already in use: {', '.join(busy)} (another facestream running? "
            "set the FACESTREAM_ variables for other ports)"
        )


def _ask_gallery(settings: Settings, method: str, *args: object) -> object:
    from actors.gallery import GalleryError
    from facestream.gallery_reads import ask_gallery

    try:
        return ask_gallery(settings, method, *args)
    except GalleryError as exc:
        raise click.ClickException(str(exc)) from exc


def _image_files(paths: tuple[str, ...]) -> list[Path]:
    """The image files named or found in the folders named; what is neither (a dangling
    link, a folder called x.jpg inside a folder) is skipped with a note."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if named_as_image(p))
            files.extend(p for p in found if p.is_file() or _skipped(p, "not a file"))
        elif path.is_file():
            files.append(path)
        else:
            raise click.ClickException(f"no such file or folder: {path}")
    return files


def _skipped(path: Path, why: str) -> bool:
    console().print(f"[yellow]skipped[/] {path}: {why}")
    return False


def _readable(files: list[Path], max_bytes: int) -> list[tuple[Path, bytes]]:
    """Each file's bytes; unreadable or too large ones are skipped with a note."""
    out = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            _skipped(path, exc.strerror or str(exc))
            continue
        if len(data) > max_bytes:
            _skipped(path, f"{len(data)} bytes exceeds the message limit of {max_bytes}")
            continue
        out.append((path, data))
    return out


@click.group(cls=Main)
def main() -> None:
    """facestream: streaming face identification on Kafka, Faust, Ray and Qdrant."""


@main.command()
def demo() -> None:
    """Run the embedded stack on sample photos: enrol, stream, print events, summarise."""
    from facestream.demo import run_demo

    sys.exit(run_demo(_settings()))


@main.command()
@click.option(
    "--with-prometheus",
    is_flag=True,
    help="also run Prometheus at metrics.prometheus_url (needs the `prometheus` binary)",
)
def up(with_prometheus: bool) -> None:
    """Start the embedded stack (broker + worker, local Ray, embedded Qdrant) until Ctrl-C."""
    from facestream.embedded import EmbeddedStack

    settings = _settings()
    broker_host, broker_port = settings.kafka.bootstrap_list[0].rsplit(":", 1)
    _refuse_taken_ports(
        {
            "broker": (broker_host, int(broker_port)),
            "metrics": (settings.metrics.host, settings.metrics.port),
            "Ray metrics": ("127.0.0.1", settings.ray.metrics_export_port),
        }
    )
    run_dir = Path(tempfile.mkdtemp(prefix="facestream-"))  # short: Ray puts sockets here
    # SIGTERM stops the stack as cleanly as Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    with EmbeddedStack(settings, run_dir) as stack, contextlib.ExitStack() as services:
        prometheus = _start_prometheus(settings, stack, run_dir) if with_prometheus else None
        if prometheus is not None:
            services.callback(prometheus.stop)
        console().print(
            f"facestream up: broker {settings.kafka.bootstrap_servers}, "
            f"gallery {settings.gallery.path}, logs in {run_dir}\n"
            + (f"  Prometheus {prometheus.url}: facestream status\n" if prometheus else "")
            + "  facestream enroll ID PHOTO... --basis B   facestream produce PATH...   "
            "facestream watch\nCtrl-C stops."
        )
        try:
            while not (dead := _first_dead(stack)):
                time.sleep(1)
            name, child = dead
            console().print(f"[red]the {name} exited; stopping the stack.[/] Its log:")
            console().print(child.log_tail(), markup=False, highlight=False)
            sys.exit(1)
        except KeyboardInterrupt:
            console().print("stopping...")


def _first_dead(stack: EmbeddedStack) -> tuple[str, object] | None:
    """The first of the stack's processes that has exited, if any: the stack is not up
    without any of them."""
    children = [("broker", stack.broker), ("Ray head", stack.ray_head)]
    children += [(f"worker {i}", w) for i, w in enumerate(stack.workers)]
    return next(((n, c) for n, c in children if c is not None and not c.alive()), None)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _start_prometheus(settings: Settings, stack: EmbeddedStack, run_dir: Path) -> PrometheusServer:
    """Prometheus on metrics.prometheus_url, scraping the local workers and their Ray nodes
    with the project's recording rules and alerts (infra/prometheus/rules)."""
    from urllib.parse import urlsplit

    from facestream import prometheus_server as prometheus

    url = urlsplit(settings.metrics.prometheus_url)
    folder = run_dir / "prometheus"
    prometheus.write_local_config(
        folder,
        [f"127.0.0.1:{w.metrics_port}" for w in stack.workers],
        [f"127.0.0.1:{w.ray_metrics_port}" for w in stack.workers],
    )
    try:
        return prometheus.start_prometheus(
            folder, url.port or 9090, host=url.hostname or "127.0.0.1"
        )
    except prometheus.PrometheusError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--url", default=None, help="Prometheus [default: metrics.prometheus_url]")
@click.option("--window", default="1m", show_default=True, help="rates and percentiles over")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
def status(url: str | None, window: str, as_json: bool) -> None:
    """Throughput, consumer lag, latency, errors and firing alerts, from Prometheus."""
    from facestream.prometheus_api import PrometheusError
    from facestream.status import status_rows, status_summary

    url = url or _settings().metrics.prometheus_url
    try:
        summary = status_summary(url, window)
    except PrometheusError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(summary))
    else:
        console().print(kv_table(f"facestream status (Prometheus {url})", status_rows(summary)))


@main.command()
def worker() -> None:
    """Run one Faust worker against the configured broker, Ray and gallery."""
    from facestream.worker import run_worker

    settings = _settings()
    _refuse_taken_ports(
        {
            "metrics": (
                settings.metrics.host,
                settings.metrics.port if settings.metrics.enabled else None,
            ),
            # Only a worker that starts its own Ray exports Ray's metrics on this port.
            "Ray metrics": (
                "127.0.0.1",
                settings.ray.metrics_export_port if settings.ray.address is None else None,
            ),
        }
    )
    if settings.ray.address is None:  # this worker would start a Ray of its own
        from facestream.gallery_reads import running_owner

        if owner := running_owner(settings):
            raise click.ClickException(
                f"the gallery at {settings.gallery.path} is served by another running"
                f" facestream (pid {owner['pid']}): stop it, or give this worker its own"
                " FACESTREAM_GALLERY__PATH"
            )
    run_worker(settings)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--source", default="cli", show_default=True, help="source header and key")
def produce(paths: tuple[str, ...], source: str) -> None:
    """Send image files (and folders of them) to the images topic."""
    from rich.progress import Progress

    from streams.clients import ImageToSend, produce_images

    settings = _settings()
    files = _readable(_image_files(paths), settings.kafka.max_message_bytes)
    items = (ImageToSend(f"{f.stem}-{uuid.uuid4().hex[:8]}", data, source) for f, data in files)
    with Progress(console=console(), transient=True) as progress:
        task = progress.add_task("producing", total=len(files))
        sent = asyncio.run(
            produce_images(settings, items, on_sent=lambda _: progress.advance(task))
        )
    console().print(f"sent {sent} image(s)")


@main.command()
@click.argument("identity", metavar="IDENTITY|SOURCE")
@click.argument("images", nargs=-1, metavar="[PHOTO]...")
@click.option("--name", default=None, help="display name (one person)")
@click.option(
    "--basis",
    default=None,
    help='legal basis: a consent reference or legal ground, e.g. "consent:form-118"'
    " (SOURCE: for every photo without its own)",
)
@click.option("--timeout", default=120.0, show_default=True, help="seconds to wait for an ack")
@click.option("--batch", default=8, show_default=True, help="SOURCE: photos per request")
@click.option("--in-flight", default=4, show_default=True, help="SOURCE: requests in flight")
@click.option("--journal", type=click.Path(path_type=Path), help="SOURCE: the progress journal")
@click.option("--retry-refused", is_flag=True, help="SOURCE: send refused photos again")
@click.option("--json", "as_json", is_flag=True, help="SOURCE: end with a JSON summary line")
def enroll(
    identity: str,
    images: tuple[str, ...],
    name: str | None,
    basis: str | None,
    timeout: float,
    batch: int,
    in_flight: int,
    journal: Path | None,
    retry_refused: bool,
    as_json: bool,
) -> None:
    """Enrol IDENTITY from PHOTOs holding exactly one face each; or everyone in SOURCE: a
    folder with one subfolder per person (its name is the identity) or a CSV manifest with
    the columns identity,name,photo,basis (photo paths relative to the manifest).

    SOURCE is sent in batches with a progress bar; each outcome is journaled (--journal,
    default in the cache dir), so a rerun of the same command after Ctrl-C or a crash
    resumes: nothing is enrolled twice, nothing is left out. A photo whose face matches
    another enrolled identity is refused (duplicate_identity) unless
    FACESTREAM_PRIVACY__ALLOW_DUPLICATE_FACES=true.
    """
    from facestream.bulk_enroll import is_bulk_source

    settings = _settings()
    if settings.privacy.require_basis and not basis and not identity.lower().endswith(".csv"):
        raise click.UsageError("--basis is required (FACESTREAM_PRIVACY__REQUIRE_BASIS=true)")
    if images:
        _enroll_one(settings, identity, images, name, basis, timeout)
        return
    source = Path(identity)
    if not is_bulk_source(source):
        raise click.UsageError(
            f"no photos given for {identity!r}, and it is no folder or .csv manifest"
        )
    if name is not None:
        raise click.UsageError("--name names one person; a manifest has a name column")
    _enroll_bulk(
        settings, source, basis, timeout, batch, in_flight, journal, retry_refused, as_json
    )


def _enroll_one(
    settings: Settings,
    identity: str,
    images: tuple[str, ...],
    name: str | None,
    basis: str | None,
    timeout: float,
) -> None:
    from streams.clients import request_enrollment
    from streams.enrollment import EnrollmentRequest, Photo

    photos = tuple(Photo(p.name, p.read_bytes()) for p in _image_files(images))
    request = EnrollmentRequest("enroll", identity, name, photos, basis=basis)
    reply = asyncio.run(request_enrollment(settings, request, timeout))
    _print_ack(reply)


def _enroll_bulk(
    settings: Settings,
    source: Path,
    basis: str | None,
    timeout: float,
    batch: int,
    in_flight: int,
    journal_file: Path | None,
    retry_refused: bool,
    as_json: bool,
) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )

    from facestream.bulk_enroll import BulkError, Journal, journal_path, plan, send_all

    try:
        todo = plan(source, basis)
    except BulkError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in todo.skipped:
        console().print(f"[yellow]skipped[/] {line}")
    if settings.privacy.require_basis and (missing := [e for e in todo.entries if not e.basis]):
        raise click.UsageError(
            f"{len(missing)} photo(s) without a basis (first: {missing[0].path}): give --basis "
            "or fill the manifest's basis column (FACESTREAM_PRIVACY__REQUIRE_BASIS=true)"
        )
    path = journal_file or journal_path(settings, source)
    journal = Journal(path)
    console().print(f"enrolling {len(todo.entries)} photo(s) from {source}; journal {path}")
    columns = (TextColumn("enrolling"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn())
    try:
        with Progress(*columns, TimeRemainingColumn(), console=console(), transient=True) as bar:
            task = bar.add_task("enrolling", total=len(todo.entries))
            last_line = [0.0]

            def advance(n: int) -> None:
                bar.advance(task, n)
                now = time.monotonic()
                if not console().is_terminal and now - last_line[0] >= 1.0:
                    last_line[0] = now  # a log, not a terminal: one line a second at most
                    done = int(bar.tasks[0].completed)
                    click.echo(f"enroll: {done}/{len(todo.entries)}", err=True)

            summary = asyncio.run(
                send_all(
                    settings, todo.entries, journal, batch=batch, in_flight=in_flight,
                    timeout_s=timeout, retry_refused=retry_refused, advance=advance,
                )
            )  # fmt: skip
    except KeyboardInterrupt:
        click.echo(f"enroll: interrupted; rerun the same command to resume ({path})", err=True)
        sys.exit(130)
    finally:
        journal.close()
    _print_bulk_summary(summary.as_dict(), as_json)


def _print_bulk_summary(summary: dict, as_json: bool) -> None:
    for row in summary["refused"]:
        matched = f" (matches {row['matches']})" if row.get("matches") else ""
        console().print(f"[red]refused[/] {row['path']}: {row['reason']}{matched}")
    for row in summary["duplicates"]:
        console().print(
            f"[yellow]enrolled as {row['identity_enrolled']}, though it matches[/] "
            f"{row['identity']} {row['similarity']:.2f}: {row['path']}"
        )
    for line in summary["unreadable"]:
        console().print(f"[yellow]skipped[/] {line}")
    rate = summary["enrolled"] / summary["seconds"] if summary["seconds"] else 0.0
    shown = {
        "photos": summary["photos"],
        "enrolled now": summary["enrolled"],
        "already enrolled": summary["already_enrolled"],
        "refused": len(summary["refused"]),
        "unreadable": len(summary["unreadable"]),
        "seconds": summary["seconds"],
        "photos/s": round(rate, 1),
    }
    console().print(kv_table("bulk enrolment", shown))
    if as_json:
        click.echo(json.dumps(summary))
    if summary["refused"] or summary["unreadable"]:
        retry = f"; {summary['not_done']} to retry: rerun" if summary["not_done"] else ""
        raise click.ClickException(
            f"{len(summary['refused'])} photo(s) refused, {len(summary['unreadable'])} "
            f"unreadable, of {summary['photos']}{retry}"
        )


def _print_ack(reply: dict) -> None:
    if reply["ok"]:
        detail = {k: reply[k] for k in ("photos", "removed", "basis", "tombstoned") if k in reply}
        console().print(f"[green]ok[/] {reply['op']} {reply['identity']} {detail}")
        return
    error = reply["error"]
    photo = f" ({error['photo']})" if error.get("photo") else ""
    raise click.ClickException(
        f"{reply['op']} refused{photo}: {error['reason']}: {error['message']}"
    )


@main.group()
def identities() -> None:
    """Manage the gallery of enrolled identities."""


@identities.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table")
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="rows per page"
)
@click.option("--after", default=None, help="start after this identity (the previous page's last)")
def identities_list(as_json: bool, limit: int, after: str | None) -> None:
    """List enrolled identities, a page at a time (through the running deployment, else the
    gallery itself). Pages follow a stable order: alphabetical on the embedded engine."""
    from actors.gallery import GalleryError
    from facestream.gallery_reads import identity_page

    try:
        rows, total = identity_page(_settings(), limit, after)
    except GalleryError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
        return
    title = f"{len(rows)} of {total} identities" + (f" after {after!r}" if after else "")
    click.echo(columns_text(title, rows, ["identity", "name", "photos", "enrolled_at"]))
    if len(rows) == limit:
        import shlex

        click.echo(f"next page: --after {shlex.quote(rows[-1]['identity'])}")


@identities.command("show")
@click.argument("identity")
@click.option("--json", "as_json", is_flag=True, help="one JSON object")
def identities_show(identity: str, as_json: bool) -> None:
    """Everything stored about IDENTITY, and where: its entries in every gallery generation,
    the requests the enrolment topic still holds, and its photo records in the state topic
    (live: what compaction keeps)."""
    from streams.clients import enrollment_records, state_records
    from streams.topics import state_topic

    settings = _settings()
    stored = _shown_everywhere(settings, identity)
    requests = asyncio.run(enrollment_records(settings, identity))
    state = asyncio.run(state_records(settings, identity))
    report = {
        "identity": identity,
        "gallery": stored,
        "enrollment_log": requests,
        "state_log": state,
        "live_state_records": sum(r["live"] for r in state),
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    console().print(
        rows_table(
            f"{identity}: {len(stored)} gallery entries",
            stored,
            ["gallery", "current", "photo", "name", "basis", "enrolled_at", "photo_sha256"],
        )
    )
    console().print(
        rows_table(
            f"{identity}: {len(requests)} requests in {settings.topics.enrollments}"
            " (deleted by time)",
            requests,
            ["offset", "op", "photos", "tombstone"],
        )
    )
    console().print(
        rows_table(
            f"{identity}: {len(state)} records in {state_topic(settings)}, "
            f"{report['live_state_records']} live after compaction",
            state,
            ["offset", "photo", "photo_sha256", "tombstone", "live"],
        )
    )


def _shown_everywhere(settings: Settings, identity: str) -> list[dict]:
    """``show`` in every generation: the deployment's gallery actor reaches them all; without
    a deployment, each generation here is opened in turn."""
    from actors.gallery import (
        GalleryError,
        current_generation,
        generations,
        holder,
        open_model_gallery,
    )
    from facestream.gallery_reads import GalleryReader

    current = current_generation(settings)
    if current is not None:
        try:
            with GalleryReader(settings) as reader:
                if reader.actor is not None:
                    return reader.call("show", identity)
        except GalleryError as exc:
            raise click.ClickException(str(exc)) from exc
    rows: list[dict] = []
    for generation in generations(settings):
        if (doc := holder(settings, generation)) is not None:
            console().print(f"[yellow]gallery {generation.name} is held by process {doc['pid']}[/]")
            continue
        try:
            gallery = open_model_gallery(
                settings, generation.model_id, None, generation=generation.number
            )
        except Exception as exc:  # held by a running process: reported, not hidden
            console().print(f"[yellow]gallery {generation.name} not readable[/]: {exc}")
            continue
        try:
            found = gallery.show(identity)
        finally:
            gallery.close()
        is_current = generation == current
        rows += [{**p, "gallery": generation.name, "current": is_current} for p in found]
    return rows


@identities.command("delete")
@click.argument("identity")
@click.option("--timeout", default=120.0, show_default=True)
def identities_delete(identity: str, timeout: float) -> None:
    """Erase IDENTITY: every vector and payload in every gallery generation, and a tombstone
    for each of the person's photo records in the state topic (compaction removes the
    photos within 24 h; the requests topic deletes its records within 24 h)."""
    from streams.clients import request_enrollment
    from streams.enrollment import EnrollmentRequest

    reply = asyncio.run(
        request_enrollment(_settings(), EnrollmentRequest("delete", identity), timeout)
    )
    _print_ack(reply)
    if reply.get("ok"):
        tombstones = reply.get("tombstones", 0)
        console().print(f"tombstoned {tombstones} photo record(s) in the state topic")


@main.command()
@click.option("--from-beginning", is_flag=True, help="replay the topics from the start")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (machines) instead of text")
@click.option("--dedupe", is_flag=True, help="drop repeated image ids (at-least-once replays)")
@click.option("--limit", type=int, default=None, help="stop after this many events")
@click.option("--idle-exit", type=float, default=None, help="stop after this many idle seconds")
def watch(
    from_beginning: bool, as_json: bool, dedupe: bool, limit: int | None, idle_exit: float | None
) -> None:
    """Tail match events and DLQ events."""
    from streams.clients import outcome_topics, read_outcomes, tail

    settings = _settings()

    async def run() -> None:
        tally = Tally()
        shown = 0
        async with tail(settings, outcome_topics(settings), from_beginning) as consumer:
            async for kind, event in read_outcomes(settings, consumer, idle_exit):
                if not tally.add(kind, event) and dedupe:
                    continue
                shown += 1
                if as_json:
                    click.echo(json.dumps({"topic": kind, **event}))
                else:
                    console().print(event_line(kind, event))
                if limit is not None and shown >= limit:
                    return

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--gallery",
    "gallery_path",
    type=click.Path(path_type=Path),
    default=None,
    help="embedded gallery folder (default: the configured one)",
)
def identify(images: tuple[str, ...], gallery_path: Path | None) -> None:
    """Detect, embed and search without Kafka: one JSON line per image."""
    from facestream.offline import OfflineIdentifier

    settings = _settings()
    if gallery_path is not None:
        settings = settings.override(gallery__path=gallery_path, gallery__backend="edge")
    with OfflineIdentifier(settings) as identifier:
        for path in _image_files(images):
            click.echo(json.dumps(identifier.identify(str(path), path.read_bytes())))


@main.command("eval")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--impostors",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="photos of people who are not enrolled (every usable face is an impostor query)",
)
@click.option(
    "--enroll",
    "enroll_n",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="photos per identity to enrol (the first ones, by name)",
)
@click.option(
    "--target-fpir",
    default=0.01,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="FPIR at --gallery-size that the suggested match threshold must meet "
    "(the review threshold: 10 times it)",
)
@click.option(
    "--gallery-size",
    type=click.IntRange(min=1),
    default=None,
    help="identities to project FPIR to [default: the current gallery's, else 1000]",
)
@click.option(
    "--histogram",
    type=click.Path(path_type=Path),
    default=None,
    help="where to save the similarity histograms (PNG)",
)
@click.option(
    "--det",
    "det_path",
    type=click.Path(path_type=Path),
    default=None,
    help="where to save the DET curve, FNIR against FPIR (PNG)",
)
@click.option("--json", "as_json", is_flag=True, help="end with one JSON line of all the figures")
def eval_command(
    folder: Path,
    impostors: Path | None,
    enroll_n: int,
    target_fpir: float,
    gallery_size: int | None,
    histogram: Path | None,
    det_path: Path | None,
    as_json: bool,
) -> None:
    """Measure open-set identification on a labelled folder (one subfolder per identity),
    through the product's enrolment and search paths: FNIR with failures to enrol and to
    acquire counted as misses, FPIR, both with 95% intervals, FPIR projected to a gallery
    size, and suggested thresholds. README "Thresholds"."""
    from facestream import evaluation as ev

    result = ev.evaluate(_settings(), folder, impostors, enroll_n, target_fpir, gallery_size)
    result.histogram_path = ev.histogram_png(result, histogram or ev.default_histogram_path())
    result.det_path = ev.det_png(result, det_path or ev.default_det_path())
    summary = result.summary()
    n_eval, n = result.enrolled, result.gallery_size

    def _num(v: float) -> str:  # a rate: three decimals, two significant digits when small
        return f"{v:.2g}" if 0 < v < 0.001 else f"{v:.3f}"

    def rate(r: dict, counts: bool = True) -> str:
        shown = f"{_num(r['value'])} [{_num(r['low'])}-{_num(r['high'])}]"
        return f"{shown} ({r['k']}/{r['n']})" if counts else shown

    def projected(p: dict | None) -> str:
        return f"{_num(p['expected'])} (<={_num(p['upper'])})" if p else "-"

    review = f", review {result.review_threshold}" if result.review_threshold is not None else ""
    split_rows = [
        {"queries": "genuine", "outcome": k.replace("_", " "), "count": v}
        for k, v in summary["genuine"].items()
    ] + [
        {"queries": "impostor faces", "outcome": k, "count": v}
        for k, v in summary["impostor"].items()
    ]
    console().print(
        rows_table(
            f"decisions at the configured thresholds (match {result.threshold}{review})",
            split_rows,
            ["queries", "outcome", "count"],
        )
    )
    rows = [
        {
            "threshold": f"{r['threshold']:.2f}",
            "FNIR [95% CI]": rate(r["fnir"], counts=False),
            "FPIR [95% CI]": rate(r["fpir"], counts=False),
            "p(t)": _num(r["p"]) if r["p"] is not None else "-",
            f"exp. FPIR @{n_eval}": projected(r["expected_fpir_evaluated"]),
            f"exp. FPIR @{n}": projected(r["expected_fpir_at_gallery_size"]),
        }
        for r in summary["table"]
    ]
    console().print(
        rows_table(
            f"open-set identification: {len(result.genuine)} genuine queries (misses included),"
            f" {len(result.impostors)} impostor faces, {n_eval} enrolled",
            rows,
            list(rows[0]),
        )
    )
    by_size: dict[tuple[str, float], dict[str, str]] = {}
    for p in summary["projections"]:
        row = by_size.setdefault(
            (p["decision"], p["threshold"]),
            {"decision": p["decision"], "threshold": str(p["threshold"])},
        )
        row[f"N={p['gallery_size']:,}"] = projected(p)
    if by_size:
        console().print(
            rows_table(
                "expected FPIR by gallery size, 1-(1-p(t))^N (<= what the measured comparisons"
                " alone can bound)",
                list(by_size.values()),
                list(next(iter(by_size.values()))),
            )
        )
    comparisons = summary["impostor_comparisons"]
    facts: dict[str, object] = {
        "identities enrolled": f"{result.enrolled} of {result.identities}",
        "genuine queries": len(result.genuine),
        "impostor faces (rejected by the gates)": (
            f"{len(result.impostors)} ({result.impostor_faces_rejected})"
        ),
        "rank-1": f"{summary['rank1']:.3f}",
        f"FNIR / FPIR at match {result.threshold}": (
            f"{rate(summary['fnir'])} / {rate(summary['fpir'])}"
        ),
    }
    if summary["fnir_review"] is not None:
        facts[f"FNIR / FPIR at review {result.review_threshold}"] = (
            f"{rate(summary['fnir_review'])} / {rate(summary['fpir_review'])}"
        )
    if comparisons["n"]:
        facts["impostor comparisons (mean, sd, max)"] = (
            f"{comparisons['n']} ({comparisons['mean']:.3f}, {comparisons['sd']:.3f}, "
            f"{comparisons['max']:.3f})"
        )
    facts["gallery size for the projections"] = f"{n} ({result.gallery_size_source})"
    for name, s in (summary["suggested"] or {}).items():
        if s["threshold"] is None:
            text = "none up to 1.0"
        else:
            text = f"{s['threshold']} (expected FPIR {_num(s['expected_fpir'])}"
            text += (
                ", established by the data)"
                if s["established"]
                else f"; extrapolated: needs >= {s['comparisons_needed']:,} impostor comparisons)"
            )
        facts[f"suggested {name} threshold for FPIR <= {s['target_fpir']:g} at {n}"] = text
    facts["DET curve"] = result.det_path
    facts["histograms"] = result.histogram_path
    console().print(kv_table("evaluation", facts))
    for failure in result.failures_to_enrol:
        console().print(
            f"[yellow]failure to enrol[/] {failure['identity']}: "
            f"{failure['reason']}: {failure['message']}"
        )
    for g in result.genuine:
        if g.outcome == "failure_to_acquire":
            console().print(f"[yellow]failure to acquire[/] {g.photo}: {g.reason}")
    if as_json:
        click.echo(json.dumps(summary))


@main.command()
@click.option(
    "--eval-set",
    type=click.Path(path_type=Path),
    default=None,
    help="also lay the photos out as an evaluation set in this folder",
)
def samples(eval_set: Path | None) -> None:
    """Fetch the sample photos (from public packages) into the cache."""
    from facestream.samples import ensure_samples, layout_eval_set

    folder = ensure_samples(_settings().cache_dir)
    console().print(f"sample photos in {folder}")
    if eval_set is not None:
        labelled, impostors = layout_eval_set(folder, eval_set)
        console().print(f"facestream eval {labelled} --impostors {impostors}")


@main.command()
@click.option("--batch", default=32, show_default=True, help="photos per model call")
@click.option(
    "--force", is_flag=True, help="switch even to an empty gallery (the state topic is empty)"
)
@click.option("--json", "as_json", is_flag=True, help="end with one JSON line of the summary")
def reindex(batch: int, force: bool, as_json: bool) -> None:
    """Build a new generation of the gallery for the configured model from the state topic,
    on a live system, then switch to it (the live generation is never touched).

    Runs with the configured model (e.g. FACESTREAM_MODEL__FOLDER); for a new model, restart
    the workers with the same settings afterwards (until then they keep serving the old
    gallery; enrolments wait). With the same model the running workers switch by themselves.
    Rerun it after a crash: it resumes the generation it left. Progress: a bar on a
    terminal, else one line per step on stderr.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from facestream.reindex import ReindexRefused
    from facestream.reindex import reindex as run

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console(), transient=True) as bar:
        tasks: dict[str, object] = {}

        def progress(phase: str, done: int, total: int | None) -> None:
            if not console().is_terminal:
                click.echo(f"reindex: {phase} {done}/{total}", err=True)
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        try:
            summary = asyncio.run(run(_settings(), progress, batch=batch, force=force))
        except ReindexRefused as exc:
            raise click.ClickException(str(exc)) from exc
    shown = {k: v for k, v in summary.items() if k != "refused photos"}
    title = f"reindexed; the current gallery is now {summary['generation']}"
    console().print(kv_table(title, shown))
    for line in summary["refused photos"]:
        console().print(f"[yellow]refused by this model[/] {line}")
    if as_json:
        click.echo(json.dumps(summary))


@main.command()
@click.option("--retire", "retire_app", metavar="APPLICATION", help="delete this one now")
@click.option("--force", is_flag=True, help="retire it even while a worker still claims it")
@click.option("--json", "as_json", is_flag=True, help="one JSON line instead of the table")
def models(retire_app: str | None, force: bool, as_json: bool) -> None:
    """The model applications of this deployment on Ray Serve: one per model (and per
    model-relevant settings), their status, replicas and last claim by a running worker.

    An application that no worker has claimed for FACESTREAM_RAY__RETIRE_AFTER_S (the old
    model, once every worker runs the new one) is deleted by the workers themselves;
    --retire deletes one now.
    """
    from actors.gallery import current_model
    from facestream.gallery_reads import join_deployment_ray

    settings = _settings()
    if not join_deployment_ray(settings, current_model(settings)):
        raise click.ClickException(
            "no running deployment found: start the workers, or set FACESTREAM_RAY__ADDRESS"
        )
    from actors.serving import model_apps, retire

    apps = model_apps(settings)
    if retire_app is not None:
        if retire_app not in apps:
            raise click.ClickException(f"no model application {retire_app!r}; have {sorted(apps)}")
        age = time.time() - (apps[retire_app]["claimed_at"] or 0.0)
        if age < settings.ray.retire_after_s and not force:
            raise click.ClickException(
                f"{retire_app} was claimed by a running worker {age:.0f} s ago: stop its"
                " workers first (or --force, and they fail until restarted)"
            )
        retire(settings, retire_app)
        apps[retire_app]["status"] = "DELETING"
    if as_json:
        click.echo(json.dumps(apps))
        return
    rows = [
        {
            "application": name,
            "status": app["status"],
            "replicas": ", ".join(f"{n} {state.lower()}" for state, n in app["replicas"].items()),
            "last claimed": "never"
            if app["claimed_at"] is None
            else f"{time.time() - app['claimed_at']:.0f} s ago",
        }
        for name, app in sorted(apps.items())
    ]
    columns = ["application", "status", "replicas", "last claimed"]
    console().print(rows_table("model applications (Ray Serve)", rows, columns))


@main.command()
def topics() -> None:
    """Create the deployment's topics if missing (production initialisation)."""
    from streams.topics import ensure_topics, topic_specs

    settings = _settings()
    asyncio.run(ensure_topics(settings))
    console().print(kv_table("topics (partitions)", topic_specs(settings)))


if __name__ == "__main__":
    main()
