"""faust-streaming#606 on the real stack: a slow batch at the head of a partition and fast
batches behind it never let the worker commit past the slow one, and a SIGKILL while it is in
flight loses nothing.

One partition, ``batch.in_flight_batches=2`` (two agent instances take turns on it),
``batch.size=1`` (so an instance holding the head takes nothing else: the other one gets
every later image, whatever the timing). The head is a real group photo tiled 4x4 (~340
faces, seconds of model time); the images behind it are empty values, rejected before the
model (DLQ ``empty``) in milliseconds. Everything waits on what the stack is seen doing:

- the group's committed offsets, sampled throughout by a separate aiokafka admin client;
  every sample is checked against the outcomes read back (an image below a committed offset
  must have had its outcome published before the sample was answered: the worker publishes
  an outcome before it acknowledges the image, and commits only acknowledged offsets);
- a commit round after the fast images were acknowledged, witnessed by the committed offset
  of the enrolment topic: a tombstone sent there once the fast outcomes are read is acked at
  once, and one commit request carries every partition's offset, so when the tombstone's
  offset is committed, stock Faust has committed past the head in that same round;
- the head without an outcome when the worker is killed.

Round 1 starts from a group that never committed (stock Faust: the head guard is off while
the committed offset is 0); round 2 from a committed offset, with the head exactly one offset
missing before the acked run (stock Faust: ``min(acked) - committed == 1`` passes its guard).
Round 2 ends with a SIGKILL while the head is in flight, and a restarted worker.

``FAUST_606_UNPATCHED=1`` runs the same test on workers without the correction
(``streams.offsets.guard_commits`` made a no-op in the worker process): it must fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from PIL import Image

from core.settings import Settings
from core.waiting import wait_until_async
from facestream.embedded import ChildProcess, EmbeddedStack, Worker, free_port
from streams.clients import outcome_topics, producer, tail
from streams.records import image_headers
from streams.security import aiokafka_kwargs
from tests.conftest import embedded_settings

pytestmark = pytest.mark.stress

UNPATCHED = os.environ.get("FAUST_606_UNPATCHED") == "1"
FAST = 6  # empty images behind each slow head
WAIT_S = 120.0  # bounds a failure only: a passing run never waits for it

# A worker whose app commits by stock faust-streaming's rule: the test's switch, not the
# worker's (production code has none).
STOCK_FAUST_WORKER = """\
import runpy, sys
import streams.offsets
streams.offsets.guard_commits = lambda app: None
sys.argv = ["facestream", "worker"]
runpy.run_module("facestream.cli", run_name="__main__", alter_sys=True)
"""


class StockFaustWorker(Worker):
    """``Worker``, with the offset correction left out of its app."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str]) -> None:
        self.metrics_port, self.ray_metrics_port = free_port(), free_port()
        settings = settings.override(
            metrics__port=self.metrics_port, ray__metrics_export_port=self.ray_metrics_port
        )
        env = {**settings.env(), **extra_env}
        ChildProcess.__init__(self, [sys.executable, "-c", STOCK_FAUST_WORKER], log_path, env)


def start_worker(stack: EmbeddedStack, name: str) -> Worker:
    if not UNPATCHED:
        return stack.add_worker(name)
    worker = StockFaustWorker(stack.settings, stack.run_dir / f"{name}.log", stack.worker_env)
    stack.workers.append(worker)
    return worker


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def slow_photo(samples: Path) -> bytes:
    """players.jpg (22 faces) tiled 4x4: a real photo with ~340 faces, ~4900x3200, 4.9 MB."""
    tile = Image.open(samples / "players.jpg").convert("RGB")
    big = Image.new("RGB", (tile.width * 4, tile.height * 4))
    for i in range(4):
        for j in range(4):
            big.paste(tile, (i * tile.width, j * tile.height))
    out = io.BytesIO()
    big.save(out, "JPEG", quality=90)
    return out.getvalue()


@dataclass(frozen=True)
class Sent:
    image_id: str
    offset: int


