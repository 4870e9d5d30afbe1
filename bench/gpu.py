"""The models on an NVIDIA GPU: images/s and faces/s over batch sizes, per runtime option.

    python -m bench.gpu [--batches 1 8 32 64] [--seconds 2] [--variants cuda tensorrt-fp16]

Needs onnxruntime's CUDAExecutionProvider (the ``onnxruntime-gpu`` wheel, a CUDA and cuDNN
runtime, an NVIDIA GPU). Without a working one it prints ``no GPU: <why>`` and exits 0.

For each runtime option (a "variant") and each batch size it measures, on the sample photos
cycled to the batch size:

- detection: ``InsightFaceOnnx.detect_many`` (batched detection: one SCRFD call for the
  batch, each image letterboxed to det_size), images/s and faces/s;
- recognition: ``embed_crops`` on that many aligned crops in one call, faces/s;
- the whole model path: ``FaceModel.analyze_bytes`` from the JPEG bytes (decode, detect in
  chunks of ``max_chunk_images``, align, quality, embed), images/s and faces/s, with the
  default decode threads and with one decode thread per core;
- GPU utilisation during each measurement (``nvidia-smi`` sampled every 100 ms: mean and
  max %, memory used), when nvidia-smi is on the PATH.

Variants (each one only where onnxruntime offers its provider; a variant that fails to start
is reported with its error and skipped):

- ``cuda``: CUDAExecutionProvider, fp32, onnxruntime's defaults (cuDNN exhaustive
  convolution search, a BFC memory arena).
- ``cuda-fp16``: the same provider on fp16 copies of the two models, converted with
  ``onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)``
  (inputs and outputs stay fp32, so the pre- and post-processing is unchanged); the
  embeddings' cosine to fp32's is reported, since fp16 must not cost accuracy.
- ``tensorrt``: TensorrtExecutionProvider (falling back to CUDA for unsupported nodes),
  fp32, with its engine and timing caches in a temporary folder
  (``trt_engine_cache_enable``, ``trt_timing_cache_enable``). The graphs have a dynamic
  batch axis, so each model is warmed at the largest batch and then at one image: the
  engine's profile then covers every batch between (one rebuild, not one per new size).
- ``tensorrt-fp16``: the same with ``trt_fp16_enable`` (TensorRT picks fp16 kernels where
  they are faster; inputs stay fp32).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench import common
from bench.model_path import PHOTOS
from core.settings import Settings

VARIANTS = ("cuda", "cuda-fp16", "tensorrt", "tensorrt-fp16")
CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def gpu_missing() -> str | None:
    """Why the CUDA provider cannot run here, or None when it can."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if CUDA not in available:
        return (
            f"onnxruntime {onnxruntime.__version__} offers no {CUDA} (it has "
            f"{', '.join(available)}); install onnxruntime-gpu on a machine with an NVIDIA GPU"
        )
    try:
        from actors.models.packs import resolve_pack

        settings = Settings()
        pack = resolve_pack(settings.model.folder, settings.cache_dir)
        any_model = pack.folder / sorted(pack.checksums)[0]
        session = onnxruntime.InferenceSession(str(any_model), providers=[CUDA, CPU])
    except Exception as exc:  # a broken CUDA install raises anything
        return f"{CUDA} failed to start: {exc}"
    if session.get_providers()[0] != CUDA:
        return f"{CUDA} is offered but a session fell back to {session.get_providers()[0]}"
    return None


