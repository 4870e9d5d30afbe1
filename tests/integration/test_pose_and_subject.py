"""Enrolment on real photos a user has: tilted heads and a second, small face at the edge.

Through the product's own enrolment path (``EnrollmentProcessor`` on the real model and a
real embedded gallery), without Kafka."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actors.compute import LocalCompute
from actors.gallery import open_model_gallery
from core.settings import Settings
from streams.enrollment import EnrollmentRequest, Photo
from streams.processor import EnrollmentProcessor
from tests.conftest import BASIS

pytestmark = pytest.mark.integration

PORTRAITS = ["obama.jpg", "biden.jpg", "obama2.jpg", "obama3.jpg", "yaoming.jpg", "biden2.jpg"]


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def rotated(path: Path, degrees: float) -> Image.Image:
    img = Image.open(path).convert("RGB")
    return img.rotate(degrees, expand=True, fillcolor=(255, 255, 255), resample=Image.BICUBIC)


@pytest.fixture
def enrol(face_model: object, tmp_path: Path):
    # Each rotation is enrolled under its own name: the same face, duplicates allowed.
    settings = Settings().override(
        gallery__path=tmp_path / "gallery", privacy__allow_duplicate_faces=True
    )
    gallery = open_model_gallery(settings, face_model.model_id, face_model.embedding_dim)
    processor = EnrollmentProcessor(settings, LocalCompute(settings, face_model, gallery))

    def run(identity: str, *photos: tuple[str, bytes]) -> dict:
        request = EnrollmentRequest(
            "enroll", identity, None, tuple(Photo(n, d) for n, d in photos), basis=BASIS
        )
        return asyncio.run(processor.process(request.encode(), identity.encode())).ack

    yield run
    gallery.close()


def largest_face(face_model: object, img: Image.Image):
    (found,) = face_model.analyze_bytes([jpeg(img)], Settings().limits)
    return max(found.faces, key=lambda f: f.quality.size)


@pytest.mark.parametrize("name", PORTRAITS)
def test_roll_does_not_read_as_yaw_and_every_rotation_enrols(
    samples: Path, face_model: object, enrol, name: str
) -> None:
    upright = largest_face(face_model, rotated(samples / name, 0)).quality
    for degrees in range(-45, 46, 15):
        quality = largest_face(face_model, rotated(samples / name, degrees)).quality
        assert abs(quality.yaw - upright.yaw) <= 0.1, (degrees, quality, upright)
        assert abs(quality.roll - upright.roll + degrees) <= 12, (degrees, quality)
        reply = enrol(
            f"{Path(name).stem}-{degrees}", (name, jpeg(rotated(samples / name, degrees)))
        )
        assert reply["ok"], (degrees, reply)


def with_face_pasted(
    base: Image.Image, face: Image.Image, side: int, corner: tuple[int, int]
) -> Image.Image:
    out = base.copy()
    out.paste(face.resize((side, side)), corner)
    return out


def face_crop(face_model: object, path: Path) -> Image.Image:
    img = Image.open(path).convert("RGB")
    x1, y1, x2, y2 = largest_face(face_model, img).bbox
    m = (x2 - x1) * 0.3
    return img.crop((int(x1 - m), int(y1 - m), int(x2 + m), int(y2 + m)))


def test_a_small_face_near_the_edge_does_not_refuse_the_subject(
    samples: Path, face_model: object, enrol
) -> None:
    base = Image.open(samples / "obama.jpg").convert("RGB")
    subject = largest_face(face_model, base)
    other = face_crop(face_model, samples / "biden.jpg")
    small = int(subject.quality.size / 3)
    photo = with_face_pasted(base, other, small, (base.width - small - 2, base.height - small - 2))
    (found,) = face_model.analyze_bytes([jpeg(photo)], Settings().limits)
    assert len(found.faces) == 2  # the pasted face is really detected
    reply = enrol("obama-with-bystander", ("crowded.jpg", jpeg(photo)))
    assert reply["ok"], reply


def test_two_comparable_faces_are_refused_naming_their_boxes(
    samples: Path, face_model: object, enrol
) -> None:
    base = Image.open(samples / "obama.jpg").convert("RGB")
    subject = largest_face(face_model, base)
    other = face_crop(face_model, samples / "biden.jpg")
    side = int(subject.quality.size * 1.3)
    canvas = Image.new("RGB", (base.width + side + 20, max(base.height, side)), "white")
    canvas.paste(base, (0, 0))
    canvas.paste(other.resize((side, side)), (base.width + 10, 0))
    reply = enrol("two-people", ("pair.jpg", jpeg(canvas)))
    assert not reply["ok"] and reply["error"]["reason"] == "multiple_faces"
    assert reply["error"]["message"].count("[") == 2  # both boxes named
    assert np.isfinite(subject.quality.yaw)