@dataclass
class Watch:
    """Outcomes read back (image id -> timestamp of its first outcome, ms) and the group's
    committed offsets, sampled (time the answer arrived in ms, {topic: committed offset})."""

    settings: Settings
    outcomes: dict[str, int] = field(default_factory=dict)
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    reader: AIOKafkaConsumer | None = None

    def committed(self, topic: str) -> int | None:
        return self.samples[-1][1].get(topic) if self.samples else None

    async def _read(self) -> None:
        topics = outcome_topics(self.settings)
        async with tail(self.settings, topics, from_beginning=True, fetch_max_wait_ms=50) as c:
            self.reader = c
            while True:
                for records in (await c.getmany(timeout_ms=200)).values():
                    for rec in records:
                        image_id = json.loads(rec.value)["image_id"]
                        first = min(self.outcomes.get(image_id, rec.timestamp), rec.timestamp)
                        self.outcomes[image_id] = first

    async def caught_up(self) -> bool:
        """Every outcome published so far has been read."""
        if self.reader is None:
            return False
        parts = list(self.reader.assignment())
        ends = await self.reader.end_offsets(parts)
        for tp in parts:
            if await self.reader.position(tp) < ends[tp]:
                return False
        return True

    async def _sample(self) -> None:
        # A consumer of the workers' group that never joins it (no subscription): it only
        # asks the group coordinator for the committed offsets (OffsetFetch).
        t = self.settings.topics
        parts = [TopicPartition(t.images, 0), TopicPartition(t.enrollments, 0)]
        c = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka.bootstrap_list,
            **aiokafka_kwargs(self.settings.kafka.security),
            group_id=self.settings.kafka.app_id,
            enable_auto_commit=False,
        )
        await c.start()
        try:
            while True:
                committed = {tp.topic: await c.committed(tp) for tp in parts}
                at = time.time() * 1000  # the answers came after the commits they show
                self.samples.append((at, {k: v for k, v in committed.items() if v is not None}))
                await asyncio.sleep(0.05)
        finally:
            await c.stop()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Watch]:
        tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._sample())]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def violations(self, sent: list[Sent]) -> list[str]:
        """Each committed offset sampled past an image that had no outcome by then."""
        found: dict[tuple[int, int], str] = {}
        for at, committed in self.samples:
            offset = committed.get(self.settings.topics.images)
            for s in sent:
                if offset is not None and s.offset < offset:
                    outcome_at = self.outcomes.get(s.image_id)
                    if outcome_at is None or outcome_at > at:
                        found.setdefault(
                            (offset, s.offset),
                            f"committed {offset} while offset {s.offset} ({s.image_id}) had no"
                            f" outcome{'' if outcome_at is None else ' yet'}",
                        )
        return list(found.values())


async def wait_for(
    worker: Worker, condition: Callable[[], Awaitable[bool]], what: str, interval_s: float = 0.1
) -> None:
    """``wait_until_async``, failing at once (with the worker's log) if the worker exits."""

    async def met() -> bool:
        if not worker.alive():
            raise AssertionError(f"{what}: the worker exited\n{worker.log_tail(20)}")
        return await condition()

    try:
        await wait_until_async(met, timeout_s=WAIT_S, what=what, interval_s=interval_s)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{worker.log_tail(20)}") from exc


async def send(p: AIOKafkaProducer, topic: str, value: bytes | None, image_id: str) -> Sent:
    headers = image_headers(image_id, "camera-606")
    meta = await p.send_and_wait(topic, value, key=image_id.encode(), headers=headers)
    return Sent(image_id, meta.offset)


