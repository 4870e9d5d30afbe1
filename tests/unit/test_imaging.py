from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from actors.models.base import DetectedFace, FaceModel
from core.imaging import ImageRejected, decode_image
from core.settings import ImageLimits

LIMITS = ImageLimits()
RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise(w: int, h: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def reason(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageRejected) as info:
        decode_image(data, limits)
    return info.value.reason


def is_red(bgr: np.ndarray) -> bool:
    b, g, r = (int(v) for v in bgr)
    return r > 230 and g < 25 and b < 25


@pytest.mark.parametrize(
    ("fmt", "kw"),
    [
        ("JPEG", {"quality": 95}),
        ("PNG", {}),
        ("WEBP", {"lossless": True}),
        ("BMP", {}),
        ("TIFF", {}),
        ("GIF", {}),
    ],
)
def test_every_format_decodes_to_contiguous_uint8_bgr(fmt: str, kw: dict) -> None:
    out = decode_image(encode(Image.new("RGB", (40, 24), RED), fmt, **kw), LIMITS)
    assert out.shape == (24, 40, 3)
    assert out.dtype == np.uint8
    assert out.flags["C_CONTIGUOUS"]
    assert is_red(out[12, 20])  # red lands in channel 2: BGR, not RGB


def test_pure_red_png_is_exact_in_bgr() -> None:
    out = decode_image(encode(Image.new("RGB", (20, 20), RED), "PNG"), LIMITS)
    assert (out[..., 2] == 255).all()
    assert (out[..., :2] == 0).all()


def test_animated_gif_uses_first_frame() -> None:
    first, second = Image.new("RGB", (20, 20), RED), Image.new("RGB", (20, 20), BLUE)
    data = encode(first, "GIF", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).n_frames == 2
    assert is_red(decode_image(data, LIMITS)[0, 0])


def test_grayscale_becomes_three_equal_channels() -> None:
    gray = Image.fromarray(np.tile(np.arange(0, 200, 10, dtype=np.uint8), (20, 1)), "L")
    out = decode_image(encode(gray, "PNG"), LIMITS)
    assert out.shape == (20, 20, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert out[0, 5, 0] == 50


def test_cmyk_jpeg_becomes_bgr() -> None:
    cmyk_red = Image.new("CMYK", (20, 20), (0, 255, 255, 0))
    assert is_red(decode_image(encode(cmyk_red, "JPEG", quality=95), LIMITS)[10, 10])


def test_16_bit_png_is_scaled_to_8_bits_not_clipped() -> None:
    ramp = np.tile(np.linspace(0, 60000, 32).astype(np.uint16), (32, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = decode_image(data, LIMITS)
    assert out.dtype == np.uint8
    row = out[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert (np.diff(row) >= 0).all() and len(set(row)) > 20  # a ramp, not a clipped plateau


@pytest.mark.parametrize(("fmt", "kw"), [("PNG", {}), ("WEBP", {"lossless": True})])
def test_transparent_regions_become_white_not_black(fmt: str, kw: dict) -> None:
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))  # transparent black
    rgba.paste((0, 0, 255, 255), (20, 0, 40, 20))  # right half: opaque blue
    out = decode_image(encode(rgba, fmt, **kw), LIMITS)
    assert out[10, 5].tolist() == [255, 255, 255]
    assert out[10, 35].tolist() == [255, 0, 0]


def test_palette_transparency_becomes_white() -> None:
    pal = Image.new("P", (20, 20), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0])
    out = decode_image(encode(pal, "PNG", transparency=0), LIMITS)
    assert out[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize(("orientation", "top_is_red"), [(6, True), (8, False)])
def test_exif_orientation_is_applied(orientation: int, top_is_red: bool) -> None:
    stored = Image.new("RGB", (64, 32), RED)  # left half red, right half blue
    stored.paste(BLUE, (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()), LIMITS)
    assert out.shape == (64, 32, 3)  # transposed relative to the stored 32x64 pixels
    assert is_red(out[5, 16]) is top_is_red
    assert is_red(out[58, 16]) is not top_is_red


def test_empty_bytes() -> None:
    assert reason(b"") == "empty"


def test_too_many_bytes_is_checked_before_decoding() -> None:
    assert reason(b"x" * 11, ImageLimits(max_bytes=10)) == "too_many_bytes"


def test_random_bytes_are_not_an_image() -> None:
    assert reason(random.Random(0).randbytes(1000)) == "not_an_image"


def test_jpeg_cut_in_half_is_truncated() -> None:
    data = encode(noise(128, 128), "JPEG", quality=95)
    assert reason(data[: len(data) // 2]) == "truncated"


def test_too_many_pixels() -> None:
    assert reason(encode(Image.new("RGB", (21, 20)), "PNG"), ImageLimits(max_pixels=400)) == (
        "too_many_pixels"
    )
    at_limit = encode(Image.new("RGB", (20, 20)), "PNG")
    assert decode_image(at_limit, ImageLimits(max_pixels=400)).shape == (20, 20, 3)


def test_pixel_limit_is_read_from_the_header_before_decoding() -> None:
    data = encode(noise(128, 128), "JPEG")
    assert reason(data[: len(data) // 2], ImageLimits(max_pixels=1000)) == "too_many_pixels"


def test_too_small() -> None:
    assert reason(encode(Image.new("RGB", (40, 15)), "PNG")) == "too_small"
    assert decode_image(encode(Image.new("RGB", (40, 16)), "PNG"), LIMITS).shape == (16, 40, 3)


def tiny_jpeg() -> bytes:
    return encode(Image.new("RGB", (64, 48), RED), "JPEG")


def cut_in_header() -> list[bytes]:
    jpeg, webp = tiny_jpeg(), encode(Image.new("RGB", (64, 48), RED), "WEBP")
    return [jpeg[: len(jpeg) // 2], jpeg[:30], webp[:30]]


@pytest.mark.parametrize("data", cut_in_header(), ids=["jpeg-half", "jpeg-30", "webp-30"])
def test_file_cut_inside_its_header_is_rejected_not_raised(data: bytes) -> None:
    assert reason(data) in ("truncated", "not_an_image")


class NoFaces(FaceModel):
    """A model stub that finds no faces: exercises analyze_bytes without model files."""

    model_id, embedding_dim, providers = "stub", 4, ["CPU"]

    def detect(self, image_bgr: np.ndarray) -> tuple[list[DetectedFace], np.ndarray]:
        return [], np.zeros((0, 5, 2))

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        raise AssertionError("no crops expected")

    def align(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        raise AssertionError("no faces expected")


def test_analyze_bytes_keeps_rejections_in_input_order() -> None:
    good = encode(Image.new("RGB", (20, 20)), "PNG")
    results = NoFaces().analyze_bytes([good, b"", good, b"junk" * 10], LIMITS)
    assert [getattr(r, "reason", "ok") for r in results] == ["ok", "empty", "ok", "not_an_image"]


def test_one_header_truncated_image_does_not_fail_its_batch() -> None:
    good = encode(Image.new("RGB", (20, 20)), "PNG")
    jpeg = tiny_jpeg()
    results = NoFaces().analyze_bytes([good, jpeg[: len(jpeg) // 2]], LIMITS)
    assert isinstance(results[1], ImageRejected)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_fast_decoder_equals_pillows_path_for_every_orientation(orientation: int, fmt: str) -> None:
    """OpenCV serves plain photos; its pixels and orientation must be Pillow's exactly."""
    from PIL import ImageOps

    from core.imaging import _decode_plain

    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    kw = {"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}
    data = encode(stored, fmt, exif=exif.tobytes(), **kw)
    fast = _decode_plain(data, Image.open(io.BytesIO(data)))
    assert fast is not None  # the fast path really served it
    slow = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    np.testing.assert_array_equal(fast, slow[:, :, ::-1])
