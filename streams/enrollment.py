"""Enrolment requests and acknowledgements (the ``enrollments`` topic), and the records of
accepted photos (the state topic, ``streams.topics.state_topic``).

Enrolments are rare, atomic requests (all photos of a request are accepted or none), so one
JSON record carries the photos, base64-encoded. The high-volume ``images`` topic carries raw
bytes only. Requests are keyed by identity so one person's changes stay in order.

The requests topic is deleted by time (it holds refused photos too); what the gallery holds
is recorded in the state topic, one ``PhotoRecord`` per accepted photo under the key
``<identity>/<photo sha256>`` (``state_key``), and erased by a tombstone per key. Replaying
the state topic after Kafka's compaction (last record per key; a tombstone removes its key)
rebuilds the gallery: README, "The enrolment log".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from core.faces import Candidate

REQUEST_SCHEMA = "facestream.enrollment/v1"
STATE_SCHEMA = "facestream.gallery-state/v1"
ACK_SCHEMA = "facestream.enrollment-ack/v1"


class EnrollmentReason:
    NO_FACE = "no_face"
    MULTIPLE_FACES = "multiple_faces"
    BAD_REQUEST = "bad_request"
    MISSING_BASIS = "missing_basis"
    # The face matches another enrolled identity (privacy.allow_duplicate_faces is false).
    DUPLICATE_IDENTITY = "duplicate_identity"


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
    def decode(cls, raw: bytes, key: bytes | None = None) -> EnrollmentRequest:
        """Validate a record completely; raises MalformedRequest (with the request id when a
        valid one could be read, so that the sender sees the refusal).

        ``key``, when given, must equal the identity: erasure tombstones are keyed by
        identity, so a record under another key could never be erased.
        """
        try:
            doc = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise MalformedRequest(f"not JSON: {exc}", None) from exc
        if not isinstance(doc, dict):
            raise MalformedRequest("not a JSON object", None)
        request_id = doc.get("request_id")
        if not _is_text(request_id, MAX_ID_CHARS):
            raise MalformedRequest(
                f"request_id must be printable text of 1..{MAX_ID_CHARS} characters", None
            )

        def refuse(message: str) -> MalformedRequest:
            return MalformedRequest(message, request_id)

        op, identity = doc.get("op"), doc.get("identity")
        if op not in ("enroll", "delete"):
            raise refuse(f"op must be 'enroll' or 'delete', got {_shown(op)}")
        if problem := identity_problem(identity):
            raise refuse(problem)
        if key is not None and key != identity.encode():
            raise refuse("the record's key must equal its identity (erasure is keyed by it)")
        for name, limit in (("name", MAX_TEXT_CHARS), ("basis", MAX_TEXT_CHARS)):
            if doc.get(name) is not None and not _is_text(doc[name], limit):
                raise refuse(f"{name} must be printable text of 1..{limit} characters")
        raw_photos = doc.get("photos") or []
        if not isinstance(raw_photos, list) or len(raw_photos) > MAX_PHOTOS:
            raise refuse(f"photos must be a list of at most {MAX_PHOTOS}")
        if op == "delete" and raw_photos:
            raise refuse("an erasure carries no photos")
        photos = tuple(_photo(p, refuse) for p in raw_photos)
        return cls(op, identity, doc.get("name"), photos, request_id, doc.get("basis"))


MAX_ID_CHARS = 128  # identity and request id: they become Kafka keys and point ids
MAX_TEXT_CHARS = 512  # name, legal basis, photo name
MAX_PHOTOS = 32


def identity_problem(identity: object) -> str | None:
    """Why ``identity`` cannot name a person (it becomes a Kafka key and a point id), or
    None: the worker's rule, also checked by senders before they send."""
    if not _is_text(identity, MAX_ID_CHARS) or identity != identity.strip():  # type: ignore[union-attr]
        return (
            f"identity must be printable text of 1..{MAX_ID_CHARS} characters "
            "without surrounding spaces"
        )
    return None


def _is_text(value: object, limit: int) -> bool:
    """Printable text (no control characters, no lone surrogates) of 1..limit characters."""
    return isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _photo(doc: object, refuse: Callable[[str], MalformedRequest]) -> Photo:
    if not isinstance(doc, dict) or not _is_text(doc.get("name"), MAX_TEXT_CHARS):
        raise refuse(f"each photo needs a printable name of 1..{MAX_TEXT_CHARS} characters")
    data = doc.get("data")
    try:
        if not isinstance(data, str):
            raise ValueError("not a string")
        return Photo(doc["name"], base64.b64decode(data, validate=True))
    except (ValueError, binascii.Error) as exc:
        raise refuse(f"photo {doc['name']!r}: data is not base64 ({exc})") from exc


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


