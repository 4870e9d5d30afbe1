"""Enrolment requests and acknowledgements: the messages of the ``enrollments`` log.

Enrolments are rare, atomic requests (all photos of a request are accepted or none), so one
JSON record carries the photos, base64-encoded. The high-volume ``images`` topic carries raw
bytes only. Records are keyed by identity so one person's changes stay in order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

REQUEST_SCHEMA = "facestream.enrollment/v1"
ACK_SCHEMA = "facestream.enrollment-ack/v1"


class EnrollmentReason:
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    BAD_REQUEST = "bad_request"
    MISSING_BASIS = "missing_basis"


class MalformedRequest(ValueError):
    def __init__(self, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True)
class Photo:
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass(frozen=True)
class EnrollmentRequest:
    op: Literal["enroll", "delete"]
    identity: str
    name: str | None = None
    photos: tuple[Photo, ...] = ()
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    basis: str | None = None  # legal basis: a consent reference or a legal ground

    def encode(self) -> bytes:
        return json.dumps(
            {
                "schema": REQUEST_SCHEMA,
                "op": self.op,
                "request_id": self.request_id,
                "identity": self.identity,
                "name": self.name,
                "basis": self.basis,
                "photos": [
                    {"name": p.name, "data": base64.b64encode(p.data).decode()} for p in self.photos
                ],
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> EnrollmentRequest:
        """Raises MalformedRequest (with the request id when one could be read)."""
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MalformedRequest(f"malformed enrolment request: {exc}", None) from exc
        request_id = doc.get("request_id") if isinstance(doc, dict) else None
        try:
            op = doc["op"]
            if op not in ("enroll", "delete") or not doc["identity"]:
                raise ValueError(f"bad op or identity: {op!r}")
            photos = tuple(
                Photo(str(p["name"]), base64.b64decode(p["data"], validate=True))
                for p in doc.get("photos") or []
            )
            return cls(
                op,
                str(doc["identity"]),
                doc.get("name"),
                photos,
                str(doc["request_id"]),
                doc.get("basis"),
            )
        except (KeyError, TypeError, ValueError, base64.binascii.Error) as exc:
            raise MalformedRequest(f"malformed enrolment request: {exc}", request_id) from exc


def ack(
    request_id: str,
    identity: str | None,
    op: str,
    *,
    model_id: str,
    error: dict[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "schema": ACK_SCHEMA,
        "request_id": request_id,
        "identity": identity,
        "op": op,
        "ok": error is None,
        "error": error,
        "model": model_id,
        **fields,
    }
