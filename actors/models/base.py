"""What every face model runtime provides: detection + one embedding per face.

``analyze_bytes`` runs a batch through the model path, with bounded memory:

1. decode, in a bounded thread pool (OpenCV and Pillow release the GIL): the images of a
   chunk decode in parallel, and the next chunk decodes while this one is in the model;
2. detect, one chunk at a time when the runtime detects in batches (``detect_many`` in one
   detector call), else each image as soon as it is decoded (the next ones decode
   meanwhile); then align each face and measure its quality; an image's pixels are
   dropped once its faces are aligned, only the small aligned crops stay;
3. embed every face of the batch, in recogniser calls of at most ``max_embed_batch`` crops.

Up to ``compute_threads`` model calls run at once (onnxruntime releases the GIL and its
sessions take concurrent calls): the detector on different images of a batch, the
recogniser on different faces. On CPU, where each call runs on ``intra_op_threads``, a
crowd photo's faces then also use a core that the other replicas leave idle (the sample
photos one at a time, 2 calls at once on 2 cores: 1.2x faster at the same CPU per image,
bench/model_path.py); under full load the calls share the cores and cost what they cost
one after another. Results do not depend on it.

Chunks hold at most ``max_chunk_images`` images whose decoded pixels (read from the headers
before decoding) stay under half of ``decode_budget_bytes``, and the next chunk is decoded
ahead only when both fit in the budget, so the decoded pixels a batch holds at once stay
under ``decode_budget_bytes`` (``model.decode_budget_mib``, 256 MiB by default; an image
larger than half of it is decoded alone). A batch of eight 40-Mpx images (120 MB each
decoded) holds at most two of them at a time: 240 MB, not 960 MB. A decode in flight needs
about as much again while it runs (OpenCV's JPEG decoder), so such a batch peaked ~0.4-0.45
GiB above the process's resting memory, against ~1.5 GiB with every image decoded at once
(bench/model_path.py).
"""

from __future__ import annotations

import io
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from core.faces import DetectedFace, ImageFaces
from core.formats import FORMATS
from core.imaging import ImageRejected, decode_image
from core.quality import measure
from core.settings import ImageLimits

Detections = tuple[list[DetectedFace], np.ndarray]  # faces of one image, (n, 5, 2) landmarks
Decoded = tuple[np.ndarray | ImageRejected, float]  # pixels or the rejection, seconds taken
# Each image's faces and their aligned crops, then the seconds spent detecting and aligning.
Placed = tuple[list[tuple[list[DetectedFace], list[np.ndarray]]], float, float]

_POOL_LOCK = threading.Lock()
T = TypeVar("T")


