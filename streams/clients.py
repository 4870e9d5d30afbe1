"""What users do from outside the workers: produce images, enrol, read outcomes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from core.settings import Settings
from core.waiting import Deadline, wait_until_async
from streams.enrollment import EnrollmentRequest, PhotoRecord, split_state_key
from streams.records import image_headers
from streams.security import aiokafka_kwargs


async def _started(client: AIOKafkaProducer | AIOKafkaConsumer) -> None:
    """Start a client; one that cannot start is closed again (no 'Unclosed' warning)."""
    try:
        await client.start()
    except BaseException:
        await client.stop()
        raise


@asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    p = AIOKafkaProducer(
        bootstrap_servers=settings.kafka.bootstrap_list,
        **aiokafka_kwargs(settings.kafka.security),
        acks="all",
        max_request_size=settings.kafka.max_message_bytes,
        max_batch_size=settings.tuning.producer_max_batch_size,
        linger_ms=5,
    )
    await _started(p)
    try:
        yield p
    finally:
        await p.stop()


@asynccontextmanager
async def tail(
    settings: Settings,
    topics: list[str],
    from_beginning: bool = False,
    fetch_max_wait_ms: int = 500,
) -> AsyncIterator[AIOKafkaConsumer]:
    """A group-less consumer over every partition of ``topics``, at the end (or the start).

    ``fetch_max_wait_ms`` (aiokafka's default: 500) is how long the broker may hold a fetch
    while it has nothing new: a short one reads each record sooner (latency measurements).
    """
    c = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_list,
        **aiokafka_kwargs(settings.kafka.security),
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
        max_partition_fetch_bytes=settings.kafka.max_message_bytes,
        fetch_max_bytes=settings.kafka.max_message_bytes,
    )
    await _started(c)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in await _partitions(c, t)]
        c.assign(parts)
        if from_beginning:
            await c.seek_to_beginning(*parts)
        else:
            await c.seek_to_end(*parts)
            for tp in parts:  # resolve the lazy seek now, so later records are not skipped
                await c.position(tp)
        yield c
    finally:
        await c.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    async def known() -> set[int] | None:
        if parts := consumer.partitions_for_topic(topic):
            return parts
        await consumer.topics()  # refreshes the cluster metadata
        return None

    try:  # 30 s: a broker on S3 storage can be slow to answer at first
        return await wait_until_async(known, timeout_s=30.0, what=f"topic {topic!r}")
    except TimeoutError as exc:
        raise RuntimeError(f"topic {topic!r} not found") from exc


@dataclass(frozen=True)
class ImageToSend:
    image_id: str
    data: bytes
    source: str | None = None
    captured_at: str | None = None
    content_type: str | None = None

    def kafka_record(self) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
        """(value, key, headers) of this image on the images topic: keyed by its source."""
        headers = image_headers(self.image_id, self.source, self.captured_at, self.content_type)
        return self.data, self.source.encode() if self.source else None, headers


async def produce_images(
    settings: Settings,
    images: Iterable[ImageToSend],
    on_sent: Callable[[ImageToSend], None] | None = None,
) -> int:
    sent = 0
    async with producer(settings) as p:
        pending = []
        for img in images:
            value, key, headers = img.kafka_record()
            pending.append(await p.send(settings.topics.images, value, key=key, headers=headers))
            sent += 1
            if on_sent:
                on_sent(img)
        await asyncio.gather(*pending)
    return sent


async def request_enrollment(
    settings: Settings, request: EnrollmentRequest, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Send a change to the enrolment log and wait for the worker's acknowledgement."""
    async with tail(settings, [settings.topics.enrollment_acks]) as acks:
        async with producer(settings) as p:
            await p.send_and_wait(
                settings.topics.enrollments, request.encode(), key=request.identity.encode()
            )
        deadline = Deadline(timeout_s)
        while not deadline.expired:
            batch = await acks.getmany(timeout_ms=int(min(deadline.remaining_s, 1.0) * 1000))
            for records in batch.values():
                for rec in records:
                    reply = json.loads(rec.value)
                    if reply.get("request_id") == request.request_id:
                        return reply
    raise TimeoutError(
        f"no acknowledgement for enrolment {request.request_id} within {timeout_s:.0f}s "
        "(is a worker running?)"
    )


async def read_outcomes(
    settings: Settings, consumer: AIOKafkaConsumer, idle_timeout_s: float | None = None
) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """("match" | "dlq", event) from a ``tail`` of matches and the DLQ.

    Stops after ``idle_timeout_s`` without a record (None: never).
    """
    last = time.monotonic()
    while idle_timeout_s is None or time.monotonic() - last < idle_timeout_s:
        batch = await consumer.getmany(timeout_ms=500)
        for tp, records in batch.items():
            for rec in records:
                last = time.monotonic()
                yield outcome_kind(settings, tp.topic), json.loads(rec.value)


def outcome_topics(settings: Settings) -> list[str]:
    return [settings.topics.matches, settings.topics.dlq]


def outcome_kind(settings: Settings, topic: str) -> str:
    """ "match" for a record of the matches topic, "dlq" for one of the DLQ."""
    return "match" if topic == settings.topics.matches else "dlq"


async def read_to_end(
    settings: Settings, topic: str, timeout_s: float = 60.0
) -> AsyncIterator[ConsumerRecord]:
    """Every record of ``topic`` from the beginning to its current end, then stop. The
    deadline covers the whole read, the caller's time included: for small topics (outputs,
    acks). Logs that are replayed (reindex) are read with ``read_log``."""
    async with tail(settings, [topic], from_beginning=True) as c:
        end = await c.end_offsets(list(c.assignment()))
        deadline = Deadline(timeout_s)
        while [tp for tp, offset in end.items() if await c.position(tp) < offset]:
            if deadline.expired:
                raise TimeoutError(f"could not read {topic} to its end in {timeout_s:.0f}s")
            for records in (await c.getmany(timeout_ms=500)).values():
                for rec in records:
                    yield rec


# -- the enrolment log (one partition each: requests, and the state of accepted photos) ------


@dataclass(frozen=True)
class LogRecord:
    offset: int
    key: bytes | None
    value: bytes | None  # None: a tombstone

    @property
    def tombstone(self) -> bool:
        return self.value is None


@asynccontextmanager
async def _partition_reader(
    settings: Settings, topic: str
) -> AsyncIterator[tuple[AIOKafkaConsumer, TopicPartition]]:
    c = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_list,
        **aiokafka_kwargs(settings.kafka.security),
        enable_auto_commit=False,
        fetch_max_wait_ms=200,
        max_partition_fetch_bytes=settings.kafka.max_message_bytes,
        fetch_max_bytes=settings.kafka.max_message_bytes,
    )
    await _started(c)
    try:
        await _partitions(c, topic)
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        yield c, tp
    finally:
        await c.stop()


