"""Scaling on one machine: throughput with 1 and 2 Faust workers and 1 and 2 model replicas.

    python -m bench.scaling [--images 120] [--cases 1x1,1x2,2x1,2x2]

Each case (``WORKERSxREPLICAS``) runs on a fresh embedded stack with a shared Ray head (the
workers of one consumer group share the model actors, as in production); the same photos go
through it as fast as the broker takes them, after a warm-up. Right before, with the stack
up, the bare models run on the same photos in this process (one replica's worth: the
reference). Beside the throughput, the CPU time of every component per image shows where the
time goes: a replica uses ``model.intra_op_threads`` cores at most, and the machine's free
cores bound the sum. On 2 cores, more workers and replicas only add processes that compete
for the same cores.
"""

from __future__ import annotations

import argparse
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

from actors.models import FaceModel, load_face_model
from bench.common import (
    ENROLMENTS,
    CpuMeter,
    emit_json,
    log,
    machine,
    print_machine,
    print_table,
    sample_photos,
)
from bench.flow import (
    BENCH_PROCESS,
    bench_settings,
    classify_process,
    enrolment_request,
    images_for,
    stream,
)
from bench.pipeline import run_bare
from core.settings import Settings
from facestream.embedded import EmbeddedStack
from facestream.samples import ensure_samples
from streams.clients import request_enrollment

BROKER = "broker (Tansu)"
OTHER = "other processes"
IDLE = "idle"


@dataclass
class Case:
    workers: int
    replicas: int
    images: int
    rate: float  # images/s, steady state
    bare_rate: float  # images/s of the bare models in this process, just before
    wall_s: float
    cpu_s: dict[str, float]  # component -> CPU seconds during the run, plus idle

    @property
    def name(self) -> str:
        return f"{self.workers}x{self.replicas}"

    @property
    def pipeline_cpu_s(self) -> float:
        """CPU of the stack and its client: everything but other processes and idle time."""
        return sum(v for k, v in self.cpu_s.items() if k not in (OTHER, IDLE))


def parse_cases(text: str) -> list[tuple[int, int]]:
    cases = []
    for item in text.split(","):
        workers, replicas = item.strip().split("x")
        cases.append((int(workers), int(replicas)))
    return cases


def classify(proc: psutil.Process, root_label: str) -> str:
    # Every tree but the broker's is facestream's: a Faust worker, or the Ray head with the
    # actors and daemons it started.
    return root_label if root_label == BROKER else classify_process(proc, "worker")


def wait_until_ready(stack: EmbeddedStack, timeout_s: float = 120.0) -> None:
    """Every worker has joined the group (so a 2-worker case measures two workers)."""
    deadline = time.monotonic() + timeout_s
    while not all("[^Worker]: Ready" in w.log_path.read_text() for w in stack.workers):
        if time.monotonic() > deadline:
            raise TimeoutError(
                "workers not ready:\n" + "\n".join(w.log_tail() for w in stack.workers)
            )
        time.sleep(0.5)


