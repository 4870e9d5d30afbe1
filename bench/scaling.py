"""Scaling on one machine: throughput with 1 and 2 Faust workers and 1 and 2 model replicas.

    python -m bench.scaling [--images 120] [--cases 1x1,1x2,2x1,2x2]

Each case (``WORKERSxREPLICAS``) runs on a fresh embedded stack with a shared Ray head (the
workers of one consumer group share the model application, as in production); the same photos go
through it as fast as the broker takes them, after a warm-up. Right before, with the stack
up, the bare models run on the same photos in this process (one replica's worth: the
reference). Beside the throughput, the CPU time of every component per image shows where the
time goes: a replica uses ``model.intra_op_threads`` cores at most, and the machine's free
cores bound the sum. On 2 cores, more workers and replicas only add processes that compete
for the same cores.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

from actors.models import FaceModel
from bench.common import (
    CpuMeter,
    bench_parser,
    describe_machine,
    emit_json,
    log,
    print_table,
    sample_photos,
)
from bench.flow import BENCH_PROCESS, classify_process, images_for, running_stack, stream
from bench.pipeline import run_bare, warm_model
from core.settings import Settings
from core.waiting import wait_until
from facestream.embedded import EmbeddedStack

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
    try:
        wait_until(
            lambda: all("[^Worker]: Ready" in w.log_path.read_text() for w in stack.workers),
            timeout_s=timeout_s,
            what="workers ready",
            interval_s=0.5,
        )
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}:\n" + "\n".join(w.log_tail() for w in stack.workers)) from exc


def run_case(
    base: Settings,
    model: FaceModel,
    photos: Sequence[tuple[str, bytes]],
    workers: int,
    replicas: int,
    count: int,
) -> Case:
    log(f"{workers} worker(s), {replicas} model replica(s): starting a stack...")
    # ``workers`` Faust workers sharing one Ray head whose model application runs exactly
    # ``replicas`` replicas (autoscaling pinned).
    scaled = running_stack(
        base,
        workers=workers,
        shared_ray=True,
        ray__min_replicas=replicas,
        ray__max_replicas=replicas,
    )
    with scaled as running:
        stack, settings = running.stack, running.settings
        wait_until_ready(stack)
        # Warm-up: every replica loads its sessions and every worker gets batches.
        warm = images_for(photos, 4 * settings.batch.size * max(workers, replicas), "warm")
        stream(settings, warm)
        assert stack.ray_head is not None and stack.broker is not None
        trees = {f"worker {i}": w.pid for i, w in enumerate(stack.workers)}
        trees |= {"ray head": stack.ray_head.pid, BROKER: stack.broker.pid}
        meter = CpuMeter(trees, {BENCH_PROCESS: os.getpid()}, classify)
        bare = run_bare(model, settings, photos, count)
        before = meter.snapshot()
        result = stream(settings, images_for(photos, count, f"scale{workers}{replicas}"))
        after = meter.snapshot()
    if missing := result.missing():
        raise RuntimeError(f"{len(missing)} images without an outcome")
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
    parser = bench_parser(__doc__)
    parser.add_argument("--images", type=int, default=120, help="images per measured run")
    parser.add_argument("--cases", default="1x1,1x2,2x1,2x2", help="WORKERSxREPLICAS, ...")
    args = parser.parse_args(argv)

    base = Settings()
    describe_machine()
    photos = sample_photos()
    threads = base.model.intra_op_threads
    log(f"bare models: loading in this process ({threads} intra-op thread(s))...")
    model = warm_model(base, photos)

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