class GpuSampler:
    """nvidia-smi utilisation and memory, sampled in the background while active."""

    def __init__(self) -> None:
        self.tool = shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _query(self) -> tuple[float, float] | None:
        assert self.tool
        try:
            out = subprocess.run(
                [
                    self.tool,
                    "--query-gpu=utilization.gpu,memory.used",
                    "--format=csv,noheader,nounits",
                    "--id=0",
                ],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            util, mem = (float(v) for v in out.splitlines()[0].split(","))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None
        return util, mem

    def _run(self) -> None:
        while not self._stop.is_set():
            if (sample := self._query()) is not None:
                self.samples.append(sample)
            self._stop.wait(0.1)

    @contextlib.contextmanager
    def during(self) -> Iterator[dict[str, Any]]:
        report: dict[str, Any] = {}
        if not self.tool:
            yield report
            return
        self.samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        try:
            yield report
        finally:
            self._stop.set()
            self._thread.join()
            if self.samples:
                utils = [u for u, _ in self.samples]
                report.update(
                    gpu_util_mean=statistics.fmean(utils),
                    gpu_util_max=max(utils),
                    gpu_mem_mib=max(m for _, m in self.samples),
                )

    def describe(self) -> str:
        if not self.tool:
            return "nvidia-smi not found: no utilisation figures"
        try:
            return subprocess.run(
                [self.tool, "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            return f"nvidia-smi failed: {exc}"


def fp16_pack(pack: Any, folder: Path) -> Any:
    """fp16 copies of the pack's models (inputs and outputs kept fp32)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from actors.models.packs import resolve_pack

    folder.mkdir(parents=True, exist_ok=True)
    for name in pack.checksums:
        model = onnx.load(str(pack.folder / name))
        onnx.save(convert_float_to_float16(model, keep_io_types=True), str(folder / name))
    return resolve_pack(folder, folder.parent)


def load_variant(variant: str, work: Path, on_cpu: bool = False) -> Any:
    import onnxruntime

    from actors.models.insightface_onnx import InsightFaceOnnx
    from actors.models.packs import resolve_pack

    settings = Settings()
    pack = resolve_pack(settings.model.folder, settings.cache_dir)
    options: list[dict[str, Any]] | None = None
    if variant.startswith("tensorrt"):
        if TRT not in onnxruntime.get_available_providers():
            raise RuntimeError(f"onnxruntime offers no {TRT}")
        providers = [TRT, CUDA, CPU]
        cache = work / f"trt-{variant}"
        cache.mkdir(parents=True, exist_ok=True)
        trt = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": variant.endswith("fp16"),
        }
        options = [trt, {}, {}]
    else:
        providers = [CPU] if on_cpu else [CUDA, CPU]
        if variant == "cuda-fp16":
            pack = fp16_pack(pack, work / "fp16" / "buffalo_s_fp16")
    model_settings = settings.model.model_copy(update={"providers": providers})
    model = InsightFaceOnnx(pack, model_settings, batched_detection=True, provider_options=options)
    actual = model.detector.session.get_providers()[0], model.providers[0]
    if actual[0] != providers[0] or actual[1] != providers[0]:
        raise RuntimeError(f"asked for {providers[0]}, the sessions run on {actual}")
    return model


def timed(call: Callable[[], Any], seconds: float) -> float:
    """Median seconds per call, over at least 5 calls and ``seconds`` of wall time."""
    call()
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < deadline:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def cycled(items: Sequence[Any], n: int) -> list[Any]:
    return [items[i % len(items)] for i in range(n)]


def measure_variant(
    model: Any,
    blobs: list[bytes],
    images: list[np.ndarray],
    crops: list[np.ndarray],
    batches: Sequence[int],
    seconds: float,
    sampler: GpuSampler,
) -> list[dict[str, Any]]:
    limits = Settings().limits
    # Warm at the largest batch, then at one (TensorRT's profile then spans them all).
    for n in (max(batches), 1):
        model.detect_many(cycled(images, n))
        model.embed_crops(cycled(crops, n))
    rows = []
    default_threads = model.decode_threads
    for n in batches:
        batch_images, batch_crops, batch_blobs = (
            cycled(images, n),
            cycled(crops, n),
            cycled(blobs, n),
        )
        faces = sum(len(f) for f, _ in model.detect_many(batch_images))
        runs: list[tuple[str, Callable[[], Any], int, int]] = [
            ("detection", lambda i=batch_images: model.detect_many(i), n, faces),
            ("recognition", lambda c=batch_crops: model.embed_crops(c), 0, n),
        ]
        for threads in dict.fromkeys((default_threads, os.cpu_count() or 1)):

            def path(b: list[bytes] = batch_blobs, t: int = threads) -> Any:
                model.decode_threads = t
                return model.analyze_bytes(b, limits)

            runs.append((f"model path, {threads} decode threads", path, n, faces))
        for stage, call, n_images, n_faces in runs:
            with sampler.during() as gpu:
                per_call = timed(call, seconds)
            rows.append(
                {
                    "stage": stage,
                    "batch": n,
                    "ms_per_call": per_call * 1e3,
                    "images_per_s": n_images / per_call if n_images else None,
                    "faces_per_s": n_faces / per_call,
                    **gpu,
                }
            )
    model.decode_threads = default_threads
    return rows


def fp16_agreement(model: Any, reference: Any, crops: list[np.ndarray]) -> float:
    """The smallest cosine between this model's embeddings and the reference's."""
    ours, theirs = model.embed_crops(crops), reference.embed_crops(crops)
    return float(np.min(np.sum(ours * theirs, axis=1)))


def main(argv: Sequence[str] | None = None) -> None:
    parser = common.bench_parser(__doc__)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json", action="store_true", help="print only the JSON figures")
    parser.add_argument(
        "--check-on-cpu",
        action="store_true",
        help="run the cuda variants on the CPU provider: checks this script where no GPU is;"
        " its figures say nothing about a GPU",
    )
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)

    why = None if args.check_on_cpu else gpu_missing()
    if why is not None:
        print(f"no GPU: {why}", file=sys.stderr if args.json else sys.stdout)
        if args.json:
            print(json.dumps({"bench": "gpu", "gpu": False, "reason": why}))
        sys.exit(0)

    from core.imaging import decode_image

    info = common.machine() if args.json else common.describe_machine()
    sampler = GpuSampler()
    info["gpu"] = sampler.describe()
    photos = common.sample_photos(PHOTOS)
    blobs = [blob for _, blob in photos]
    images = [decode_image(blob, Settings().limits) for blob in blobs]
    figures: dict[str, Any] = {
        "machine": info,
        "photos": PHOTOS,
        "checked_on_cpu": args.check_on_cpu,
        "variants": {},
    }
    reference = None
    crops: list[np.ndarray] = []
    with tempfile.TemporaryDirectory(prefix="facestream-gpu-") as tmp:
        for variant in args.variants:
            if not args.json:
                common.log(f"{variant}: loading")
            try:
                model = load_variant(variant, Path(tmp), on_cpu=args.check_on_cpu)
            except Exception as exc:  # an option this onnxruntime build or GPU lacks
                figures["variants"][variant] = {"error": f"{type(exc).__name__}: {exc}"}
                if not args.json:
                    common.log(f"{variant}: skipped: {exc}")
                continue
            if not crops:
                crops = [model.align(img, kps) for img in images for kps in model.detect(img)[1]]
            entry: dict[str, Any] = {
                "providers": model.providers,
                "rows": measure_variant(
                    model, blobs, images, crops, args.batches, args.seconds, sampler
                ),
            }
            if reference is None and variant == "cuda":
                reference = model
            elif reference is not None:
                entry["min_cosine_to_cuda_fp32"] = fp16_agreement(model, reference, crops)
            figures["variants"][variant] = entry
            if not args.json:
                report(variant, entry)
    if args.json:
        print(json.dumps(common.rounded(figures)))
    else:
        common.emit_json("gpu", figures)


def report(variant: str, entry: dict[str, Any]) -> None:
    title = f"{variant} ({', '.join(entry['providers'])})"
    if "min_cosine_to_cuda_fp32" in entry:
        title += f", embeddings' min cosine to cuda fp32: {entry['min_cosine_to_cuda_fp32']:.5f}"
    common.print_table(
        title,
        ["stage", "batch", "ms / call", "images/s", "faces/s", "GPU util mean %", "max %", "MiB"],
        [
            [
                r["stage"],
                r["batch"],
                r["ms_per_call"],
                "" if r["images_per_s"] is None else r["images_per_s"],
                r["faces_per_s"],
                r.get("gpu_util_mean", "n/a"),
                r.get("gpu_util_max", "n/a"),
                r.get("gpu_mem_mib", "n/a"),
            ]
            for r in entry["rows"]
        ],
    )


if __name__ == "__main__":
    main()
