"""The pipeline against what a user would run instead, on the whole machine, in one run.

    python -m bench.throughput [--images 240] [--warm-s 30]

Side by side, the same sample photos, every core:

1. ``plain insightface``: one process per core, each ``cv2.imdecode`` + ``FaceAnalysis.get``
   (same weights, one onnxruntime thread): what a user would otherwise write;
2. ``bare model path``: one process per core, each ``FaceModel.analyze_bytes`` in batches of
   ``batch.size`` (what a model replica runs, without Kafka, Faust, Ray or the gallery);
3. ``pipeline at its defaults``: ``facestream up``'s stack (Tansu, one worker with its own
   local Ray, the model application autoscaling up to one replica per core, the gallery);
4. ``1 worker`` / ``2 workers``: a stack whose workers share one Ray head and so send their
   batches to the same model application (``@serve.batch`` merges what they send at once);
   measured with both workers, then with one once the other has left the group.

The per-core cases alternate (``--rounds``, the median round is kept). Each pipeline case
streams a warm-up of ``--warm-s`` seconds first, so that the autoscaler has started its
replicas, then ``--images`` images as fast as the broker takes them; the rate is the steady
one (first to last outcome), and Serve's ``ray_serve_actual_batch_size`` gives the share of
model runs that merged several worker batches. Every case reports the foreign load (cores
busy with other users' processes meanwhile): compare cases of similar load only. The ratio
pipeline / plain insightface is the figure to judge (target >= 0.9).
"""

from __future__ import annotations

import multiprocessing
import os
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    CpuMeter,
    ForeignLoad,
    bench_parser,
    describe_machine,
    emit_json,
    log,
    print_table,
    sample_photos,
)
from bench.flow import RunningStack, images_for, running_stack, stream
from bench.scaling import wait_until_ready
from core.settings import Settings
from facestream.embedded import EmbeddedStack

RATIO_TARGET = 0.90
Photos = Sequence[tuple[str, bytes]]


# -- one process per core -----------------------------------------------------------------------


def _per_core(kind: str, blobs: list[bytes], count: int, start: Any, out: Any) -> None:
    """One core's share: load ``kind``, warm it on every photo, wait for the others, then time
    ``count`` images."""
    import cv2
    import numpy as np

    from bench.model_path import facestream_model, model_folder, plain_insightface

    settings = Settings()
    if kind == "insightface":
        app = plain_insightface(str(model_folder(settings)), settings, threads=1)

        def run(batch: list[bytes]) -> None:
            for blob in batch:
                app.get(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR))

    else:
        model = facestream_model(settings, threads=1)

        def run(batch: list[bytes]) -> None:
            model.analyze_bytes(batch, settings.limits)

    run(blobs)
    start.wait()
    size = settings.batch.size
    work = list(islice(cycle(blobs), count))
    began, cpu = time.monotonic(), time.process_time()
    for i in range(0, count, size):
        run(work[i : i + size])
    out.put((count, began, time.monotonic(), time.process_time() - cpu))


@dataclass
class Measured:
    images_per_s: float
    foreign_cores: float  # cores busy with other processes meanwhile (another user's work)
    merged_share: float | None = None  # share of model runs that merged several worker batches


def per_core_rate(kind: str, photos: Photos, count: int, cores: int) -> Measured:
    """Images/s of ``cores`` processes running ``kind`` at once, ``count`` images each."""
    spawn = multiprocessing.get_context("spawn")  # no onnxruntime threads inherited by fork
    start, out = spawn.Barrier(cores + 1), spawn.Queue()
    blobs = [blob for _, blob in photos]
    procs = [
        spawn.Process(target=_per_core, args=(kind, blobs, count, start, out)) for _ in range(cores)
    ]
    for proc in procs:
        proc.start()
    start.wait()  # every process has loaded and warmed its model
    load = ForeignLoad()
    results = [out.get(timeout=600) for _ in procs]
    for proc in procs:
        proc.join()
    images = sum(n for n, _, _, _ in results)
    wall = max(end for _, _, end, _ in results) - min(t for _, t, _, _ in results)
    return Measured(images / wall, load.cores(sum(cpu for *_, cpu in results)))


