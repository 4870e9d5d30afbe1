"""Image bytes -> BGR pixels, or a rejection with a stable reason code.

Pillow decodes the documented formats only (JPEG, PNG, WebP, BMP, TIFF, GIF: never EPS,
which it would hand to Ghostscript, nor its other plugins); the pixel limit and the shape
are checked from the header before any pixel is decoded, so a decompression bomb or a
60000x16 strip costs nothing. EXIF orientation is honoured; alpha is dropped; grayscale,
CMYK and 16-bit images become 8-bit RGB; an animated image contributes its first frame.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.formats import FORMATS
from core.settings import ImageLimits

# Pillow's own bomb guard would raise before ours with a less useful message.
Image.MAX_IMAGE_PIXELS = None

# The detector sees the image scaled to fit its input square; below this many pixels the
# short side holds no face and OpenCV's resize fails outright.
MIN_SIDE_AT_DETECTION = 8


class Reason:
    """Stable DLQ reason codes (documented in README, "Bad input")."""

    EMPTY = "empty"
    TOO_MANY_BYTES = "too_many_bytes"
    NOT_AN_IMAGE = "not_an_image"
    TRUNCATED = "truncated"
    TOO_MANY_PIXELS = "too_many_pixels"
    TOO_SMALL = "too_small"
    PROCESSING_FAILED = "processing_failed"
    BAD_HEADER = "bad_header"  # a header or key too long to repeat in an outcome
    PUBLISH_FAILED = "publish_failed"  # the outcome could never be published


class ImageRejected(Exception):
    """An input that cannot be processed; travels between processes (plain args pickle)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def check_size(data: bytes, limits: ImageLimits) -> None:
    """The checks that need no decoding: run them before shipping bytes anywhere."""
    if not data:
        raise ImageRejected(Reason.EMPTY, "message value is empty")
    if len(data) > limits.max_bytes:
        raise ImageRejected(
            Reason.TOO_MANY_BYTES, f"{len(data)} bytes exceeds the limit of {limits.max_bytes}"
        )


def check_shape(width: int, height: int, limits: ImageLimits, det_size: int) -> None:
    """Pixel count, minimum side and aspect ratio, from the header's dimensions."""
    if width * height > limits.max_pixels:
        raise ImageRejected(
            Reason.TOO_MANY_PIXELS,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limits.max_pixels}",
        )
    if min(width, height) < limits.min_side:
        raise ImageRejected(
            Reason.TOO_SMALL, f"{width}x{height} is below the minimum side of {limits.min_side}"
        )
    short_at_detection = min(width, height) * det_size / max(width, height)
    if short_at_detection < MIN_SIDE_AT_DETECTION:
        raise ImageRejected(
            Reason.TOO_SMALL,
            f"{width}x{height} is too elongated: scaled to the detector's {det_size} px its "
            f"short side would be {short_at_detection:.1f} px (minimum {MIN_SIDE_AT_DETECTION})",
        )


def decode_image(data: bytes, limits: ImageLimits, det_size: int = 640) -> np.ndarray:
    """Decode to a contiguous uint8 BGR array (H, W, 3), insightface's input format."""
    check_size(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise ImageRejected(Reason.NOT_AN_IMAGE, "not a recognised image format") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # a file cut inside its header
        raise _undecodable(exc) from exc
    check_shape(*img.size, limits, det_size)
    if (fast := _decode_plain(data, img)) is not None:
        return fast
    try:
        img.load()
        img = ImageOps.exif_transpose(img) or img
        rgb = _to_rgb(img)
    except (OSError, SyntaxError, ValueError) as exc:
        raise _undecodable(exc) from exc
    return np.ascontiguousarray(rgb[:, :, ::-1])


def _decode_plain(data: bytes, img: Image.Image) -> np.ndarray | None:
    """The common case, decoded by OpenCV (three times faster than Pillow, pixel-identical
    on the same libjpeg, and BGR already): a still 8-bit RGB or grey JPEG, PNG, WebP or
    BMP without transparency. OpenCV applies the EXIF orientation itself. Anything else,
    and anything OpenCV cannot read, takes Pillow's path, which also names the problem."""
    plain = (
        img.format in ("JPEG", "PNG", "WEBP", "BMP")
        and img.mode in ("RGB", "L")
        and not getattr(img, "is_animated", False)
        and "transparency" not in img.info
        # OpenCV decodes a cut-off JPEG with a grey tail; Pillow reports it as truncated.
        and (img.format != "JPEG" or data.rstrip(b"\0").endswith(b"\xff\xd9"))
    )
    if not plain:
        return None
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape[0] * bgr.shape[1] != img.size[0] * img.size[1]:
        return None
    return np.ascontiguousarray(bgr)


def _undecodable(exc: Exception) -> ImageRejected:
    # Pillow reports a cut-off file as OSError("image file is truncated ...") or
    # "Truncated File Read"; anything else it cannot parse is not an image to us.
    reason = Reason.TRUNCATED if "truncat" in str(exc).lower() else Reason.NOT_AN_IMAGE
    return ImageRejected(reason, f"cannot decode: {exc}")


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits rather than clip.
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() or 1.0
        gray = (arr * (255.0 / peak)).clip(0, 255).astype(np.uint8)
        return np.stack([gray] * 3, axis=-1)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white: transparent regions must not become black face-like blobs.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return np.asarray(img.convert("RGB"))
