"""Audit records: every identification decision and every gallery change, on the ``audit``
topic (schema ``core/schemas/audit-event.v1.json``). Never image bytes or embeddings:
who was decided about, by which model and threshold, with what result."""

from __future__ import annotations

import os
import socket
from typing import Any

from core.events import utc_now

AUDIT_SCHEMA = "facestream.audit/v1.1"  # v1.1: the review decision, review_threshold
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _record(kind: str, **fields: Any) -> dict[str, Any]:
    return {"schema": AUDIT_SCHEMA, "kind": kind, "worker": WORKER, "time": utc_now(), **fields}


def identification(event: dict[str, Any]) -> dict[str, Any]:
    """One record per identified image, with each face's decision."""
    return _record(
        "identification",
        image_id=event["image_id"],
        source=event["source"],
        model=event["model"],
        threshold=event["threshold"],
        review_threshold=event["review_threshold"],
        decisions=[
            {
                "decision": f["decision"],
                "identity": f["identity"],
                "similarity": f["similarity"],
                "reasons": f["reasons"],
            }
            for f in event["faces"]
        ],
    )


def rejection(event: dict[str, Any], model_id: str) -> dict[str, Any]:
    """An image that could not be processed (its DLQ event): no decision was made."""
    return _record(
        "rejection",
        image_id=event["image_id"],
        source=event["source"],
        model=model_id,
        reason=event["reason"],
    )


def gallery_change(ack: dict[str, Any], basis: str | None, photos: list[str]) -> dict[str, Any]:
    """An enrolment, a refused enrolment or a deletion, from its acknowledgement."""
    kind = {"enroll": "enrolment", "delete": "deletion"}.get(ack["op"], "bad_request")
    if not ack["ok"]:
        kind = f"{kind}_refused"
    return _record(
        kind,
        request_id=ack["request_id"],
        identity=ack["identity"],
        model=ack["model"],
        basis=basis,
        photos=photos,
        removed=ack.get("removed"),
        reason=(ack["error"] or {}).get("reason"),
    )
