"""The pipeline against its models: how much do Kafka, Faust, Ray and the gallery cost?

    python -m bench.pipeline [--images 120] [--rounds 3] [--latency-seconds 20]
                             [--fetch-wait-ms 1500]

One run, the same photos, the same model thread budget (``model.intra_op_threads``, one
replica):

1. bare models: decode + detect + align + embed in this process (``FaceModel.analyze_bytes``
   in batches of ``batch.size``), images/s and faces/s;
2. the full pipeline on a fresh embedded stack (Tansu, a facestream worker with its own Ray,
   the model and gallery actors; two people enrolled): sustained images/s at saturation,
   with the CPU of every component. Bare and pipeline runs alternate (``--rounds``) while the
   stack stays up, so that both see the same machine; the ratio of each round is reported;
3. end-to-end latency (outcome received - image sent) at 50% and 80% of the sustained rate,
   against the single-image model time measured in this process just before (each photo
   alone through ``analyze_bytes``, the mean over the photos the pipeline cycles through):
   the target is p99 at 50% load <= 3x that model time, on the embedded defaults;
4. with ``--fetch-wait-ms``: the same on a second stack whose worker's Kafka fetch waits
   that long (``kafka.tuning.fetch_max_wait_ms``; 1500 ms is what Faust used to hard-code).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from actors.models import FaceModel, ImageFaces, load_face_model
from bench.common import (
    CpuMeter,
    bench_parser,
    describe_machine,
    emit_json,
    log,
    machine,
    print_table,
    sample_photos,
)
from bench.flow import (
    BENCH_PROCESS,
    RunningStack,
    fetch_wait_overrides,
    images_for,
    latency,
    running_stack,
    stream,
)
from core.imaging import decode_image
from core.quality import measure
from core.settings import Settings
from streams.flow import FlowReport

RATIO_TARGET = 0.90
LOAD_FRACTIONS = (0.5, 0.8)
# Issue 17: an outcome within a few model-times. p99 at 50% load, over one image's model time.
LATENCY_TARGET = 3.0
OTHER = "other processes"

Photos = Sequence[tuple[str, bytes]]


@dataclass
class BareResult:
    images: int
    faces: int
    wall_s: float
    cpu_s: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.wall_s

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s


def run_bare(model: FaceModel, settings: Settings, photos: Photos, count: int) -> BareResult:
    """``count`` images through the models in batches of ``batch.size``, as the actor gets them."""
    blobs = [photos[i % len(photos)][1] for i in range(count)]
    size = settings.batch.size
    faces = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, count, size):
        for result in model.analyze_bytes(blobs[start : start + size], settings.limits):
            if isinstance(result, ImageFaces):
                faces += len(result.faces)
    return BareResult(count, faces, time.perf_counter() - wall, time.process_time() - cpu)


def warm_model(settings: Settings, photos: Photos) -> FaceModel:
    """The models in this process, run once over ``photos`` (sessions, memory arenas)."""
    model = load_face_model(settings)
    run_bare(model, settings, photos, len(photos))
    return model


def stage_breakdown(
    model: FaceModel, settings: Settings, photos: Photos, repeats: int = 3
) -> list[dict[str, Any]]:
    """Milliseconds per stage for each photo (best of ``repeats``: the least disturbed)."""
    rows = []
    for name, blob in photos:
        best: dict[str, float] = {}
        faces, pixels = 0, ""
        for _ in range(repeats):
            t0 = time.perf_counter()
            image = decode_image(blob, settings.limits)
            t1 = time.perf_counter()
            detected, landmarks = model.detect(image)
            t2 = time.perf_counter()
            crops = [model.align(image, kps) for kps in landmarks]
            t3 = time.perf_counter()
            for face, crop, kps in zip(detected, crops, landmarks, strict=True):
                measure(crop, kps, face.bbox)
            t4 = time.perf_counter()
            if crops:
                model.embed_crops(crops)
            t5 = time.perf_counter()
            faces, pixels = len(detected), f"{image.shape[1]}x{image.shape[0]}"
            times = {
                "decode": t1 - t0,
                "detect": t2 - t1,
                "align": t3 - t2,
                "quality": t4 - t3,
                "embed": t5 - t4,
            }
            for stage, seconds in times.items():
                best[stage] = min(best.get(stage, float("inf")), seconds * 1000)
        rows.append({"photo": name, "pixels": pixels, "faces": faces, **best})
    return rows


def single_image_ms(
    model: FaceModel, settings: Settings, photos: Photos, repeats: int = 5
) -> dict[str, float]:
    """Each photo alone through ``analyze_bytes`` (what a lone image costs the model actor),
    median of ``repeats``, in ms; "mean" is their mean, as the pipeline cycles the photos."""
    out = {}
    for name, blob in photos:
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            model.analyze_bytes([blob], settings.limits)
            times.append(1000 * (time.perf_counter() - started))
        out[name] = statistics.median(times)
    out["mean"] = statistics.fmean(out[name] for name, _ in photos)
    return out


@dataclass
class Round:
    bare: BareResult
    bare_cpu: dict[str, float]
    pipe: FlowReport
    pipe_cpu: dict[str, float]
    pipe_wall_s: float

    @property
    def pipe_rate(self) -> float:
        return self.pipe.steady_rate()

    @property
    def pipe_faces_per_s(self) -> float:
        return self.pipe_rate * self.pipe.faces / len(self.pipe.received)

    @property
    def ratio(self) -> float:
        return self.pipe_rate / self.bare.images_per_s

    @property
    def stack_cpu_ms_per_image(self) -> float:
        """CPU of the stack's processes (not the bench client's) per image."""
        stack = sum(v for k, v in self.pipe_cpu.items() if k not in (OTHER, BENCH_PROCESS))
        return 1000 * stack / len(self.pipe.received)

    @property
    def cpu_efficiency(self) -> float:
        """Bare models' CPU per image / the whole stack's: what the ratio would be if every
        process competed for the same cores (little affected by other users' load)."""
        return (1000 * self.bare.cpu_s / self.bare.images) / self.stack_cpu_ms_per_image

    def other_load(self) -> tuple[float, float]:
        """Cores busy with processes that are neither this bench nor its stack."""
        return self.bare_cpu[OTHER] / self.bare.wall_s, self.pipe_cpu[OTHER] / self.pipe_wall_s


def run_round(
    model: FaceModel, running: RunningStack, photos: Photos, count: int, tag: str
) -> Round:
    meter = running.cpu_meter()
    log(f"{tag}: bare models, {count} images...")
    before = meter.snapshot()
    bare = run_bare(model, running.settings, photos, count)
    bare_cpu = CpuMeter.delta(before, meter.snapshot())
    log(f"{tag}: pipeline, {count} images as fast as they go...")
    before = meter.snapshot()
    pipe = stream(running.settings, images_for(photos, count, tag))
    after = meter.snapshot()
    return Round(bare, bare_cpu, pipe, CpuMeter.delta(before, after), after.at - before.at)


def run_latency(
    running: RunningStack, photos: Photos, rates: Sequence[float], seconds: float, tag: str
) -> list[FlowReport]:
    out = []
    for rate in rates:
        n = max(20, int(rate * seconds))
        log(f"{tag}: {n} images paced at {rate:.1f}/s...")
        images = images_for(photos, n, f"{tag}-{rate:.1f}")
        out.append(stream(running.settings, images, rate_per_s=rate))
    return out


def warm_up(running: RunningStack, photos: Photos) -> None:
    images = images_for(photos, 3 * running.settings.batch.size, "warmup")
    stream(running.settings, images)


@dataclass
class StageHistogram:
    """One stage of the worker's facestream_stage_seconds: cumulative counts by bucket upper
    bound, and the sum of seconds."""

    buckets: dict[float, float]
    total_s: float = 0.0

    def since(self, before: StageHistogram | None) -> StageHistogram:
        if before is None:
            return self
        return StageHistogram(
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.total_s - before.total_s,
        )

    @property
    def count(self) -> float:
        return max(self.buckets.values(), default=0.0)

    def quantile(self, q: float) -> float:
        """As Prometheus's histogram_quantile: linear within the bucket holding the rank; the
        last finite bound when the rank is in +Inf."""
        rank, lower, below = q * self.count, 0.0, 0.0
        for bound, count in sorted(self.buckets.items()):
            if count >= rank:
                if math.isinf(bound):
                    return lower
                return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
            lower, below = bound, count
        return lower


def worker_stages(running: RunningStack) -> dict[str, StageHistogram]:
    """The worker's facestream_stage_seconds as it serves them now, per stage."""
    url = f"http://127.0.0.1:{running.stack.workers[0].metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, StageHistogram] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "facestream_stage_seconds":
            continue
        for sample in family.samples:
            stage = out.setdefault(sample.labels["stage"], StageHistogram({}))
            if sample.name.endswith("_bucket"):
                stage.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                stage.total_s = sample.value
    return out


def stage_rows(
    label: str, before: dict[str, StageHistogram], after: dict[str, StageHistogram]
) -> list[list[Any]]:
    """Per stage observed between the two snapshots: count, mean, p50 and p99 in ms."""
    rows = []
    for stage, now in after.items():
        seen = now.since(before.get(stage))
        if seen.count:
            rows.append(
                [label, stage, int(seen.count), 1000 * seen.total_s / seen.count,
                 1000 * seen.quantile(0.5), 1000 * seen.quantile(0.99)]
            )  # fmt: skip
    return rows


# -- reports ----------------------------------------------------------------------------------


def print_stages(rows: list[dict[str, Any]]) -> None:
    stages = ["decode", "detect", "align", "quality", "embed"]
    table = [[r["photo"], r["pixels"], r["faces"], *(r[s] for s in stages)] for r in rows]
    totals = {s: sum(r[s] for r in rows) for s in stages}
    grand = sum(totals.values())
    table.append(["all 6 (sum)", "", sum(r["faces"] for r in rows), *totals.values()])
    table.append(["share", "", "", *(f"{100 * totals[s] / grand:.0f}%" for s in stages)])
    print_table(
        "where the model time goes (ms per image, best of 3, one thread, this process)",
        ["photo", "size", "faces", *(f"{s} ms" for s in stages)],
        table,
    )


def print_rounds(rounds: list[Round], count: int, threads: int, batch: int) -> None:
    rows = []
    for i, r in enumerate(rounds, 1):
        other_bare, other_pipe = r.other_load()
        rows.append(
            [i, r.bare.images_per_s, r.bare.faces_per_s, r.bare.cores, r.pipe_rate,
             r.pipe_faces_per_s, r.pipe.wall_rate(), r.ratio, r.cpu_efficiency, other_bare,
             other_pipe]
        )  # fmt: skip
    print_table(
        f"throughput, bare and pipeline alternating ({count} images per run, "
        f"{threads} model thread, batch {batch})",
        ["round", "bare img/s", "bare faces/s", "bare cores", "pipeline img/s",
         "pipeline faces/s", "pipeline img/s incl. fill", "ratio", "CPU efficiency",
         "foreign load, bare (cores)", "foreign load, pipeline (cores)"],
        rows,
    )  # fmt: skip


def print_cpu(rounds: list[Round]) -> None:
    cpu: dict[str, float] = {}
    for r in rounds:
        for label, seconds in r.pipe_cpu.items():
            cpu[label] = cpu.get(label, 0.0) + seconds
    wall = sum(r.pipe_wall_s for r in rounds)
    images = sum(len(r.pipe.received) for r in rounds)
    bare_cpu_ms = 1000 * sum(r.bare.cpu_s for r in rounds) / sum(r.bare.images for r in rounds)
    rows = [
        [label, seconds, seconds / wall, 1000 * seconds / images]
        for label, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])
        if label != OTHER
    ]
    ours = sum(v for k, v in cpu.items() if k != OTHER)
    rows.append(["= facestream stack + bench client", ours, ours / wall, 1000 * ours / images])
    rows.append([f"({OTHER}: not ours)", cpu[OTHER], cpu[OTHER] / wall, ""])
    rows.append(["(bare models, same images)", "", "", bare_cpu_ms])
    print_table(
        f"where the CPU goes in the pipeline runs ({images} images, {wall:.1f} s wall)",
        ["process", "CPU s", "cores busy", "CPU ms / image"],
        rows,
    )


