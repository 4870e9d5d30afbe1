"""Kafka records as the pipeline sees them: raw image bytes plus optional headers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.events import ImageMeta

HEADER_IMAGE_ID = "image-id"
HEADER_SOURCE = "source"
HEADER_CAPTURED_AT = "captured-at"
HEADER_CONTENT_TYPE = "content-type"
# Header values (and a key used as the source) are repeated in every outcome event: bounded,
# so that an outcome always fits in a Kafka message.
MAX_HEADER_CHARS = 256


@dataclass(frozen=True)
class ImageMessage:
    meta: ImageMeta
    data: bytes
    produced_at: float | None = None  # the record's timestamp, epoch seconds
    bad_header: str | None = None  # why its headers cannot be repeated in an outcome


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
    """An oversized header (or key) is dropped from the meta and reported in ``bad_header``:
    the image then gets a ``bad_header`` DLQ event under an id that fits."""
    h = parse_headers(headers)
    fields = {
        HEADER_IMAGE_ID: h.get(HEADER_IMAGE_ID),
        HEADER_SOURCE: h.get(HEADER_SOURCE) or _text(key),
        HEADER_CAPTURED_AT: h.get(HEADER_CAPTURED_AT),
        HEADER_CONTENT_TYPE: h.get(HEADER_CONTENT_TYPE),
    }
    too_long = [k for k, v in fields.items() if v is not None and len(v) > MAX_HEADER_CHARS]
    bad_header = None
    if too_long:
        sizes = ", ".join(f"{k} has {len(fields[k])}" for k in too_long)
        bad_header = f"header values are limited to {MAX_HEADER_CHARS} characters: {sizes}"
        fields.update(dict.fromkeys(too_long))
    meta = ImageMeta(
        image_id=fields[HEADER_IMAGE_ID] or f"{topic}/{partition}/{offset}",
        source=fields[HEADER_SOURCE],
        captured_at=fields[HEADER_CAPTURED_AT],
        content_type=fields[HEADER_CONTENT_TYPE],
    )
    produced_at = timestamp_ms / 1000 if timestamp_ms else None
    return ImageMessage(meta, value or b"", produced_at, bad_header)


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
