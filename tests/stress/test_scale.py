"""Scale out on one machine: a Ray cluster of a head and two nodes, two Faust workers in one
consumer group, two model replicas spread over the nodes. Both workers get partitions, the
replicas run on two nodes and every image yields an outcome; then a worker leaves and a node
is removed mid-stream, and still nothing is lost. Prints per-worker and per-node counts."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from itertools import count
from pathlib import Path

import psutil
import pytest
from aiokafka.partitioner import DefaultPartitioner

from facestream.embedded import EmbeddedStack
from streams.clients import ImageToSend
from tests.flow import run_flow
from tests.stress.test_delivery import check, checked_flow, new_stack, stream_of
from tests.waits import (
    ClusterView,
    cluster_view,
    wait_for_assignment,
)

pytestmark = pytest.mark.stress


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time of each live actor process: the work a replica did, wherever it runs."""
    out = {}
    for actor, pid in pids.items():
        try:
            times = psutil.Process(pid).cpu_times()
            out[actor] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return out


def print_nodes(view: ClusterView, cpu: dict[str, float]) -> None:
    for node_id, label in sorted(view.node_label.items(), key=lambda item: item[1]):
        models = view.models_on(node_id)
        busy = sum(cpu.get(a, 0.0) for a in models)
        names = [a.rsplit("#", 1)[1] for a in models]  # Serve's replica ids
        gallery = "  + gallery actor" if node_id == view.gallery_node else ""
        print(
            f"  {label:<10} node {node_id[:8]}  model replicas {names}  CPU {busy:5.1f} s{gallery}"
        )


# Worker w owns the partitions phase[0][w] while the images in phase[1] are produced.
Phase = tuple[list[set[int]], range]


def print_workers(stack: EmbeddedStack, phases: list[Phase], partitions: int) -> None:
    """Images per worker, from partition ownership: events name no worker, but image i went to
    partition i % partitions, and a partition's owner handles it (replays after a leave aside)."""
    print("per worker (partitions owned, images produced to them):")
    for w, worker in enumerate(stack.workers):
        parts = " -> ".join(str(sorted(owned[w])) for owned, _ in phases)
        n = sum(1 for owned, span in phases for i in span if i % partitions in owned[w])
        print(f"  {worker.log_path.stem:<9} partitions {parts}  images {n}")


def spread_over_partitions(images: list[ImageToSend], partitions: int) -> list[ImageToSend]:
    """Re-key the images so that image i lands on partition i % partitions: every worker gets
    traffic whatever the hash of three camera names, and each image's partition is known."""
    every = list(range(partitions))
    key_for: dict[int, str] = {}
    for j in count():
        # The producer's default partitioner: murmur2 of the key.
        key_for.setdefault(
            DefaultPartitioner()(f"camera-{j}".encode(), every, every), f"camera-{j}"
        )
        if len(key_for) == partitions:
            break
    return [
        dataclasses.replace(img, source=key_for[i % partitions]) for i, img in enumerate(images)
    ]


def test_two_workers_on_a_three_node_cluster_lose_nothing_when_a_worker_and_a_node_go(
    samples: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Two model replicas of one CPU each, which Serve spreads over the nodes: two nodes.
    # new_stack takes its settings from the environment.
    monkeypatch.setenv("FACESTREAM_RAY__MIN_REPLICAS", "2")
    monkeypatch.setenv("FACESTREAM_RAY__MAX_REPLICAS", "2")
    stack, _ = new_stack(samples, workers=2, shared_ray=True, ray_nodes=2)
    try:
        partitions = stack.settings.topics.images_partitions
        owned = wait_for_assignment(stack.settings, stack.workers)
        view = cluster_view(stack)
        assert len(view.node_label) == 3, view.node_label
        assert len(set(view.models.values())) == 2, f"replicas share a node: {view.models}"

        # 1. The whole cluster, as fast as the broker takes the images.
        images = spread_over_partitions(stream_of(samples, 100, "scale"), partitions)
        cpu_before = cpu_seconds(view.model_pid)
        started = time.monotonic()
        report = asyncio.run(run_flow(stack.settings, images, timeout_s=180, linger_s=1))
        check(report, images, stack)
        print(f"{len(images)} images in {time.monotonic() - started:.1f}s")
        cpu = {a: s - cpu_before.get(a, 0.0) for a, s in cpu_seconds(view.model_pid).items()}
        print_workers(stack, [(owned, range(len(images)))], partitions)
        print("per node (model replicas, their CPU time in this stream):")
        print_nodes(view, cpu)
        for node_id in set(view.models.values()):  # each replica worked, not only loaded
            assert sum(cpu[a] for a in view.models_on(node_id)) > 0.5, cpu

        # 2. Mid-stream, worker-0 leaves the group (SIGTERM: it commits and leaves), then a
        # Ray node holding a model replica is lost (SIGKILL of its processes): the one that
        # also holds the gallery actor, if any, so that both kinds of actor must restart.
        candidates = [n for n, label in view.node_label.items() if label != "head"]
        victim_id = max(
            (n for n in candidates if view.models_on(n)), key=lambda n: n == view.gallery_node
        )
        victim = stack.ray_nodes[int(view.node_label[victim_id].rsplit("-", 1)[1])]
        leaving, staying = stack.workers
        # Each fault once so many images have an outcome: mid-stream, whatever the pace. The
        # graceful stop runs in a thread while images keep flowing; the node goes once the
        # worker has left and 40 more images are answered.
        leave_at, remove_at = 30, 70
        images = spread_over_partitions(stream_of(samples, 120, "scale-faults"), partitions)
        faults = {leave_at: leaving.stop, remove_at: lambda: stack.remove_ray_node(victim)}
        started = time.monotonic()
        report = checked_flow(stack, images, faults, timeout_s=300, rate_per_s=15, linger_s=2)
        print(f"{len(images)} images in {time.monotonic() - started:.1f}s (produced at 15/s)")
        assert not leaving.alive() and staying.alive()
        # The broker holds a group of worker-1 alone, and worker-1 reports every partition.
        (taken_over,) = wait_for_assignment(stack.settings, [staying])
        gone = [set(), taken_over]
        print_workers(
            stack,
            [(owned, range(leave_at)), (gone, range(leave_at, len(images)))],
            partitions,
        )
        assert taken_over == set(range(partitions)), "worker-1 did not take over"

        after = cluster_view(stack, lost=(victim_id,))
        print(f"per node after {view.node_label[victim_id]} was removed (replicas restarted):")
        print_nodes(after, cpu_seconds(after.model_pid))
        assert victim_id not in after.node_label
        assert set(after.models.values()) <= after.node_label.keys()
    finally:
        stack.stop()
