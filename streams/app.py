"""The Faust app: topics, the two agents, and the worker entry point.

At-least-once: an input offset is acknowledged (and later committed) only after its outcome
event has been delivered to the broker, so a crash replays the batch instead of losing it;
outcomes are keyed by image id so consumers can drop the duplicates a replay produces.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import faust

from core.compute import Compute
from core.events import encode
from core.settings import Settings
from streams import metrics, observe, offsets, topics, transport
from streams.delivery import Delivery
from streams.processor import EnrollmentProcessor, ImageProcessor
from streams.records import image_message
from streams.security import faust_credentials

log = logging.getLogger(__name__)

GAUGE_WAIT_S = 2.0  # the gauges tick waits this long for the gallery size, no longer


def faust_config(settings: Settings, datadir: str | None = None) -> dict[str, Any]:
    tuning = settings.tuning
    return {
        **({"datadir": datadir} if datadir else {}),
        "broker": [f"kafka://{host}" for host in settings.kafka.bootstrap_list],
        "broker_credentials": faust_credentials(settings.kafka.security),
        "web_enabled": False,
        "autodiscover": False,
        "topic_partitions": settings.topics.images_partitions,
        "topic_replication_factor": settings.topics.replication_factor,
        "topic_disable_leader": True,
        "consumer_auto_offset_reset": "earliest",
        "broker_session_timeout": tuning.session_timeout_s,
        "broker_heartbeat_interval": tuning.heartbeat_interval_s,
        "producer_max_batch_size": tuning.producer_max_batch_size,
        "producer_max_request_size": settings.kafka.max_message_bytes,
        "consumer_max_fetch_size": settings.kafka.max_message_bytes,
        "producer_acks": -1,
        "broker_commit_interval": 1.0,
        # Backpressure: the consumer pauses when this many records wait unprocessed, so a
        # burst stays in the broker instead of in worker memory.
        "stream_buffer_maxsize": settings.batch.size * settings.batch.in_flight_batches,
    }


def create_app(settings: Settings, compute: Compute, datadir: str | None = None) -> faust.App:
    app = faust.App(settings.kafka.app_id, **faust_config(settings, datadir))
    transport.install(app, settings.tuning.fetch_max_wait_ms)
    # Commits never pass an image still in flight, whatever the concurrency (faust#606).
    offsets.guard_commits(app)
    t = settings.topics

    def raw_topic(name: str, partitions: int | None = None) -> faust.TopicT:
        return app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=partitions,
        )

    images = raw_topic(t.images, t.images_partitions)
    matches, dlq = raw_topic(t.matches), raw_topic(t.dlq)
    enrollments, acks = raw_topic(t.enrollments, 1), raw_topic(t.enrollment_acks, 1)
    audit = raw_topic(t.audit)

    image_processor = ImageProcessor(settings, compute)
    wait_s = settings.batch.wait_ms / 1000

    deliver = Delivery(settings, dlq)

    sources = metrics.SourceLabels(settings.metrics.max_sources)
    done: dict[faust.types.TP, int] = {}  # next offset to process, per partition (for lag)
    reported: set[faust.types.TP] = set()  # partitions whose lag this worker exports

    @app.agent(images, concurrency=settings.batch.in_flight_batches)
    async def identify(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.batch.size, within=wait_s):
            messages = [
                image_message(
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                    e.message.key,
                    e.message.value,
                    e.message.headers,
                    e.message.timestamp * 1000 if e.message.timestamp else None,
                )
                for e in events
            ]
            metrics.IN_FLIGHT.inc(len(messages))
            try:
                consumed = [e.message.time_in for e in events]  # Faust's Monitor stamps it
                outcomes = await image_processor.process(messages, consumed)
                with observe.stage("publish"):
                    await deliver(
                        [
                            (matches if o.kind == "match" else dlq, o.key, encode(o.event))
                            for o in outcomes
                        ]
                        + [(audit, o.key, encode(o.audit)) for o in outcomes]
                    )
            finally:
                metrics.IN_FLIGHT.dec(len(messages))
            observe.outcomes(messages, outcomes, sources)
            for e in events:
                tp = e.message.tp
                done[tp] = max(done.get(tp, 0), e.message.offset + 1)

    # The gallery's source of truth: one record per accepted photo, compacted (topics.py).
    state = app.topic(
        topics.state_topic(settings),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=1,
        config=topics.topic_configs(settings)[topics.state_topic(settings)],
    )

    async def publish_state(records: list[tuple[str, bytes | None]]) -> None:
        await deliver([(state, key, value) for key, value in records])

    enrollment_processor = EnrollmentProcessor(settings, compute, publish_state)

    async def check_topics() -> None:
        """At start: every topic's config against its declaration (topics.py). A critical
        mismatch (a state topic not compacted, enrolment requests kept for ever) stops this
        agent with the error, before it applies a request: images are still identified."""
        admin = topics.admin_client(settings)
        try:
            await admin.start()
            await topics.check_topic_configs(settings, admin)
        except topics.TopicConfigError:
            log.exception("enrolments stopped: the topics are not configured as declared")
            raise
        except Exception as exc:  # a broker without DescribeConfigs: say so, go on
            log.warning("could not check the topic configs: %s", exc)
        finally:
            await admin.close()

    @app.agent(enrollments)
    async def enroll(stream: faust.StreamT) -> None:
        """Serial (one partition, concurrency 1): a request's state records are published
        before its gallery write, and its ack after it (processor.EnrollmentProcessor)."""
        await check_topics()
        async for event in stream.events():
            result = await enrollment_processor.process(event.message.value, event.message.key)
            if result is None:
                continue
            reply = result.ack
            observe.enrolment(reply)
            # Identities stay out of the logs (the audit topic records who): request ids only.
            log.info("enrolment %s %s: ok=%s", reply["op"], reply["request_id"], reply["ok"])
            sends = [(audit, reply["identity"] or "", encode(result.audit))]
            await deliver([*sends, (acks, reply["request_id"], encode(reply))])

    progress = metrics.PartitionProgress(settings.metrics.stall_after_s)

    @app.timer(interval=5.0)
    async def gauges() -> None:
        """Lag and stall per assigned partition, and gallery size, for the dashboards. Metrics
        must never take the worker down: an error here is logged and the next tick tries
        again."""
        try:
            assigned = {tp for tp in app.consumer.assignment() if tp.topic == t.images}
            committed = app.consumer._committed_offset  # Faust's; None: nothing committed yet
            for tp in assigned:
                end = app.consumer.highwater(tp)
                if end is None:  # not fetched from yet
                    continue
                # Before this worker's first finished batch: from the committed offset.
                position = done.get(tp, committed.get(tp) or 0)
                behind, stalled = progress.update(tp, end, position)
                labels = {"topic": tp.topic, "partition": str(tp.partition)}
                metrics.LAG.labels(**labels).set(behind)
                metrics.STALLED.labels(**labels).set(int(stalled))
            for tp in reported - assigned:  # revoked: its new owner reports it now
                progress.forget(tp)
                for gauge in (metrics.LAG, metrics.STALLED):
                    with contextlib.suppress(KeyError):
                        gauge.remove(tp.topic, str(tp.partition))
            reported.clear()
            reported.update(assigned)
            # Bounded: a gallery call is retried for as long as the gallery is away, and this
            # tick must go on reporting the stall that causes.
            with contextlib.suppress(TimeoutError):
                metrics.GALLERY_SIZE.set(await asyncio.wait_for(compute.size(), GAUGE_WAIT_S))
        except Exception:
            log.exception("updating gauges failed")

    if settings.sightings.enabled:

        @app.timer(interval=settings.sightings.purge_interval_s)
        async def purge_sightings() -> None:
            """Retention: expired sightings are deleted (idempotent; every worker may run it)."""
            try:
                removed = await compute.purge_sightings()
            except Exception:  # a failed purge is retried at the next tick, never fatal
                log.exception("purging sightings failed")
                return
            if removed:
                log.info("purged %d expired sightings", removed)

    return app
