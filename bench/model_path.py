"""The model path against plain insightface, side by side: per image ms and images/s.

    python -m bench.model_path [--rounds 10] [--passes 1] [--threads 1] [--json]

Three ways to turn the sample photos' bytes into faces with embeddings, in this process,
with the same weights and the same thread budget (``--threads`` onnxruntime intra-op
threads, OpenCV threads and ``OMP_NUM_THREADS``), run in alternating order each round:

- ``insightface``: what a user would write: ``cv2.imdecode`` + ``FaceAnalysis(name=<the model
  folder>, allowed_modules=["detection", "recognition"]).get(img)``, prepared at the same
  det_size and threshold, one image after the other;
- ``facestream b1``: ``FaceModel.analyze_bytes([blob])`` per image (header checks, decode,
  detect, align, quality and pose, embed);
- ``facestream b8``: ``FaceModel.analyze_bytes`` on all 8 photos at once (the default batch);
- ``facestream b1, N calls at once``: b1 with ``model.compute_threads`` N (the replicas'
  default, 2): a photo's faces on N threads, so a larger thread budget than the others.

Wall ms per image is the figure to compare; CPU ms per image (the process's CPU time, all
threads) shows what the decode threads add. Then detection alone, per image against one
batched detector call for the 8 photos (``InsightFaceOnnx.detect_many``), at 1 and 2
intra-op threads, and the recogniser at batches of 1, 8 and 32 crops: the figures behind
``InsightFaceOnnx.batched_detection``'s and ``CPU_EMBED_BATCH``'s defaults. Last, the peak
memory of one batch of eight 40-Mpx images, with the default decode budget and without one.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from bench import common
from core.settings import Settings

PHOTOS = [
    "obama.jpg",
    "obama2.jpg",
    "obama3.jpg",
    "biden.jpg",
    "biden2.jpg",
    "yaoming.jpg",
    "players.jpg",
    "t1.jpg",
]


def plain_insightface(folder: str, settings: Settings, threads: int) -> Any:
    import onnxruntime
    from insightface.app import FaceAnalysis

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    app = FaceAnalysis(
        name=folder,
        providers=["CPUExecutionProvider"],
        allowed_modules=["detection", "recognition"],
        sess_options=options,
    )
    size = settings.model.det_size
    app.prepare(ctx_id=-1, det_size=(size, size), det_thresh=settings.model.det_threshold)
    return app


def facestream_model(settings: Settings, threads: int, **flags: Any) -> Any:
    from actors.models.insightface_onnx import InsightFaceOnnx
    from actors.models.packs import resolve_pack

    pack = resolve_pack(settings.model.folder, settings.cache_dir)
    # One model call at a time, as insightface makes them: the same thread budget.
    update = {"intra_op_threads": threads, "compute_threads": 1}
    model_settings = settings.model.model_copy(update=update)
    return InsightFaceOnnx(pack, model_settings, **flags)


def cases(settings: Settings, threads: int) -> dict[str, Callable[[list[bytes]], int]]:
    """name -> run(blobs) returning the faces found."""
    model = facestream_model(settings, threads)
    app = plain_insightface(str(model_folder(settings)), settings, threads)
    limits = settings.limits

    def insightface(blobs: list[bytes]) -> int:
        found = 0
        for blob in blobs:
            img = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR)
            found += len(app.get(img))
        return found

    def batch_of(size: int, model: Any = model) -> Callable[[list[bytes]], int]:
        def run(blobs: list[bytes]) -> int:
            found = 0
            for start in range(0, len(blobs), size):
                for result in model.analyze_bytes(blobs[start : start + size], limits):
                    found += len(result.faces)
            return found

        return run

    out = {"insightface": insightface, "facestream b1": batch_of(1), "facestream b8": batch_of(8)}
    calls = settings.model.compute_threads
    if calls > 1:  # what the replicas run: a photo's faces on several threads
        concurrent = facestream_model(settings, threads, compute_threads=calls)
        out[f"facestream b1, {calls} calls at once"] = batch_of(1, concurrent)
    return out


def model_folder(settings: Settings) -> Any:
    from actors.models.packs import resolve_pack

    return resolve_pack(settings.model.folder, settings.cache_dir).folder


def measure(run: Callable[[list[bytes]], int], blobs: list[bytes], passes: int) -> dict[str, Any]:
    load = common.ForeignLoad()
    cpu, started = time.process_time(), time.perf_counter()
    faces = sum(run(blobs) for _ in range(passes))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    images = len(blobs) * passes
    return {
        "ms_per_image": wall / images * 1e3,
        "images_per_s": images / wall,
        "faces_per_s": faces / wall,
        "cpu_ms_per_image": cpu / images * 1e3,
        "faces": faces // passes,
        "foreign_load_cores": load.cores(cpu),
    }


def alternate(
    runs: dict[str, Callable[[], Any]], items: int, rounds: int
) -> dict[str, dict[str, float]]:
    """ms per item of each run, alternating order each round (median, min), and the load."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    loads = []
    for run in runs.values():  # warm-up
        run()
    for r in range(rounds * 2):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            load, cpu, started = common.ForeignLoad(), time.process_time(), time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - started) / items * 1e3)
            loads.append(load.cores(time.process_time() - cpu))
    out: dict[str, Any] = {
        name: {"median_ms": statistics.median(v), "min_ms": min(v)} for name, v in times.items()
    }
    out["foreign_load_cores"] = statistics.median(loads)
    return out


