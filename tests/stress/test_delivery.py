"""Nothing lost, nothing crashes: every image that enters yields exactly one outcome (after
dedupe by image id) while workers, actors, the gallery and the broker fail. Real components
throughout; each test prints produced / outcomes / duplicates / missing."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import tempfile
import threading
import time
from itertools import cycle, islice
from pathlib import Path

import psutil
import pytest

from core.settings import MESSAGE_HEADROOM_BYTES
from core.waiting import wait_until
from facestream.demo import no_face_png
from facestream.embedded import EmbeddedStack
from streams.clients import ImageToSend, outcome_topics
from tests.conftest import Pipeline, embedded_settings, unique
from tests.flow import FlowReport, run_flow
from tests.waits import (
    Fault,
    assert_faults_ran,
    committed_offsets,
    port_free,
    run_closed_loop,
    run_flow_with_faults,
    wait_for_assignment,
    wait_for_batch_waiting_on_gallery,
    wait_for_topics,
)

pytestmark = pytest.mark.stress
PHOTOS = ["obama2.jpg", "obama3.jpg", "biden2.jpg", "yaoming.jpg", "obama_partial_face.jpg"]


def stream_of(samples: Path, n: int, tag: str) -> list[ImageToSend]:
    """``n`` real photos with unique ids; every 25th is not an image (a DLQ outcome)."""
    blobs = [(samples / p).read_bytes() for p in PHOTOS] + [no_face_png()]
    out = []
    for i, blob in enumerate(islice(cycle(blobs), n)):
        bad = i % 25 == 24
        image_id = unique(f"{tag}-{i:04d}-{'bad' if bad else 'ok'}")
        out.append(ImageToSend(image_id, b"not a photo" if bad else blob, f"camera-{i % 3}"))
    return out


def actor_process(stack: EmbeddedStack, name: str) -> psutil.Process:
    """One of this stack's Ray actor processes, found by the title Ray gives it
    (``ray::ServeReplica:<app>:FaceModel`` for a model replica, ``ray::GalleryActor``...)
    among the descendants of the stack's own processes (its Ray nodes, or a worker's local
    Ray): never another run's actor on a shared machine."""
    roots = [stack.ray_head, *stack.ray_nodes, *stack.workers]
    for root in (r for r in roots if r is not None and r.alive()):
        try:
            descendants = psutil.Process(root.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            continue
        for proc in descendants:
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if cmd.startswith(f"ray::{name}"):
                return proc
    raise LookupError(f"no process for actor {name} in this stack")


def check(report: FlowReport, images: list[ImageToSend], stack: EmbeddedStack) -> None:
    ids = {img.image_id for img in images}
    print("\n" + report.line(ids))
    missing = report.missing(ids)
    logs = "\n".join(w.log_tail(15) for w in stack.workers)
    assert not missing, f"{len(missing)} images without outcome, e.g. {sorted(missing)[:5]}\n{logs}"
    for image_id, (kind, event) in report.outcomes.items():
        if "-bad-" in image_id:
            assert kind == "dlq" and event["reason"] == "not_an_image"
        else:
            assert kind == "match", event


def checked_flow(
    stack: EmbeddedStack, images: list[ImageToSend], faults: dict[int, Fault], **flow: object
) -> FlowReport:
    """``run_flow_with_faults`` on the stack, then every image checked (``check``) and every
    fault seen run."""
    report, done_at = asyncio.run(run_flow_with_faults(stack.settings, images, faults, **flow))
    check(report, images, stack)
    assert_faults_ran(done_at, faults)
    return report


def new_stack(
    samples: Path, settings: dict[str, object] | None = None, **kwargs: object
) -> tuple[EmbeddedStack, Pipeline]:
    """A fresh stack (``settings``: overrides; ``kwargs``: for EmbeddedStack), Obama enrolled."""
    run_dir = Path(tempfile.mkdtemp(prefix="fss-"))
    stack = EmbeddedStack(embedded_settings(run_dir, **(settings or {})), run_dir, **kwargs)
    with contextlib.ExitStack() as on_error:
        on_error.callback(stack.stop)
        stack.start()
        pipeline = Pipeline(stack.settings, stack)
        pipeline.enroll_photos("obama", samples / "obama.jpg")
        on_error.pop_all()
    return stack, pipeline


def test_chaos_worker_killed_model_actor_killed_gallery_stalled(samples: Path) -> None:
    stack, _ = new_stack(samples, workers=2, shared_ray=True)
    try:
        wait_for_assignment(stack.settings, stack.workers)  # both workers hold partitions
        images = stream_of(samples, 300, "chaos")

        def stall_gallery() -> None:
            """SIGSTOP the gallery actor until a batch is seen waiting on it, then SIGCONT."""
            gallery = actor_process(stack, "GalleryActor")
            gallery.send_signal(signal.SIGSTOP)
            try:
                wait_for_batch_waiting_on_gallery(stack.workers)
            finally:
                gallery.send_signal(signal.SIGCONT)

        # Each fault once so many images have an outcome: always mid-stream, whatever the pace.
        faults = {
            60: stack.workers[0].kill,  # SIGKILL: worker-1 must take over its partitions
            140: lambda: actor_process(stack, "ServeReplica").send_signal(signal.SIGKILL),
            220: stall_gallery,
        }
        checked_flow(stack, images, faults, timeout_s=300, rate_per_s=25, linger_s=2)
        assert not stack.workers[0].alive() and stack.workers[1].alive()
    finally:
        stack.stop()


def test_worker_restarted_mid_stream_resumes_from_committed_offsets(samples: Path) -> None:
    stack, _ = new_stack(samples)
    try:
        images = stream_of(samples, 120, "restart")
        committed: dict[int, int] = {}

        def restart() -> None:
            stack.workers[0].stop()  # SIGTERM: graceful, commits and leaves the group
            committed.update(committed_offsets(stack.settings))
            stack.add_worker("worker-restarted")

        faults = {50: restart}
        report = checked_flow(stack, images, faults, timeout_s=240, rate_per_s=20, linger_s=1)
        print(f"committed when the worker left: {committed}")
        # The 50 images answered before it left were committed (but for the batches in flight
        # when it stopped), and the new worker resumed there instead of replaying them all.
        window = stack.settings.batch.size * stack.settings.batch.in_flight_batches
        assert sum(committed.values()) >= 50 - window, committed
        assert report.duplicates < 50, report.duplicates
    finally:
        stack.stop()


def test_broker_restart_on_persistent_storage_loses_nothing(samples: Path) -> None:
    stack, _ = new_stack(samples, persistent=True)
    try:
        first, second = stream_of(samples, 60, "before"), stream_of(samples, 60, "after")
        report = asyncio.run(run_flow(stack.settings, first, timeout_s=180, rate_per_s=30))
        check(report, first, stack)

        stack.broker.stop()
        wait_until(lambda: port_free(stack.broker_port), timeout_s=60, what="broker port freed")
        stack.start_broker()
        wait_for_topics(
            stack.settings, [stack.settings.topics.images, *outcome_topics(stack.settings)]
        )
        # The worker was not touched: it must reconnect by itself.
        report = asyncio.run(run_flow(stack.settings, second, timeout_s=240))
        check(report, second, stack)
        assert stack.workers[0].alive()
    finally:
        stack.stop()


class PeakRss:
    """The highest RSS a process reaches while sampled (every 50 ms, in a thread)."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.peak, self.running = proc, proc.memory_info().rss, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.05)  # the sampling period, not a wait for anything

    def stop(self) -> int:
        self.running = False
        self.thread.join()
        return self.peak


def heavy_stream_of(samples: Path, n: int, tag: str) -> list[ImageToSend]:
    """Like ``stream_of``, with only the largest photos (~0.5 MB): a backlog of many bytes."""
    blobs = [(samples / p).read_bytes() for p in ("obama3.jpg", "obama_partial_face.jpg")]
    out = []
    for i, blob in enumerate(islice(cycle(blobs), n)):
        bad = i % 25 == 24
        image_id = unique(f"{tag}-{i:04d}-{'bad' if bad else 'ok'}")
        out.append(ImageToSend(image_id, b"not a photo" if bad else blob, f"camera-{i % 3}"))
    return out


def test_burst_keeps_worker_memory_bounded(samples: Path) -> None:
    """The worker holds at most batch.size * in_flight_batches images plus the consumer's
    fetch buffers (README, "Delivery guarantees"), however large the backlog: a burst adds
    to its RSS no more than a small part of the bytes waiting in the broker.

    Relative, not absolute: the burst is compared with a calm run of the same images (never
    more than one window of them waiting), which absorbs what the worker grows by anyway
    (allocator, caches, Ray) on this machine at this moment.

    Messages capped at 2 MiB (the photos are ~0.5 MB): the fetch buffers the design allows
    shrink with it, so that a backlog of 360 photos is enough to tell."""
    message_bytes = 2 * 2**20
    stack, pipeline = new_stack(
        samples,
        {
            "kafka__max_message_bytes": message_bytes,
            "limits__max_bytes": message_bytes - MESSAGE_HEADROOM_BYTES,
        },
    )
    try:
        pipeline.run(stream_of(samples, 20, "warmup"))  # steady state before measuring
        settings = stack.settings
        window = settings.batch.size * settings.batch.in_flight_batches
        worker = psutil.Process(stack.workers[0].pid)

        calm_images = heavy_stream_of(samples, 360, "calm")
        baseline = worker.memory_info().rss
        sampler = PeakRss(worker)
        started = time.monotonic()
        report = asyncio.run(run_closed_loop(settings, calm_images, window, timeout_s=300))
        calm_s = time.monotonic() - started
        calm_peak = sampler.stop()
        check(report, calm_images, stack)

        # 360 images at once: all of them wait in the broker while the worker works through.
        images = heavy_stream_of(samples, 360, "burst")
        backlog = sum(len(img.data) for img in images)
        sampler = PeakRss(worker)
        started = time.monotonic()
        report = asyncio.run(run_flow(settings, images, timeout_s=300))
        elapsed = time.monotonic() - started
        peak = sampler.stop()
        check(report, images, stack)

        # What the design lets the worker hold: a full fetch per partition in use, and the
        # stream buffer plus the batches in flight, at the largest photo each. The test can
        # only tell a bounded worker from one that keeps the backlog if this is well below it.
        largest = max(len(img.data) for img in images)
        partitions = min(3, settings.topics.images_partitions)  # three sources, three keys
        design = partitions * settings.kafka.max_message_bytes + 2 * window * largest
        assert design < backlog / 2, "the burst is too small to tell"
        excess = peak - calm_peak  # what the burst added beyond the calm run of as many images
        mb = 2**20
        print(
            f"calm: {len(calm_images)} images in {calm_s:.1f}s, worker RSS {baseline / mb:.0f}"
            f" -> peak {calm_peak / mb:.0f} MB; burst: {len(images)} images"
            f" ({backlog / mb:.0f} MB) in {elapsed:.1f}s ({len(images) / elapsed:.1f}/s),"
            f" peak {peak / mb:.0f} MB, {excess / mb:+.0f} MB over the calm run"
            f" ({excess / len(images) / 1024:.0f} KB per image; bound {backlog / 2 / mb:.0f} MB,"
            f" half the backlog; design {design / mb:.0f} MB)"
        )
        assert excess < backlog / 2
    finally:
        stack.stop()
