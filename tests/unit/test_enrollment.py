from __future__ import annotations

import base64
import hashlib
import json

import pytest

from streams.enrollment import EnrollmentRequest, Photo, ack


def test_round_trip_preserves_photo_bytes() -> None:
    blob = bytes(range(256))
    req = EnrollmentRequest("enroll", "ana", "Ana B.", (Photo("a.jpg", blob), Photo("b", b"")))
    back = EnrollmentRequest.decode(req.encode())
    assert back == req
    assert back.photos[0].data == blob


def test_encode_carries_schema_and_base64_photos() -> None:
    doc = json.loads(EnrollmentRequest("delete", "ana", request_id="r1").encode())
    assert doc["schema"] == "facestream.enrollment/v1"
    assert (doc["op"], doc["identity"], doc["request_id"], doc["photos"]) == (
        "delete",
        "ana",
        "r1",
        [],
    )
    doc = json.loads(EnrollmentRequest("enroll", "ana", photos=(Photo("p", b"hi"),)).encode())
    assert doc["photos"] == [{"name": "p", "data": base64.b64encode(b"hi").decode()}]


def test_request_ids_are_unique_by_default() -> None:
    assert (
        EnrollmentRequest("delete", "a").request_id != EnrollmentRequest("delete", "a").request_id
    )


def test_photo_sha256() -> None:
    assert Photo("p", b"abc").sha256 == hashlib.sha256(b"abc").hexdigest()


def request(**changes: object) -> bytes:
    doc = {"op": "enroll", "identity": "ana", "request_id": "r1", "photos": []}
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"enroll"',
        request(identity=...),
        request(identity=""),
        request(op="update"),
        request(op=...),
        request(request_id=...),
        request(photos=[{"name": "p", "data": "a!Gk="}]),  # "aGk=" once "!" is dropped
        request(photos=[{"name": "p"}]),
        request(photos=["p"]),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "list",
        "string",
        "missing-identity",
        "empty-identity",
        "bad-op",
        "missing-op",
        "missing-request-id",
        "bad-base64",
        "photo-without-data",
        "photo-not-object",
    ],
)
def test_malformed_requests_raise_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        EnrollmentRequest.decode(raw)


def test_ack_ok_follows_error() -> None:
    ok = ack("r1", "ana", "enroll", model_id="m", photos=2)
    assert (ok["ok"], ok["error"], ok["photos"], ok["model"]) == (True, None, 2, "m")
    bad = ack("r1", "ana", "enroll", model_id="m", error={"reason": "no_face", "message": "x"})
    assert bad["ok"] is False and bad["schema"] == "facestream.enrollment-ack/v1"
