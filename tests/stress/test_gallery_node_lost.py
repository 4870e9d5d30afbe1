"""The edge gallery's node is lost mid-stream, on a Ray cluster of a head and one node
(issue 14, placement). The gallery's owner is pinned to the node whose disk holds the
gallery, so Ray must not restart it anywhere else: searches wait (the worker's gallery
retries rise, a batch waits on the gallery), no image gets an outcome meanwhile, and none is
ever matched against an empty gallery; the partition reports stalled. The node comes back
with the same address and resources, and the same worker then carries on: every image gets
its outcome, each a match of the enrolled person.

The node has an address of its own (127.0.0.2; the head is 127.0.0.1), as a machine of a real
cluster does, so that only its return can bring the gallery back."""

from __future__ import annotations

import json
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import pytest

from actors.deployment import PLACEMENT_FILE
from core.settings import Settings
from core.waiting import wait_until
from facestream.embedded import EmbeddedStack, Worker
from streams.clients import ImageToSend
from tests.conftest import Pipeline, embedded_settings, unique
from tests.stress.test_delivery import checked_flow
from tests.waits import (
    alive_nodes,
    cluster_view,
    scrape,
    wait_for_assignment,
    wait_for_batch_waiting_on_gallery,
    wait_for_gallery_gone,
)

pytestmark = pytest.mark.stress
ENROLLED = "obama"
PHOTOS = ["obama2.jpg", "obama3.jpg"]
NODE_IP = "127.0.0.2"  # other photos of the enrolled person: each must match


def pin_gallery(settings: Settings, node_id: str) -> None:
    """Place a new deployment's gallery on ``node_id`` the way the product records a
    placement (``placement.json`` beside the gallery, read when the gallery's owner is
    created): a new gallery otherwise goes to the first worker's own node, the head."""
    settings.gallery.path.mkdir(parents=True, exist_ok=True)
    (settings.gallery.path / PLACEMENT_FILE).write_text(json.dumps({"node_id": node_id}))


def stalled(worker: Worker) -> float:
    metrics = scrape(worker)
    return -1.0 if metrics is None else metrics.value("facestream_partition_stalled")


def gallery_retries(worker: Worker) -> float:
    metrics = scrape(worker)
    return -1.0 if metrics is None else metrics.value("facestream_retries_total", call="gallery")


def test_gallery_node_lost_searches_wait_and_nothing_is_matched_against_an_empty_gallery(
    samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ray declares a node dead after 5 missed health checks, 3 s apart by default: 1 s apart
    # here, so that the test waits ~5 s for it instead of ~15 s (the head inherits this).
    monkeypatch.setenv("RAY_health_check_period_ms", "1000")
    run_dir = Path(tempfile.mkdtemp(prefix="fss-"))
    # A short stall threshold, so that the stall shows within seconds of the loss.
    settings = embedded_settings(run_dir, metrics__stall_after_s=5.0)
    stack = EmbeddedStack(settings, run_dir, workers=0, shared_ray=True)
    try:
        stack.start()
        # No CPU: the model replica (1 CPU) stays on the head, so that losing this node loses
        # the gallery alone; the gallery's owner needs none.
        node = stack.add_ray_node("ray-node-0", num_cpus=0, ip=NODE_IP)
        (node_id,) = [n for n, label in alive_nodes(stack).items() if label == "ray-node-0"]
        pin_gallery(stack.settings, node_id)
        worker = stack.add_worker("worker-0")
        Pipeline(stack.settings, stack).enroll_photos(ENROLLED, samples / "obama.jpg")
        view = cluster_view(stack)
        assert view.gallery_node == node_id and not view.models_on(node_id), view
        wait_for_assignment(stack.settings, [worker])

        # Kill the node once 12 images have an outcome; images keep coming at 4/s while it is
        # gone, and after it is back.
        blobs = [(samples / p).read_bytes() for p in PHOTOS]
        images = [
            ImageToSend(unique(f"node-lost-{i:03d}"), blob, f"camera-{i % 3}")
            for i, blob in enumerate(islice(cycle(blobs), 60))
        ]
        gone: dict[str, float] = {}

        def lose_the_gallery_node() -> None:
            before = gallery_retries(worker)
            stack.remove_ray_node(node)  # SIGKILL: the machine is lost
            gone["killed"] = time.monotonic()
            # The stall, in the worker's metrics: a batch waits on the gallery, and the
            # worker's gallery calls keep failing and being retried.
            wait_for_batch_waiting_on_gallery([worker])
            wait_until(
                lambda: gallery_retries(worker) >= before + 2,
                timeout_s=120,
                what="the worker retrying the gallery",
                interval_s=0.5,
            )
            # Ray gave up on the actor: pinned, it was restarted nowhere else.
            wait_for_gallery_gone(stack, lost=(node_id,))
            gone["from"] = time.monotonic()
            wait_until(
                lambda: stalled(worker) >= 1,
                timeout_s=60,
                what="the worker reporting a stalled partition",
                interval_s=0.5,
            )
            metrics = scrape(worker)
            assert metrics is not None
            print(
                f"gallery gone {gone['from'] - gone['killed']:.1f}s after its node: "
                f"retries {before:.0f} -> {gallery_retries(worker):.0f}, "
                f"in flight {metrics.value('facestream_in_flight_images'):.0f}, partitions "
                f"stalled {metrics.value('facestream_partition_stalled'):.0f}"
            )
            # The node comes back: same address, same resources. The same worker goes on: it
            # asks for the gallery's owner again, placed on the node at the recorded address.
            gone["until"] = time.monotonic()
            stack.add_ray_node("ray-node-0", num_cpus=0, ip=NODE_IP)

        faults = {12: lose_the_gallery_node}
        started = time.monotonic()
        report = checked_flow(stack, images, faults, timeout_s=240, rate_per_s=4, linger_s=2)
        print(f"{len(images)} images in {time.monotonic() - started:.1f}s (produced at 4/s)")
        # Searches waited: no outcome at all while the gallery was gone (any would have come
        # from a gallery served in its place).
        meanwhile = [i for i, t in report.received.items() if gone["from"] <= t <= gone["until"]]
        assert not meanwhile, f"outcomes while the gallery was gone: {meanwhile[:5]}"
        # Never matched against an empty gallery: every face is the enrolled person.
        decisions = {
            (face["decision"], face["identity"])
            for _, event in report.outcomes.values()
            for face in event["faces"]
        }
        assert decisions == {("match", ENROLLED)}, decisions
        after = cluster_view(stack, lost=(node_id,))
        assert after.gallery_size == 1, "the gallery came back without its photo"
        assert after.node_label[after.gallery_node] == "ray-node-1", after  # the node, back
        assert worker.alive()
    finally:
        stack.stop()