def alternating(photos: Photos, count: int, cores: int, rounds: int) -> dict[str, Measured]:
    """Each per-core case ``rounds`` times, in alternating order (the machine's load drifts):
    the round with the median rate of each."""
    runs: dict[str, list[Measured]] = {"insightface": [], "facestream": []}
    for r in range(rounds):
        for kind in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            log(f"{kind}, {cores} processes x {count} images (round {r + 1})...")
            runs[kind].append(per_core_rate(kind, photos, count, cores))
    return {k: sorted(v, key=lambda m: m.images_per_s)[len(v) // 2] for k, v in runs.items()}


# -- the pipeline -------------------------------------------------------------------------------


def warm_for(running: RunningStack, photos: Photos, seconds: float, rate_hint: float) -> None:
    """A stream of about ``seconds``: the replicas the autoscaler wants are running after it."""
    count = max(len(photos), int(seconds * rate_hint))
    stream(running.settings, images_for(photos, count, f"warm-{time.monotonic():.0f}"))


def ray_metrics_ports(stack: EmbeddedStack) -> list[int]:
    """The metrics ports of the stack's Ray nodes: its shared head's and nodes', else each
    worker's local Ray's."""
    if stack.ray_head is None:
        return [worker.ray_metrics_port for worker in stack.workers]
    return [node.ports["metrics-export-port"] for node in (stack.ray_head, *stack.ray_nodes)]


def model_runs(stack: EmbeddedStack) -> tuple[float, float]:
    """(model runs of one worker batch, all model runs) so far, summed over the stack's Ray
    nodes: the buckets of Serve's ``ray_serve_actual_batch_size`` histogram (its ``_sum``
    as exported by Ray 2.60 is not the sum of the batch sizes: 191.5 for 250 calls)."""
    alone = runs = 0.0
    for port in ray_metrics_ports(stack):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("deployment") != "FaceModel":
                    continue
                if sample.name == "ray_serve_actual_batch_size_bucket":
                    alone += sample.value if sample.labels.get("le") == "1.0" else 0.0
                elif sample.name == "ray_serve_actual_batch_size_count":
                    runs += sample.value
    return alone, runs


# Ray's agents export what replicas record every few seconds: wait this long before reading.
METRICS_EXPORT_S = 12.0


def stack_meter(stack: EmbeddedStack) -> CpuMeter:
    """CPU of the stack (workers, their Ray, the broker) and of this process; the rest of the
    machine's busy time is another user's."""
    trees = {f"worker {i}": w.pid for i, w in enumerate(stack.workers)}
    if stack.ray_head is not None:
        trees["ray head"] = stack.ray_head.pid
    if stack.broker is not None:
        trees["broker"] = stack.broker.pid
    return CpuMeter(trees, {"bench": os.getpid()})


def pipeline_rate(running: RunningStack, photos: Photos, count: int, tag: str) -> Measured:
    time.sleep(METRICS_EXPORT_S)  # what came before is exported
    before = model_runs(running.stack)
    meter = stack_meter(running.stack)
    cpu_before = meter.snapshot()
    report = stream(running.settings, images_for(photos, count, tag))
    cpu_after = meter.snapshot()
    if missing := report.missing():
        raise RuntimeError(f"{len(missing)} images without an outcome")
    time.sleep(METRICS_EXPORT_S)
    after = model_runs(running.stack)
    runs = after[1] - before[1]
    foreign = CpuMeter.delta(cpu_before, cpu_after)["other processes"]
    return Measured(
        report.steady_rate(),
        foreign / (cpu_after.at - cpu_before.at),
        1 - (after[0] - before[0]) / runs if runs > 0 else None,
    )


def one_worker_left(running: RunningStack, photos: Photos) -> None:
    """Stop all but the first worker (SIGTERM: they leave the group); return once the first
    answers a few images, so it has taken every partition over."""
    stack = running.stack
    for worker in stack.workers[1:]:
        worker.stop()
    del stack.workers[1:]
    stream(running.settings, images_for(photos, 2 * running.settings.batch.size, "rebalance"))


def main(argv: Sequence[str] | None = None) -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--images", type=int, default=240, help="images per measured run")
    parser.add_argument("--warm-s", type=float, default=30.0, help="warm-up stream, seconds")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the per-core cases")
    args = parser.parse_args(argv)

    settings = Settings()
    info = describe_machine()
    photos = sample_photos()
    cores = os.cpu_count() or 1
    per_process = max(len(photos), args.images // cores)
    per_core = alternating(photos, per_process, cores, args.rounds)
    plain, bare = per_core["insightface"], per_core["facestream"]

    log("pipeline at its defaults: starting the embedded stack...")
    with running_stack(settings) as running:
        warm_for(running, photos, args.warm_s, plain.images_per_s)
        default = pipeline_rate(running, photos, args.images, "default")
    log("2 workers sharing one Ray head (one model application): starting...")
    with running_stack(settings, workers=2, shared_ray=True) as running:
        wait_until_ready(running.stack)
        warm_for(running, photos, args.warm_s, plain.images_per_s)
        two = pipeline_rate(running, photos, args.images, "two-workers")
        one_worker_left(running, photos)
        one = pipeline_rate(running, photos, args.images, "one-worker")

    ratio = default.images_per_s / plain.images_per_s
    cases = {
        "plain insightface, one process per core": plain,
        "bare model path, one process per core": bare,
        "pipeline at its defaults (facestream up)": default,
        "shared Ray head, 1 worker": one,
        "shared Ray head, 2 workers, one model application": two,
    }
    print_table(
        f"throughput on all {cores} cores, the {len(photos)} sample photos",
        ["case", "images/s", "vs plain insightface", "model runs merging 2+ worker batches",
         "foreign load (cores)"],
        [[name, m.images_per_s, m.images_per_s / plain.images_per_s,
          "" if m.merged_share is None else f"{m.merged_share:.0%}", m.foreign_cores]
         for name, m in cases.items()],
    )  # fmt: skip
    met = ratio >= RATIO_TARGET
    two_over_one = two.images_per_s / one.images_per_s
    print_table(
        "summary",
        ["figure", "value"],
        [
            ["ratio pipeline / plain insightface", ratio],
            ["target", f">= {RATIO_TARGET}: {'met' if met else 'NOT met'}"],
            ["2 workers / 1 worker on one model application", two_over_one],
        ],
    )
    emit_json(
        "throughput",
        {
            "machine": info,
            "cores": cores,
            "images_per_run": args.images,
            "plain_insightface_images_per_s": plain.images_per_s,
            "bare_model_path_images_per_s": bare.images_per_s,
            "pipeline_images_per_s": default.images_per_s,
            "ratio": ratio,
            "ratio_target": RATIO_TARGET,
            "ratio_met": met,
            "one_worker_images_per_s": one.images_per_s,
            "two_workers_images_per_s": two.images_per_s,
            "two_over_one": two_over_one,
            "merged_model_runs_share": {
                "default": default.merged_share,
                "one_worker": one.merged_share,
                "two_workers": two.merged_share,
            },
            "foreign_load_cores": {name: m.foreign_cores for name, m in cases.items()},
        },
    )


if __name__ == "__main__":
    main()
