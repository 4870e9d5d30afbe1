"""The bad-input catalogue: each kind yields its documented outcome (a DLQ event with a stable
reason code, or documented handling), and the next good image in the stream is still matched.
Inputs are derived from real photos on the fly."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streams.clients import ImageToSend
from tests.conftest import Pipeline, unique
from tests.flow import RawRecord
from tests.integration.test_pipeline import validate

pytestmark = pytest.mark.integration


def photo(samples: Path) -> Image.Image:
    return Image.open(samples / "obama2.jpg").convert("RGB")


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _huge_png(_: Path) -> bytes:
    # 5000x5000 = 25 Mpx, above the test stack's 20 Mpx limit; ~100 KB on the wire.
    return encode(Image.fromarray(np.zeros((5000, 5000), np.uint8)), "PNG")


def _truncated(samples: Path) -> bytes:
    data = (samples / "obama2.jpg").read_bytes()
    return data[: len(data) // 2]


# kind -> (bytes from the sample folder, expected DLQ reason)
REJECTED: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "empty": (lambda s: b"", "empty"),
    "not an image": (lambda s: b"%PDF-1.4 definitely not a photo", "not_an_image"),
    "truncated jpeg": (_truncated, "truncated"),
    "over the byte limit": (lambda s: b"\xff\xd8" + bytes(3_100_000), "too_many_bytes"),
    "over the pixel limit (bomb)": (_huge_png, "too_many_pixels"),
    "1x1 image": (lambda s: encode(Image.new("RGB", (1, 1)), "PNG"), "too_small"),
}


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_rejected_input_goes_to_dlq_and_the_stream_goes_on(
    pipeline: Pipeline, samples: Path, kind: str
) -> None:
    make, reason = REJECTED[kind]
    bad = ImageToSend(unique("bad"), make(samples), "test")
    good = ImageToSend(unique("good"), (samples / "obama3.jpg").read_bytes(), "test")
    results = pipeline.run([bad, good])
    kind_, event = results[bad.image_id]
    validate(kind_, event)
    assert kind_ == "dlq" and event["reason"] == reason and event["message"]
    assert results[good.image_id][1]["faces"][0]["identity"] == "obama"


def _exif_rotated(samples: Path) -> bytes:
    """Pixels stored rotated 90 degrees, with EXIF orientation 8 telling viewers to undo it."""
    exif = Image.Exif()
    exif[0x0112] = 8
    return encode(photo(samples).transpose(Image.Transpose.ROTATE_270), "JPEG", exif=exif)


def _animated(fmt: str) -> Callable[[Path], bytes]:
    def make(samples: Path) -> bytes:
        frames = [photo(samples), Image.new("RGB", photo(samples).size, (0, 90, 0))]
        return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100)

    return make


def _alpha_png(samples: Path) -> bytes:
    rgba = photo(samples).convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:20, :] = 0  # a transparent band at the top
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def _png16(samples: Path) -> bytes:
    gray = np.asarray(photo(samples).convert("L"), np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


# kind -> bytes; each is a photo of an enrolled person and must still be matched.
HANDLED: dict[str, Callable[[Path], bytes]] = {
    "grayscale": lambda s: encode(photo(s).convert("L"), "JPEG"),
    "cmyk jpeg": lambda s: encode(photo(s).convert("CMYK"), "JPEG"),
    "16-bit png": _png16,
    "png with alpha": _alpha_png,
    "animated gif": _animated("GIF"),
    "animated webp": _animated("WEBP"),
    "webp": lambda s: encode(photo(s), "WEBP"),
    "bmp": lambda s: encode(photo(s), "BMP"),
    "tiff": lambda s: encode(photo(s), "TIFF"),
}


@pytest.mark.parametrize("kind", sorted(HANDLED))
def test_unusual_but_valid_image_is_matched(pipeline: Pipeline, samples: Path, kind: str) -> None:
    image = ImageToSend(unique(kind.replace(" ", "-")), HANDLED[kind](samples), "test")
    kind_, event = pipeline.one(image)
    validate(kind_, event)
    assert [f["identity"] for f in event["faces"]] == ["obama"]


def test_exif_orientation_is_honoured(pipeline: Pipeline, samples: Path) -> None:
    upright = ImageToSend(unique("upright"), encode(photo(samples), "JPEG"), "test")
    rotated = ImageToSend(unique("rotated"), _exif_rotated(samples), "test")
    results = pipeline.run([upright, rotated])
    (face_up,), (face_rot,) = (results[i.image_id][1]["faces"] for i in (upright, rotated))
    assert face_rot["identity"] == "obama"
    # Boxes refer to the upright image: the same box as the upright photo's.
    np.testing.assert_allclose(face_rot["bbox"], face_up["bbox"], atol=4)


def crowd(samples: Path, face_model: object, n: int = 120, side: int = 64) -> Image.Image:
    """A mosaic of ``n`` real faces (crops of the team photo), big enough to be detected."""
    team = Image.open(samples / "players.jpg").convert("RGB")
    (found,) = face_model.analyze([np.asarray(team)[:, :, ::-1].copy()])
    crops = []
    for face in found.faces:
        x1, y1, x2, y2 = face.bbox
        m = (x2 - x1) * 0.4
        crops.append(team.crop((x1 - m, y1 - m, x2 + m, y2 + m)).resize((side, side)))
    cols = 12
    sheet = Image.new("RGB", (cols * side, -(-n // cols) * side))
    for i in range(n):
        sheet.paste(crops[i % len(crops)], ((i % cols) * side, (i // cols) * side))
    return sheet


def test_photo_with_over_a_hundred_faces_is_bounded(
    pipeline: Pipeline, samples: Path, face_model: object
) -> None:
    image = ImageToSend(unique("crowd"), encode(crowd(samples, face_model), "JPEG"), "test")
    _, event = pipeline.one(image)
    limit = pipeline.settings.model.max_faces_per_image
    assert len(event["faces"]) == limit  # the largest faces, the rest are not embedded


def test_malformed_headers_and_non_utf8_key_are_tolerated(
    pipeline: Pipeline, samples: Path
) -> None:
    jpeg = (samples / "obama2.jpg").read_bytes()
    image_id = unique("odd-headers")
    odd = RawRecord(
        image_id,
        jpeg,
        key=b"\xff\xfecam",  # not UTF-8
        headers=(
            ("image-id", image_id.encode()),
            ("captured-at", b"\xff\x00"),
            ("content-type", b"text/plain"),
            ("", b"nameless"),
            ("source", b""),
        ),
    )
    results = pipeline.run([odd, ImageToSend(unique("after"), jpeg, "test")])
    kind, event = results[image_id]
    validate(kind, event)
    assert event["faces"][0]["identity"] == "obama"  # content-type is advisory: bytes decide
    assert event["source"] == "\\xff\\xfecam" and event["captured_at"] == "\\xff\x00"
