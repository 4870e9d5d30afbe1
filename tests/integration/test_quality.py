"""Quality gates on real photos: tiny and blurred faces are reported as rejected, with the
right reason, and never matched; enrolment applies stricter gates."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

from streams.clients import ImageToSend
from streams.enrollment import EnrollmentRequest, Photo
from tests.conftest import BASIS, Pipeline, unique
from tests.integration.test_pipeline import validate

pytestmark = pytest.mark.integration


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def blurred(samples: Path, radius: float) -> bytes:
    return jpeg(
        Image.open(samples / "obama2.jpg").convert("RGB").filter(ImageFilter.GaussianBlur(radius))
    )


def tiny(samples: Path, scale: float = 0.07) -> bytes:
    """Obama's face at ~19 px on a 400x400 canvas."""
    photo = Image.open(samples / "obama2.jpg").convert("RGB")
    small = photo.resize((int(photo.width * scale), int(photo.height * scale)))
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(small, (150, 150))
    return jpeg(canvas)


@pytest.mark.parametrize(("kind", "reason"), [("tiny", "small_face"), ("blurred", "blurry")])
def test_poor_face_is_rejected_with_its_reason_and_never_matched(
    pipeline: Pipeline, samples: Path, kind: str, reason: str
) -> None:
    data = tiny(samples) if kind == "tiny" else blurred(samples, 8)
    kind_, event = pipeline.one(ImageToSend(unique(kind), data, "test"))
    validate(kind_, event)
    (face,) = event["faces"]
    assert face["decision"] == "rejected" and reason in face["reasons"]
    assert face["identity"] is None and face["candidates"] == []
    assert face["quality"]["size"] > 0


def test_sharp_face_carries_its_quality_and_is_matched(pipeline: Pipeline, samples: Path) -> None:
    _, event = pipeline.one(ImageToSend(unique("sharp"), (samples / "obama2.jpg").read_bytes()))
    (face,) = event["faces"]
    assert face["decision"] == "match" and face["reasons"] == []
    gates = pipeline.settings.quality.search
    assert face["quality"]["sharpness"] >= gates.min_sharpness
    assert face["quality"]["size"] >= gates.min_face_px


def test_enrolment_applies_stricter_gates_than_search(pipeline: Pipeline, samples: Path) -> None:
    # Mildly blurred: good enough to be searched, not to define a person.
    data = blurred(samples, 4)
    reply = pipeline.enroll(
        EnrollmentRequest("enroll", unique("soft"), None, (Photo("soft.jpg", data),), basis=BASIS)
    )
    assert not reply["ok"] and reply["error"]["reason"] == "blurry"
    assert reply["error"]["photo"] == "soft.jpg"
    _, event = pipeline.one(ImageToSend(unique("soft-query"), data, "test"))
    assert event["faces"][0]["decision"] == "match"
