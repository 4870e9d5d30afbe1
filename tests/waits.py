"""Waiting on what the stack does, never on the clock: the broker's view of a consumer group,
a worker's own metrics endpoint, outcomes counted as they are read back.

Deadlines here only bound a failure (they are generous: a loaded two-core machine is slow);
a passing run never waits for one to expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from core.settings import Settings
from core.waiting import Deadline, wait_until
from facestream.embedded import EmbeddedStack, Worker
from streams.clients import ImageToSend, outcome_topics, producer, tail
from streams.records import image_headers
from streams.security import aiokafka_kwargs
from tests.flow import FlowReport, RawRecord, run_flow
from tests.ray_probe import probe

# -- a worker's metrics endpoint ---------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    """One scrape of a worker's Prometheus endpoint."""

    samples: tuple[tuple[str, dict[str, str], float], ...]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none:
        a labelled series only appears once it is first set)."""
        return sum(v for n, ls, v in self.samples if n == name and labels.items() <= ls.items())

    def label_values(self, name: str, label: str, **labels: str) -> set[str]:
        return {
            ls[label]
            for n, ls, _ in self.samples
            if n == name and label in ls and labels.items() <= ls.items()
        }


def scrape(worker: Worker, timeout_s: float = 5.0) -> Metrics | None:
    """The worker's metrics, or None while it does not answer (starting, stopped, busy)."""
    url = f"http://127.0.0.1:{worker.metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    return Metrics(
        tuple(
            (s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        )
    )


def owned_partitions(worker: Worker, topic: str) -> set[int] | None:
    """The ``topic`` partitions a worker says it owns: it exports a lag gauge for each
    partition assigned to it (and drops it at its next gauge tick, ~5 s, once revoked)."""
    metrics = scrape(worker)
    if metrics is None:
        return None
    labels = metrics.label_values("facestream_consumer_lag_messages", "partition", topic=topic)
    return {int(p) for p in labels}


# -- the broker's view of the consumer group ---------------------------------------------------


async def _group_async(settings: Settings) -> tuple[str, int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_list, **aiokafka_kwargs(settings.kafka.security)
    )
    await admin.start()
    try:
        (reply,) = await admin.describe_consumer_groups([settings.kafka.app_id])
        (group,) = reply.groups
        error_code, _, state, _, _, members = group[:6]
        return (state if error_code == 0 else f"error {error_code}"), len(members)
    finally:
        await admin.close()


def consumer_group(settings: Settings) -> tuple[str, int]:
    """(state, number of members) of the workers' consumer group, as the broker sees it.

    Tansu answers DescribeGroups with the members but without their assignments, so which
    worker owns which partition comes from the workers themselves (``owned_partitions``).
    """
    return asyncio.run(asyncio.wait_for(_group_async(settings), 30))


async def _committed_async(settings: Settings) -> dict[int, int]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_list, **aiokafka_kwargs(settings.kafka.security)
    )
    await admin.start()
    try:
        # Named partitions: Tansu's answer to "all of the group's offsets" does not decode.
        topic = settings.topics.images
        parts = [TopicPartition(topic, p) for p in range(settings.topics.images_partitions)]
        offsets = await admin.list_consumer_group_offsets(settings.kafka.app_id, partitions=parts)
    finally:
        await admin.close()
    return {
        tp.partition: meta.offset
        for tp, meta in offsets.items()
        if tp.topic == settings.topics.images and meta.offset >= 0
    }


def committed_offsets(settings: Settings) -> dict[int, int]:
    """The workers' committed offset of each ``images`` partition (the next offset a worker
    that takes the partition over reads), as the broker holds them."""
    return asyncio.run(asyncio.wait_for(_committed_async(settings), 30))


async def _topics_async(settings: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka.bootstrap_list, **aiokafka_kwargs(settings.kafka.security)
    )
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


def wait_for_topics(settings: Settings, topics: Iterable[str], timeout_s: float = 120.0) -> None:
    """Until the broker answers and knows ``topics`` (a broker on S3 storage is slow to answer
    at first after a restart)."""
    wanted = set(topics)

    def known() -> bool:
        try:
            return wanted <= asyncio.run(asyncio.wait_for(_topics_async(settings), 10))
        except Exception:  # not listening yet, or not answering yet
            return False

    wait_until(
        known, timeout_s=timeout_s, what=f"the broker knows {sorted(wanted)}", interval_s=0.5
    )


