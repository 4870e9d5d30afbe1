"""Outcome events: one per input image, on ``matches`` or on ``images.dlq``.

The JSON Schemas live in ``core/schemas/``; bump the version in ``schema`` on any
incompatible change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from core.decisions import Decision, face_record
from core.faces import Candidate, ImageFaces

# v1.1 adds the ``review`` decision, ``review_threshold`` and the pose's pitch and roll: a
# v1 consumer that acts on ``decision == "match"`` is unaffected (a review is never a match).
MATCH_SCHEMA = "facestream.match/v1.1"
DLQ_SCHEMA = "facestream.dlq/v1"


@dataclass(frozen=True)
class ImageMeta:
    """Where an image came from; everything an outcome event repeats about its input."""

    image_id: str
    source: str | None = None
    captured_at: str | None = None
    content_type: str | None = None


def utc_now() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


def match_event(
    meta: ImageMeta,
    analysis: ImageFaces,
    candidates: list[list[Candidate]],
    decision: Decision,
    reasons: list[list[str]] | None = None,
) -> dict[str, Any]:
    """``candidates`` and ``reasons`` (quality-gate failures) are per face of ``analysis``."""
    reasons = reasons or [[] for _ in analysis.faces]
    return {
        "schema": MATCH_SCHEMA,
        "image_id": meta.image_id,
        "source": meta.source,
        "captured_at": meta.captured_at,
        "processed_at": utc_now(),
        "model": decision.model_id,
        "threshold": decision.threshold,
        "review_threshold": decision.review_threshold,
        "faces": [
            face_record(face, cands, decision, why)
            for face, cands, why in zip(analysis.faces, candidates, reasons, strict=True)
        ],
    }


def dlq_event(meta: ImageMeta, reason: str, message: str) -> dict[str, Any]:
    return {
        "schema": DLQ_SCHEMA,
        "image_id": meta.image_id,
        "source": meta.source,
        "captured_at": meta.captured_at,
        "processed_at": utc_now(),
        "reason": reason,
        "message": message,
    }


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
