"""Kafka records as the pipeline sees them: raw image bytes plus optional headers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.events import ImageMeta

HEADER_IMAGE_ID = "image-id"
HEADER_SOURCE = "source"
HEADER_CAPTURED_AT = "captured-at"
HEADER_CONTENT_TYPE = "content-type"


@dataclass(frozen=True)
class ImageMessage:
    meta: ImageMeta
    data: bytes
    produced_at: float | None = None  # the record's timestamp, epoch seconds


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    # Keys and headers are caller-controlled: never fail on bad UTF-8, keep it visible.
    return value.decode("utf-8", errors="backslashreplace")


def parse_headers(
    headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None,
) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    out: dict[str, str] = {}
    for key, value in items:
        text = _text(value)
        if key and text is not None:
            out[str(key).lower()] = text
    return out


def image_message(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]] | None,
    timestamp_ms: float | None = None,
) -> ImageMessage:
    h = parse_headers(headers)
    meta = ImageMeta(
        image_id=h.get(HEADER_IMAGE_ID) or f"{topic}/{partition}/{offset}",
        source=h.get(HEADER_SOURCE) or _text(key),
        captured_at=h.get(HEADER_CAPTURED_AT),
        content_type=h.get(HEADER_CONTENT_TYPE),
    )
    produced_at = timestamp_ms / 1000 if timestamp_ms else None
    return ImageMessage(meta, value or b"", produced_at)


def image_headers(
    image_id: str,
    source: str | None = None,
    captured_at: str | None = None,
    content_type: str | None = None,
) -> list[tuple[str, bytes]]:
    """The producer-side twin of ``image_message``."""
    pairs = {
        HEADER_IMAGE_ID: image_id,
        HEADER_SOURCE: source,
        HEADER_CAPTURED_AT: captured_at,
        HEADER_CONTENT_TYPE: content_type,
    }
    return [(k, v.encode()) for k, v in pairs.items() if v is not None]