@contextmanager
def scaled_stack(base: Settings, workers: int, replicas: int) -> Iterator[EmbeddedStack]:
    """A fresh embedded stack: ``workers`` Faust workers sharing one Ray head that holds
    ``replicas`` model actors; the bench people enrolled."""
    run_dir = Path(tempfile.mkdtemp(prefix="fsscale-"))
    settings = bench_settings(base, run_dir, ray__model_replicas=replicas)
    stack = EmbeddedStack(settings, run_dir, workers=workers, shared_ray=True)
    samples = ensure_samples(base.cache_dir)
    try:
        stack.start()
        for identity, photo in ENROLMENTS.items():
            request = enrolment_request(identity, samples / photo)
            reply = asyncio.run(request_enrollment(stack.settings, request, 300.0))
            if not reply["ok"]:
                raise RuntimeError(f"enrolment refused: {reply}")
        wait_until_ready(stack)
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def run_case(
    base: Settings,
    model: FaceModel,
    photos: Sequence[tuple[str, bytes]],
    workers: int,
    replicas: int,
    count: int,
) -> Case:
    log(f"{workers} worker(s), {replicas} model replica(s): starting a stack...")
    with scaled_stack(base, workers, replicas) as stack:
        settings = stack.settings
        # Warm-up: every replica loads its sessions and every worker gets batches.
        warm = images_for(photos, 4 * settings.batch.size * max(workers, replicas), "warm")
        asyncio.run(stream(settings, warm))
        assert stack.ray_head is not None and stack.broker is not None
        trees = {f"worker {i}": w.pid for i, w in enumerate(stack.workers)}
        trees |= {"ray head": stack.ray_head.pid, BROKER: stack.broker.pid}
        meter = CpuMeter(trees, {BENCH_PROCESS: os.getpid()}, classify)
        bare = run_bare(model, settings, photos, count)
        before = meter.snapshot()
        result = asyncio.run(
            stream(settings, images_for(photos, count, f"scale{workers}{replicas}"))
        )
        after = meter.snapshot()
    if result.missing:
        raise RuntimeError(f"{result.missing} images without an outcome")
    wall = after.at - before.at
    cpu = CpuMeter.delta(before, after)
    cpu[IDLE] = max(0.0, wall * (psutil.cpu_count() or 1) - sum(cpu.values()))
    case = Case(workers, replicas, count, result.steady_rate(), bare.images_per_s, wall, cpu)
    log(f"{case.name}: {case.rate:.1f} images/s (bare models {case.bare_rate:.1f})")
    return case


def print_throughput(cases: list[Case]) -> None:
    cores = psutil.cpu_count() or 1
    rows = [
        [
            c.workers,
            c.replicas,
            c.images,
            c.rate,
            c.rate / cases[0].rate,
            c.bare_rate,
            c.rate / c.bare_rate,
            100 * c.pipeline_cpu_s / (c.wall_s * cores),
            100 * c.cpu_s[OTHER] / (c.wall_s * cores),
        ]
        for c in cases
    ]
    columns = [
        "workers",
        "model replicas",
        "images",
        "images/s",
        f"vs {cases[0].name}",
        "bare models images/s",
        "vs bare",
        f"pipeline CPU % of {cores} cores",
        "other processes %",
    ]
    print_table("throughput", columns, rows)


def print_cpu(cases: list[Case]) -> None:
    """CPU milliseconds per image by component: what each image costs, and who pays."""
    labels = sorted({k for c in cases for k in c.cpu_s if k not in (OTHER, IDLE)})
    labels += [OTHER, IDLE]
    rows = [
        [label, *(1000 * c.cpu_s.get(label, 0.0) / c.images for c in cases)] for label in labels
    ]
    rows.append(
        ["pipeline (all but other, idle)", *(1000 * c.pipeline_cpu_s / c.images for c in cases)]
    )
    rows.append(["cores x wall", *(1000 * sum(c.cpu_s.values()) / c.images for c in cases)])
    print_table(
        "where the time goes: CPU ms per image (workers x replicas)",
        ["component", *(c.name for c in cases)],
        rows,
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=120, help="images per measured run")
    parser.add_argument("--cases", default="1x1,1x2,2x1,2x2", help="WORKERSxREPLICAS, ...")
    args = parser.parse_args(argv)

    base = Settings()
    print_machine(machine())
    photos = sample_photos()
    threads = base.model.intra_op_threads
    log(f"bare models: loading in this process ({threads} intra-op thread(s))...")
    model = load_face_model(base)
    run_bare(model, base, photos, len(photos))  # warm-up: sessions, memory arenas

    cases = [run_case(base, model, photos, w, r, args.images) for w, r in parse_cases(args.cases)]
    print_throughput(cases)
    print_cpu(cases)
    emit_json(
        "scaling",
        {
            "cases": {
                c.name: {
                    "images_per_s": c.rate,
                    "bare_images_per_s": c.bare_rate,
                    "cpu_ms_per_image": {k: 1000 * v / c.images for k, v in c.cpu_s.items()},
                }
                for c in cases
            },
        },
    )


if __name__ == "__main__":
    main()