class FaceModel(ABC):
    model_id: str
    embedding_dim: int
    providers: list[str]  # execution providers actually in use
    det_size: int = 640  # the detector's input square, in pixels

    # Threads decoding the images of a batch (0: in the calling thread, one after the other;
    # a batch of one image is always decoded in the calling thread). The runtimes set this
    # and decode_budget_bytes from model.decode_threads and model.decode_budget_mib.
    decode_threads: int = 2
    # Model calls run at once (see the module doc; 1: one after another in the calling
    # thread). The runtimes set it from model.compute_threads.
    compute_threads: int = 1
    # Decoded pixels one analyze_bytes() call holds at once, at most (see the module doc).
    decode_budget_bytes: int = 256 * 2**20
    # Images detected together (one detector call for runtimes that batch detection).
    max_chunk_images: int = 16
    # Aligned crops per recogniser call: bounds its input (150 KB a crop) and activations.
    max_embed_batch: int = 64

    @abstractmethod
    def detect(self, image_bgr: np.ndarray) -> Detections:
        """Faces of one image and their landmarks as an (n, 5, 2) array."""

    def detect_many(self, images_bgr: list[np.ndarray]) -> list[Detections]:
        """``detect`` for each image; a runtime may detect them in one batched call."""
        return [self.detect(img) for img in images_bgr]

    @property
    def detects_in_batches(self) -> bool:
        """Whether ``detect_many`` runs a chunk in one call. If not, analyze_bytes detects
        each image as soon as it is decoded, while the next ones decode."""
        return False

    @abstractmethod
    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings for aligned crops, in one batched call."""

    def pose_landmarks(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The landmarks to read the pose from (a runtime may refine tilted faces')."""
        return landmarks

    @abstractmethod
    def align(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The aligned crop the recogniser expects for one face."""

    # Seconds spent in each stage by the last analyze_bytes() call (for metrics): ``decode``
    # is the decoding work summed over the decode threads (it overlaps the model when the
    # next chunk decodes ahead); ``detect`` the detector calls; ``embed`` alignment, quality
    # and the recogniser calls. analyze() records ``detect`` and ``embed`` only.
    last_timings: dict[str, float]

    def analyze(self, images_bgr: list[np.ndarray]) -> list[ImageFaces]:
        """Detect (``detect_many``), then embed every face of every image together."""
        placed, detect_s, align_s = self._detect_and_align(images_bgr)
        timings = {"detect": detect_s, "embed": align_s}
        embeddings = self._embed([c for _, crops in placed for c in crops], timings)
        self.last_timings = timings
        return _split([faces for faces, _ in placed], embeddings)

    def analyze_bytes(
        self, blobs: list[bytes], limits: ImageLimits
    ) -> list[ImageFaces | ImageRejected]:
        """Decode each image (a bad one yields its rejection, in its place), then detect in
        chunks and embed every face of the batch together (see the module doc)."""
        timings = {"decode": 0.0, "detect": 0.0, "embed": 0.0}
        slots: list[list[DetectedFace] | ImageRejected | None] = [None] * len(blobs)
        crops: list[np.ndarray] = []
        sizes = [decoded_bytes(blob, limits) for blob in blobs]
        chunks = plan_chunks(sizes, self.decode_budget_bytes // 2, self.max_chunk_images)
        # A lone image has nothing to overlap with: decoded here, without a thread hop (which
        # cost ~3-5% per image in bench/model_path.py's batch of 1).
        pool = self._pool("decode", self.decode_threads) if len(blobs) > 1 else None
        compute = self._compute_pool() if len(blobs) > 1 else None

        def start(chunk: list[int]) -> deque[Future[Decoded]]:
            return deque(_submit(pool, _decode, blobs[i], limits, self.det_size) for i in chunk)

        ahead = start(chunks[0]) if chunks else deque()
        for k, chunk in enumerate(chunks):
            current, ahead = ahead, deque()
            following = chunks[k + 1] if k + 1 < len(chunks) else []
            held = sum(sizes[i] for i in (*chunk, *following))
            if following and pool is not None and held <= self.decode_budget_bytes:
                ahead = start(following)  # decodes while this chunk is in the model
            images: list[np.ndarray] = []
            where: list[int] = []
            placing: list[tuple[list[int], Future[Placed]]] = []
            for i in chunk:
                # Popped, so that a future does not keep its pixels once they are placed.
                result, seconds = current.popleft().result()
                timings["decode"] += seconds
                if isinstance(result, ImageRejected):
                    slots[i] = result
                elif self.detects_in_batches:
                    images.append(result)
                    where.append(i)
                else:  # now, while the next images decode
                    placing.append(([i], _submit(compute, self._detect_and_align, [result])))
                del result
            if images:
                placing.append((where, _submit(compute, self._detect_and_align, images)))
                del images
            # The chunk's pixels are dropped here, before the next chunk decodes ahead: only
            # the small aligned crops stay.
            for indices, placed in placing:
                found, detect_s, align_s = placed.result()
                timings["detect"] += detect_s
                timings["embed"] += align_s
                for i, (faces, image_crops) in zip(indices, found, strict=True):
                    slots[i] = faces
                    crops.extend(image_crops)
            del placing
            if following and not ahead:
                ahead = start(following)
        embeddings = iter(
            _split([s for s in slots if isinstance(s, list)], self._embed(crops, timings))
        )
        self.last_timings = timings
        return [s if isinstance(s, ImageRejected) else next(embeddings) for s in slots]

    def _detect_and_align(self, images: list[np.ndarray]) -> Placed:
        """Faces of each image with their quality and aligned crops; the seconds spent
        detecting, then aligning (returned, not added up here: it runs in pool threads)."""
        started = time.perf_counter()
        detections = self.detect_many(images) if images else []
        detected = time.perf_counter()
        found = []
        for img, (faces, all_kps) in zip(images, detections, strict=True):
            crops = []
            for face, kps in zip(faces, all_kps, strict=True):
                crop = self.align(img, kps)
                face.quality = measure(crop, self.pose_landmarks(img, kps), face.bbox)
                crops.append(crop)
            found.append((faces, crops))
        return found, detected - started, time.perf_counter() - detected

    def _embed(self, crops: list[np.ndarray], timings: dict[str, float]) -> np.ndarray:
        started = time.perf_counter()
        step = max(1, self.max_embed_batch)
        calls = [crops[i : i + step] for i in range(0, len(crops), step)]
        pool = self._compute_pool() if len(calls) > 1 else None
        parts = list(pool.map(self.embed_crops, calls) if pool else map(self.embed_crops, calls))
        embeddings = (
            np.concatenate(parts) if parts else np.zeros((0, self.embedding_dim), np.float32)
        )
        timings["embed"] += time.perf_counter() - started
        return embeddings

    def _compute_pool(self) -> ThreadPoolExecutor | None:
        # One thread is the calling one: no pool, no thread hop.
        return self._pool("compute", self.compute_threads) if self.compute_threads > 1 else None

    def _pool(self, kind: str, threads: int) -> ThreadPoolExecutor | None:
        """This model's pool of ``threads`` threads for ``kind`` of work (None for 0),
        made on first use and again when resized."""
        if threads <= 0:
            return None
        with _POOL_LOCK:
            pools: dict[str, tuple[int, ThreadPoolExecutor]] = self.__dict__.setdefault(
                "_pools", {}
            )
            size, pool = pools.get(kind, (0, None))
            if pool is None or size != threads:
                if pool is not None:
                    pool.shutdown(wait=False)
                pool = ThreadPoolExecutor(threads, thread_name_prefix=kind)
                pools[kind] = (threads, pool)
        return pool


def decoded_bytes(blob: bytes, limits: ImageLimits) -> int:
    """What ``blob`` decodes to (BGR, one byte per channel), read from its header; 0 for an
    input that decode_image rejects before decoding any pixel."""
    if not blob or len(blob) > limits.max_bytes:
        return 0
    try:
        with Image.open(io.BytesIO(blob), formats=FORMATS) as img:
            width, height = img.size
    except Exception:  # only an estimate: decode_image names the problem
        return 0
    return 0 if width * height > limits.max_pixels else width * height * 3


def plan_chunks(sizes: Sequence[int], budget: int, max_images: int) -> list[list[int]]:
    """Consecutive indices, in order, at most ``max_images`` a chunk, whose sizes sum to at
    most ``budget`` (an item larger than that alone in its chunk)."""
    chunks: list[list[int]] = []
    held = 0
    for i, size in enumerate(sizes):
        if chunks and len(chunks[-1]) < max(1, max_images) and held + size <= budget:
            chunks[-1].append(i)
            held += size
        else:
            chunks.append([i])
            held = size
    return chunks


def _decode(blob: bytes, limits: ImageLimits, det_size: int) -> Decoded:
    started = time.perf_counter()
    try:
        result: np.ndarray | ImageRejected = decode_image(blob, limits, det_size)
    except ImageRejected as rejected:
        result = rejected
    return result, time.perf_counter() - started


def _submit(pool: ThreadPoolExecutor | None, work: Callable[..., T], *args: Any) -> Future[T]:
    """``work(*args)`` in ``pool``, or here and now without one."""
    if pool is not None:
        return pool.submit(work, *args)
    done: Future[T] = Future()
    try:
        done.set_result(work(*args))
    except Exception as exc:
        done.set_exception(exc)
    return done


def _split(found: list[list[DetectedFace]], embeddings: np.ndarray) -> list[ImageFaces]:
    out, start = [], 0
    for faces in found:
        out.append(ImageFaces(faces, embeddings[start : start + len(faces)]))
        start += len(faces)
    return out
