"""Drive a real embedded stack for benchmarks: start it, enrol, stream images at a given pace,
and time every image from its send to its outcome."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition

from bench.common import ENROLMENTS, CpuMeter, percentiles
from core.settings import Settings
from facestream.embedded import EmbeddedStack, free_port
from facestream.samples import ensure_samples
from streams.clients import ImageToSend, outcome_topics, producer, request_enrollment
from streams.enrollment import EnrollmentRequest, Photo
from streams.records import image_headers

BENCH_PROCESS = "bench process (client; bare models)"


@dataclass
class StartupTimes:
    stack_started_s: float  # broker up and topics created (the worker is still starting)
    ready_s: float  # first enrolment acknowledged: the worker, Ray, the actors are up
    enrolled_s: float  # every bench enrolment acknowledged


@dataclass
class RunningStack:
    settings: Settings
    stack: EmbeddedStack
    startup: StartupTimes

    def cpu_meter(self) -> CpuMeter:
        """CPU per component: the bench client, the broker, and the worker's process tree
        (Faust worker, its local Ray's daemons, the model and gallery actors)."""
        trees = {"worker": self.stack.workers[0].pid} if self.stack.workers else {}
        if self.stack.broker is not None:
            trees["broker (Tansu)"] = self.stack.broker.pid
        singles = {BENCH_PROCESS: os.getpid()}
        return CpuMeter(trees, singles, classify_process)


def classify_process(proc: psutil.Process, root_label: str) -> str:
    if root_label != "worker":
        return root_label
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "ray: other"
    if "facestream.cli" in cmd and "worker" in cmd:
        return "Faust worker (agents, Ray driver)"
    for marker, label in (
        ("ModelActor", "model actor (decode+detect+embed)"),
        ("GalleryActor", "gallery actor (search)"),
        ("gcs_server", "ray: gcs_server"),
        ("raylet", "ray: raylet"),
    ):
        if marker in cmd:
            return label
    return "ray: other (agents, idle workers)"


def bench_settings(base: Settings, run_dir: Path, **overrides: object) -> Settings:
    """A private embedded stack: free broker port, own app id, own gallery."""
    return base.override(
        kafka__bootstrap_servers=f"127.0.0.1:{free_port()}",
        kafka__app_id=f"fsbench-{uuid.uuid4().hex[:8]}",
        gallery__backend="edge",
        gallery__path=run_dir / "gallery",
        **overrides,
    )


BASIS = "benchmark: sample photos of public figures from public packages"


def enrolment_request(identity: str, photo: Path) -> EnrollmentRequest:
    photos = (Photo(photo.name, photo.read_bytes()),)
    return EnrollmentRequest("enroll", identity, None, photos, basis=BASIS)


PATCHES = Path(__file__).parent / "worker_patches"


def fetch_wait_env(max_wait_ms: int) -> dict[str, str]:
    """Worker environment that caps its Kafka fetch wait (see worker_patches/)."""
    path = os.pathsep.join(p for p in (str(PATCHES), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "FSBENCH_FETCH_MAX_WAIT_MS": str(max_wait_ms)}


@contextmanager
def running_stack(
    base: Settings, worker_env: dict[str, str] | None = None, **overrides: object
) -> Iterator[RunningStack]:
    """Start a fresh embedded stack, enrol the bench people, stop everything on exit."""
    run_dir = Path(tempfile.mkdtemp(prefix="fsbench-"))
    settings = bench_settings(base, run_dir, **overrides)
    samples = ensure_samples(base.cache_dir)
    stack = EmbeddedStack(settings, run_dir)
    stack.worker_env.update(worker_env or {})
    t0 = time.monotonic()
    try:
        stack.start()
        started = time.monotonic() - t0
        ready = None
        for identity, photo in ENROLMENTS.items():
            reply = asyncio.run(
                request_enrollment(settings, enrolment_request(identity, samples / photo), 300.0)
            )
            if not reply["ok"]:
                raise RuntimeError(f"enrolment refused: {reply}")
            ready = ready or time.monotonic() - t0
        enrolled = time.monotonic() - t0
        yield RunningStack(settings, stack, StartupTimes(started, ready or enrolled, enrolled))
    except BaseException:
        for worker in stack.workers:
            print(f"--- {worker.log_path} ---\n{worker.log_tail()}")
        raise
    finally:
        stack.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


@dataclass
class StreamResult:
    """Send and receive times (monotonic seconds) per image id."""

    sent: dict[str, float] = field(default_factory=dict)
    received: dict[str, float] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    faces: int = 0
    duplicates: int = 0

    @property
    def missing(self) -> int:
        return len(self.sent.keys() - self.received.keys())

    def latencies_ms(self) -> list[float]:
        return [(self.received[i] - self.sent[i]) * 1000 for i in self.received if i in self.sent]

    def latency(self) -> dict[str, float]:
        return percentiles(self.latencies_ms())

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


def images_for(photos: Sequence[tuple[str, bytes]], count: int, prefix: str) -> list[ImageToSend]:
    """``count`` images cycling over ``photos``, each with its own image id."""
    return [
        ImageToSend(f"{prefix}-{i:05d}-{photos[i % len(photos)][0]}", photos[i % len(photos)][1])
        for i in range(count)
    ]


async def _outcome_consumer(settings: Settings) -> AIOKafkaConsumer:
    """Every partition of matches and the DLQ, from their current end. A short fetch wait, so
    that the consumer's own polling adds little to the measured latency."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap_list,
        enable_auto_commit=False,
        fetch_max_wait_ms=20,
        max_partition_fetch_bytes=settings.kafka.max_message_bytes,
        fetch_max_bytes=settings.kafka.max_message_bytes,
    )
    await consumer.start()
    parts: list[TopicPartition] = []
    for topic in outcome_topics(settings):
        await consumer.topics()
        parts += [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(parts)
    await consumer.seek_to_end(*parts)
    for tp in parts:
        await consumer.position(tp)
    return consumer


async def stream(
    settings: Settings,
    images: Sequence[ImageToSend],
    rate_per_s: float | None = None,
    timeout_s: float = 600.0,
) -> StreamResult:
    """Produce ``images`` (as fast as possible, or paced on a fixed schedule of ``rate_per_s``)
    and read outcomes until every image has one."""
    result = StreamResult()
    wanted = {img.image_id for img in images}
    consumer = await _outcome_consumer(settings)
    try:

        async def produce() -> None:
            async with producer(settings) as p:
                start = time.monotonic()
                deliveries = []
                for i, img in enumerate(images):
                    if rate_per_s:
                        await asyncio.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
                    result.sent[img.image_id] = time.monotonic()
                    headers = image_headers(img.image_id, img.source)
                    deliveries.append(
                        await p.send(settings.topics.images, img.data, headers=headers)
                    )
                await asyncio.gather(*deliveries)

        producing = asyncio.create_task(produce())
        deadline = time.monotonic() + timeout_s
        while len(result.received) < len(wanted) and time.monotonic() < deadline:
            if producing.done():
                producing.result()  # raises what the producer raised, if anything
            batch = await consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for tp, records in batch.items():
                for rec in records:
                    event = json.loads(rec.value)
                    image_id = event["image_id"]
                    if image_id not in wanted:
                        continue
                    if image_id in result.received:
                        result.duplicates += 1
                        continue
                    result.received[image_id] = now
                    is_match = tp.topic == settings.topics.matches
                    result.kinds[image_id] = "match" if is_match else "dlq"
                    result.faces += len(event.get("faces", []))
        await producing
    finally:
        await consumer.stop()
    return result