def port_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now (as Tansu does: SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for_assignment(
    settings: Settings, workers: Sequence[Worker], timeout_s: float = 180.0
) -> list[set[int]]:
    """Each worker's ``images`` partitions, once the broker holds a stable group of exactly
    these workers and they split every partition between them, each holding some."""
    topic, partitions = settings.topics.images, set(range(settings.topics.images_partitions))
    seen: dict[str, object] = {}

    def split() -> list[set[int]] | None:
        try:
            seen["group"] = consumer_group(settings)
        except Exception as exc:  # e.g. no coordinator yet: ask again
            seen["group"] = repr(exc)
            return None
        if seen["group"] != ("Stable", len(workers)):
            return None
        owned = [owned_partitions(w, topic) for w in workers]
        seen["owned"] = owned
        if any(not o for o in owned):
            return None
        if sum(len(o) for o in owned) != len(partitions) or set().union(*owned) != partitions:
            return None  # shared or missing: a rebalance the gauges have not caught up with
        return owned

    try:
        return wait_until(split, timeout_s=timeout_s, what="partitions assigned", interval_s=0.5)
    except TimeoutError as exc:
        logs = "\n".join(w.log_tail(20) for w in workers)
        raise AssertionError(f"{exc}; last seen {seen}\n{logs}") from exc


# -- the Ray cluster: its nodes, and where the actors run ---------------------------------------


def ask_ray(stack: EmbeddedStack, question: str, lost: Sequence[str] = ()) -> Any:
    """The answer to ``question`` (a ``tests.ray_probe`` command) about the stack's Ray
    cluster, once there is one and the ``lost`` nodes are known dead."""
    assert stack.ray_head is not None
    return probe({**stack.settings.env(), **stack.ray_head.env}, question, *lost)


def node_labels(stack: EmbeddedStack, ports: dict[str, int]) -> dict[str, str]:
    """Node id -> "head" or "ray-node-<i>" (``stack.ray_nodes[i]``), from their ports."""
    label_of = {node.node_manager_port: f"ray-node-{i}" for i, node in enumerate(stack.ray_nodes)}
    return {nid: label_of.get(port, "head") for nid, port in ports.items()}


def alive_nodes(stack: EmbeddedStack, lost: Sequence[str] = ()) -> dict[str, str]:
    """The alive nodes' labels (``node_labels``), once the ``lost`` nodes are known dead."""
    return node_labels(stack, ask_ray(stack, "nodes", lost))


def wait_for_gallery_gone(stack: EmbeddedStack, lost: Sequence[str]) -> None:
    """Until Ray has given up on the gallery actor (its node ``lost`` is known dead and the
    actor could not be placed anywhere else)."""
    ask_ray(stack, "gallery-gone", lost)


@dataclass
class ClusterView:
    models: dict[str, str]  # model replica (its actor's name) -> node id
    model_pid: dict[str, int]
    gallery_node: str
    gallery_size: int  # photos in the gallery the actor serves
    node_label: dict[str, str]  # alive node id -> "head" or "ray-node-<i>" (stack.ray_nodes[i])

    def models_on(self, node_id: str) -> list[str]:
        return sorted(a for a, n in self.models.items() if n == node_id)


def cluster_view(stack: EmbeddedStack, lost: tuple[str, ...] = ()) -> ClusterView:
    """Where the model replicas and the gallery actor run, once every one answers from a live
    node (and the ``lost`` nodes are known dead): Ray and Serve restart them in their own
    time."""
    view = ask_ray(stack, "view", lost)
    return ClusterView(
        models={a: info["node_id"] for a, info in view["models"].items()},
        model_pid={a: info["pid"] for a, info in view["models"].items()},
        gallery_node=view["gallery"]["node_id"],
        gallery_size=view["gallery"]["size"],
        node_label=node_labels(stack, view["nodes"]),
    )


# -- the gallery stalled -----------------------------------------------------------------------


def _stages(workers: Iterable[Worker]) -> tuple[float, float, float, float] | None:
    """(model calls done, gallery calls done, batches published, images in flight), summed
    over the workers that answer."""
    out = [0.0, 0.0, 0.0, 0.0]
    answered = False
    for worker in workers:
        if not worker.alive() or (m := scrape(worker)) is None:
            continue
        answered = True
        for i, stage in enumerate(("model_call", "gallery_call", "publish")):
            out[i] += m.value("facestream_stage_seconds_count", stage=stage)
        out[3] += m.value("facestream_in_flight_images")
    return (out[0], out[1], out[2], out[3]) if answered else None


def wait_for_batch_waiting_on_gallery(
    workers: Sequence[Worker], timeout_s: float = 120.0, interval_s: float = 0.25
) -> tuple[float, float, float, float]:
    """Return once a batch is seen waiting on a (stalled) gallery: two scrapes in a row in which
    a batch has passed the model but is not published, images are in flight, and neither the
    gallery nor publishing made progress between the two.

    Every batch makes one model call (unless all its images fail the size check, which the
    streams of the stress tests never do), so model calls minus published batches counts the
    batches between the model and the broker."""
    previous: list[tuple[float, float, float, float] | None] = [None]

    def waiting() -> tuple[float, float, float, float] | None:
        now, before = _stages(workers), previous[0]
        previous[0] = now
        if now is None or before is None:
            return None
        model, gallery, published, in_flight = now
        stuck = model - published >= 1 and in_flight >= 1
        still = before[1:3] == (gallery, published) and before[0] - before[2] >= 1
        return now if stuck and still else None

    return wait_until(
        waiting, timeout_s=timeout_s, what="a batch waiting on the gallery", interval_s=interval_s
    )


# -- faults placed by progress -----------------------------------------------------------------

Fault = Callable[[], object]


async def run_flow_with_faults(
    settings: Settings,
    images: list[ImageToSend | RawRecord],
    at_outcomes: dict[int, Fault],
    **flow_kwargs: object,
) -> tuple[FlowReport, dict[int, int]]:
    """``run_flow``, with ``at_outcomes[n]()`` run once ``n`` of these images have an outcome
    (read back from the outcome topics): a fault placed by progress, not by the clock, so it
    always lands mid-stream, with work done before it and work left after it.

    Faults run one after another, each in a thread (the flow keeps reading meanwhile); they
    must all have run when the flow ends. Returns the report and, for each fault, the number
    of outcomes counted when it returned.
    """
    wanted = {img.image_id for img in images}
    assert all(0 < n < len(wanted) for n in at_outcomes), "a fault must land mid-stream"
    done_at: dict[int, int] = {}
    async with tail(settings, outcome_topics(settings)) as consumer:

        async def watch() -> None:
            seen: set[str] = set()

            async def read() -> None:
                for records in (await consumer.getmany(timeout_ms=250)).values():
                    for rec in records:
                        image_id = json.loads(rec.value).get("image_id")
                        if image_id in wanted:
                            seen.add(image_id)

            for n in sorted(at_outcomes):
                while len(seen) < n:
                    await read()
                await asyncio.to_thread(at_outcomes[n])
                while True:  # catch up with what arrived while the fault ran
                    before = len(seen)
                    await read()
                    if len(seen) == before:
                        break
                done_at[n] = len(seen)

        watcher = asyncio.create_task(watch())
        flow = asyncio.create_task(run_flow(settings, images, **flow_kwargs))  # type: ignore[arg-type]
        try:
            done, _ = await asyncio.wait({watcher, flow}, return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                watcher.result()  # a fault that failed fails the test now
            report = await flow
            if not watcher.done():
                # A complete flow means every fault has run, or is finishing (e.g. resuming
                # the gallery that let the last images through); an incomplete one is for the
                # caller to report, with whichever faults ran.
                complete = not report.missing(wanted)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(watcher), 120 if complete else 1)
            if watcher.done() and not watcher.cancelled():
                watcher.result()
        finally:
            for task in (watcher, flow):
                task.cancel()
    return report, done_at


def assert_faults_ran(done_at: dict[int, int], at_outcomes: dict[int, Fault]) -> None:
    assert sorted(done_at) == sorted(at_outcomes), f"faults run (at outcomes): {done_at}"
    print(f"faults at outcomes {sorted(at_outcomes)}, done by outcomes {list(done_at.values())}")


# -- a calm run: never more than a few images waiting ------------------------------------------


async def run_closed_loop(
    settings: Settings, images: list[ImageToSend], window: int, timeout_s: float = 300.0
) -> FlowReport:
    """Produce ``images`` keeping at most ``window`` of them without an outcome: the pace of
    whatever the workers sustain on this machine, so that no backlog ever builds up."""
    wanted = {img.image_id for img in images}
    report = FlowReport(produced=len(images))
    deadline = Deadline(timeout_s)
    async with tail(settings, outcome_topics(settings)) as consumer, producer(settings) as p:
        sent = 0
        while len(report.outcomes) < len(wanted) and not deadline.expired:
            while sent < len(images) and sent - len(report.outcomes) < window:
                img = images[sent]
                key = img.source.encode() if img.source else None
                headers = image_headers(img.image_id, img.source)
                await p.send_and_wait(settings.topics.images, img.data, key=key, headers=headers)
                sent += 1
            for tp, records in (await consumer.getmany(timeout_ms=250)).items():
                kind = "match" if tp.topic == settings.topics.matches else "dlq"
                for rec in records:
                    event = json.loads(rec.value)
                    if event["image_id"] in wanted:
                        report.total += 1
                        report.outcomes.setdefault(event["image_id"], (kind, event))
    return report