def stages_alone(
    settings: Settings, photos: list[tuple[str, bytes]], rounds: int, threads_list: Sequence[int]
) -> dict[str, Any]:
    """Detection per image against one batched call for all photos, and the recogniser at
    batches of 1, 8 and 32 crops, at each thread count."""
    from core.imaging import decode_image

    images = [decode_image(blob, settings.limits) for _, blob in photos]
    out: dict[str, Any] = {"detection": {}, "recognition": {}}
    for threads in threads_list:
        cv2.setNumThreads(threads)
        model = facestream_model(settings, threads, batched_detection=True)
        out["detection"][str(threads)] = alternate(
            {
                "per image": lambda m=model: [m.detect(img) for img in images],
                "batched": lambda m=model: m.detect_many(images),
            },
            len(images),
            rounds,
        )
        crops = [model.align(img, kps) for img in images for kps in model.detect(img)[1]]
        crops = (crops * (1 + 32 // len(crops)))[:32]
        out["recognition"][str(threads)] = alternate(
            {
                f"batch {n}": lambda m=model, n=n, c=crops: [
                    m.recognizer.get_feat(c[i : i + n]) for i in range(0, len(c), n)
                ]
                for n in (1, 8, 32)
            },
            len(crops),
            rounds,
        )
    cv2.setNumThreads(threads_list[0])
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds")
    parser.add_argument("--passes", type=int, default=1, help="passes over the photos a round")
    parser.add_argument("--threads", type=int, default=1, help="the thread budget")
    parser.add_argument(
        "--stage-threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="thread counts for detection and recognition alone",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    args = parser.parse_args(argv)
    quiet = args.json
    # scikit-image's deprecation inside insightface's norm_crop (the plain path); facestream
    # silences it itself.
    warnings.filterwarnings("ignore", category=FutureWarning)

    settings = Settings()
    photos = common.sample_photos(PHOTOS)
    blobs = [blob for _, blob in photos]
    info = common.machine() if quiet else common.describe_machine()
    cv2.setNumThreads(args.threads)
    runs = cases(settings, args.threads)
    for run in runs.values():  # warm-up, and the same faces everywhere
        run(blobs)
    per_round: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        for name in order:
            per_round[name].append(measure(runs[name], blobs, args.passes))
        if not quiet:
            common.log(f"round {r + 1}/{args.rounds} done")
    summary = {
        name: {
            key: statistics.median(m[key] for m in rounds_)
            for key in ("ms_per_image", "images_per_s", "faces_per_s", "cpu_ms_per_image")
        }
        | {
            "faces": rounds_[0]["faces"],
            "foreign_load_cores": statistics.median(m["foreign_load_cores"] for m in rounds_),
        }
        for name, rounds_ in per_round.items()
    }
    # Speed relative to plain insightface: each round's ratio (the cases ran side by side,
    # under the same load), then the median over rounds; and the best round of each.
    base = per_round["insightface"]
    for name, figures in summary.items():
        ratios = [
            b["ms_per_image"] / m["ms_per_image"]
            for b, m in zip(base, per_round[name], strict=True)
        ]
        figures["vs_insightface"] = statistics.median(ratios)
        figures["best_ms_per_image"] = min(m["ms_per_image"] for m in per_round[name])
    stages = stage_split(settings, args.threads, blobs)
    memory = memory_peak(settings, args.threads)
    alone = stages_alone(settings, photos, args.rounds, args.stage_threads)
    figures = {
        "machine": info,
        "photos": PHOTOS,
        "threads": args.threads,
        "rounds": args.rounds,
        "passes": args.passes,
        "summary": summary,
        "per_round": per_round,
        "stages_ms_per_image": stages,
        "detection_ms_per_image": alone["detection"],
        "recognition_ms_per_face": alone["recognition"],
        "memory_40mpx_batch": memory,
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    }
    if quiet:
        print(json.dumps(common.rounded(figures)))
        return
    report(figures)
    common.emit_json("model_path", figures)


def stage_split(settings: Settings, threads: int, blobs: list[bytes]) -> dict[str, Any]:
    """last_timings of the facestream path, per image (median of 5 calls)."""
    model = facestream_model(settings, threads)
    out = {}
    for size in (1, 8):
        calls = []
        for _ in range(5):
            total = {"decode": 0.0, "detect": 0.0, "embed": 0.0}
            for start in range(0, len(blobs), size):
                model.analyze_bytes(blobs[start : start + size], settings.limits)
                for k, v in model.last_timings.items():
                    total[k] += v
            calls.append(total)
        out[f"b{size}"] = {
            k: statistics.median(c[k] for c in calls) / len(blobs) * 1e3 for k in total
        }
    return out


def large_jpeg(settings: Settings) -> bytes:
    """A photo pasted on a smooth canvas just under the pixel limit (40 Mpx by default)."""
    width = 7680
    height = settings.limits.max_pixels // width
    y, x = np.mgrid[0:height, 0:width]
    canvas = np.stack(
        [x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1
    ).astype(np.uint8)
    del x, y
    face = cv2.imdecode(np.frombuffer(common.sample_photos(["obama.jpg"])[0][1], np.uint8), 1)
    canvas[100 : 100 + face.shape[0], 100 : 100 + face.shape[1]] = face
    return cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()


class RssPeak:
    """The process's peak RSS above its level at entry, sampled every 5 ms meanwhile."""

    def __init__(self, process: Any) -> None:
        self.process, self.above = process, 0
        self._done = threading.Event()

    def _watch(self, base: int) -> None:
        while not self._done.wait(0.005):
            self.above = max(self.above, self.process.memory_info().rss - base)

    def __enter__(self) -> RssPeak:
        self._thread = threading.Thread(
            target=self._watch, args=(self.process.memory_info().rss,), daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def memory_peak(settings: Settings, threads: int, images: int = 8) -> dict[str, Any]:
    """Peak RSS above the process's while analyze_bytes takes a batch of 40-Mpx images:
    with the default decode budget, and with none (every image decoded at once)."""
    import psutil

    blob = large_jpeg(settings)
    process = psutil.Process()
    out: dict[str, Any] = {"images": images, "megapixels": settings.limits.max_pixels / 1e6}
    for case, budget in (("budget", None), ("unbounded", 1 << 50)):
        model = facestream_model(settings, threads)
        if budget is not None:
            model.decode_budget_bytes, model.decode_threads = budget, images
        model.analyze_bytes([common.sample_photos(["t1.jpg"])[0][1]], settings.limits)
        rss = RssPeak(process)
        started = time.perf_counter()
        with rss:
            found = model.analyze_bytes([blob] * images, settings.limits)
        seconds = time.perf_counter() - started
        out[case] = {
            "decode_budget_mib": None if budget else model.decode_budget_bytes / 2**20,
            "decode_threads": model.decode_threads,
            "peak_rss_above_mib": rss.above / 2**20,
            "seconds": seconds,
            "faces": sum(len(r.faces) for r in found),
        }
        del model, found
    return out


def report(figures: dict[str, Any]) -> None:
    summary = figures["summary"]
    common.print_table(
        f"model path, {len(figures['photos'])} photos ({summary['insightface']['faces']} faces),"
        f" {figures['threads']} thread(s), median of {figures['rounds']} alternating rounds",
        [
            "path",
            "ms / image",
            "images/s",
            "faces/s",
            "CPU ms / image",
            "speed vs insightface (median of round ratios)",
            "best round ms / image",
            "faces",
            "foreign load (cores)",
        ],
        [
            [
                name,
                f["ms_per_image"],
                f["images_per_s"],
                f["faces_per_s"],
                f["cpu_ms_per_image"],
                f["vs_insightface"],
                f["best_ms_per_image"],
                f["faces"],
                f["foreign_load_cores"],
            ]
            for name, f in summary.items()
        ],
    )
    common.print_table(
        "each round, ms per image",
        ["round", *summary],
        [
            [i + 1, *(figures["per_round"][name][i]["ms_per_image"] for name in summary)]
            for i in range(figures["rounds"])
        ],
    )
    common.print_table(
        "facestream stages (last_timings), ms per image, median of 5",
        ["batch", "decode", "detect", "embed (align, quality, recogniser)"],
        [
            [k, v["decode"], v["detect"], v["embed"]]
            for k, v in figures["stages_ms_per_image"].items()
        ],
    )
    common.print_table(
        "detection only, 8 photos: per image vs one batched call (ms per image)",
        [
            "threads",
            "per image median",
            "batched median",
            "per image min",
            "batched min",
            "foreign load",
        ],
        [
            [
                t,
                d["per image"]["median_ms"],
                d["batched"]["median_ms"],
                d["per image"]["min_ms"],
                d["batched"]["min_ms"],
                d["foreign_load_cores"],
            ]
            for t, d in figures["detection_ms_per_image"].items()
        ],
    )
    memory = figures["memory_40mpx_batch"]
    common.print_table(
        f"memory: one batch of {memory['images']} images of {memory['megapixels']:.0f} Mpx",
        ["decoding", "budget MiB", "decode threads", "peak RSS above MiB", "seconds", "faces"],
        [
            [
                case,
                "none" if m["decode_budget_mib"] is None else m["decode_budget_mib"],
                m["decode_threads"],
                m["peak_rss_above_mib"],
                m["seconds"],
                m["faces"],
            ]
            for case in ("budget", "unbounded")
            if (m := memory[case])
        ],
    )
    sizes = ("batch 1", "batch 8", "batch 32")
    common.print_table(
        "recognition only, 32 aligned crops, ms per face (median / min)",
        ["threads", *sizes, "foreign load"],
        [
            [
                t,
                *(f"{d[s]['median_ms']:.1f} / {d[s]['min_ms']:.1f}" for s in sizes),
                d["foreign_load_cores"],
            ]
            for t, d in figures["recognition_ms_per_face"].items()
        ],
    )


if __name__ == "__main__":
    main()
