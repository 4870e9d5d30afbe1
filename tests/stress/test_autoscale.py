"""Replicas follow the load: on a Ray cluster of a head and two nodes, a stream faster than one
model replica makes Serve start a second; once the stream is done it stops it again. Every
image has its outcome throughout (a replica stopped by a downscale drains its calls first).
Prints the replica count over time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.ray_probe import ReplicaWatch, running
from tests.stress.test_delivery import checked_flow, new_stack, stream_of

pytestmark = pytest.mark.stress

# Short windows and delays, so that both decisions come within seconds; the defaults are for
# production traffic, which should not start replicas for a burst of a few seconds.
AUTOSCALING = {
    "FACESTREAM_RAY__MIN_REPLICAS": "1",
    "FACESTREAM_RAY__MAX_REPLICAS": "2",
    "FACESTREAM_RAY__TARGET_ONGOING_REQUESTS": "1",
    "FACESTREAM_RAY__UPSCALE_DELAY_S": "1",
    "FACESTREAM_RAY__DOWNSCALE_DELAY_S": "2",
    "FACESTREAM_RAY__LOOK_BACK_S": "4",
}


def test_replicas_scale_up_under_load_then_down_and_nothing_is_missing(
    samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in AUTOSCALING.items():  # new_stack takes its settings from here
        monkeypatch.setenv(name, value)
    stack, _ = new_stack(samples, shared_ray=True, ray_nodes=2)
    assert stack.ray_head is not None
    watch = ReplicaWatch({**stack.settings.env(), **stack.ray_head.env})
    try:
        watch.wait(lambda apps: running(apps) == 1, "one replica at rest", timeout_s=120)
        started = time.monotonic()

        def scaled_up() -> None:
            # The worker keeps batch.in_flight_batches calls going while images wait:
            # more than the target per replica, for as long as the stream outpaces one replica.
            watch.wait(lambda apps: running(apps) == 2, "a second replica", timeout_s=180)

        # As fast as the broker takes them: a backlog that one replica needs a while to clear.
        images = stream_of(samples, 320, "autoscale")
        checked_flow(stack, images, {10: scaled_up}, timeout_s=300, linger_s=1)
        watch.wait(lambda apps: running(apps) == 1, "back to one replica", timeout_s=120)
        counts = [(round(at - started, 1), running(apps)) for at, apps in watch.seen]
        changes = [c for i, c in enumerate(counts) if i == 0 or c[1] != counts[i - 1][1]]
        print(f"running replicas over time (s, count): {changes}")
    finally:
        watch.close()
        stack.stop()
