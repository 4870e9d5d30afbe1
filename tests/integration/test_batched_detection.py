"""Batched detection (one detector call for the images of a chunk, each letterboxed to
det_size) finds what the per-image path finds: insightface's own SCRFD.detect, one image at
a time. Same faces, boxes and landmarks within 1 px, embeddings at cosine >= 0.999."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.imaging import decode_image
from core.settings import Settings

pytestmark = pytest.mark.integration

PHOTOS = [
    "obama.jpg",
    "obama2.jpg",  # portrait: letterboxed on the right
    "obama3.jpg",  # 3.3 Mpx
    "biden.jpg",
    "biden2.jpg",
    "yaoming.jpg",
    "players.jpg",  # 22 faces
    "t1.jpg",  # landscape, 6 faces, two of them tilted
]


def batched_model(**model_overrides: object):
    from actors.models.insightface_onnx import InsightFaceOnnx
    from actors.models.packs import resolve_pack

    settings = Settings()
    pack = resolve_pack(settings.model.folder, settings.cache_dir)
    return InsightFaceOnnx(
        pack, settings.model.model_copy(update=model_overrides), batched_detection=True
    )


@pytest.fixture(scope="module")
def batched():
    model = batched_model()
    assert model.detects_in_batches
    return model


@pytest.fixture(scope="module")
def images(samples: Path) -> list[np.ndarray]:
    return [decode_image((samples / p).read_bytes(), Settings().limits) for p in PHOTOS]


def assert_same_faces(ours, theirs, photo: str) -> None:
    """``ours``: (faces, landmarks); ``theirs``: SCRFD.detect's (boxes, landmarks)."""
    faces, kpss = ours
    boxes, ref_kpss = theirs
    assert len(faces) == len(boxes) > 0, photo
    for face, kps in zip(faces, kpss, strict=True):
        # The reference face with the nearest box (the order may differ on tied scores).
        j = int(np.argmin(np.abs(boxes[:, :4] - np.asarray(face.bbox)).max(axis=1)))
        np.testing.assert_allclose(face.bbox, boxes[j, :4], atol=1.0, err_msg=photo)
        np.testing.assert_allclose(kps, ref_kpss[j], atol=1.0, err_msg=photo)
        np.testing.assert_allclose(face.landmarks, ref_kpss[j], atol=1.0, err_msg=photo)
        assert abs(face.det_score - float(boxes[j, 4])) < 1e-3, photo


def test_one_call_for_all_photos_equals_insightface_per_image(batched, images) -> None:
    found = batched.detect_many(images)
    assert len(found) == len(images)
    for photo, img, ours in zip(PHOTOS, images, found, strict=True):
        reference = batched.detector.detect(img, max_num=batched.settings.max_faces_per_image)
        assert_same_faces(ours, reference, photo)
    assert sum(len(f) for f, _ in found) == 34


def test_the_limit_of_faces_per_image_picks_the_same_faces(samples: Path, images) -> None:
    model = batched_model(max_faces_per_image=5)
    found = model.detect_many(images)
    for photo, img, ours in zip(PHOTOS, images, found, strict=True):
        reference = model.detector.detect(img, max_num=5)
        assert_same_faces(ours, reference, photo)
    assert [len(f) for f, _ in found] == [1, 1, 1, 1, 1, 1, 5, 5]


def test_an_image_without_faces_in_the_batch(batched, images) -> None:
    blank = np.full((480, 640, 3), 128, np.uint8)
    found = batched.detect_many([images[0], blank, images[-1]])
    assert [len(f) for f, _ in found] == [1, 0, 6]
    assert found[1][1].shape[0] == 0


def test_embeddings_equal_the_per_image_path(face_model, batched, samples: Path) -> None:
    """The whole path, batch of 8 with batched detection, against each photo alone on the
    per-image path (the default on CPU), rejections in between kept in their place."""
    assert not face_model.detects_in_batches  # the CPU default: one image per call
    limits = Settings().limits
    blobs = [(samples / p).read_bytes() for p in PHOTOS]
    mixed = [*blobs[:3], b"", *blobs[3:], b"not an image"]
    results = batched.analyze_bytes(mixed, limits)
    assert [getattr(r, "reason", "ok") for r in results].count("ok") == len(PHOTOS)
    assert results[3].reason == "empty" and results[-1].reason == "not_an_image"
    ours = [r for r in results if not hasattr(r, "reason")]
    for photo, blob, batch in zip(PHOTOS, blobs, ours, strict=True):
        (alone,) = face_model.analyze_bytes([blob], limits)
        assert len(batch.faces) == len(alone.faces), photo
        for i, face in enumerate(batch.faces):
            j = int(np.argmin([np.abs(np.subtract(face.bbox, f.bbox)).max() for f in alone.faces]))
            np.testing.assert_allclose(face.bbox, alone.faces[j].bbox, atol=1.0, err_msg=photo)
            np.testing.assert_allclose(
                face.landmarks, alone.faces[j].landmarks, atol=1.0, err_msg=photo
            )
            cosine = float(batch.embeddings[i] @ alone.embeddings[j])
            assert cosine >= 0.999, f"{photo} face {i}: cosine {cosine:.5f}"
            assert face.quality == alone.faces[j].quality or (
                abs(face.quality.yaw - alone.faces[j].quality.yaw) < 0.01
            ), photo
    assert set(batched.last_timings) == {"decode", "detect", "embed"}
