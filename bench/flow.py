"""Drive a real embedded stack for benchmarks: start it, enrol, stream images at a given pace,
and time every image from its send to its outcome."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import ENROLMENTS, CpuMeter, percentiles
from core.settings import Settings
from facestream.embedded import EmbeddedStack, private_settings
from facestream.samples import ensure_samples
from streams.clients import ImageToSend, request_enrollment
from streams.enrollment import EnrollmentRequest, Photo
from streams.flow import FlowReport, run_flow

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
        ("ServeReplica", "model replicas (decode+detect+embed)"),
        ("ServeController", "ray: serve controller"),
        ("GalleryActor", "gallery actor (search)"),
        ("gcs_server", "ray: gcs_server"),
        ("raylet", "ray: raylet"),
    ):
        if marker in cmd:
            return label
    return "ray: other (agents, idle workers)"


BASIS = "benchmark: sample photos of public figures from public packages"


def enrolment_request(identity: str, photo: Path) -> EnrollmentRequest:
    photos = (Photo(photo.name, photo.read_bytes()),)
    return EnrollmentRequest("enroll", identity, None, photos, basis=BASIS)


def fetch_wait_overrides(max_wait_ms: int | None) -> dict[str, object]:
    """``running_stack`` overrides for a worker whose Kafka fetch waits ``max_wait_ms`` (the
    ``kafka.tuning.fetch_max_wait_ms`` setting); none: the profile's own."""
    return {} if max_wait_ms is None else {"kafka__tuning__fetch_max_wait_ms": max_wait_ms}


@contextmanager
def running_stack(
    base: Settings,
    worker_env: dict[str, str] | None = None,
    workers: int = 1,
    shared_ray: bool = False,
    **overrides: object,
) -> Iterator[RunningStack]:
    """Start a fresh embedded stack (``workers`` Faust workers; with ``shared_ray``, all of
    them on one Ray head), enrol the bench people, stop everything on exit."""
    run_dir = Path(tempfile.mkdtemp(prefix="fsbench-"))
    settings = private_settings(base, run_dir, app_prefix="fsbench", **overrides)
    samples = ensure_samples(base.cache_dir)
    stack = EmbeddedStack(settings, run_dir, workers=workers, shared_ray=shared_ray)
    stack.worker_env.update(worker_env or {})
    t0 = time.monotonic()
    try:
        stack.start()
        started = time.monotonic() - t0
        ready = None
        for identity, photo in ENROLMENTS.items():
            request = enrolment_request(identity, samples / photo)
            reply = asyncio.run(request_enrollment(stack.settings, request, 300.0))
            if not reply["ok"]:
                raise RuntimeError(f"enrolment refused: {reply}")
            ready = ready or time.monotonic() - t0
        enrolled = time.monotonic() - t0
        times = StartupTimes(started, ready or enrolled, enrolled)
        yield RunningStack(stack.settings, stack, times)
    except BaseException:
        for worker in stack.workers:
            print(f"--- {worker.log_path} ---\n{worker.log_tail()}")
        raise
    finally:
        stack.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def images_for(photos: Sequence[tuple[str, bytes]], count: int, prefix: str) -> list[ImageToSend]:
    """``count`` images cycling over ``photos``, each with its own image id."""
    return [
        ImageToSend(f"{prefix}-{i:05d}-{photos[i % len(photos)][0]}", photos[i % len(photos)][1])
        for i in range(count)
    ]


def stream(
    settings: Settings, images: Sequence[ImageToSend], rate_per_s: float | None = None
) -> FlowReport:
    """Produce ``images`` (as fast as possible, or paced on a fixed schedule of ``rate_per_s``)
    and read outcomes until every image has one. The consumer's fetch wait is the profile's
    (``kafka.tuning.fetch_max_wait_ms``), as a downstream consumer's would be."""
    wait_ms = settings.tuning.fetch_max_wait_ms
    return asyncio.run(
        run_flow(
            settings, images, timeout_s=600.0, rate_per_s=rate_per_s, fetch_max_wait_ms=wait_ms
        )
    )


def latency(report: FlowReport) -> dict[str, float]:
    """Percentiles of send -> outcome, in milliseconds."""
    return percentiles(report.latencies_ms())
