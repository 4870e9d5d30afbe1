"""Face quality: measured once per face on the compute side, judged against gates anywhere.

Tiny, blurred and profile faces are the usual source of false matches, so a face that fails
a gate is reported with its reasons and never searched. Measures:

- ``size``: the shorter side of the detection box, in pixels;
- ``sharpness``: variance of the Laplacian of the aligned 112x112 grey crop (blur and
  upscaled tiny faces both score low; sharp frontal photos score in the hundreds);
- ``roll``: the tilt of the eye line in the image, in degrees (a head tilted in the image
  plane; it never fails a gate: the aligned crop undoes it);
- ``yaw``: horizontal offset of the nose from the eyes' midpoint, in inter-ocular distances,
  measured in the face's own frame (roll removed first), so a tilted frontal face reads 0
  (about 0.7 and beyond is a profile);
- ``pitch``: vertical position of the nose between the eye line and the mouth line, in the
  face's frame, relative to a frontal face's (0 frontal; positive: looking down).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


class FaceReason:
    """Stable reason codes of a rejected face (documented in the README)."""

    SMALL = "small_face"
    LOW_SCORE = "low_det_score"
    BLURRY = "blurry"
    POSE = "extreme_pose"


# Where the nose sits between the eye line (0) and the mouth line (1) on a frontal face:
# the reference five-point template insightface aligns to (ArcFace's 112x112 landmarks).
FRONTAL_NOSE_DEPTH = (71.7366 - 51.6963) / (92.2041 - 51.6963)


@dataclass(frozen=True)
class FaceQuality:
    size: float
    sharpness: float
    yaw: float
    pitch: float = 0.0
    roll: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def measure(crop_bgr: np.ndarray, landmarks: np.ndarray, bbox: list[float]) -> FaceQuality:
    import cv2  # here: the gallery's readers import this module's FaceQuality, not OpenCV

    gray = cv2.cvtColor(crop_bgr, cv2.COLOR_BGR2GRAY)
    sharpness = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    yaw, pitch, roll = pose(landmarks)
    size = min(bbox[2] - bbox[0], bbox[3] - bbox[1])
    return FaceQuality(
        round(size, 1), round(sharpness, 1), round(yaw, 3), round(pitch, 3), round(roll, 1)
    )


def pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) from five landmarks (eyes, nose, mouth corners), with the roll
    removed before yaw and pitch are read: a rotation in the image plane changes roll only."""
    points = np.asarray(landmarks, np.float64)
    left_eye, right_eye = points[0], points[1]
    eye_vector = right_eye - left_eye
    inter_ocular = float(np.hypot(*eye_vector)) or 1.0
    roll = float(np.arctan2(eye_vector[1], eye_vector[0]))
    # Into the face's frame: eye midpoint at the origin, eye line along +x.
    c, s = np.cos(-roll), np.sin(-roll)
    upright = (points - (left_eye + right_eye) / 2) @ np.array([[c, s], [-s, c]])
    nose, mouth = upright[2], (upright[3] + upright[4]) / 2
    yaw = float(nose[0]) / inter_ocular
    mouth_depth = float(mouth[1]) or 1.0
    pitch = float(nose[1]) / mouth_depth - FRONTAL_NOSE_DEPTH
    return yaw, pitch, float(np.degrees(roll))


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
