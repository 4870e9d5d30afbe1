"""Face quality: measured once per face on the compute side, judged against gates anywhere.

Tiny, blurred and profile faces are the usual source of false matches, so a face that fails
a gate is reported with its reasons and never searched. Measures:

- ``size``: the shorter side of the detection box, in pixels;
- ``sharpness``: variance of the Laplacian of the aligned 112x112 grey crop (blur and
  upscaled tiny faces both score low; sharp frontal photos score in the hundreds);
- ``yaw``: horizontal offset of the nose from the eyes' midpoint, in inter-ocular distances
  (0 frontal; about 0.7 and beyond is a profile).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np


class FaceReason:
    """Stable reason codes of a rejected face (documented in the README)."""

    SMALL = "small_face"
    LOW_SCORE = "low_det_score"
    BLURRY = "blurry"
    POSE = "extreme_pose"


@dataclass(frozen=True)
class FaceQuality:
    size: float
    sharpness: float
    yaw: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(crop_bgr: np.ndarray, landmarks: np.ndarray, bbox: list[float]) -> FaceQuality:
    gray = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    left_eye, right_eye, nose = landmarks[0], landmarks[1], landmarks[2]
    inter_ocular = float(np.linalg.norm(right_eye - left_eye)) or 1.0
    yaw = float(nose[0] - (left_eye[0] + right_eye[0]) / 2) / inter_ocular
    size = min(bbox[2] - bbox[0], bbox[3] - bbox[1])
    return FaceQuality(round(size, 1), round(sharpness, 1), round(yaw, 3))


def assess(quality: FaceQuality, det_score: float, gates: object) -> list[str]:
    """Reasons why a face fails ``gates`` (a ``core.settings.QualityGates``)."""
    reasons = []
    if quality.size < gates.min_face_px:
        reasons.append(FaceReason.SMALL)
    if det_score < gates.min_det_score:
        reasons.append(FaceReason.LOW_SCORE)
    if quality.sharpness < gates.min_sharpness:
        reasons.append(FaceReason.BLURRY)
    if abs(quality.yaw) > gates.max_abs_yaw:
        reasons.append(FaceReason.POSE)
    return reasons