def latency_rows(label: str, rates: Sequence[float], results: list[FlowReport]) -> list[list]:
    rows = []
    for fraction, rate, res in zip(LOAD_FRACTIONS, rates, results, strict=True):
        p = latency(res)
        rows.append(
            [label, f"{fraction:.0%}", rate, res.wall_rate(), len(res.received), p["p50"],
             p["p95"], p["p99"], p["max"], len(res.missing())]
        )  # fmt: skip
    return rows


def print_latency(rows: list[list]) -> None:
    print_table(
        "end-to-end latency (image sent -> its outcome received), paced producing",
        ["worker", "load", "offered/s", "achieved/s", "images", "p50 ms", "p95 ms", "p99 ms",
         "max ms", "missing"],
        rows,
    )  # fmt: skip


def latency_json(rates: Sequence[float], results: list[FlowReport]) -> dict[str, Any]:
    return {
        f"{fraction:.0%}": {"offered_per_s": rate, **latency(res)}
        for fraction, rate, res in zip(LOAD_FRACTIONS, rates, results, strict=True)
    }


# -- main -------------------------------------------------------------------------------------


def round_parser(doc: str, fetch_wait_help: str) -> argparse.ArgumentParser:
    """The command line of a benchmark made of ``run_round``s: images per run, and the
    worker's Kafka fetch wait (``kafka.tuning.fetch_max_wait_ms``)."""
    parser = bench_parser(doc)
    parser.add_argument("--images", type=int, default=120, help="images per throughput run")
    parser.add_argument("--fetch-wait-ms", type=int, default=None, help=fetch_wait_help)
    return parser