async def log_end(settings: Settings, topic: str) -> int:
    """The end offset (next offset to be written) of a one-partition topic."""
    async with _partition_reader(settings, topic) as (c, tp):
        return (await c.end_offsets([tp]))[tp]


async def read_log(
    settings: Settings,
    topic: str,
    start: int = 0,
    end: int | None = None,
    idle_timeout_s: float = 60.0,
) -> AsyncIterator[LogRecord]:
    """The records of a one-partition topic from ``start`` up to ``end`` (default: its end
    when the read starts), then stop; offsets may have gaps (compaction, retention).

    No deadline on the whole read: the caller may spend any time on each record (a model
    call). Only fetching that returns nothing for ``idle_timeout_s`` while the end is not
    reached is an error (the broker is away, or the log lost records before ``end``)."""
    async with _partition_reader(settings, topic) as (c, tp):
        if end is None:
            end = (await c.end_offsets([tp]))[tp]
        if start >= end:
            return
        c.seek(tp, start)
        idle = 0.0
        while await c.position(tp) < end:
            began = time.monotonic()
            batch = (await c.getmany(tp, timeout_ms=500)).get(tp, [])
            if not batch:
                idle += time.monotonic() - began
                if idle >= idle_timeout_s:
                    raise TimeoutError(
                        f"{topic}: no record for {idle_timeout_s:.0f}s at offset "
                        f"{await c.position(tp)}, before its end {end}"
                    )
                continue
            idle = 0.0
            for rec in batch:
                if rec.offset >= end:
                    return
                yield LogRecord(rec.offset, rec.key, rec.value)


def live_records(records: Iterable[LogRecord]) -> dict[bytes, LogRecord]:
    """What Kafka's compaction leaves of ``records`` (in log order): the last record of each
    key, keys whose last record is a tombstone removed. Keyless records are dropped (a
    compacted topic refuses them). The reader of a compacted topic applies this rule itself:
    the log's head is not compacted yet (and Tansu never compacts)."""
    last: dict[bytes, LogRecord] = {}
    for rec in records:
        if rec.key is None:
            continue
        last.pop(rec.key, None)  # re-inserted: dict order follows each key's last offset
        if rec.value is not None:
            last[rec.key] = rec
    return last


async def enrollment_records(settings: Settings, identity: str) -> list[dict[str, Any]]:
    """The requests the enrolment topic still holds under ``identity``'s key (photos are not
    shown; the topic deletes them by time, ``streams.topics``)."""
    out = []
    async for rec in read_log(settings, settings.topics.enrollments):
        if rec.key != identity.encode():
            continue
        row = {"offset": rec.offset, "tombstone": rec.value is None, "op": None, "photos": None}
        if rec.value is not None:
            try:
                doc = json.loads(rec.value)
                row |= {"op": doc.get("op"), "photos": len(doc.get("photos") or [])}
            except (ValueError, AttributeError, TypeError):
                row["op"] = "unreadable"
        out.append(row)
    return out


async def state_records(settings: Settings, identity: str) -> list[dict[str, Any]]:
    """The state topic's records of ``identity``'s photos (photo bytes not shown): each with
    ``live`` true when Kafka's compaction keeps it (the last record of its key, not a
    tombstone). After an erasure every key's last record is a tombstone: nothing is live, and
    compaction removes them all (``streams.topics``: within 24 h)."""
    from streams.topics import state_topic

    rows: list[dict[str, Any]] = []
    last: dict[bytes, int] = {}
    async for rec in read_log(settings, state_topic(settings)):
        try:
            owner, sha = split_state_key(rec.key or b"")
        except ValueError:
            continue
        if owner != identity:
            continue
        row: dict[str, Any] = {
            "offset": rec.offset,
            "photo_sha256": sha,
            "tombstone": rec.tombstone,
        }
        if rec.value is not None:
            try:
                row["photo"] = PhotoRecord.decode(rec.value).photo.name
            except (ValueError, KeyError, TypeError):
                row["photo"] = None
        rows.append(row)
        last[rec.key] = rec.offset
    live = {offset for offset in last.values()}
    for row in rows:
        row["live"] = not row["tombstone"] and row["offset"] in live
    return rows