async def head_gap_round(
    settings: Settings,
    worker: Worker,
    p: AIOKafkaProducer,
    watch: Watch,
    head: bytes,
    tag: str,
    sent: list[Sent],
) -> Sent:
    """A slow head and FAST fast images behind it; returns the head once a commit round ran
    after every fast image was acknowledged, the head still in flight."""
    topic = settings.topics.images
    slow = await send(p, topic, head, unique(f"{tag}-head"))
    fast = [await send(p, topic, b"", unique(f"{tag}-fast-{i}")) for i in range(FAST)]
    sent += [slow, *fast]

    async def fast_done() -> bool:
        return all(f.image_id in watch.outcomes for f in fast)

    await wait_for(worker, fast_done, f"{tag}: fast images' outcomes")
    witness = await send(p, settings.topics.enrollments, None, unique(f"{tag}-witness"))

    async def commit_round_ran() -> bool:
        committed = watch.committed(settings.topics.enrollments)
        return committed is not None and committed > witness.offset

    await wait_for(worker, commit_round_ran, f"{tag}: a commit round")
    assert slow.image_id not in watch.outcomes, (
        f"{tag}: the slow head finished before the commit round was seen: nothing tested"
    )
    return slow


def test_slow_head_batch_is_never_committed_over_and_survives_sigkill(samples: Path) -> None:
    run_dir = Path(tempfile.mkdtemp(prefix="fs606-"))
    settings = embedded_settings(
        run_dir,
        topics__images_partitions=1,
        batch__size=1,
        batch__in_flight_batches=2,
        # Detect and embed every face of a large group photo, one model call at a time: the
        # slow head (1.5 s alone on a quiet machine; 3x3 tiles at det_size 1920 took 0.9 s
        # once the recogniser ran on OpenVINO, and finished before a commit round).
        model__det_size=2560,
        model__max_faces_per_image=512,
        model__compute_threads=1,
    )
    head = slow_photo(samples)
    stack = EmbeddedStack(settings, run_dir, workers=0)
    timings: dict[str, float] = {}
    sent: list[Sent] = []

    async def scenario(watch: Watch, p: AIOKafkaProducer) -> None:
        images = settings.topics.images
        started = time.monotonic()
        worker = start_worker(stack, "worker-0")

        # Round 1: the group has never committed.
        head1 = await head_gap_round(settings, worker, p, watch, head, "r1", sent)
        timings["round 1 (worker start included)"] = time.monotonic() - started

        async def round_1_done() -> bool:
            return head1.image_id in watch.outcomes and watch.committed(images) == len(sent)

        await wait_for(worker, round_1_done, "r1: everything committed")

        # Round 2: from a committed offset; SIGKILL while the head is in flight.
        started = time.monotonic()
        await head_gap_round(settings, worker, p, watch, head, "r2", sent)
        timings["round 2"] = time.monotonic() - started
        worker.kill()
        started = time.monotonic()
        restarted = start_worker(stack, "worker-restarted")
        # An image behind everything: once it has an outcome the new worker has taken every
        # image it will replay; once its offset is committed too, nothing is left in flight.
        sentinel = await send(p, images, b"", unique("r2-sentinel"))
        sent.append(sentinel)

        async def settled() -> bool:
            if all(s.image_id in watch.outcomes for s in sent):
                return True
            replayed = sentinel.image_id in watch.outcomes
            return replayed and watch.committed(images) == sentinel.offset + 1

        await wait_for(restarted, settled, "restarted worker: replayed", interval_s=0.2)
        await wait_for(restarted, watch.caught_up, "outcomes read to the end")
        timings["restart and replay"] = time.monotonic() - started

    async def main() -> Watch:
        watch = Watch(settings)
        async with watch.running(), producer(settings) as p:
            await scenario(watch, p)
        return watch

    try:
        stack.start()
        watch = asyncio.run(main())
        violations = watch.violations(sent)
        missing = [s for s in sent if s.image_id not in watch.outcomes]
        committed = [c.get(settings.topics.images) for _, c in watch.samples]
        print(
            f"\n{'STOCK faust' if UNPATCHED else 'corrected'}: {len(sent)} images,"
            f" {len(watch.samples)} commit samples (images offsets seen:"
            f" {sorted({c for c in committed if c is not None})}),"
            f" violations {len(violations)}, missing {len(missing)}; "
            + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items())
        )
        logs = "\n".join(w.log_tail(10) for w in stack.workers)
        assert not violations and not missing, (
            "committed past images without an outcome:\n  "
            + "\n  ".join(violations)
            + f"\nno outcome after SIGKILL + restart: {[s.offset for s in missing]}\n{logs}"
        )
    finally:
        stack.stop()