def latency_target_rows(model_ms: dict[str, float], results: list[FlowReport]) -> list[list[Any]]:
    """p50 and p99 at each load against the single-image model time of the same run."""
    rows = []
    for fraction, res in zip(LOAD_FRACTIONS, results, strict=True):
        p = latency(res)
        verdict = ""
        if fraction == LOAD_FRACTIONS[0]:
            met = p["p99"] <= LATENCY_TARGET * model_ms["mean"]
            verdict = f"<= {LATENCY_TARGET:g}x: {'met' if met else 'NOT met'}"
        rows.append(
            [f"{fraction:.0%}", model_ms["mean"], p["p50"], p["p99"], p["p50"] / model_ms["mean"],
             p["p99"] / model_ms["mean"], verdict]
        )  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = round_parser(
        __doc__, "also run a second stack whose worker's Kafka fetch waits this long, ms"
    )
    parser.add_argument("--rounds", type=int, default=3, help="bare/pipeline alternations")
    parser.add_argument("--latency-seconds", type=float, default=20.0, help="per paced run")
    args = parser.parse_args(argv)

    settings = Settings()
    info = describe_machine()
    photos = sample_photos()
    threads, batch = settings.model.intra_op_threads, settings.batch.size
    compute = settings.model.compute_threads
    log(
        f"bare models: loading (intra_op_threads={threads}, compute_threads={compute});"
        f" batches of {batch}"
    )
    model = warm_model(settings, photos)
    stages = stage_breakdown(model, settings, photos)

    log("pipeline: starting the embedded stack...")
    with running_stack(settings) as running:
        log(f"pipeline: ready in {running.startup.ready_s:.1f} s")
        warm_up(running, photos)
        rounds = [
            run_round(model, running, photos, args.images, f"round{i}")
            for i in range(1, args.rounds + 1)
        ]
        sustained = statistics.median(r.pipe_rate for r in rounds)
        rates = [f * sustained for f in LOAD_FRACTIONS]
        # Right before and after the paced runs, with the stack up and idle: the machine
        # state they ran in (a shared machine's load moves; both are reported).
        log("bare models: each photo alone (single-image model time)...")
        model_before = single_image_ms(model, settings, photos)
        paced, stages_seen = [], []
        for fraction, rate in zip(LOAD_FRACTIONS, rates, strict=True):
            before = worker_stages(running)
            paced += run_latency(running, photos, [rate], args.latency_seconds, "paced")
            stages_seen += stage_rows(f"{fraction:.0%}", before, worker_stages(running))
        log("bare models: each photo alone again...")
        model_after = single_image_ms(model, settings, photos)
    model_ms = {
        name: (model_before[name] + model_after[name]) / 2 for name in model_before
    }  # the reference: the mean of the two measurements
    other: tuple[Round, list[FlowReport]] | None = None
    if args.fetch_wait_ms is not None:
        log(f"second stack: worker fetch wait {args.fetch_wait_ms} ms...")
        with running_stack(settings, **fetch_wait_overrides(args.fetch_wait_ms)) as running:
            warm_up(running, photos)
            other_round = run_round(model, running, photos, args.images, "fetch-wait")
            other = (
                other_round,
                run_latency(running, photos, rates, args.latency_seconds, "fetch-wait-paced"),
            )

    ratio = statistics.median(r.ratio for r in rounds)
    efficiency = statistics.median(r.cpu_efficiency for r in rounds)
    bare_rate = statistics.median(r.bare.images_per_s for r in rounds)
    bare_faces = statistics.median(r.bare.faces_per_s for r in rounds)
    pipe_faces = statistics.median(r.pipe_faces_per_s for r in rounds)
    met = ratio >= RATIO_TARGET
    p99_ratio = latency(paced[0])["p99"] / model_ms["mean"]
    fetch_wait = settings.tuning.fetch_max_wait_ms

    print_stages(stages)
    print_rounds(rounds, args.images, threads, batch)
    print_cpu(rounds)
    rows = latency_rows(f"embedded default (fetch wait {fetch_wait} ms)", rates, paced)
    if other:
        rows += latency_rows(f"fetch wait {args.fetch_wait_ms} ms", rates, other[1])
    print_latency(rows)
    print_table(
        "worker-side stages during the paced runs (facestream_stage_seconds: per image for"
        " broker_queue and batching, else per batch; p50/p99 interpolated in its buckets)",
        ["load", "stage", "observed", "mean ms", "p50 ms", "p99 ms"],
        stages_seen,
    )
    print_table(
        "single-image model time (each photo alone through analyze_bytes, median of 5, ms)",
        ["photo", "before the paced runs", "after them", "mean"],
        [[name, model_before[name], model_after[name], ms] for name, ms in model_ms.items()],
    )
    print_table(
        f"end-to-end latency against the single-image model time ({model_ms['mean']:.0f} ms),"
        " embedded default",
        ["load", "model ms", "p50 ms", "p99 ms", "p50 / model", "p99 / model", "target"],
        latency_target_rows(model_ms, paced),
    )
    summary = [
        ["bare models, images/s (median)", bare_rate],
        ["bare models, faces/s (median)", bare_faces],
        ["pipeline, images/s sustained (median)", sustained],
        ["pipeline, faces/s sustained (median)", pipe_faces],
        ["ratio pipeline / bare (median of rounds)", ratio],
        ["target", f">= {RATIO_TARGET}: {'met' if met else 'NOT met'}"],
        ["CPU efficiency: bare CPU / stack CPU per image (median)", efficiency],
        ["p99 at 50% load / single-image model time", p99_ratio],
        [
            "target",
            f"<= {LATENCY_TARGET:g}: {'met' if p99_ratio <= LATENCY_TARGET else 'NOT met'}",
        ],
        ["stack ready (start -> first enrolment acknowledged), s", running.startup.ready_s],
    ]
    if other:
        summary.append([f"ratio with fetch wait {args.fetch_wait_ms} ms (1 round)", other[0].ratio])
    print_table("summary", ["figure", "value"], summary)

    figures: dict[str, Any] = {
        "machine": {**info, "load_avg_1m_end": machine()["load_avg_1m"]},
        "images_per_run": args.images,
        "photos": [name for name, _ in photos],
        "intra_op_threads": threads,
        "compute_threads": compute,
        "batch_size": batch,
        "fetch_max_wait_ms": fetch_wait,
        "bare_images_per_s": bare_rate,
        "bare_faces_per_s": bare_faces,
        "pipeline_images_per_s": sustained,
        "pipeline_faces_per_s": pipe_faces,
        "ratio": ratio,
        "ratio_target": RATIO_TARGET,
        "ratio_met": met,
        "cpu_efficiency": efficiency,
        "rounds": [
            {
                "bare_images_per_s": r.bare.images_per_s,
                "pipeline_images_per_s": r.pipe_rate,
                "ratio": r.ratio,
                "cpu_efficiency": r.cpu_efficiency,
                "foreign_load_cores": list(r.other_load()),
                "pipeline_cpu_ms_per_image": {
                    k: 1000 * v / len(r.pipe.received) for k, v in sorted(r.pipe_cpu.items())
                },
                "bare_cpu_ms_per_image": 1000 * r.bare.cpu_s / r.bare.images,
            }
            for r in rounds
        ],
        "startup_ready_s": running.startup.ready_s,
        "latency_ms": latency_json(rates, paced),
        "single_image_model_ms": model_ms,
        "single_image_model_ms_before_after": [model_before, model_after],
        "worker_stages_ms": [
            dict(zip(["load", "stage", "observed", "mean", "p50", "p99"], row, strict=True))
            for row in stages_seen
        ],
        "p99_50pct_over_model": p99_ratio,
        "latency_target": LATENCY_TARGET,
        "latency_met": p99_ratio <= LATENCY_TARGET,
        "stages_ms": stages,
    }
    if other:
        figures["second_stack"] = {
            "fetch_max_wait_ms": args.fetch_wait_ms,
            "ratio": other[0].ratio,
            "pipeline_images_per_s": other[0].pipe_rate,
            "latency_ms": latency_json(rates, other[1]),
        }
    emit_json("pipeline", figures)


if __name__ == "__main__":
    main()
