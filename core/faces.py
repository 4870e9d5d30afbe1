"""The data every layer shares about faces: what a model found, what a gallery answered."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from core.quality import FaceQuality


@dataclass
class DetectedFace:
    bbox: list[float]  # x1, y1, x2, y2 in pixels of the (orientation-corrected) image
    landmarks: list[list[float]]  # 5 points: eyes, nose, mouth corners
    det_score: float
    quality: FaceQuality | None = None  # set by analyze(), from the aligned crop


@dataclass
class ImageFaces:
    """Every face of one image, with their L2-normalised embeddings (n, dim) float32."""

    faces: list[DetectedFace] = field(default_factory=list)
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 512), np.float32))


@dataclass(frozen=True)
class Candidate:
    """One enrolled identity and its best similarity to a searched face."""

    identity: str
    similarity: float
