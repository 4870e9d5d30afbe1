"""Quality gates and the search plan: which faces are searched, and where results go."""

from __future__ import annotations

import numpy as np
import pytest

from core.decisions import Decision, SearchPlan, face_record
from core.faces import Candidate, DetectedFace, ImageFaces
from core.quality import FaceQuality, assess, measure
from core.settings import QualityGates

GATES = QualityGates(min_face_px=24, min_det_score=0.5, min_sharpness=40, max_abs_yaw=0.7)
GOOD = FaceQuality(size=100, sharpness=300, yaw=0.1)


@pytest.mark.parametrize(
    ("quality", "score", "reasons"),
    [
        (GOOD, 0.9, []),
        (FaceQuality(20, 300, 0.0), 0.9, ["small_face"]),
        (GOOD, 0.3, ["low_det_score"]),
        (FaceQuality(100, 10, 0.0), 0.9, ["blurry"]),
        (FaceQuality(100, 300, -0.9), 0.9, ["extreme_pose"]),
        (FaceQuality(10, 5, 1.2), 0.1, ["small_face", "low_det_score", "blurry", "extreme_pose"]),
    ],
)
def test_assess_names_every_failed_gate(quality: FaceQuality, score: float, reasons: list) -> None:
    assert assess(quality, score, GATES) == reasons


def test_measure_sees_blur_and_yaw() -> None:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    flat = np.full((112, 112, 3), 128, np.uint8)
    frontal = np.array([[38, 51], [73, 51], [56, 71], [41, 92], [70, 92]], np.float32)
    turned = frontal.copy()
    turned[2, 0] += 30  # nose far to the side: a profile
    a = measure(sharp, frontal, [0, 0, 50, 80])
    b = measure(flat, turned, [0, 0, 50, 80])
    assert a.sharpness > 1000 > b.sharpness == 0
    assert abs(a.yaw) < 0.05 and b.yaw > 0.8 and a.size == 50


def face(quality: FaceQuality, score: float = 0.9) -> DetectedFace:
    return DetectedFace([0, 0, 10, 10], [[0, 0]] * 5, score, quality)


def test_plan_searches_only_accepted_faces_and_spreads_results_back() -> None:
    bad = FaceQuality(5, 300, 0.0)
    images = [
        ImageFaces([face(GOOD), face(bad)], np.array([[1, 0], [2, 0]], np.float32)),
        ImageFaces([], np.zeros((0, 2), np.float32)),
        ImageFaces([face(GOOD)], np.array([[3, 0]], np.float32)),
    ]
    plan = SearchPlan.of(images, GATES, dim=2)
    assert plan.embeddings[:, 0].tolist() == [1, 3]
    found = [[Candidate("a", 0.9)], [Candidate("c", 0.8)]]
    assert plan.candidates(found) == [[found[0], []], [], [found[1]]]
    assert plan.reasons == [[[], ["small_face"]], [], [[]]]


def test_rejected_face_record_is_never_a_match() -> None:
    record = face_record(face(GOOD), [Candidate("x", 0.99)], Decision("m", 0.4, 0.3), ["blurry"])
    assert record["decision"] == "rejected" and record["reasons"] == ["blurry"]
    assert record["identity"] is None and record["candidates"] == []
    assert record["quality"] == {
        "size": 100,
        "sharpness": 300,
        "yaw": 0.1,
        "pitch": 0.0,
        "roll": 0.0,
    }