def state_key(identity: str, photo_sha256: str) -> str:
    """The state topic's key of one accepted photo. A sha256 holds no "/", so the key splits
    back at its last one (``split_state_key``) whatever the identity holds."""
    return f"{identity}/{photo_sha256}"


def split_state_key(key: bytes | str) -> tuple[str, str]:
    """(identity, photo sha256) of a state key; ValueError for anything else."""
    text = key.decode() if isinstance(key, bytes) else key
    identity, sep, sha = text.rpartition("/")
    if not sep or not identity or len(sha) != 64:
        raise ValueError(f"not a state key: {text[:80]!r}")
    return identity, sha


@dataclass(frozen=True)
class PhotoRecord:
    """One accepted photo, as the state topic holds it: what a replay needs to enrol it again
    (the photo itself, the person's name and legal basis) and where it came from."""

    identity: str
    photo: Photo
    name: str | None = None
    basis: str | None = None
    request_id: str | None = None
    model: str | None = None  # the model that accepted it (information: replays re-embed)

    @property
    def key(self) -> str:
        return state_key(self.identity, self.photo.sha256)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "schema": STATE_SCHEMA,
                "identity": self.identity,
                "name": self.name,
                "basis": self.basis,
                "request_id": self.request_id,
                "model": self.model,
                "photo": {
                    "name": self.photo.name,
                    "sha256": self.photo.sha256,
                    "data": base64.b64encode(self.photo.data).decode(),
                },
            }
        ).encode()

    @classmethod
    def decode(cls, raw: bytes) -> PhotoRecord:
        """Raises ValueError for a record this version cannot read, or whose photo does not
        match its recorded sha256."""
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("schema") != STATE_SCHEMA:
            raise ValueError("not a gallery-state record")
        p = doc["photo"]
        photo = Photo(p["name"], base64.b64decode(p["data"], validate=True))
        if photo.sha256 != p["sha256"]:
            raise ValueError(f"photo {p['name']!r}: bytes do not match the recorded sha256")
        return cls(
            doc["identity"], photo, doc.get("name"), doc.get("basis"),
            doc.get("request_id"), doc.get("model"),
        )  # fmt: skip

    @classmethod
    def of_request(cls, req: EnrollmentRequest, model: str | None) -> list[PhotoRecord]:
        return [
            cls(req.identity, p, req.name, req.basis, req.request_id, model) for p in req.photos
        ]


# -- what an enrolment adds: photos not held yet, faces not of someone else --------------------

# Identities asked of the gallery per enrolled face: the enrolling identity itself may take one
# place (a re-enrolment with a new photo), so two always include the best other identity.
DUPLICATE_CANDIDATES = 2


def split_held(
    photos: tuple[Photo, ...], stored: list[dict[str, Any]]
) -> tuple[tuple[Photo, ...], tuple[Photo, ...]]:
    """(photos to enrol, photos the gallery already holds for this identity) given ``stored``
    (the identity's points, ``Compute.show``). A photo is its bytes' sha256, as in the state
    key: sending it again (a resumed bulk run) is a no-op, and a photo repeated in one request
    is enrolled once."""
    seen = {p.get("photo_sha256") for p in stored}
    new: list[Photo] = []
    held: list[Photo] = []
    for photo in photos:
        (held if photo.sha256 in seen else new).append(photo)
        seen.add(photo.sha256)
    return tuple(new), tuple(held)


@dataclass(frozen=True)
class Duplicate:
    """An enrolment photo whose face already matches another enrolled identity."""

    photo: str
    identity: str  # the other identity
    similarity: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {"photo": self.photo, "identity": self.identity, "similarity": self.similarity}

    @property
    def message(self) -> str:
        return (
            f"{self.photo}: the face matches enrolled identity {self.identity!r} (similarity "
            f"{self.similarity:.2f} >= threshold {self.threshold:.2f}): the same person? "
            "FACESTREAM_PRIVACY__ALLOW_DUPLICATE_FACES=true enrols it anyway"
        )


def duplicates(
    identity: str,
    photos: tuple[Photo, ...],
    found: list[list[Candidate]],
    threshold: float,
) -> list[Duplicate]:
    """Each photo whose best candidate other than ``identity`` reaches ``threshold``
    (``found``: the gallery's candidates per photo, best first)."""
    out = []
    for photo, candidates in zip(photos, found, strict=True):
        other = next((c for c in candidates if c.identity != identity), None)
        if other is not None and other.similarity >= threshold:
            out.append(Duplicate(photo.name, other.identity, other.similarity, threshold))
    return out
