"""Drive a running stack like its users do: produce images, read every outcome back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.settings import Settings
from streams.clients import ImageToSend, outcome_topics, producer, tail
from streams.records import image_headers


@dataclass(frozen=True)
class RawRecord:
    """A record sent exactly as given (odd keys, malformed headers); ``image_id`` is the id
    its outcome is expected to carry."""

    image_id: str
    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass
class FlowReport:
    produced: int
    outcomes: dict[str, tuple[str, dict]] = field(default_factory=dict)  # first per image id
    total: int = 0  # outcome events read, duplicates included

    @property
    def duplicates(self) -> int:
        return self.total - len(self.outcomes)

    def missing(self, ids: set[str]) -> set[str]:
        return ids - self.outcomes.keys()

    def line(self, ids: set[str]) -> str:
        return (
            f"produced={self.produced} outcomes={self.total} "
            f"duplicates={self.duplicates} missing={len(self.missing(ids))}"
        )


async def run_flow(
    settings: Settings,
    images: list[ImageToSend | RawRecord],
    timeout_s: float = 180.0,
    rate_per_s: float | None = None,
    faults: dict[int, Callable[[], object]] | None = None,
    linger_s: float = 0.0,
) -> FlowReport:
    """Produce ``images`` (paced at ``rate_per_s``; ``faults[i]`` runs after image i is sent)
    and read outcomes until every id has one, then ``linger_s`` more for late duplicates."""
    wanted = {img.image_id for img in images}
    report = FlowReport(produced=len(images))
    async with tail(settings, outcome_topics(settings)) as consumer:

        async def produce() -> None:
            async with producer(settings) as p:
                for i, img in enumerate(images):
                    if isinstance(img, RawRecord):
                        value, key, headers = img.value, img.key, list(img.headers)
                    else:
                        value, headers = img.data, image_headers(img.image_id, img.source)
                        key = img.source.encode() if img.source else None
                    await p.send(settings.topics.images, value, key=key, headers=headers)
                    if rate_per_s:
                        await asyncio.sleep(1 / rate_per_s)
                    if faults and i in faults:
                        result = faults[i]()
                        if asyncio.iscoroutine(result):
                            await result
                await p.flush()

        producing = asyncio.create_task(produce())
        deadline = time.monotonic() + timeout_s
        done_at: float | None = None
        while time.monotonic() < deadline:
            if producing.done() and producing.exception():
                raise producing.exception()
            batch = await consumer.getmany(timeout_ms=250)
            for tp, records in batch.items():
                kind = "match" if tp.topic == settings.topics.matches else "dlq"
                for rec in records:
                    event = json.loads(rec.value)
                    if event["image_id"] in wanted:
                        report.total += 1
                        report.outcomes.setdefault(event["image_id"], (kind, event))
            if done_at is None and wanted <= report.outcomes.keys():
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at >= linger_s:
                break
        await producing
    return report
