"""The image formats facestream opens, and their file names (no decoder imported here: the
CLI reads folders without loading OpenCV)."""

from __future__ import annotations

from pathlib import Path

# Pillow's names; anything else is not_an_image (``core.imaging``).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# The file names of those formats: what is taken for a photo when a folder is read.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def named_as_image(path: Path) -> bool:
    """Whether the file name says one of the formats facestream opens."""
    return path.suffix.lower() in IMAGE_SUFFIXES
