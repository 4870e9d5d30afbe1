"""A model replica that fails its health check mid-stream is replaced by Serve, and every image
is still processed: the worker's calls that reach it are refused (transiently) and retried,
and wait in the handle for the replacement while no healthy replica is left.

The fault is the test's (``tests/fault_patches``): once asked, the first replica to run its
self-check fails it from then on, as a model whose output drifted would."""

from __future__ import annotations

import tempfile
from pathlib import Path

import psutil
import pytest

from core.waiting import wait_until
from facestream.embedded import EmbeddedStack
from tests.conftest import Pipeline, embedded_settings
from tests.fault_patches import fault_env
from tests.stress.test_delivery import actor_process, checked_flow, stream_of

pytestmark = pytest.mark.stress


def test_a_replica_failing_its_self_check_is_replaced_and_every_image_is_processed(
    samples: Path,
) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="fsh-"))
    fault = run_dir / "fault"
    # One replica, so that while it is replaced none is left: the calls must wait, not fail.
    settings = embedded_settings(
        run_dir,
        ray__min_replicas=1,
        ray__max_replicas=1,
        ray__health_check_period_s=1.0,
    )
    stack = EmbeddedStack(settings, run_dir)
    # The worker starts its own Ray, whose processes (the replicas) inherit this environment.
    stack.worker_env.update(fault_env("self-check", fault))
    try:
        stack.start()
        Pipeline(stack.settings, stack).enroll_photos("obama", samples / "obama.jpg")
        first = actor_process(stack, "ServeReplica").pid
        replaced: dict[str, int] = {}

        def fail_the_replica() -> None:
            """Ask for the fault; return once the faulty replica is gone and another serves."""
            (fault / "trigger").touch()

            def new_replica() -> int | None:
                claimed = fault / "claimed"
                if not claimed.exists() or psutil.pid_exists(int(claimed.read_text() or 0)):
                    return None
                try:
                    return actor_process(stack, "ServeReplica").pid
                except LookupError:  # the replacement is not started yet
                    return None

            replaced["pid"] = wait_until(
                new_replica, timeout_s=180, what="the replica replaced", interval_s=0.25
            )

        images = stream_of(samples, 80, "health")
        checked_flow(stack, images, {20: fail_the_replica}, timeout_s=300, rate_per_s=6, linger_s=1)
        assert int((fault / "claimed").read_text()) == first, "the faulty one was not the first"
        assert replaced["pid"] != first
        print(f"replica {first} failed its self-check; replica {replaced['pid']} replaced it")
    finally:
        stack.stop()
