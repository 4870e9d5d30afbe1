"""What every face model runtime provides: detection + one embedding per face."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from core.faces import DetectedFace, ImageFaces
from core.imaging import ImageRejected, decode_image
from core.quality import measure
from core.settings import ImageLimits


class FaceModel(ABC):
    model_id: str
    embedding_dim: int
    providers: list[str]  # execution providers actually in use
    det_size: int = 640  # the detector's input square, in pixels

    @abstractmethod
    def detect(self, image_bgr: np.ndarray) -> tuple[list[DetectedFace], np.ndarray]:
        """Faces of one image and their landmarks as an (n, 5, 2) array."""

    @abstractmethod
    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings for aligned crops, in one batched call."""

    def pose_landmarks(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The landmarks to read the pose from (a runtime may refine tilted faces')."""
        return landmarks

    @abstractmethod
    def align(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """The aligned crop the recogniser expects for one face."""

    # Seconds spent in each stage by the last analyze_bytes() call (for metrics).
    last_timings: dict[str, float]

    def analyze(self, images_bgr: list[np.ndarray]) -> list[ImageFaces]:
        """Detect per image, then embed every face of every image in one batch."""
        started = time.perf_counter()
        detections = [self.detect(img) for img in images_bgr]
        detected = time.perf_counter()
        crops = []
        for img, (faces, all_kps) in zip(images_bgr, detections, strict=True):
            for face, kps in zip(faces, all_kps, strict=True):
                crop = self.align(img, kps)
                face.quality = measure(crop, self.pose_landmarks(img, kps), face.bbox)
                crops.append(crop)
        embeddings = (
            self.embed_crops(crops) if crops else np.zeros((0, self.embedding_dim), np.float32)
        )
        self.last_timings = {"detect": detected - started, "embed": time.perf_counter() - detected}
        out, start = [], 0
        for faces, _ in detections:
            out.append(ImageFaces(faces, embeddings[start : start + len(faces)]))
            start += len(faces)
        return out

    def analyze_bytes(
        self, blobs: list[bytes], limits: ImageLimits
    ) -> list[ImageFaces | ImageRejected]:
        """Decode each image (a bad one yields its rejection), then analyze the rest together."""
        started = time.perf_counter()
        decoded: list[np.ndarray | ImageRejected] = []
        for blob in blobs:
            try:
                decoded.append(decode_image(blob, limits, self.det_size))
            except ImageRejected as rejected:
                decoded.append(rejected)
        good = [d for d in decoded if isinstance(d, np.ndarray)]
        decode_s = time.perf_counter() - started
        results = iter(self.analyze(good))
        self.last_timings["decode"] = decode_s
        return [d if isinstance(d, ImageRejected) else next(results) for d in decoded]
