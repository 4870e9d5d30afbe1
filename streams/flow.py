"""Drive a running stack like its users do: produce images, read every outcome back, report.

The tests check what came back (every image answered, duplicates counted); the benchmarks
time it (each image from its send to its first outcome). Both run this one flow.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition

from core.settings import Settings
from core.waiting import Deadline
from streams.clients import ImageToSend, outcome_kind, outcome_topics, producer, tail


@dataclass(frozen=True)
class RawRecord:
    """A record sent exactly as given (odd keys, malformed headers); ``image_id`` is the id
    its outcome is expected to carry."""

    image_id: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()

    def kafka_record(self) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
        return self.value, self.key, list(self.headers)


@dataclass
class FlowReport:
    produced: int
    outcomes: dict[str, tuple[str, dict]] = field(default_factory=dict)  # first per image id
    total: int = 0  # outcome events read, duplicates included
    sent: dict[str, float] = field(default_factory=dict)  # image id -> monotonic send time
    received: dict[str, float] = field(default_factory=dict)  # ... -> its first outcome read

    @property
    def duplicates(self) -> int:
        return self.total - len(self.outcomes)

    @property
    def faces(self) -> int:
        """Faces in the first outcome of each image."""
        return sum(len(event.get("faces", [])) for _, event in self.outcomes.values())

    def missing(self, ids: set[str] | None = None) -> set[str]:
        """Which of ``ids`` (default: every image sent) have no outcome."""
        return (self.sent.keys() if ids is None else ids) - self.outcomes.keys()

    def line(self, ids: set[str]) -> str:
        return (
            f"produced={self.produced} outcomes={self.total} "
            f"duplicates={self.duplicates} missing={len(self.missing(ids))}"
        )

    def record(
        self,
        settings: Settings,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        wanted: set[str],
    ) -> None:
        """Count the outcomes of ``wanted`` images in one ``getmany`` batch of a ``tail`` of
        the outcome topics."""
        now = time.monotonic()
        for tp, records in batch.items():
            kind = outcome_kind(settings, tp.topic)
            for rec in records:
                event = json.loads(rec.value)
                image_id = event["image_id"]
                if image_id not in wanted:
                    continue
                self.total += 1
                if image_id not in self.outcomes:
                    self.outcomes[image_id] = (kind, event)
                    self.received[image_id] = now

    # -- timing (the benchmarks) ---------------------------------------------------------

    def latencies_ms(self) -> list[float]:
        """Send -> first outcome read, per image answered."""
        return [(self.received[i] - self.sent[i]) * 1000 for i in self.received if i in self.sent]

    def wall_rate(self) -> float:
        """Images per second from the first send to the last outcome."""
        span = max(self.received.values()) - min(self.sent.values())
        return len(self.received) / span

    def steady_rate(self, skip: float = 0.1) -> float:
        """Images per second after the outcome at the ``skip`` quantile: the sustained rate,
        without the pipeline's fill-up at the start. Outcomes arrive a batch at a time, so
        only those received strictly after that moment count."""
        times = sorted(self.received.values())
        start = times[int(len(times) * skip)]
        return sum(1 for t in times if t > start) / (times[-1] - start)


async def run_flow(
    settings: Settings,
    images: Sequence[ImageToSend | RawRecord],
    timeout_s: float = 180.0,
    rate_per_s: float | None = None,
    faults: dict[int, Callable[[], object]] | None = None,
    linger_s: float = 0.0,
    fetch_max_wait_ms: int = 500,
) -> FlowReport:
    """Produce ``images`` (as fast as possible, or paced on a schedule of ``rate_per_s``;
    ``faults[i]`` runs after image i is sent, and the schedule waits for it) and read outcomes
    until every id has one, then ``linger_s`` more for late duplicates. ``fetch_max_wait_ms``:
    see ``tail``."""
    wanted = {img.image_id for img in images}
    report = FlowReport(produced=len(images))
    topics = outcome_topics(settings)
    async with tail(settings, topics, fetch_max_wait_ms=fetch_max_wait_ms) as consumer:

        async def produce() -> None:
            async with producer(settings) as p:
                start = time.monotonic()
                for i, img in enumerate(images):
                    if rate_per_s:
                        await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
                    value, key, headers = img.kafka_record()
                    report.sent[img.image_id] = time.monotonic()
                    await p.send(settings.topics.images, value, key=key, headers=headers)
                    if faults and i in faults:
                        began = time.monotonic()
                        result = faults[i]()
                        if asyncio.iscoroutine(result):
                            await result
                        start += time.monotonic() - began
                await p.flush()

        producing = asyncio.create_task(produce())
        deadline = Deadline(timeout_s)
        done_at: float | None = None
        while not deadline.expired:
            if producing.done():
                producing.result()  # raises what the producer raised, if anything
            report.record(settings, await consumer.getmany(timeout_ms=250), wanted)
            if done_at is None and wanted <= report.outcomes.keys():
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= linger_s:
                break
        await producing
    return report
